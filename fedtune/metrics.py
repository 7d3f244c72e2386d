"""Round metrics: the centralized keys every round reports, and what is derived from the
clients' metrics (fairness)."""

from __future__ import annotations

import math

import numpy as np

CENTRAL_KEYS = ("accuracy", "macro_f1", "loss")
"""The server's test-split metrics in every round line and summary."""


def fairness_metrics(client_evals: list[dict], central: dict) -> dict:
    """How evenly the model serves the clients (their local accuracy: min, max, std, mean
    of the worst 10%) and the classes (per-class F1 on the centralized test split)."""
    per_class = central.get("per_class", {})
    fairness: dict = {
        "per_class_f1": {
            label: report["f1-score"]
            for label, report in per_class.items()
            if isinstance(report, dict) and label not in ("macro avg", "weighted avg")
        }
    }
    accuracies = sorted(c["eval_accuracy"] for c in client_evals if "eval_accuracy" in c)
    if accuracies:
        worst = accuracies[: max(1, math.ceil(0.1 * len(accuracies)))]
        fairness.update(
            min_client_accuracy=accuracies[0],
            max_client_accuracy=accuracies[-1],
            std_client_accuracy=float(np.std(accuracies)),
            worst10_client_accuracy=float(np.mean(worst)),
        )
    return fairness
