"""`lora`: low-rank adapters, W + (alpha / rank) * B A (Hu et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedtune.config.base import takes
from fedtune.modeling.adapters.base import AdapterParams, common

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings


class LowRankParams(AdapterParams):
    """The low-rank methods' (`lora`, `ffa_lora`, `fedsa_lora`, `loha`, `lokr`)."""

    rank: int = Field(8, ge=1)
    """Adapter rank."""
    alpha: float = Field(16.0, gt=0.0)
    """Scaling numerator: updates are scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""


class LoraParams(LowRankParams):
    """LoRA's (`lora`, `ffa_lora`, `fedsa_lora`)."""

    use_rslora: bool = False
    """rsLoRA (Kalajdzievski, 2023): scale updates by alpha / sqrt(rank), which keeps
    higher ranks learning (peft's `use_rslora`)."""


@takes(LoraParams)
def lora(settings: PeftSettings) -> peft.LoraConfig:
    import peft

    return peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_rslora=settings.use_rslora,
        **common(settings),
    )
