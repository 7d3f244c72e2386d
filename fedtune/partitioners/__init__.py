"""Partitioners (`partition.kind`): how the training pool is split among the clients.

A new kind is one file holding a builder (`PartitionConfig`, seed -> a flwr-datasets
`Partitioner`) plus its entry in `PARTITIONERS`; `partition.kind` accepts every registered name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedtune.partitioners.dirichlet import dirichlet
from fedtune.partitioners.iid import iid
from fedtune.partitioners.natural import natural
from fedtune.partitioners.pathological import pathological
from fedtune.partitioners.shard import shard

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

    from fedtune.config import PartitionConfig

PARTITIONERS: dict[str, Callable[[PartitionConfig, int], Partitioner]] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "shard": shard,
    "pathological": pathological,
    "natural": natural,
}
"""`partition.kind` -> builder of its partitioner; registering a new kind is one entry."""
