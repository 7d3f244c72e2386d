"""Round metrics: the centralized keys every round reports, and what is derived from the
clients' metrics (fairness)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, log_loss, ndcg_score, roc_auc_score

CENTRAL_KEYS = ("accuracy", "macro_f1", "loss")
"""The server's test-split metrics in every round line and summary."""
TASK_KEYS = ("auc", "log_loss", "ndcg_at_10", "hit_rate_at_10")
"""Test-split metrics of some tasks (two labels; ranked groups), there when measured."""


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
    (AUC for two labels; else macro-F1 on an imbalanced test split, else accuracy)."""
    total = sum(supports.values())
    if not total:
        return None
    labels = list(supports)
    majority = max(labels, key=lambda label: supports[label])
    y_true = np.repeat(np.arange(len(labels)), [supports[label] for label in labels])
    y_pred = np.full(total, labels.index(majority))
    share = supports[majority] / total
    baseline = {
        "label": majority,
        "share": share,
        "accuracy": share,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "headline": "macro_f1" if share * len(labels) >= IMBALANCED else "accuracy",
    }
    if len(labels) == 2:  # a constant score ranks nothing: AUC 0.5, the two-label headline
        baseline.update(auc=0.5, headline="auc")
    return baseline


RANKING_K = 10
"""The cut-off of the ranking metrics: NDCG@10 and HR@10."""


def binary_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """A two-label task's AUC (of the second label's probability; needs both labels
    present) and log-loss."""
    metrics = {"log_loss": float(log_loss(y_true, probs, labels=[0, 1]))}
    if len(np.unique(y_true)) == 2:
        metrics["auc"] = float(roc_auc_score(y_true, probs[:, 1]))
    return metrics


def ranking_metrics(y_true: np.ndarray, scores: np.ndarray, groups: Sequence) -> dict:
    """NDCG@10 and HR@10 of each group's (user's) rows ranked by score, averaged over the
    groups holding a positive."""
    return {
        f"ndcg_at_{RANKING_K}": ndcg_at_k(y_true, scores, groups, RANKING_K),
        f"hit_rate_at_{RANKING_K}": hit_rate_at_k(y_true, scores, groups, RANKING_K),
    }


def _groups(labels: Sequence, scores: Sequence, groups: Sequence) -> list[tuple[np.ndarray, ...]]:
    """(labels, scores) per group that holds at least one positive label."""
    frame = pd.DataFrame(
        {"label": np.asarray(labels, dtype=float), "score": np.asarray(scores, dtype=float)}
    )
    if len(frame) != len(groups):
        raise ValueError(f"{len(frame)} labels and scores but {len(groups)} groups")
    return [
        (group["label"].to_numpy(), group["score"].to_numpy())
        for _, group in frame.groupby(np.asarray(groups), sort=False)
        if (group["label"] > 0).any()
    ]


def ndcg_at_k(labels: Sequence, scores: Sequence, groups: Sequence, k: int = 10) -> float:
    """Mean over groups (users) with a positive label of sklearn's NDCG@k of their items
    ranked by score (labels are relevances, e.g. 1 = like; tied scores averaged, as
    sklearn does); NaN when no group has a positive."""
    values = [
        1.0 if len(y) == 1 else float(ndcg_score([y], [s], k=k))
        for y, s in _groups(labels, scores, groups)
    ]
    return float(np.mean(values)) if values else float("nan")


def hit_rate_at_k(labels: Sequence, scores: Sequence, groups: Sequence, k: int = 10) -> float:
    """Share of groups (users) with a positive label that have one among their `k`
    highest-scored items (tied scores keep the input order); NaN when no group has one."""
    hits = [
        bool((y[np.argsort(-s, kind="stable")[:k]] > 0).any())
        for y, s in _groups(labels, scores, groups)
    ]
    return float(np.mean(hits)) if hits else float("nan")
