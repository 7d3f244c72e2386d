"""Federated statistics: what the server asks every node once, before round 1, answered
with counts only (never rows, texts or labels): today each node's training label counts,
for `training.class_weights: federated` and `training.label_skew.method:
logit_adjustment`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedtune.federation.exchange import client_error

LABEL_COUNTS_ACTION = "label_counts"
"""The query's action: its messages are `query.label_counts`."""

LABEL_COUNTS = "label-counts"
"""The reply's one metric: the node's training examples per label, in label order."""


def federation_label_counts(
    grid: Grid, label_names: Sequence[str], timeout: float | None
) -> list[int]:
    """The federation's training examples per label: the sum of what every node replies.
    ValueError naming the node when one fails or does not answer (weights from part of the
    federation would differ from the ones promised)."""
    config = ConfigRecord({"label-names": list(label_names)})
    nodes = list(grid.get_node_ids())
    messages = [
        Message(
            RecordDict({"config": config}),
            dst_node_id=node,
            message_type=f"{MessageType.QUERY}.{LABEL_COUNTS_ACTION}",
        )
        for node in nodes
    ]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=timeout)}
    for node in nodes:  # the first failure in node order, whatever order replies came in
        if node in replies and replies[node].has_error():
            raise ValueError(
                f"the federation's label counts: node {node} sent none: "
                f"{client_error(replies[node].error.reason)}"
            )
    totals = np.zeros(len(label_names), dtype=np.int64)
    for reply in replies.values():
        totals += np.asarray(reply.content["metrics"][LABEL_COUNTS], dtype=np.int64)
    answered = set(replies)
    missing = sorted(set(nodes) - answered)
    if missing:
        raise ValueError(
            f"the federation's label counts: node(s) {missing} sent none "
            f"within federation.round_timeout={timeout}s"
        )
    return totals.tolist()


def label_counts_content(labels: Sequence[int], num_labels: int) -> RecordDict:
    """The reply to a label-counts query: this node's examples per label, nothing else."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels)
    return RecordDict({"metrics": MetricRecord({LABEL_COUNTS: counts.tolist()})})
