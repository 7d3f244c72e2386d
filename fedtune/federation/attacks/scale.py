"""`scale` and `sign_flip`: send the honest update times `attack.scale`, or times -scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtune.federation.attacks.base import Arrays, Attack

if TYPE_CHECKING:
    from fedtune.config import AttackConfig


class Scale(Attack):
    """Multiplies the update by `sign * attack.scale`."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def poison_update(
        self, update: Arrays, attack: AttackConfig, rng: np.random.Generator
    ) -> Arrays:
        return {name: self.sign * attack.scale * u for name, u in update.items()}
