"""`pathological`: each client holds examples of only `labels_per_client` labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr_datasets.partitioner import PathologicalPartitioner

from fedtune.config.base import takes
from fedtune.data.partitioners.base import LABEL, LabelsPerClient

if TYPE_CHECKING:
    from fedtune.config import PartitionConfig


@takes(LabelsPerClient)
def pathological(cfg: PartitionConfig, seed: int) -> PathologicalPartitioner:
    return PathologicalPartitioner(
        num_partitions=cfg.num_clients,
        partition_by=LABEL,
        num_classes_per_partition=cfg.labels_per_client,
        seed=seed,
    )
