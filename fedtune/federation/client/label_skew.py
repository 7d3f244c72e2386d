"""A node's side of `training.label_skew`: the logits its training loss reads, from its
own label counts (and the federation's, which the server sent), and the parameters that
stay fixed in this round. Counts are read here; nothing new leaves the node."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel

from fedtune.config import LabelSkewSettings
from fedtune.modeling.label_skew import LabelCounts, configured
from fedtune.modeling.train import TrainLogits


def train_logits(
    settings: LabelSkewSettings,
    labels: Sequence[int],
    num_labels: int,
    federation_counts: Sequence[int] | None,
) -> TrainLogits | None:
    """The method's logits for the loss of a node whose training labels are `labels`; None
    without a method or with one that changes only which parameters train."""
    found = configured(settings)
    if found is None:
        return None
    method, params = found
    local = torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=num_labels)
    federation = None if federation_counts is None else torch.as_tensor(federation_counts)
    counts = LabelCounts(local, federation)
    return lambda logits: method.train_logits(logits, counts, params)


@contextlib.contextmanager
def frozen_parameters(
    model: PreTrainedModel, settings: LabelSkewSettings, server_round: int, rounds: int
) -> Iterator[None]:
    """Inside, the parameters the method keeps fixed this round do not train; after, they
    are trainable again (what is trainable is what is exchanged)."""
    found = configured(settings)
    frozen = []
    if found is not None:
        method, params = found
        frozen = [
            p
            for name, p in model.named_parameters()
            if p.requires_grad and method.frozen(name, server_round, rounds, params)
        ]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
