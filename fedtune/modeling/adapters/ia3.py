"""`ia3`: learned rescaling vectors on keys, values and feed-forward outputs (Liu et al., 2022)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.config.base import takes
from fedtune.modeling.adapters.base import AdapterParams, common

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings


@takes(AdapterParams)
def ia3(settings: PeftSettings) -> peft.IA3Config:
    import peft

    return peft.IA3Config(**common(settings))
