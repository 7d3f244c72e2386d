"""Methods for label skew (`training.label_skew.method`): each changes a client's local
training from label counts alone. A new method is one file holding a `LabelSkewMethod`
subclass (its parameters a `Params` section) plus its entry in `LABEL_SKEW_METHODS`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.config.base import Section
from fedtune.modeling.label_skew.base import LabelCounts, LabelSkewMethod
from fedtune.modeling.label_skew.fedbabu import FedBABU
from fedtune.modeling.label_skew.fedlc import FedLC
from fedtune.modeling.label_skew.fedrs import FedRS
from fedtune.modeling.label_skew.logit_adjustment import LogitAdjustment

if TYPE_CHECKING:
    from fedtune.config import LabelSkewSettings

LABEL_SKEW_METHODS: dict[str, LabelSkewMethod] = {
    "fedlc": FedLC(),
    "fedrs": FedRS(),
    "logit_adjustment": LogitAdjustment(),
    "fedbabu": FedBABU(),
}
"""`training.label_skew.method` -> method; registering a new one is one entry."""

__all__ = ["LABEL_SKEW_METHODS", "LabelCounts", "LabelSkewMethod", "configured"]


def configured(settings: LabelSkewSettings) -> tuple[LabelSkewMethod, Section] | None:
    """The method `training.label_skew` names and its parameters; None for `none`."""
    if settings.method == "none":
        return None
    method = LABEL_SKEW_METHODS[settings.method]
    fields = method.Params.model_fields
    return method, method.Params.model_validate({k: getattr(settings, k) for k in fields})
