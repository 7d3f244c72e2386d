"""Let any stock Flower strategy aggregate weight updates instead of full weights."""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.codecs import decode
from fedtune.config import CodecConfig
from fedtune.model import from_record, to_record


def _client_order(reply: Message) -> tuple[int, int]:
    """Errors last; replies by partition id (stable across runs), else by node id."""
    if not reply.has_content():
        return (1, reply.metadata.src_node_id)
    metrics = reply.content.metric_records.get("metrics", {})
    return (0, int(metrics.get("partition-id", reply.metadata.src_node_id)))


class DeltaUpdates(Strategy):
    """Wraps a Flower strategy whose clients reply with `local - global` weight updates.

    Before the wrapped strategy sees a train reply, its update is unpacked with `codec` and
    turned back into full weights (`global + update`), so FedAvg, robust aggregators and DP
    wrappers, which all expect full weights, work unchanged.
    """

    def __init__(self, inner: Strategy, codec: CodecConfig | None = None) -> None:
        self.inner = inner
        self.codec = codec or CodecConfig()
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
        """Aggregate the rebuilt weights in a fixed client order (floating-point sums then
        do not depend on arrival order); keep the global model when fewer than the inner
        strategy's `min_train_nodes` updates arrived."""
        replies = sorted(replies, key=_client_order)
        valid = [reply for reply in replies if reply.has_content()]
        needed = getattr(self.inner, "min_train_nodes", 1)
        if len(valid) < needed:
            log(
                WARNING,
                "round %s: %s of %s needed updates arrived; global model kept",
                server_round,
                len(valid),
                needed,
            )
            return None, None
        for reply in valid:
            self._add_global(reply)
        return self.inner.aggregate_train(server_round, replies)

    def __getstate__(self) -> dict:
        """Checkpoints keep the strategy's own state, not the round's global weights."""
        return {**self.__dict__, "_global": None}

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
            update = decode(self.codec, from_record(record), self._global)
            reply.content[key] = to_record(
                {name: self._global[name] + delta for name, delta in update.items()}
            )
