"""PEFT methods (`model.peft.method`): each builds the HF `peft` config of its adapters.

A new method is one file holding a builder (`PeftSettings` -> `peft.PeftConfig`, importing
`peft` inside, as it is slow to import) plus its entry in `ADAPTERS`; `model.peft.method`
accepts every registered name, and `none` (no adapters). The builder declares its
parameters with `@takes(ParamsSection)` (`fedtune.config.base`; see `lora.py`), which
`model.peft` then accepts and validates. A builder with a `frozen` attribute
(name fragments, e.g. `(".lora_A.",)`) keeps the adapter parameters whose names hold one
frozen at their seeded initialisation: they neither train nor travel. One with a `personal`
attribute keeps the parameters whose names hold one of its fragments on each node: they
train there and never travel (the node's state holds them between rounds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedtune.modeling.adapters.fedsa_lora import fedsa_lora
from fedtune.modeling.adapters.ffa_lora import ffa_lora
from fedtune.modeling.adapters.ia3 import ia3
from fedtune.modeling.adapters.lora import lora
from fedtune.modeling.adapters.lycoris import loha, lokr

if TYPE_CHECKING:
    import peft

    from fedtune.config import PeftSettings

ADAPTERS: dict[str, Callable[[PeftSettings], peft.PeftConfig]] = {
    "lora": lora,
    "ffa_lora": ffa_lora,
    "fedsa_lora": fedsa_lora,
    "loha": loha,
    "lokr": lokr,
    "ia3": ia3,
}
"""`model.peft.method` -> builder of its peft config; registering a new method is one entry."""
