"""ServerApp: FedAvg over client updates, centralized evaluation, progress and outputs."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedtune.checkpoint import load_checkpoint, save_checkpoint
from fedtune.config import Scenario, scenario_from_run_config
from fedtune.data import federated_data, label_table, make_loader, server_eval_data, tokenize
from fedtune.model import (
    from_record,
    load_model,
    load_tokenizer,
    load_weights,
    to_record,
    trainable_weights,
)
from fedtune.reporting import Progress, RunRecorder, default_run_dir
from fedtune.secagg import SecureAggregation, secagg_bytes
from fedtune.strategies.factory import aggregate_client_metrics, build_strategy
from fedtune.strategies.privacy import privacy_spent
from fedtune.train import evaluate, pick_device


def payload_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (Flower's ArrayRecord.count_bytes), and of its
    SecAgg+ record (keys, key shares, masked update) if any."""
    content = message.content
    arrays = sum(record.count_bytes() for record in content.array_records.values())
    return arrays + secagg_bytes(content)


@dataclass
class Exchange:
    """One finished send-and-receive: what was sent, what came back."""

    kind: str
    server_round: int
    sent: int
    replies: list[Message]
    bytes_down: dict[int, int]
    """Bytes sent to each node."""
    bytes_from: dict[int, int] | None = field(default=None)
    """Bytes received from each node; default: the payloads of `replies`."""

    def received(self) -> dict[int, int]:
        """Bytes received from each node."""
        if self.bytes_from is not None:
            return self.bytes_from
        return {r.metadata.src_node_id: payload_bytes(r) for r in self.replies if r.has_content()}

    def failures(self) -> dict:
        """Sampled, answered, failed (error reply) and timed-out counts."""
        errors = sum(1 for r in self.replies if r.has_error())
        return {
            "sampled": self.sent,
            "replied": len(self.replies) - errors,
            "errors": errors,
            "timed_out": self.sent - len(self.replies),
        }


class ObservedGrid(Grid):
    """A Grid that reports each reply as it arrives (progress) and each finished
    exchange (per-client metrics, bytes); everything else is the wrapped Grid's."""

    def __init__(
        self, grid: Grid, progress: Progress, on_exchange: Callable[[Exchange], None]
    ) -> None:
        self.grid = grid
        self.progress = progress
        self.on_exchange = on_exchange
        self.partition_of: dict[int, int] = {}

    def identify(self, timeout: float) -> None:
        """Ask every node for its partition id (one query message each), so that nodes are
        listed, and so sampled, in partition order: simulation node ids are random per run,
        so only then does the seeded sampling pick the same clients in every run."""
        messages = [
            Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
            for node in self.grid.get_node_ids()
        ]
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            metrics = reply.content.metric_records.get("metrics", {}) if reply.has_content() else {}
            if "partition-id" in metrics:
                self.partition_of[reply.metadata.src_node_id] = int(metrics["partition-id"])

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):  # noqa: ANN201 - flwr's Run
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        unknown = len(self.partition_of)  # nodes that did not say: after the others
        return sorted(
            self.grid.get_node_ids(), key=lambda n: (self.partition_of.get(n, unknown), n)
        )

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
        config = messages[0].content.config_records.get("config", {})  # SecAgg+: group id
        server_round = int(config.get("server-round", messages[0].metadata.group_id or 0))
        bytes_down = {m.metadata.dst_node_id: payload_bytes(m) for m in messages}
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
        self.on_exchange(Exchange(kind, server_round, total, replies, bytes_down))
        return replies


def _client_metrics(reply: Message, bytes_down: dict[int, int], bytes_up: dict[int, int]) -> dict:
    """One client's line in metrics.jsonl: its metrics (or error) and its bytes each way."""
    node_id = reply.metadata.src_node_id
    node = {
        "node_id": node_id,
        "bytes_down": bytes_down.get(node_id, 0),
        "bytes_up": bytes_up.get(node_id, 0),
    }
    if reply.has_error():
        return {**node, "error": client_error(reply.error.reason)}
    return {**node, **dict(reply.content["metrics"])}


def client_error(reason: str) -> str:
    """The `[client N, round R: Error: message]` part of a Flower error reason, if any."""
    found = re.search(r"\[client .*?\]", reason, re.DOTALL)
    return found.group(0)[1:-1] if found else reason.strip().splitlines()[-1]


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
    def load(
        cls, scenario: Scenario, test: datasets.Dataset, label_names: tuple[str, ...]
    ) -> GlobalModel:
        tokenizer = load_tokenizer(scenario.model.name)
        model = load_model(scenario.model.name, label_names, scenario.seed, scenario.model.peft)
        tokens = tokenize(test, tokenizer, scenario.model.max_length)
        loader = make_loader(tokens, tokenizer, scenario.training.eval_batch_size)
        return cls(model, tokenizer, loader, label_names, pick_device())

    def evaluate(self) -> dict:
        """Metrics on the test split, with the seconds the evaluation took."""
        started = time.perf_counter()
        metrics = evaluate(self.model, self.test_loader, self.device, self.label_names)
        return {**metrics, "eval_seconds": time.perf_counter() - started}


def check_node_count(grid: Grid, num_clients: int) -> None:
    """Refuse a federation with more nodes than the scenario has clients (their partition
    ids would not exist); fewer nodes make Flower wait for `min_available_nodes`."""
    nodes = len(list(grid.get_node_ids()))
    if nodes > num_clients:
        raise ValueError(
            f"the federation has {nodes} nodes but partition.num_clients={num_clients}; "
            f"start it with num-supernodes={num_clients}"
        )


def run_server(
    grid: Grid, scenario: Scenario, run_dir: Path, quiet: bool = False, resume: bool = False
) -> dict:
    """Run the federation on `grid` (from the run's checkpoint when resuming) and write every
    output into `run_dir`. The round loop is Flower's `Strategy.start`, plus a checkpoint
    after every round."""
    seed_everything(scenario.seed)
    check_node_count(grid, scenario.partition.num_clients)
    test, label_names = server_eval_data(scenario)
    server = GlobalModel.load(scenario, test, label_names)
    fl = scenario.federation
    strategy = build_strategy(scenario, evaluate=scenario.data.val_size > 0)
    secagg = scenario.privacy.secagg.enabled
    secure = SecureAggregation(scenario, federated_data(scenario)) if secagg else None
    start = load_checkpoint(run_dir) if resume else None
    federated: dict[int, dict] = {}
    with (
        RunRecorder(run_dir, scenario, "federated", scenario.partition.num_clients) as recorder,
        Progress(fl.rounds, quiet=quiet) as progress,
    ):

        def on_exchange(exchange: Exchange) -> None:
            received = exchange.received()
            clients = [_client_metrics(r, exchange.bytes_down, received) for r in exchange.replies]
            failures = exchange.failures()
            bytes_down, bytes_up = sum(exchange.bytes_down.values()), sum(received.values())
            recorder.exchange(exchange.kind, clients, bytes_down, bytes_up, failures)
            for client in clients:
                if "error" in client:
                    progress.warn(client["error"])
            if failures["timed_out"]:
                progress.warn(
                    f"round {exchange.server_round}: {failures['timed_out']} client(s) missed "
                    f"the {exchange.kind} deadline (federation.round_timeout={fl.round_timeout}s)"
                )
            ok = [r.content for r in exchange.replies if not r.has_error()]
            if exchange.kind == "evaluate" and ok:
                federated[exchange.server_round] = dict(
                    aggregate_client_metrics(ok, "num-examples")
                )

        def end_round(server_round: int, weights: dict) -> None:
            load_weights(server.model, weights)
            metrics = server.evaluate()
            seconds = progress.round_done(server_round, metrics)
            recorder.round_done(
                server_round,
                metrics,
                seconds,
                federated.get(server_round),
                privacy_spent(strategy),
            )
            save_checkpoint(run_dir, server_round, weights, strategy, recorder.state())

        observed = ObservedGrid(grid, progress, on_exchange)
        observed.identify(fl.round_timeout)  # before any RNG state is saved or restored
        if start is None:
            weights, first = trainable_weights(server.model), 1
            if scenario.data.eval_source is None:  # else the clients' data is not here
                recorder.write_partition(label_table(federated_data(scenario)))
            end_round(0, weights)
        else:
            weights, first, strategy = start.weights, start.server_round + 1, start.strategy
            recorder.restore(start.recorder)
            start.restore_rng()
        # Deployed nodes hold only their own file: they learn the federation's labels here.
        labels = {"label-names": list(label_names)}
        for server_round in range(first, fl.rounds + 1):
            arrays = to_record(weights)
            if secure is not None:
                aggregated = secure.train_round(server_round, arrays, strategy, observed)
            else:
                replies = observed.send_and_receive(
                    strategy.configure_train(server_round, arrays, ConfigRecord(labels), observed),
                    timeout=fl.round_timeout,
                )
                aggregated, _ = strategy.aggregate_train(server_round, replies)
                recorder.reject(strategy.rejected)
                for rejection in strategy.rejected:
                    progress.warn(
                        f"client {rejection['client']}, round {server_round}: update rejected: "
                        f"{rejection['reason']}"
                    )
            if aggregated is not None:
                weights, arrays = from_record(aggregated), aggregated
            replies = observed.send_and_receive(
                strategy.configure_evaluate(server_round, arrays, ConfigRecord(labels), observed),
                timeout=fl.round_timeout,
            )
            strategy.aggregate_evaluate(server_round, replies)
            end_round(server_round, weights)
        load_weights(server.model, weights)
        if scenario.output.save_model:
            recorder.save_model(server.model, server.tokenizer)
        return recorder.finish()


def build_server_app(
    scenario: Scenario | None = None,
    run_dir: Path | None = None,
    quiet: bool = False,
    resume: bool = False,
) -> ServerApp:
    """A ServerApp bound to `scenario`, or reading it from the run config (`flwr run`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        active = scenario or scenario_from_run_config(context.run_config)
        run_server(grid, active, run_dir or default_run_dir(active), quiet, resume)

    return app


app = build_server_app()
"""The ServerApp for `flwr run .` (scenario from the run config)."""
