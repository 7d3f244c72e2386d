"""`natural`: one client per distinct value of `partition.column` (e.g. the airline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr_datasets.partitioner import NaturalIdPartitioner

from fedtune.config.base import Section, takes

if TYPE_CHECKING:
    from fedtune.config import PartitionConfig


class NaturalParams(Section):
    column: str
    """The column whose values define the clients (e.g. `airline`)."""


@takes(NaturalParams)
def natural(cfg: PartitionConfig, seed: int) -> NaturalIdPartitioner:
    return NaturalIdPartitioner(partition_by=cfg.column)
