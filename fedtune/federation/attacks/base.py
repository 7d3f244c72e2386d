"""The attack interface: what a malicious client does to its training data or its update."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import datasets

    from fedtune.config import AttackConfig

Arrays = dict[str, np.ndarray]


class Attack:
    """A Byzantine behaviour; each step it does not override stays honest."""

    def poison_data(self, train: datasets.Dataset, num_labels: int) -> datasets.Dataset:
        """The training split the malicious client trains on instead of its own."""
        return train

    def poison_update(
        self, update: Arrays, attack: AttackConfig, rng: np.random.Generator
    ) -> Arrays:
        """What the malicious client sends instead of its honest update."""
        return update
