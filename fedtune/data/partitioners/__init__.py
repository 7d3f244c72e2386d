"""Partitioners (`partition.kind`): how the training pool is split among the clients.

A new kind is one file holding a builder (`PartitionConfig`, seed -> a flwr-datasets
`Partitioner`) plus its entry in `PARTITIONERS`; `partition.kind` accepts every registered name.
A builder that takes parameters declares them with `@takes(ParamsSection)`
(`fedtune.config.base`): the `partition` section then accepts, validates and holds them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedtune.data.partitioners.dirichlet import dirichlet
from fedtune.data.partitioners.iid import iid
from fedtune.data.partitioners.natural import natural
from fedtune.data.partitioners.pathological import pathological
from fedtune.data.partitioners.shard import shard

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
