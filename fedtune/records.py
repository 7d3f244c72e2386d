"""Named numpy arrays to and from Flower's ArrayRecord (numpy and flwr only: cheap to import)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in weights.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}
