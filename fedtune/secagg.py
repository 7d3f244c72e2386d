"""Secure aggregation with Flower's SecAgg+ (`privacy.secagg`), in fedtune's own round loop.

Flower 1.42 has SecAgg+ only in its legacy layer: `SecAggPlusWorkflow` on the server and
`secaggplus_mod` on the client, speaking `fitins`/`fitres` records. This module adapts both
to fedtune:

- client: `secure_mod` runs `secaggplus_mod` on SecAgg+ train messages and translates its
  legacy records to and from fedtune's train handler, so the same local training produces
  the update (`local - global`), which the mod then weights, clips, quantizes and masks.
  With SecAgg+ on, the handler refuses to answer any train message that bypassed the mod.
- server: `SecureAggregation.train_round` runs the four SecAgg+ stages (keys, key shares,
  masked updates, unmasking) through fedtune's `ObservedGrid` and returns the new global
  weights; the server only ever holds masked vectors and their unmasked weighted mean.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.config import Scenario
from fedtune.data import FederatedData, client_splits
from fedtune.model import from_record, to_record

SECAGG_RECORD = RECORD_KEY_CONFIGS
"""The ConfigRecord of a message that carries SecAgg+ protocol data (keys, shares, masked
vectors)."""
NAMES_KEY = "param-names"
"""Legacy `Parameters` are a list: the train config names its arrays, newline-separated."""
MASKING = "secagg-masking"
"""Node-state record present while `secure_mod` runs the train handler."""

Handler = Callable[[Message, Context], Message]


def secagg_bytes(content: RecordDict) -> int:
    """Bytes of the SecAgg+ record in a message's content (0 without one): bytes and
    strings by length, numbers as 8 (`ConfigRecord.count_bytes` fails on empty lists)."""
    record = content.config_records.get(SECAGG_RECORD, {})
    values = [
        v for value in record.values() for v in (value if isinstance(value, list) else [value])
    ]
    return sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in values)


# ---------------------------------------------------------------- client side


def secure_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """`secaggplus_mod` for SecAgg+ train messages; any other message passes through."""
    content = msg.content if msg.has_content() else RecordDict()
    if msg.metadata.message_type != MessageType.TRAIN or SECAGG_RECORD not in content:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, functools.partial(_train_for_masking, handler=call_next))


def _train_for_masking(msg: Message, context: Context, handler: Handler) -> Message:
    """SecAgg+ stage 2: hand the legacy `fitins` to fedtune's train handler as `arrays` and
    `config`, and its reply back as the `fitres` that `secaggplus_mod` masks."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    names = str(config.pop(NAMES_KEY)).split("\n")
    arrays = dict(zip(names, parameters_to_ndarrays(fitins.parameters), strict=True))
    msg.content = RecordDict({"arrays": to_record(arrays), "config": ConfigRecord(config)})
    context.state[MASKING] = ConfigRecord()
    try:
        reply = handler(msg, context)
    finally:
        del context.state[MASKING]
    update = from_record(reply.content["arrays"])
    metrics = dict(reply.content["metrics"])
    num_examples = int(metrics["num-examples"])
    metrics["secagg_clipped"] = _clipped_share(update, num_examples, context)
    fitres = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([update[name] for name in names]),
        num_examples,
        metrics,
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def _clipped_share(update: dict[str, np.ndarray], num_examples: int, context: Context) -> float:
    """Share of the update's entries that SecAgg+ clips (it clips the update times
    num_examples / max_weight to +-clipping_range)."""
    state = context.state.config_records[RECORD_KEY_STATE]
    limit = float(state["clipping_range"]) * float(state["max_weight"]) / max(num_examples, 1)
    clipped = sum(int(np.count_nonzero(np.abs(u) > limit)) for u in update.values())
    return clipped / max(1, sum(u.size for u in update.values()))


def refuse_unmasked(scenario: Scenario, context: Context) -> None:
    """With `privacy.secagg` on, a train message that did not come through SecAgg+ gets no
    update: the client never sends an unmasked one, whatever the server asks."""
    if scenario.privacy.secagg.enabled and MASKING not in context.state.config_records:
        raise PermissionError("privacy.secagg is on: refusing to send an unmasked update")


# ---------------------------------------------------------------- server side


class _SampledFit:
    """The legacy strategy `SecAggPlusWorkflow` calls: clients are sampled by fedtune's
    strategy (same sampling as without SecAgg+); the unmasked aggregate is kept."""

    def __init__(self, strategy: Strategy, arrays: ArrayRecord, grid: Grid) -> None:
        self.strategy, self.arrays, self.grid = strategy, arrays, grid
        self.mean_update: list[np.ndarray] | None = None
        self.num_updates = 0

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: object
    ) -> list[tuple[GridClientProxy, FitIns]]:
        names = "\n".join(self.arrays.keys())
        messages = self.strategy.configure_train(
            server_round, self.arrays, ConfigRecord(), self.grid
        )
        return [
            (
                GridClientProxy(msg.metadata.dst_node_id, self.grid, msg.metadata.run_id),
                FitIns(parameters, {**dict(msg.content["config"]), NAMES_KEY: names}),
            )
            for msg in messages
        ]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[GridClientProxy, FitRes]], failures: list
    ) -> tuple[None, dict]:
        """Every result carries the same unmasked weighted mean of the updates."""
        if results:
            self.mean_update = parameters_to_ndarrays(results[0][1].parameters)
            self.num_updates = len(results)
        return None, {}


class SecureAggregation:
    """Train rounds through SecAgg+ for one run."""

    def __init__(self, scenario: Scenario, fed: FederatedData) -> None:
        cfg = scenario.privacy.secagg
        # Updates are weighted by num_examples / max_weight: the largest client gets 1.
        max_weight = max(
            len(client_splits(fed, pid, scenario.data.val_size, scenario.seed)[0])
            for pid in range(scenario.partition.num_clients)
        )
        self.workflow = SecAggPlusWorkflow(
            cfg.num_shares,
            cfg.reconstruction_threshold,
            max_weight=float(max_weight),
            clipping_range=cfg.clipping_range,
            quantization_range=cfg.quantization_range,
            timeout=cfg.timeout or scenario.federation.round_timeout,
        )

    def train_round(
        self, server_round: int, arrays: ArrayRecord, strategy: Strategy, grid: Grid
    ) -> ArrayRecord | None:
        """One SecAgg+ round: the global weights plus the weighted mean of the clients'
        updates, or None (global model kept) when the protocol halted or fewer than the
        strategy's `min_train_nodes` updates were aggregated."""
        fit = _SampledFit(strategy, arrays, grid)
        context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=fit)  # type: ignore[arg-type]
        context.state[MAIN_PARAMS_RECORD] = arrays
        context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
        for node in grid.get_node_ids():  # only for the workflow's log line
            context.client_manager.register(GridClientProxy(node, grid, 0))
        with one_exchange(grid):
            self.workflow(grid, context)
        needed = getattr(getattr(strategy, "inner", strategy), "min_train_nodes", 1)
        if fit.mean_update is None or fit.num_updates < needed:
            log(
                WARNING,
                "round %s: secure aggregation gave no update; global model kept",
                server_round,
            )
            return None
        weights = from_record(arrays)
        return to_record(
            {
                name: (glob + delta.reshape(glob.shape)).astype(glob.dtype)
                for (name, glob), delta in zip(weights.items(), fit.mean_update, strict=True)
            }
        )


@contextmanager
def one_exchange(grid: Grid) -> Iterator[None]:
    """Report the four SecAgg+ stages of a round, which an `ObservedGrid` sees as four train
    exchanges, as one: per client its masked-update reply (or its error) with its training
    metrics, and the bytes of all stages each way."""
    report = grid.on_exchange
    stages: list = []
    grid.on_exchange = stages.append
    try:
        yield
    finally:
        grid.on_exchange = report
    if stages:
        report(merge_stages(stages))


def merge_stages(stages: list) -> object:
    """One `Exchange` for the stages of a SecAgg+ round."""
    by_node: dict[int, Message] = {}
    bytes_down: dict[int, int] = {}
    bytes_up: dict[int, int] = {}
    for stage in stages:
        for node, sent in stage.bytes_down.items():
            bytes_down[node] = bytes_down.get(node, 0) + sent
        for node, received in stage.received().items():
            bytes_up[node] = bytes_up.get(node, 0) + received
        for reply in stage.replies:
            node = reply.metadata.src_node_id
            legacy = reply.has_content() and "fitres.metrics" in reply.content
            if legacy:
                metrics = reply.content.config_records["fitres.metrics"]
                reply.content["metrics"] = MetricRecord(dict(metrics))
            if legacy or (reply.has_error() and node not in by_node):
                by_node[node] = reply
    return dataclasses.replace(
        stages[0], replies=list(by_node.values()), bytes_down=bytes_down, bytes_from=bytes_up
    )
