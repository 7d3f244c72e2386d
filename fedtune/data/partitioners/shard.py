"""`shard`: the label-sorted examples cut into shards, `labels_per_client` shards per client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr_datasets.partitioner import ShardPartitioner

from fedtune.config.base import takes
from fedtune.data.partitioners.base import LABEL, LabelsPerClient

if TYPE_CHECKING:
    from fedtune.config import PartitionConfig


@takes(LabelsPerClient)
def shard(cfg: PartitionConfig, seed: int) -> ShardPartitioner:
    return ShardPartitioner(
        num_partitions=cfg.num_clients,
        partition_by=LABEL,
        num_shards_per_partition=cfg.labels_per_client,
        seed=seed,
    )
