"""`ffa_lora`: LoRA with A frozen at its seeded initialisation, only B trains (Sun et al.,
2024, "Improving LoRA in Privacy-preserving Federated Learning").

Every process builds the same A (`load_model` seeds torch before the adapters are made),
so only B and the classification head travel: half of LoRA's adapter bytes, and averaging
the clients' B is exact (mean(B_i) A = mean(B_i A)), which plain LoRA's separate averaging
of A and B is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.config.base import takes
from fedtune.modeling.adapters.lora import LoraParams, lora

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings


@takes(LoraParams)
def ffa_lora(settings: PeftSettings) -> peft.LoraConfig:
    return lora(settings)


ffa_lora.frozen = (".lora_A.",)  # parameters named so keep their initial values
