"""`scale` and `sign_flip`: send the honest update times `attack.scale`, or times -scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from fedtune.config.base import Section
from fedtune.federation.attacks.base import Arrays, Attack

if TYPE_CHECKING:
    from fedtune.config import AttackConfig


class ScaleParams(Section):
    scale: float = Field(4.0, gt=0.0)
    """The factor of the honest update (`sign_flip`: of its negative)."""


class Scale(Attack):
    """Multiplies the update by `sign * attack.scale`."""

    Params = ScaleParams

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def poison_update(
        self, update: Arrays, attack: AttackConfig, rng: np.random.Generator
    ) -> Arrays:
        return {name: self.sign * attack.scale * u for name, u in update.items()}
