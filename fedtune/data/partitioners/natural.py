"""`natural`: one client per distinct value of `partition.column` (e.g. the airline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr_datasets.partitioner import NaturalIdPartitioner

if TYPE_CHECKING:
    from fedtune.config import PartitionConfig


def natural(cfg: PartitionConfig, seed: int) -> NaturalIdPartitioner:
    return NaturalIdPartitioner(partition_by=cfg.column)
