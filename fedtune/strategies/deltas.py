"""Let any stock Flower strategy aggregate weight updates instead of full weights."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.model import from_record, to_record


class DeltaUpdates(Strategy):
    """Wraps a Flower strategy whose clients reply with `local - global` weight updates.

    Before the wrapped strategy sees a train reply, its update is turned back into full
    weights (`global + update`), so FedAvg, robust aggregators and DP wrappers, which all
    expect full weights, work unchanged.
    """

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self._global: dict | None = None

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = from_record(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            if reply.has_content():
                self._add_global(reply)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def _add_global(self, reply: Message) -> None:
        """Replace the reply's update in place by the full weights it implies."""
        for key, record in list(reply.content.array_records.items()):
            update = from_record(record)
            reply.content[key] = to_record(
                {name: self._global[name] + delta for name, delta in update.items()}
            )
