"""FedLC (Zhang et al., ICML 2022): local training calibrates each label's logit by its
local count, `logit_y - tau * n_y^(-1/4)`, so a client's rare labels are not pushed down
and its common ones are not pushed up; a label the client lacks gets a margin so large it
is left out of the local softmax."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedtune.config.base import Section
from fedtune.modeling.label_skew.base import LabelCounts, LabelSkewMethod

if TYPE_CHECKING:
    import torch


class FedLCParams(Section):
    tau: float = Field(1.0, gt=0.0)
    """The calibration's strength (the paper's tau)."""


class FedLC(LabelSkewMethod):
    Params = FedLCParams

    def train_logits(
        self, logits: torch.Tensor, counts: LabelCounts, params: FedLCParams
    ) -> torch.Tensor:
        local = counts.local.to(logits.device).float().clamp(min=1e-8)
        return logits - params.tau * local.pow(-0.25)
