"""`lora`: low-rank adapters, W + (alpha / rank) * B A (Hu et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedtune.config.base import takes
from fedtune.modeling.adapters.base import AdapterParams, common

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings


class LoraParams(AdapterParams):
    """The low-rank methods' (`lora`, `ffa_lora`, `fedsa_lora`, `loha`, `lokr`)."""

    rank: int = Field(8, ge=1)
    """Adapter rank."""
    alpha: float = Field(16.0, gt=0.0)
    """Scaling numerator: updates are scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""


@takes(LoraParams)
def lora(settings: PeftSettings) -> peft.LoraConfig:
    import peft

    return peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        **common(settings),
    )
