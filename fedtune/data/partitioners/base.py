"""What the partitioners share."""

from pydantic import Field

from fedtune.config.base import Section

LABEL = "label"
"""The training pool's label column (`fedtune.data.corpus.LABEL`), for the label-skewed kinds."""


class LabelsPerClient(Section):
    labels_per_client: int = Field(2, ge=1)
    """`pathological`: labels per client; `shard`: label-sorted shards per client."""
