"""FedRS (Li and Zhan, KDD 2021): restricted softmax. The logits of labels a client has no
example of are scaled by `alpha` < 1 during its local training, so its updates do not push
the classifier's weights of those labels away from features they never saw."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedtune.config.base import Section
from fedtune.modeling.label_skew.base import LabelCounts, LabelSkewMethod

if TYPE_CHECKING:
    import torch


class FedRSParams(Section):
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """The scale of a missing label's logit (1: plain softmax)."""


class FedRS(LabelSkewMethod):
    Params = FedRSParams

    def train_logits(
        self, logits: torch.Tensor, counts: LabelCounts, params: FedRSParams
    ) -> torch.Tensor:
        present = (counts.local > 0).to(logits.device).float()
        return logits * (present + (1.0 - present) * params.alpha)
