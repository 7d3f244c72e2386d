"""`fedsa_lora`: LoRA whose A is shared and B personal (Guo et al., 2025, "Selective
Aggregation for Low-Rank Adaptation in Federated Learning").

A and the classification head travel and are aggregated; each node's B trains on its own
shard and never leaves it (kept in the node's state between rounds), so every client ends
with its own model: the shared A (general knowledge) with its personal B. The server's
model holds the shared A with B at its initial value (zero: the adapters then add nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.config.base import takes
from fedtune.modeling.adapters.lora import LoraParams, lora

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings


@takes(LoraParams)
def fedsa_lora(settings: PeftSettings) -> peft.LoraConfig:
    return lora(settings)


fedsa_lora.personal = (".lora_B.",)  # parameters named so train on each node and stay there
