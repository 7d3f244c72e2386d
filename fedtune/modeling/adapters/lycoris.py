"""`loha` and `lokr`: LyCORIS low-rank adapters, as Hadamard or Kronecker products."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedtune.config.base import takes
from fedtune.modeling.adapters.base import common
from fedtune.modeling.adapters.lora import LowRankParams

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings


def _lycoris(settings: PeftSettings) -> dict[str, Any]:
    return {
        "r": settings.rank,
        "alpha": settings.alpha,
        "rank_dropout": settings.dropout,
        **common(settings),
    }


@takes(LowRankParams)
def loha(settings: PeftSettings) -> peft.LoHaConfig:
    import peft

    return peft.LoHaConfig(**_lycoris(settings))


@takes(LowRankParams)
def lokr(settings: PeftSettings) -> peft.LoKrConfig:
    import peft

    return peft.LoKrConfig(**_lycoris(settings))
