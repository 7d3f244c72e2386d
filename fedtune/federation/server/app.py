"""ServerApp: FedAvg over client updates, centralized evaluation, progress and outputs."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy, strategy_utils
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedtune.config import Scenario, scenario_from_run_config
from fedtune.data.corpus import federated_data, label_table, make_loader, server_eval_data, tokenize
from fedtune.federation.exchange import Exchange, ObservedGrid, TrainOutcome
from fedtune.federation.server.checkpoint import load_checkpoint, save_checkpoint
from fedtune.federation.server.secagg import SecureAggregation
from fedtune.federation.statistics import LABEL_COUNTS, federation_label_counts
from fedtune.federation.strategies.factory import build_strategy
from fedtune.federation.strategies.privacy import privacy_spent
from fedtune.modeling.model import load_model, load_tokenizer, load_weights, shared_weights
from fedtune.modeling.train import evaluate, pick_device
from fedtune.records import from_record, to_record
from fedtune.runs.recorder import Progress, RunRecorder, default_run_dir

SAMPLING = random.Random()
"""The generator Flower's strategies sample nodes with (`strategy_utils.random.sample`), in
place of the module-level one: Ray's start-up draws from that one in the simulation's main
thread while the ServerApp runs, so which nodes a round drew depended on timing, and a
resumed run drew others."""


def seed_sampling(seed: int, server_round: int, phase: str) -> None:
    """Seed node sampling for one phase ("train", "evaluate") of one round: the draw
    depends on nothing but the scenario's seed, the round and the nodes."""
    strategy_utils.random = SAMPLING  # sample_nodes calls random.sample(...)
    SAMPLING.seed(f"{seed}:{server_round}:{phase}")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch in this process (node sampling: `seed_sampling`)."""
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
    groups: tuple | None = None
    """`data.group_column` of each test example, for ranking metrics."""

    @classmethod
    def load(
        cls, scenario: Scenario, test: datasets.Dataset, label_names: tuple[str, ...]
    ) -> GlobalModel:
        tokenizer = load_tokenizer(scenario.model.name)
        model = load_model(
            scenario.model.name,
            label_names,
            scenario.seed,
            scenario.model.peft,
            scenario.data.tabular,
        )
        tokens = tokenize(test, tokenizer, scenario.model.max_length, scenario.data.tabular)
        loader = make_loader(tokens, tokenizer, scenario.training.eval_batch_size)
        column = scenario.data.group_column
        groups = None if column is None else tuple(test[column])
        return cls(model, tokenizer, loader, label_names, pick_device(), groups)

    def evaluate(self) -> dict:
        """Metrics on the test split, with the seconds the evaluation took."""
        started = time.perf_counter()
        metrics = evaluate(self.model, self.test_loader, self.device, self.label_names, self.groups)
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


class PlainTrain:
    """A train round as Flower's strategies run it: configure, send, aggregate."""

    def __init__(self, strategy: Strategy, config: ConfigRecord, timeout: float) -> None:
        self.strategy, self.config, self.timeout = strategy, config, timeout

    def __call__(self, server_round: int, arrays: ArrayRecord, grid: ObservedGrid) -> TrainOutcome:
        messages = self.strategy.configure_train(server_round, arrays, self.config, grid)
        replies = grid.send_and_receive(messages, timeout=self.timeout)
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies)
        (exchange,) = grid.take_exchanges()
        return TrainOutcome(aggregated, dict(metrics or {}), self.strategy.rejected, exchange)


class FederatedRun:
    """One federated run on a grid: the initial evaluation (or the checkpoint), then per
    round `train_round`, `evaluate_round` and `end_round` (test-split evaluation, outputs,
    checkpoint), and `finish` (the model)."""

    def __init__(
        self, grid: Grid, scenario: Scenario, run_dir: Path, quiet: bool, resume: bool
    ) -> None:
        seed_everything(scenario.seed)
        check_node_count(grid, scenario.partition.num_clients)
        self.scenario, self.run_dir, self.quiet = scenario, run_dir, quiet
        self.checkpoint = load_checkpoint(run_dir, scenario) if resume else None
        test, label_names = server_eval_data(scenario)
        self.server = GlobalModel.load(scenario, test, label_names)
        self.strategy = build_strategy(scenario, evaluate=scenario.data.val_size > 0)
        # Deployed nodes hold only their own file: they learn the federation's labels here.
        self.config = ConfigRecord({"label-names": list(label_names)})
        timeout = scenario.federation.round_timeout
        if scenario.privacy.secagg.enabled:
            self.train = SecureAggregation(
                scenario, federated_data(scenario), self.strategy, self.config
            )
        else:
            self.train = PlainTrain(self.strategy, self.config, timeout)
        self.grid = grid
        self.weights = shared_weights(self.server.model, scenario.model.peft)

    def run(self) -> dict:
        """Every round to `federation.rounds`; the summary."""
        fl = self.scenario.federation
        with (
            RunRecorder(
                self.run_dir, self.scenario, "federated", self.scenario.partition.num_clients
            ) as self.recorder,
            Progress(fl.rounds, quiet=self.quiet) as self.progress,
        ):
            self.grid = ObservedGrid(self.grid, self.progress)
            self.grid.identify(
                self.scenario.partition.num_clients, fl.round_timeout
            )  # before any RNG state is saved or restored
            if self.scenario.training.federation_label_counts:
                counts = federation_label_counts(
                    self.grid, self.server.label_names, fl.round_timeout
                )
                self.grid.take_exchanges()  # a statistics query, not a round
                self.config[LABEL_COUNTS] = counts
            for server_round in range(self.start(), fl.rounds + 1):
                arrays = self.train_round(server_round)
                self.evaluate_round(server_round, arrays)
                self.end_round(server_round)
            return self.finish()

    def start(self) -> int:
        """The first round to run: 1 after evaluating the initial model, or the round after
        the checkpoint's, with its weights, strategy state, record and RNG states."""
        if self.checkpoint is None:
            if self.scenario.data.eval_source is None:  # else the clients' data is not here
                self.recorder.write_partition(label_table(federated_data(self.scenario)))
            self.end_round(0)
            return 1
        self.weights = self.checkpoint.weights
        self.recorder.restore(self.checkpoint.recorder)
        self.checkpoint.restore(self.strategy)
        return self.checkpoint.server_round + 1

    def train_round(self, server_round: int) -> ArrayRecord:
        """Train on the sampled clients; the new global weights' record."""
        arrays = to_record(self.weights)
        seed_sampling(self.scenario.seed, server_round, "train")
        outcome = self.train(server_round, arrays, self.grid)
        self.record(outcome.exchange)
        self.recorder.reject(outcome.rejected)
        for rejection in outcome.rejected:
            self.progress.warn(
                f"client {rejection['client']}, round {server_round}: update rejected: "
                f"{rejection['reason']}"
            )
        self.recorder.aggregated("train", outcome.metrics, new_weights=outcome.arrays is not None)
        if outcome.arrays is None:
            return arrays
        self.weights = from_record(outcome.arrays)
        return outcome.arrays

    def evaluate_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """Federated evaluation on the sampled clients' validation splits."""
        seed_sampling(self.scenario.seed, server_round, "evaluate")
        messages = self.strategy.configure_evaluate(server_round, arrays, self.config, self.grid)
        replies = self.grid.send_and_receive(
            messages, timeout=self.scenario.federation.round_timeout
        )
        aggregated = self.strategy.aggregate_evaluate(server_round, replies)
        for exchange in self.grid.take_exchanges():
            self.record(exchange)
        self.recorder.aggregated("evaluate", aggregated)

    def record(self, exchange: Exchange) -> None:
        """Per-client metrics, bytes and failures of one exchange; failures on screen."""
        failures = exchange.failures()
        bytes_down, bytes_up = sum(exchange.bytes_down.values()), sum(exchange.bytes_up.values())
        self.recorder.exchange(exchange.kind, exchange.clients, bytes_down, bytes_up, failures)
        for client in exchange.clients:
            if "error" in client:
                self.progress.warn(client["error"])
        if failures["timed_out"]:
            self.progress.warn(
                f"round {exchange.server_round}: {failures['timed_out']} client(s) missed the "
                f"{exchange.kind} deadline (federation.round_timeout="
                f"{self.scenario.federation.round_timeout}s)"
            )

    def end_round(self, server_round: int) -> None:
        """Evaluate the global model on the test split, write the round, checkpoint."""
        load_weights(self.server.model, self.weights)
        metrics = self.server.evaluate()
        seconds = self.progress.round_done(server_round, metrics)
        self.recorder.round_done(server_round, metrics, seconds, privacy_spent(self.strategy))
        save_checkpoint(
            self.run_dir,
            server_round,
            self.weights,
            self.strategy,
            self.recorder.state(),
            self.scenario,
        )

    def finish(self) -> dict:
        load_weights(self.server.model, self.weights)
        if self.scenario.output.save_model:
            self.recorder.save_model(self.server.model, self.server.tokenizer)
        return self.recorder.finish()


def run_server(
    grid: Grid, scenario: Scenario, run_dir: Path, quiet: bool = False, resume: bool = False
) -> dict:
    """Run the federation on `grid` (from the run's checkpoint when resuming) and write every
    output into `run_dir`; the summary."""
    return FederatedRun(grid, scenario, run_dir, quiet, resume).run()


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
