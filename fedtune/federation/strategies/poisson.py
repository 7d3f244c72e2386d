"""Poisson client sampling (`federation.sampling: poisson`): each round every node takes part
independently with probability `rate`, the sampling that DP accountants credit."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedtune.federation.exchange import GridView
from fedtune.federation.strategies.wrapper import StrategyWrapper
from fedtune.records import from_record, to_record


class SampledGrid(GridView):
    """A view of `grid` that lists only the round's sampled nodes (the wrapped strategy then
    sends to all of them)."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        super().__init__(grid)
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def poisson_sample(nodes: list[int], rate: float, seed: int, server_round: int) -> list[int]:
    """The nodes that take part in `server_round`: each independently with probability
    `rate`, drawn from a generator seeded by (seed, round) (a resumed run draws the same)."""
    rng = np.random.default_rng([seed, server_round])
    return [node for node, u in zip(nodes, rng.random(len(nodes)), strict=True) if u < rate]


class PoissonSampling(StrategyWrapper):
    """Wraps a strategy built with `fraction_train=1.0`: each train round it sees only the
    nodes `poisson_sample` draws (at least `min_available_nodes` must be connected first).

    With `fixed_denominator` (client-level DP), the aggregate is the sum of the updates
    divided by the expected number of clients, `global + K/expected x (mean - global)` for K
    replies (McMahan et al., 2018), so one client moves it by at most clipping_norm /
    expected whatever K is: the sensitivity the DP noise is calibrated to."""

    def __init__(
        self,
        inner: Strategy,
        rate: float,
        seed: int,
        min_available_nodes: int,
        expected: int,
        fixed_denominator: bool = False,
    ) -> None:
        super().__init__(inner)
        self.rate, self.seed = rate, seed
        self.min_available_nodes, self.expected = min_available_nodes, expected
        self.fixed_denominator = fixed_denominator
        self._global: dict[str, np.ndarray] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        _, nodes = sample_nodes(grid, self.min_available_nodes, 0)  # waits for them
        sampled = poisson_sample(nodes, self.rate, self.seed, server_round)
        self._global = from_record(arrays)
        if not sampled:
            return []
        return self.inner.configure_train(server_round, arrays, config, SampledGrid(grid, sampled))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None or not self.fixed_denominator:
            return arrays, metrics
        scale = sum(1 for r in replies if r.has_content()) / self.expected
        mean = from_record(arrays)
        return to_record({n: g + scale * (mean[n] - g) for n, g in self._global.items()}), metrics
