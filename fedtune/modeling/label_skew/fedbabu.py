"""FedBABU (Oh et al., ICLR 2022): the classification head stays at its initial values
during local training, so skewed clients cannot pull it toward their own labels; only the
body learns (and is averaged). In the last `head_rounds` rounds the roles swap and only the
head trains, fitting it to the body the federation learned."""

from __future__ import annotations

from pydantic import Field

from fedtune.config.base import Section
from fedtune.modeling.label_skew.base import LabelSkewMethod, is_head


class FedBABUParams(Section):
    head_rounds: int = Field(0, ge=0)
    """Final rounds in which only the head trains (0: the head is never trained)."""


class FedBABU(LabelSkewMethod):
    Params = FedBABUParams

    def frozen(self, name: str, server_round: int, rounds: int, params: FedBABUParams) -> bool:
        head_only = server_round > rounds - params.head_rounds
        return not is_head(name) if head_only else is_head(name)
