"""ServerApp: FedAvg over client updates, centralized evaluation, progress and outputs."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedtune.config import Scenario, scenario_from_run_config
from fedtune.data import FederatedData, federated_data, label_table, make_loader, tokenize
from fedtune.model import (
    from_record,
    load_model,
    load_tokenizer,
    load_weights,
    to_record,
    trainable_weights,
)
from fedtune.reporting import CENTRAL_KEYS, Progress, RunRecorder, default_run_dir
from fedtune.strategies import aggregate_client_metrics, build_strategy
from fedtune.train import evaluate, pick_device


def payload_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (Flower's ArrayRecord.count_bytes)."""
    return sum(record.count_bytes() for record in message.content.array_records.values())


@dataclass
class Exchange:
    """One finished send-and-receive: what was sent, what came back."""

    kind: str
    server_round: int
    replies: list[Message]
    bytes_down: int
    bytes_up: int


class ObservedGrid(Grid):
    """A Grid that reports each reply as it arrives (progress) and each finished
    exchange (per-client metrics, bytes); everything else is the wrapped Grid's."""

    def __init__(
        self, grid: Grid, progress: Progress, on_exchange: Callable[[Exchange], None]
    ) -> None:
        self.grid = grid
        self.progress = progress
        self.on_exchange = on_exchange

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):  # noqa: ANN201 - flwr's Run
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.grid.get_node_ids())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        kind = messages[0].metadata.message_type
        server_round = int(messages[0].content["config"].get("server-round", 0))
        bytes_down = sum(payload_bytes(m) for m in messages)
        pending = set(self.push_messages(messages))
        total, replies = len(pending), []
        deadline = None if timeout is None else time.monotonic() + timeout
        self.progress.phase(server_round, kind, 0, total)
        while pending and (deadline is None or time.monotonic() < deadline):
            new = list(self.pull_messages(pending))
            if new:
                replies.extend(new)
                pending -= {m.metadata.reply_to_message_id for m in new}
                self.progress.phase(server_round, kind, len(replies), total)
            else:
                time.sleep(0.1)
        bytes_up = sum(payload_bytes(r) for r in replies if r.has_content())
        self.on_exchange(Exchange(kind, server_round, replies, bytes_down, bytes_up))
        return replies


def _client_metrics(reply: Message) -> dict:
    if reply.has_error():
        return {"node_id": reply.metadata.src_node_id, "error": reply.error.reason}
    return {"node_id": reply.metadata.src_node_id, **dict(reply.content["metrics"])}


def seed_everything(seed: int) -> None:
    """Seed Python (Flower's node sampling), numpy and torch in this process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class GlobalModel:
    """The model the server holds and the held-out test split it is evaluated on."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    test_loader: DataLoader
    label_names: tuple[str, ...]
    device: torch.device

    @classmethod
    def load(cls, scenario: Scenario, fed: FederatedData) -> GlobalModel:
        tokenizer = load_tokenizer(scenario.model.name)
        model = load_model(scenario.model.name, fed.label_names, scenario.seed)
        test = tokenize(fed.test, tokenizer, scenario.model.max_length)
        loader = make_loader(test, tokenizer, scenario.training.eval_batch_size)
        return cls(model, tokenizer, loader, fed.label_names, pick_device())

    def evaluate(self) -> dict:
        return evaluate(self.model, self.test_loader, self.device, self.label_names)


def check_node_count(grid: Grid, num_clients: int) -> None:
    """Refuse a federation with more nodes than the scenario has clients (their partition
    ids would not exist); fewer nodes make Flower wait for `min_available_nodes`."""
    nodes = len(list(grid.get_node_ids()))
    if nodes > num_clients:
        raise ValueError(
            f"the federation has {nodes} nodes but partition.num_clients={num_clients}; "
            f"start it with num-supernodes={num_clients}"
        )


def run_server(grid: Grid, scenario: Scenario, run_dir: Path, quiet: bool = False) -> dict:
    """Run the federation on `grid` and write every output into `run_dir`."""
    seed_everything(scenario.seed)
    check_node_count(grid, scenario.partition.num_clients)
    fed = federated_data(scenario)
    server = GlobalModel.load(scenario, fed)
    federated: dict[int, dict] = {}
    with (
        RunRecorder(run_dir, scenario, "federated", scenario.partition.num_clients) as recorder,
        Progress(scenario.federation.rounds, quiet=quiet) as progress,
    ):
        recorder.write_partition(label_table(fed))

        def on_exchange(exchange: Exchange) -> None:
            clients = [_client_metrics(r) for r in exchange.replies]
            recorder.exchange(exchange.kind, clients, exchange.bytes_down, exchange.bytes_up)
            ok = [r.content for r in exchange.replies if not r.has_error()]
            if exchange.kind == "evaluate" and ok:
                agg = aggregate_client_metrics(ok, "num-examples")
                federated[exchange.server_round] = dict(agg)

        def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            load_weights(server.model, from_record(arrays))
            metrics = server.evaluate()
            seconds = progress.round_done(server_round, metrics)
            recorder.round_done(server_round, metrics, seconds, federated.get(server_round))
            return MetricRecord({k: metrics[k] for k in CENTRAL_KEYS})

        strategy = build_strategy(scenario.federation, evaluate=scenario.data.val_size > 0)
        result = strategy.start(
            grid=ObservedGrid(grid, progress, on_exchange),
            initial_arrays=to_record(trainable_weights(server.model)),
            num_rounds=scenario.federation.rounds,
            timeout=scenario.federation.round_timeout,
            evaluate_fn=central_evaluate,
        )
        load_weights(server.model, from_record(result.arrays))
        if scenario.output.save_model:
            recorder.save_model(server.model, server.tokenizer)
        return recorder.finish()


def build_server_app(
    scenario: Scenario | None = None, run_dir: Path | None = None, quiet: bool = False
) -> ServerApp:
    """A ServerApp bound to `scenario`, or reading it from the run config (`flwr run`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        active = scenario or scenario_from_run_config(context.run_config)
        run_server(grid, active, run_dir or default_run_dir(active), quiet)

    return app


app = build_server_app()
"""The ServerApp for `flwr run .` (scenario from the run config)."""
