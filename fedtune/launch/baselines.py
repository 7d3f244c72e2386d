"""The baselines a federated run is measured against: centralized training on the union
of the clients' data with the same sample budget, and local-only training (each client alone
on its own data, with the budget the federation gives it)."""

from __future__ import annotations

import contextlib
import math
import time

import datasets
import torch
from torch.utils.data import DataLoader

from fedtune.config import Scenario, ScenarioError
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
from fedtune.modeling.metrics import CENTRAL_KEYS, TASK_KEYS
from fedtune.modeling.model import load_weights, trainable_weights
from fedtune.modeling.train import evaluate, train_steps
from fedtune.runs.cost import headline_metric
from fedtune.runs.recorder import Progress, RunRecorder

CONVERGED_ROUNDS = 3
"""`--converged`: at most this many times the scenario's rounds of training."""
CONVERGED_PATIENCE = 2
"""`--converged`: round-equivalents without a better validation score before it stops."""


def run_centralized(scenario: Scenario, quiet: bool = False, converged: bool = False) -> dict:
    """Train one model on the union of the clients' training splits, with the sample
    budget of the federated run, evaluating at every round-equivalent; with `converged`,
    then train again from the same start until it stops improving (`converged_run`)."""
    if converged and scenario.data.val_size == 0:
        raise ScenarioError("fedtune centralized --converged needs data.val_size > 0")
    check_inputs(scenario)
    run_dir = prepare_run_dir(scenario, "centralized")
    seed_everything(scenario.seed)
    fed = federated_data(scenario)
    cfg, fl, n = scenario.training, scenario.federation, scenario.partition.num_clients
    splits = [client_splits(fed, pid, scenario.data.val_size, scenario.seed) for pid in range(n)]
    union = datasets.concatenate_datasets([train for train, _ in splits])
    share = scenario.clients_per_round / n  # of the clients train each round
    per_round = max(1, math.ceil(share * cfg.local_epochs * len(union)))
    budget = per_round * fl.rounds
    server = GlobalModel.load(scenario, fed.test, fed.label_names)
    train = tokenize(union, server.tokenizer, scenario.model.max_length, scenario.data.tabular)
    train_loader = make_loader(
        train, server.tokenizer, cfg.batch_size, scenario.seed, cfg.group_by_length
    )
    initial = trainable_weights(server.model) if converged else None  # what it restarts from
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
        if converged:
            metric = headline_metric({"majority_class": recorder.majority_class})
            load_weights(server.model, initial)
            val_loader = _pooled_validation(scenario, [val for _, val in splits], server)
            recorder.extra["converged"] = converged_run(
                scenario, server, train_loader, val_loader, per_round, metric, progress
            )
        return recorder.finish()


def _pooled_validation(
    scenario: Scenario, splits: list[datasets.Dataset], server: GlobalModel
) -> DataLoader:
    """Every client's validation split, pooled: what the converged run stops on."""
    pooled = datasets.concatenate_datasets(splits)
    val = tokenize(pooled, server.tokenizer, scenario.model.max_length, scenario.data.tabular)
    return make_loader(val, server.tokenizer, scenario.training.eval_batch_size)


class _Stop(Exception):
    """Early stopping: no better validation score for CONVERGED_PATIENCE evaluations."""


def converged_run(
    scenario: Scenario,
    server: GlobalModel,
    train_loader: DataLoader,
    val_loader: DataLoader,
    per_round: int,
    metric: str,
    progress: Progress,
) -> dict:
    """The centralized reference trained to convergence: from the model's current weights,
    up to CONVERGED_ROUNDS x the rounds' budget, scored on the clients' pooled validation
    splits after every round-equivalent; it stops after CONVERGED_PATIENCE without a better
    `metric` and keeps the best weights, whose test metrics it returns."""
    max_rounds = CONVERGED_ROUNDS * scenario.federation.rounds
    best = {"round": 0, "value": evaluate(server.model, val_loader, server.device)[metric]}
    weights, evaluated = trainable_weights(server.model), 0

    def on_step(seen: int) -> None:
        nonlocal weights, evaluated
        while evaluated < max_rounds and seen >= per_round * (evaluated + 1):
            evaluated += 1
            value = evaluate(server.model, val_loader, server.device)[metric]
            server.model.train()
            progress.line(
                f"converged run: round-equivalent {evaluated}, validation {metric} {value:.4f}"
            )
            if value > best["value"]:
                best.update(round=evaluated, value=value)
                weights = trainable_weights(server.model)
            elif evaluated - best["round"] >= CONVERGED_PATIENCE:
                raise _Stop

    started = time.perf_counter()
    with contextlib.suppress(_Stop):
        train_steps(
            server.model,
            train_loader,
            scenario.training,
            server.device,
            per_round * max_rounds,
            on_step,
        )
    load_weights(server.model, weights)
    test = server.evaluate()
    return {
        "method": f"early stopping on the clients' pooled validation splits ({metric}, patience "
        f"{CONVERGED_PATIENCE} round-equivalents, at most {max_rounds})",
        "rounds": best["round"],
        "examples_seen": best["round"] * per_round,
        "rounds_trained": evaluated,
        "val": best["value"],
        "final": {k: test[k] for k in (*CENTRAL_KEYS, *TASK_KEYS) if k in test},
        "seconds": round(time.perf_counter() - started, 3),
    }


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
