"""Runtimes: the federated simulation (Flower Simulation Engine, Ray) and the centralized
baseline on the union of the clients' data with the same sample budget."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import datasets
from flwr.common.logger import console_handler
from flwr.simulation import run_simulation

from fedtune.checkpoint import load_checkpoint
from fedtune.client import build_client_app
from fedtune.config import Scenario, ScenarioError
from fedtune.data import client_splits, federated_data, make_loader, tokenize
from fedtune.model import check_model
from fedtune.reporting import Progress, RunRecorder, default_run_dir
from fedtune.server import GlobalModel, build_server_app, seed_everything
from fedtune.train import train_steps


class _QuietConsole(logging.Filter):
    """Keeps Flower's deprecation notices and client tracebacks off the screen (fedtune
    prints one line per failed client; run.log keeps the full tracebacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(
            marker in text
            for marker in (
                "deprecated",
                "Traceback (most recent call last)",
                "ClientAppException",
                "An exception was raised when processing a message",
            )
        )


def prepare_run_dir(scenario: Scenario, mode: str) -> Path:
    """The run directory; refuse one that already holds a run."""
    run_dir = default_run_dir(scenario, mode)
    if (run_dir / "summary.json").exists():
        raise ScenarioError(f"output.dir {str(run_dir)!r} already holds a run; choose another")
    return run_dir


def check_inputs(scenario: Scenario) -> None:
    """Fail before any process starts: data loads, every shard is usable, model loads."""
    fed = federated_data(scenario)
    for pid in range(scenario.partition.num_clients):
        client_splits(fed, pid, scenario.data.val_size, scenario.seed)
    check_model(scenario.model.name)


def run_federated(
    scenario: Scenario, quiet: bool = False, verbose: bool = False, resume: bool = False
) -> dict:
    """Simulate the federation: one Ray actor process per concurrently training client.
    With `resume`, continue the run in `output.dir` from its last complete round."""
    check_inputs(scenario)
    if resume:
        run_dir = default_run_dir(scenario)
        load_checkpoint(run_dir)  # fail now, not in the server thread
    else:
        run_dir = prepare_run_dir(scenario, "")
    resources = scenario.federation.client_resources
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO)  # all of it into run.log ...
    console_handler.setLevel(logging.INFO if verbose else logging.WARNING)  # ... less on screen
    if not verbose:
        console_handler.addFilter(_QuietConsole())
    # Ray's notice about a future default; fedtune relies on today's (CPU-only clients
    # get no GPU when num_gpus is 0).
    warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")
    run_simulation(
        server_app=build_server_app(scenario, run_dir, quiet, resume),
        client_app=build_client_app(scenario),
        num_supernodes=scenario.partition.num_clients,
        backend_config={
            "client_resources": {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
            "init_args": {"logging_level": "WARNING", "log_to_driver": verbose},
        },
        verbose_logging=verbose,
    )
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(
            f"the simulation ended without writing {summary_path}; see the log above"
        )
    return json.loads(summary_path.read_text())


def run_centralized(scenario: Scenario, quiet: bool = False) -> dict:
    """Train one model on the union of the clients' training splits, with the sample
    budget of the federated run, evaluating at every round-equivalent."""
    check_inputs(scenario)
    run_dir = prepare_run_dir(scenario, "centralized")
    seed_everything(scenario.seed)
    fed = federated_data(scenario)
    cfg, fl, n = scenario.training, scenario.federation, scenario.partition.num_clients
    union = datasets.concatenate_datasets(
        [client_splits(fed, pid, scenario.data.val_size, scenario.seed)[0] for pid in range(n)]
    )
    share = scenario.clients_per_round / n  # of the clients train each round
    per_round = max(1, math.ceil(share * cfg.local_epochs * len(union)))
    budget = per_round * fl.rounds
    server = GlobalModel.load(scenario, fed.test, fed.label_names)
    train = tokenize(union, server.tokenizer, scenario.model.max_length)
    train_loader = make_loader(
        train, server.tokenizer, cfg.batch_size, scenario.seed, cfg.group_by_length
    )
    rounds_done = 0
    with (
        RunRecorder(run_dir, scenario, "centralized", n) as recorder,
        Progress(fl.rounds, quiet=quiet) as progress,
    ):

        def checkpoint(server_round: int) -> None:
            metrics = server.evaluate()
            recorder.round_done(server_round, metrics, progress.round_done(server_round, metrics))
            server.model.train()

        def on_step(seen: int) -> None:
            nonlocal rounds_done
            progress.update(rounds_done + 1, f"training: {seen}/{budget} examples")
            while rounds_done < fl.rounds and seen >= per_round * (rounds_done + 1):
                rounds_done += 1
                checkpoint(rounds_done)

        checkpoint(0)
        train_steps(server.model, train_loader, cfg, server.device, budget, on_step)
        if scenario.output.save_model:
            recorder.save_model(server.model, server.tokenizer)
        return recorder.finish()
