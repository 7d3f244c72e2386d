"""Round metrics: the centralized keys every round reports, and what is derived from the
clients' metrics (fairness)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score

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


IMBALANCED = 1.5
"""A test split is imbalanced when its most common label holds at least this many times the
share it would in a balanced one (3 labels: 50%; 2 labels: 75%); macro-F1 then heads."""


def label_supports(per_class: dict) -> dict[str, int]:
    """Each label's test examples, from a per-class report (scikit-learn's, with support)."""
    return {
        label: int(report["support"])
        for label, report in per_class.items()
        if isinstance(report, dict) and label not in ("macro avg", "weighted avg")
    }


def majority_baseline(supports: dict[str, int]) -> dict | None:
    """Always predicting the most common test label: which, its share, and the accuracy
    and macro-F1 that scores; `headline` names the metric that separates learning from it
    (macro-F1 on an imbalanced test split, else accuracy)."""
    total = sum(supports.values())
    if not total:
        return None
    labels = list(supports)
    majority = max(labels, key=lambda label: supports[label])
    y_true = np.repeat(np.arange(len(labels)), [supports[label] for label in labels])
    y_pred = np.full(total, labels.index(majority))
    share = supports[majority] / total
    return {
        "label": majority,
        "share": share,
        "accuracy": share,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "headline": "macro_f1" if share * len(labels) >= IMBALANCED else "accuracy",
    }
