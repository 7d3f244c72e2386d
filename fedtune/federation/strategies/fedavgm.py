"""FedAvgM whose server momentum survives a checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy


class FedAvgM(strategy.FedAvgM):
    """Flower's FedAvgM (a server learning rate and momentum over FedAvg's average: the
    "server learning rate / momentum option for FedAvg"), keeping its momentum as named
    arrays in `momentum`, which fedtune's checkpoints carry. Flower keeps it as a bare list
    (`momentum_vector`), which they cannot, so a resumed run would restart the momentum."""

    def __init__(
        self, server_learning_rate: float = 1.0, server_momentum: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(
            server_learning_rate=server_learning_rate, server_momentum=server_momentum, **kwargs
        )
        self.momentum: dict[str, np.ndarray] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.momentum and self.current_arrays is not None:
            self.momentum_vector = [self.momentum[name] for name in self.current_arrays]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.momentum_vector is not None:
            self.momentum = dict(zip(arrays.keys(), self.momentum_vector, strict=True))
        self.momentum_vector = None
        return arrays, metrics
