"""Secure aggregation with Flower's SecAgg+ (`privacy.secagg`), in fedtune's own round loop:
the server half (the client half, `secure_mod`, is `fedtune.federation.client.secagg`).

Flower 1.42 has SecAgg+ only in its legacy layer: `SecAggPlusWorkflow` on the server and
`secaggplus_mod` on the client, speaking `fitins`/`fitres` records.
`SecureAggregation.train_round` runs the four SecAgg+ stages (keys, key shares, masked
updates, unmasking) through fedtune's `ObservedGrid` and returns the new global weights; the
server only ever holds masked vectors and their unmasked weighted mean.
"""

from __future__ import annotations

import json
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune.config import Scenario
from fedtune.data.corpus import FederatedData, client_splits
from fedtune.federation.client.secagg import LISTS_KEY, NAMES_KEY
from fedtune.federation.exchange import Exchange, ObservedGrid, TrainOutcome
from fedtune.federation.strategies.factory import aggregate_client_metrics
from fedtune.records import from_record, to_record


class _SampledFit:
    """The legacy strategy `SecAggPlusWorkflow` calls: clients are sampled by fedtune's
    strategy (same sampling as without SecAgg+); the unmasked aggregate is kept."""

    def __init__(
        self, strategy: Strategy, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> None:
        self.strategy, self.arrays, self.config, self.grid = strategy, arrays, config, grid
        self.mean_update: list[np.ndarray] | None = None
        self.num_updates = 0

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: object
    ) -> list[tuple[GridClientProxy, FitIns]]:
        names = "\n".join(self.arrays.keys())
        messages = self.strategy.configure_train(server_round, self.arrays, self.config, self.grid)
        return [
            (
                GridClientProxy(msg.metadata.dst_node_id, self.grid, msg.metadata.run_id),
                FitIns(parameters, {**_scalars(msg.content["config"]), NAMES_KEY: names}),
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


def _scalars(config: ConfigRecord) -> dict:
    """A config as legacy scalars: lists as JSON strings, named under `LISTS_KEY`."""
    lists = [key for key, value in config.items() if isinstance(value, list)]
    plain = {key: json.dumps(value) if key in lists else value for key, value in config.items()}
    return {**plain, LISTS_KEY: json.dumps(lists)}


class SecureAggregation:
    """A train round through SecAgg+ (another implementation of `server.PlainTrain`)."""

    def __init__(
        self, scenario: Scenario, fed: FederatedData, strategy: Strategy, config: ConfigRecord
    ) -> None:
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
        self.strategy, self.config = strategy, config
        self.min_train_nodes = scenario.min_train_nodes

    def __call__(self, server_round: int, arrays: ArrayRecord, grid: ObservedGrid) -> TrainOutcome:
        """One SecAgg+ round: the global weights plus the weighted mean of the clients'
        updates, or None (global model kept) when the protocol halted or fewer than
        `min_train_nodes` updates were aggregated. The four protocol stages, which the grid
        sees as four train exchanges, are reported as one."""
        fit = _SampledFit(self.strategy, arrays, self.config, grid)
        context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=fit)  # type: ignore[arg-type]
        context.state[MAIN_PARAMS_RECORD] = arrays
        context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
        for node in grid.get_node_ids():  # only for the workflow's log line
            context.client_manager.register(GridClientProxy(node, grid, 0))
        self.workflow(grid, context)
        exchange = merge_stages(grid.take_exchanges(), server_round)
        ok = [
            RecordDict({"metrics": reply.content["metrics"]})
            for reply in exchange.replies
            if reply.has_content()
        ]
        metrics = dict(aggregate_client_metrics(ok, "num-examples")) if ok else {}
        if fit.mean_update is None or fit.num_updates < self.min_train_nodes:
            log(
                WARNING,
                "round %s: secure aggregation gave no update; global model kept",
                server_round,
            )
            return TrainOutcome(None, metrics, [], exchange)
        weights = from_record(arrays)
        new = {
            name: (glob + delta.reshape(glob.shape)).astype(glob.dtype)
            for (name, glob), delta in zip(weights.items(), fit.mean_update, strict=True)
        }
        return TrainOutcome(to_record(new), metrics, [], exchange)


def merge_stages(stages: list[Exchange], server_round: int) -> Exchange:
    """One `Exchange` for the stages of a SecAgg+ round: per client its masked-update reply
    (or its error) with its training metrics, and the bytes of all stages each way."""
    by_node: dict[int, Message] = {}
    bytes_down: dict[int, int] = {}
    bytes_up: dict[int, int] = {}
    for stage in stages:
        for node, sent in stage.bytes_down.items():
            bytes_down[node] = bytes_down.get(node, 0) + sent
        for node, received in stage.bytes_up.items():
            bytes_up[node] = bytes_up.get(node, 0) + received
        for reply in stage.replies:
            node = reply.metadata.src_node_id
            legacy = reply.has_content() and "fitres.metrics" in reply.content
            if legacy:
                metrics = reply.content.config_records["fitres.metrics"]
                reply.content["metrics"] = MetricRecord(dict(metrics))
            if legacy or (reply.has_error() and node not in by_node):
                by_node[node] = reply
    sent = stages[0].sent if stages else 0
    return Exchange("train", server_round, sent, list(by_node.values()), bytes_down, bytes_up)
