"""`dirichlet`: each label's examples spread over the clients by Dirichlet(`alpha`) shares
(smaller alpha, more label skew); resampled until every client holds at least 2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr_datasets.partitioner import DirichletPartitioner
from pydantic import Field

from fedtune.config.base import Section, takes
from fedtune.data.partitioners.base import LABEL

if TYPE_CHECKING:
    from fedtune.config import PartitionConfig


class DirichletParams(Section):
    alpha: float = Field(0.5, gt=0.0)
    """Dirichlet concentration: smaller means more label skew."""


@takes(DirichletParams)
def dirichlet(cfg: PartitionConfig, seed: int) -> DirichletPartitioner:
    return DirichletPartitioner(
        num_partitions=cfg.num_clients,
        partition_by=LABEL,
        alpha=cfg.alpha,
        min_partition_size=2,
        seed=seed,
    )
