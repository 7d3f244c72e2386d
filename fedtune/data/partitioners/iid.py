"""`iid`: a uniform random split into `num_clients` equal-sized partitions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr_datasets.partitioner import IidPartitioner

if TYPE_CHECKING:
    from fedtune.config import PartitionConfig


def iid(cfg: PartitionConfig, seed: int) -> IidPartitioner:
    return IidPartitioner(num_partitions=cfg.num_clients)
