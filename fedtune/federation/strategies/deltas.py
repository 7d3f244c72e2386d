"""Let any stock Flower strategy aggregate weight updates instead of full weights."""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.config import CodecConfig, ValidationConfig
from fedtune.federation.codecs import decode
from fedtune.federation.strategies.wrapper import StrategyWrapper
from fedtune.modeling.adapters.ranks import RankedLora
from fedtune.records import from_record, to_record

UNIFORM_WEIGHT = "uniform-weight"
"""The metric every accepted reply gets (1) when clients are weighted equally."""


def _client_order(reply: Message) -> tuple[int, int]:
    """Errors last; replies by partition id (stable across runs), else by node id."""
    if not reply.has_content():
        return (1, reply.metadata.src_node_id)
    return (0, _client_id(reply))


def _client_id(reply: Message) -> int:
    metrics = reply.content.metric_records.get("metrics", {})
    return int(metrics.get("partition-id", reply.metadata.src_node_id))


def update_norm(update: dict[str, np.ndarray]) -> float:
    """The L2 norm of a whole update (all tensors together)."""
    return float(np.sqrt(sum(np.square(u, dtype=np.float64).sum() for u in update.values())))


class DeltaUpdates(StrategyWrapper):
    """Wraps a Flower strategy whose clients reply with `local - global` weight updates.

    Before the wrapped strategy sees a train reply, its update is unpacked with `codec`,
    checked (`validation`), and turned back into full weights (`global + update`), so FedAvg,
    robust aggregators and DP wrappers, which all expect full weights, work unchanged. A
    rejected update never reaches them; `rejected` lists the last round's, with reasons.
    With `uniform_weights`, each reply gets the metric `uniform-weight` = 1 (for an inner
    FedAvg weighted by it, as client-level DP requires). With `ranked` (heterogeneous LoRA
    ranks), each reply's factors become dense updates first.
    """

    def __init__(
        self,
        inner: Strategy,
        min_train_nodes: int,
        codec: CodecConfig | None = None,
        validation: ValidationConfig | None = None,
        uniform_weights: bool = False,
        ranked: RankedLora | None = None,
    ) -> None:
        super().__init__(inner)
        self.min_train_nodes = min_train_nodes
        self.uniform_weights = uniform_weights
        self.ranked = ranked
        self.codec = codec or CodecConfig()
        self.validation = validation or ValidationConfig()
        self.rejected: list[dict] = []
        self._global: dict | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = from_record(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the accepted updates, rebuilt as weights, in a fixed client order
        (floating-point sums then do not depend on arrival order); keep the global model
        when fewer than `min_train_nodes` updates are accepted."""
        replies = sorted(replies, key=_client_order)
        errors = [reply for reply in replies if not reply.has_content()]
        accepted = self._accept([reply for reply in replies if reply.has_content()])
        needed = self.min_train_nodes
        if len(accepted) < needed:
            log(
                WARNING,
                "round %s: %s of %s needed updates accepted; global model kept",
                server_round,
                len(accepted),
                needed,
            )
            return None, None
        for reply, update in accepted:
            reply.content["arrays"] = to_record(
                {name: self._global[name] + delta for name, delta in update.items()}
            )
            if self.uniform_weights:
                reply.content["metrics"][UNIFORM_WEIGHT] = 1
        return self.inner.aggregate_train(server_round, [r for r, _ in accepted] + errors)

    def _accept(self, replies: list[Message]) -> list[tuple[Message, dict]]:
        """Unpack each reply's update; reject (and record why) those that do not fit the
        model, and with validation on, those with NaN/Inf or a norm far above the median."""
        self.rejected = []
        unpacked = []
        for reply in replies:
            try:
                update = self._unpack(reply)
            except (KeyError, ValueError) as exc:
                self._reject(reply, str(exc))
                continue
            if self.validation.enabled and not all(np.isfinite(u).all() for u in update.values()):
                self._reject(reply, "update holds NaN or Inf")
                continue
            unpacked.append((reply, update))
        ratio = self.validation.max_norm_ratio
        if not self.validation.enabled or ratio is None or len(unpacked) < 3:
            return unpacked  # with fewer than 3 updates no outlier can be told apart
        norms = [update_norm(update) for _, update in unpacked]
        limit = ratio * float(np.median(norms))
        accepted = []
        for (reply, update), norm in zip(unpacked, norms, strict=True):
            if norm > limit:
                self._reject(reply, f"update norm {norm:.3g} > {ratio:g} x the round's median")
            else:
                accepted.append((reply, update))
        return accepted

    def _unpack(self, reply: Message) -> dict[str, np.ndarray]:
        """The reply's update, decoded; with heterogeneous LoRA ranks, the client's factors
        turned into dense updates of the adapted modules."""
        packed = from_record(reply.content["arrays"])
        if self.ranked is None:
            return decode(self.codec, packed, self._global)
        client = _client_id(reply)
        if not 0 <= client < len(self.ranked.ranks):
            raise ValueError(f"no LoRA rank for client {client} (model.peft.rank_per_client)")
        update = decode(self.codec, packed, self.ranked.reply_shapes(self._global, client))
        return self.ranked.dense_update(update, self._global, client)

    def _reject(self, reply: Message, reason: str) -> None:
        client = _client_id(reply)
        log(WARNING, "client %s: update rejected: %s", client, reason)
        self.rejected.append({"client": client, "reason": reason})

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        if self.uniform_weights:  # the inner strategy checks its weighting key here too
            for reply in replies:
                if reply.has_content():
                    reply.content["metrics"][UNIFORM_WEIGHT] = 1
        return self.inner.aggregate_evaluate(server_round, replies)
