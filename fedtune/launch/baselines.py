"""The baselines a federated run is measured against: centralized training on the union
of the clients' data with the same sample budget, and local-only training (each client alone
on its own data, with the budget the federation gives it)."""

from __future__ import annotations

import math
import time

import datasets
import torch

from fedtune.config import Scenario
from fedtune.data.corpus import (
    FederatedData,
    client_splits,
    federated_data,
    label_table,
    make_loader,
    server_eval_data,
    tokenize,
)
from fedtune.federation.client.node import run_seed
from fedtune.federation.server.app import GlobalModel, seed_everything
from fedtune.launch.simulation import check_inputs, prepare_run_dir
from fedtune.modeling.model import load_weights, trainable_weights
from fedtune.modeling.train import evaluate, train_steps
from fedtune.runs.recorder import Progress, RunRecorder


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
    train = tokenize(union, server.tokenizer, scenario.model.max_length, scenario.data.tabular)
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


def run_local_only(scenario: Scenario, quiet: bool = False) -> dict:
    """Each client alone: a fresh copy of the federation's seeded initial model, trained on
    the client's own training split for the examples the federation has it train (rounds x
    local_epochs over its split, times the share of rounds it is sampled for), then
    evaluated on its own validation split and on the test split the federation's server
    evaluates on. No model is saved."""
    check_inputs(scenario)
    run_dir = prepare_run_dir(scenario, "local")
    seed_everything(scenario.seed)
    fed = federated_data(scenario)
    n = scenario.partition.num_clients
    server = GlobalModel.load(scenario, *server_eval_data(scenario))
    initial = trainable_weights(server.model)
    with (
        RunRecorder(run_dir, scenario, "local", n) as recorder,
        Progress(n, quiet=quiet) as progress,
    ):
        recorder.write_partition(label_table(fed))
        for pid in range(n):
            load_weights(server.model, initial)
            result = _train_alone(scenario, fed, server, pid, progress)
            recorder.client_done(result)
            val, test = result["val"], result["test"]
            progress.line(
                f"client {pid + 1}/{n} ({result['name']})  own validation accuracy "
                f"{val.get('accuracy', float('nan')):.4f}  test accuracy {test['accuracy']:.4f}  "
                f"macro-F1 {test['macro_f1']:.4f}  ({result['seconds']:.1f}s)"
            )
        return recorder.finish()


def _train_alone(
    scenario: Scenario, fed: FederatedData, server: GlobalModel, pid: int, progress: Progress
) -> dict:
    """Train `server.model` on client `pid`'s training split alone; its metrics line."""
    started = time.perf_counter()
    cfg, tokenizer = scenario.training, server.tokenizer
    train, val = (
        tokenize(split, tokenizer, scenario.model.max_length, scenario.data.tabular)
        for split in client_splits(fed, pid, scenario.data.val_size, scenario.seed)
    )
    share = scenario.clients_per_round / scenario.partition.num_clients
    budget = max(1, math.ceil(share * scenario.federation.rounds * cfg.local_epochs * len(train)))
    seed = run_seed(scenario.seed, 0, pid)  # as a federated client seeds its training
    torch.manual_seed(seed)
    loader = make_loader(train, tokenizer, cfg.batch_size, seed, cfg.group_by_length)
    progress.status.update(f"client {pid + 1}/{scenario.partition.num_clients}: training")
    trained = train_steps(server.model, loader, cfg, server.device, budget)
    val_loader = make_loader(val, tokenizer, cfg.eval_batch_size)
    return {
        "partition_id": pid,
        "name": fed.client_name(pid),
        "num_examples": len(train),
        "examples_trained": trained.num_examples,
        "train_loss": trained.mean_loss,
        "val": evaluate(server.model, val_loader, server.device),
        "test": server.evaluate(),
        "seconds": round(time.perf_counter() - started, 3),
    }
