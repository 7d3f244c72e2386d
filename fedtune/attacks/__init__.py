"""Simulated Byzantine clients (`attack` section): who is malicious and what they send."""

from __future__ import annotations

import datasets
import numpy as np

from fedtune.config import AttackConfig, Scenario


def malicious_clients(scenario: Scenario) -> set[int]:
    """The partition ids of the malicious clients: a seeded `attack.fraction` of them."""
    n, attack = scenario.partition.num_clients, scenario.attack
    if attack.kind == "none":
        return set()
    count = round(attack.fraction * n)
    return {int(i) for i in np.random.default_rng(scenario.seed).permutation(n)[:count]}


def flip_labels(train: datasets.Dataset, num_labels: int) -> datasets.Dataset:
    """Every label shifted by one class (`label_flip`)."""
    return train.map(
        lambda batch: {"labels": [(int(y) + 1) % num_labels for y in batch["labels"]]},
        batched=True,
    )


def poison(
    update: dict[str, np.ndarray], attack: AttackConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """What a malicious client sends instead of its honest update."""
    if attack.kind == "sign_flip":
        return {name: -attack.scale * u for name, u in update.items()}
    if attack.kind == "scale":
        return {name: attack.scale * u for name, u in update.items()}
    if attack.kind == "gaussian_noise":
        return {
            name: rng.normal(0.0, attack.noise_std, u.shape).astype(np.float32)
            for name, u in update.items()
        }
    return update  # label_flip poisons the data, not the update
