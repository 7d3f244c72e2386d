"""`label_flip`: train on labels shifted by one class (poisons the data, not the update)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.federation.attacks.base import Attack

if TYPE_CHECKING:
    import datasets


def flip_labels(train: datasets.Dataset, num_labels: int) -> datasets.Dataset:
    """Every label shifted by one class."""
    return train.map(
        lambda batch: {"labels": [(int(y) + 1) % num_labels for y in batch["labels"]]},
        batched=True,
    )


class LabelFlip(Attack):
    def poison_data(self, train: datasets.Dataset, num_labels: int) -> datasets.Dataset:
        return flip_labels(train, num_labels)
