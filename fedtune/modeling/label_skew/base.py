"""What a label-skew method is: a change to each client's local training (its loss's
logits, or which parameters train) computed from label counts, never from examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedtune.config.base import Section

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LabelCounts:
    """The counts a method may read: the node's own training examples per label, and the
    federation's (summed from every node's counts before round 1) when the method asks."""

    local: torch.Tensor
    federation: torch.Tensor | None = None


class LabelSkewMethod:
    """A method for label skew (`training.label_skew.method`). Its parameters are a `Params`
    section on the class; the `training.label_skew` section accepts and validates them."""

    Params: type[Section] = Section
    needs_federation_counts = False
    """Whether the server gathers every node's label counts (counts only) before round 1."""

    def train_logits(
        self, logits: torch.Tensor, counts: LabelCounts, params: Section
    ) -> torch.Tensor:
        """The logits the local training loss is computed on (prediction uses the model's
        own): unchanged by default."""
        return logits

    def frozen(self, name: str, server_round: int, rounds: int, params: Section) -> bool:
        """Whether parameter `name` stays fixed during this round's local training."""
        return False


def is_head(name: str) -> bool:
    """A parameter of the classification head (`classifier`, also under PEFT's wrapping)."""
    return "classifier" in name.split(".")
