"""`lora`: low-rank adapters, W + (alpha / rank) * B A (Hu et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.modeling.adapters.base import common

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings


def lora(settings: PeftSettings) -> peft.LoraConfig:
    import peft

    return peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        **common(settings),
    )
