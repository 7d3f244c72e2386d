"""Logit-adjusted loss (Menon et al., ICLR 2021) with the federation's label prior: local
training adds `tau * log(prior_y)` to each logit, so the learned logits estimate the
balanced posterior and the global model is not biased toward the federation's common
labels. The prior comes from every node's label counts (counts only, once per run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedtune.config.base import Section
from fedtune.modeling.label_skew.base import LabelCounts, LabelSkewMethod

if TYPE_CHECKING:
    import torch


class LogitAdjustmentParams(Section):
    tau: float = Field(1.0, gt=0.0)
    """The adjustment's strength (1: the Bayes-optimal balanced classifier)."""


class LogitAdjustment(LabelSkewMethod):
    Params = LogitAdjustmentParams
    needs_federation_counts = True

    def train_logits(
        self, logits: torch.Tensor, counts: LabelCounts, params: LogitAdjustmentParams
    ) -> torch.Tensor:
        federation = counts.federation if counts.federation is not None else counts.local
        total = federation.to(logits.device).float().clamp(min=1.0)
        return logits + params.tau * (total / total.sum()).log()
