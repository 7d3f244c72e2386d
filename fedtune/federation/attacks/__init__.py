"""Simulated Byzantine clients (`attack` section): who is malicious and what they send.

A new attack is one file holding an `Attack` subclass (overriding `poison_data`, to train on
poisoned data, and/or `poison_update`, to send a poisoned update) plus its entry in
`ATTACKS`; `attack.kind` accepts every registered name. Its parameters, if any, are a `Params`
section on the class (see `scale.py`): the `attack` section then accepts and validates them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtune.federation.attacks.base import Arrays, Attack
from fedtune.federation.attacks.gaussian_noise import GaussianNoise
from fedtune.federation.attacks.label_flip import LabelFlip, flip_labels
from fedtune.federation.attacks.scale import Scale

if TYPE_CHECKING:
    from fedtune.config import AttackConfig, Scenario

__all__ = ["ATTACKS", "Attack", "flip_labels", "malicious_clients", "poison"]

ATTACKS: dict[str, Attack] = {
    "none": Attack(),
    "label_flip": LabelFlip(),
    "sign_flip": Scale(-1.0),
    "gaussian_noise": GaussianNoise(),
    "scale": Scale(1.0),
}
"""`attack.kind` -> attack (`none`: honest); registering a new attack is one entry."""


def malicious_clients(scenario: Scenario) -> set[int]:
    """The partition ids of the malicious clients: a seeded `attack.fraction` of them."""
    n, attack = scenario.partition.num_clients, scenario.attack
    if attack.kind == "none":
        return set()
    count = round(attack.fraction * n)
    return {int(i) for i in np.random.default_rng(scenario.seed).permutation(n)[:count]}


def poison(update: Arrays, attack: AttackConfig, rng: np.random.Generator) -> Arrays:
    """What a malicious client sends instead of its honest update."""
    return ATTACKS[attack.kind].poison_update(update, attack, rng)
