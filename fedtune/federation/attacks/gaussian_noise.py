"""`gaussian_noise`: send N(0, attack.noise_std) noise shaped like the update."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from fedtune.config.base import Section
from fedtune.federation.attacks.base import Arrays, Attack

if TYPE_CHECKING:
    from fedtune.config import AttackConfig


class NoiseParams(Section):
    noise_std: float = Field(0.01, gt=0.0)
    """Standard deviation of the noise sent instead of the update."""


class GaussianNoise(Attack):
    Params = NoiseParams

    def poison_update(
        self, update: Arrays, attack: AttackConfig, rng: np.random.Generator
    ) -> Arrays:
        return {
            name: rng.normal(0.0, attack.noise_std, u.shape).astype(np.float32)
            for name, u in update.items()
        }
