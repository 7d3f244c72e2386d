"""Differential privacy (client-level and DP-SGD), update validation, Byzantine clients,
fairness metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import node_context
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from opacus.accountants import RDPAccountant

from fedtune.config import AttackConfig, ScenarioError, ValidationConfig
from fedtune.data.corpus import build_federated_data, client_splits, make_loader, tokenize
from fedtune.federation.attacks import malicious_clients, poison
from fedtune.federation.client.app import build_client_app
from fedtune.federation.strategies.deltas import DeltaUpdates, update_norm
from fedtune.federation.strategies.factory import build_strategy
from fedtune.federation.strategies.privacy import privacy_spent
from fedtune.modeling.metrics import fairness_metrics
from fedtune.modeling.model import load_model, load_tokenizer, load_weights, trainable_weights
from fedtune.records import from_record, to_record

SHAPES = {"w": (20, 10), "b": (10,)}


def _weights(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def _reply(update: dict, client: int, n: int = 10) -> Message:
    train = Message(RecordDict(), dst_node_id=client + 1, message_type="train")
    metrics = MetricRecord({"num-examples": n, "partition-id": client})
    return Message(RecordDict({"arrays": to_record(update), "metrics": metrics}), reply_to=train)


def _context(partition_id: int = 0, clients: int = 2) -> Context:
    return node_context(clients, partition_id)


def _train(app, glob: dict, context: Context, config: dict | None = None) -> Message:
    content = RecordDict(
        {"arrays": to_record(glob), "config": ConfigRecord({"server-round": 1, **(config or {})})}
    )
    return app(Message(content, dst_node_id=1, message_type="train"), context)


# ---- client-level DP ----


def _dp_strategy(make_scenario, clients: int = 4, **dp):
    scenario = make_scenario(
        partition={"num_clients": clients},
        federation={"min_available_nodes": clients, "min_train_nodes": clients},
        privacy={"dp": {"enabled": True, **dp}},
    )
    return build_strategy(scenario)


def test_server_side_clipping_bounds_every_update(make_scenario, task_identity) -> None:
    strategy = _dp_strategy(make_scenario, clipping_norm=0.5, noise_multiplier=1e-9)
    rng = np.random.default_rng(1)
    glob = _weights(rng)
    strategy._global = glob
    strategy.inner.current_arrays = to_record(glob)  # what configure_train records
    strategy.inner._pending_events[1] = None
    updates = [_weights(rng, scale) for scale in (0.001, 1.0, 3.0, 10.0)]
    replies = [_reply(u, i) for i, u in enumerate(updates)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    clipped = []
    for reply in replies:
        weights = from_record(reply.content["arrays"])
        delta = {k: weights[k] - glob[k] for k in glob}
        assert update_norm(delta) <= 0.5 + 1e-5
        clipped.append(delta)
    assert update_norm(clipped[0]) == pytest.approx(update_norm(updates[0]), rel=1e-4)
    mean = {k: np.mean([c[k] for c in clipped], axis=0) for k in glob}
    for key, value in from_record(aggregated).items():
        np.testing.assert_allclose(value - glob[key], mean[key], atol=1e-5)


def test_client_side_clipping_in_the_client_app(make_scenario, task_identity) -> None:
    scenario = make_scenario(privacy={"dp": {"enabled": True, "clipping": "client"}})
    fed = build_federated_data(scenario)
    glob = trainable_weights(load_model(scenario.model.name, fed.label_names, scenario.seed))
    reply = _train(build_client_app(scenario), glob, _context(), {"clipping_norm": 0.01})
    update = from_record(reply.content["arrays"])
    assert update_norm(update) == pytest.approx(0.01, rel=1e-4)  # training moved it further
    assert reply.content["metrics"]["norm_bit"] == 1


def test_noise_has_the_configured_scale(make_scenario, task_identity) -> None:
    strategy = _dp_strategy(make_scenario, clipping_norm=2.0, noise_multiplier=0.8)
    glob = {"w": np.zeros((400, 100), np.float32)}
    strategy._global = glob
    strategy.inner.current_arrays = to_record(glob)
    strategy.inner._pending_events[1] = None
    rng = np.random.default_rng(6)  # tiny updates (Flower's clipping divides by the norm)
    tiny = [{"w": (1e-7 * rng.normal(size=(400, 100))).astype(np.float32)} for _ in range(4)]
    aggregated, _ = strategy.aggregate_train(1, [_reply(u, i) for i, u in enumerate(tiny)])
    noise = from_record(aggregated)["w"]
    assert noise.std() == pytest.approx(0.8 * 2.0 / 4, rel=0.02)  # z * C / sampled clients
    assert abs(noise.mean()) < 0.01


def test_epsilon_grows_each_round_and_matches_opacus(make_scenario, task_identity) -> None:
    strategy = _dp_strategy(make_scenario, noise_multiplier=1.0, delta=1e-5)
    dp = strategy.inner
    glob = _weights(np.random.default_rng(2))
    epsilons = []
    for server_round in range(1, 11):
        strategy._global = glob
        dp.current_arrays = to_record(glob)
        dp._prepare_accounting(server_round, [None] * 4)  # configure_train's event, 4 sampled
        strategy.aggregate_train(server_round, [_reply(glob, i) for i in range(4)])
        epsilons.append(privacy_spent(strategy)["epsilon"])
    assert all(b > a for a, b in zip(epsilons, epsilons[1:], strict=False))
    reference = RDPAccountant()  # an independent implementation: opacus
    reference.history = [(1.0, 1.0, 10)]  # noise 1, every client each round, 10 rounds
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-3)
    assert epsilons[-1] == pytest.approx(19.05, abs=0.01)


def test_dp_settings_that_cannot_hold_are_rejected(make_scenario) -> None:
    with pytest.raises(ScenarioError, match="privacy.dp works with"):
        make_scenario(federation={"strategy": "krum"}, privacy={"dp": {"enabled": True}})
    with pytest.raises(ScenarioError, match="needs codec.kind 'none'"):
        make_scenario(
            codec={"kind": "int8"}, privacy={"dp": {"enabled": True, "clipping": "client"}}
        )
    with pytest.raises(ScenarioError, match="privacy.dp_sgd needs model.peft.method"):
        make_scenario(privacy={"dp_sgd": {"enabled": True}})
    for private in ({"dp": {"enabled": True}}, {"dp_sgd": {"enabled": True}}):
        with pytest.raises(ScenarioError, match="label counts without DP noise"):
            make_scenario(
                model={"peft": {"method": "lora"}},
                training={"class_weights": "federated"},
                privacy=private,
            )


# ---- DP-SGD ----


def test_dp_sgd_client_reports_growing_epsilon(make_scenario, task_identity) -> None:
    scenario = make_scenario(
        model={"peft": {"method": "lora"}},
        privacy={"dp_sgd": {"enabled": True, "noise_multiplier": 1.1, "delta": 1e-5}},
    )
    fed = build_federated_data(scenario)
    glob = trainable_weights(
        load_model(scenario.model.name, fed.label_names, scenario.seed, scenario.model.peft)
    )
    app, context = build_client_app(scenario), _context()
    first = _train(app, glob, context).content["metrics"]
    second = _train(app, glob, context).content["metrics"]  # same node, next round
    batches = int(np.ceil(first["num-examples"] / scenario.training.batch_size))
    reference = RDPAccountant()  # opacus: Poisson rate 1/batches, one epoch of batches
    reference.history = [(1.1, 1 / batches, batches)]
    assert first["dp_sgd_epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-6)
    assert second["dp_sgd_epsilon"] > first["dp_sgd_epsilon"]


# ---- update validation ----


def test_bad_updates_are_rejected_and_the_rest_aggregated(task_identity) -> None:
    rng = np.random.default_rng(3)
    glob = _weights(rng)
    good = [_weights(rng, 0.1) for _ in range(3)]
    nan = _weights(rng, 0.1)
    nan["w"][0, 0] = np.nan
    wrong_shape = {"w": np.zeros((10, 20), np.float32), "b": np.zeros(10, np.float32)}
    wrong_dtype = {k: v.astype(np.float64) for k, v in _weights(rng, 0.1).items()}
    huge = {k: 100 * v for k, v in good[0].items()}
    strategy = DeltaUpdates(FedAvg(min_train_nodes=2, min_available_nodes=2), min_train_nodes=2)
    strategy._global = glob
    updates = [*good, nan, wrong_shape, wrong_dtype, huge]
    aggregated, _ = strategy.aggregate_train(1, [_reply(u, i) for i, u in enumerate(updates)])
    reasons = {r["client"]: r["reason"] for r in strategy.rejected}
    assert set(reasons) == {3, 4, 5, 6}
    assert "NaN" in reasons[3]
    assert "cannot be decoded" in reasons[4] and "'w'" in reasons[4]
    assert "float64" in reasons[5]
    assert "median" in reasons[6]
    for key, value in from_record(aggregated).items():
        expected = glob[key] + np.mean([g[key] for g in good], axis=0)
        np.testing.assert_allclose(value, expected, atol=1e-6)


def test_validation_off_lets_outliers_through_but_not_misfits(task_identity) -> None:
    rng = np.random.default_rng(4)
    glob = _weights(rng)
    updates = [_weights(rng, 0.1) for _ in range(3)]
    updates.append({k: 100 * v for k, v in updates[0].items()})
    updates.append({"w": np.zeros((1,), np.float32)})
    strategy = DeltaUpdates(FedAvg(), 1, validation=ValidationConfig(enabled=False))
    strategy._global = glob
    aggregated, _ = strategy.aggregate_train(1, [_reply(u, i) for i, u in enumerate(updates)])
    assert [r["client"] for r in strategy.rejected] == [4]
    assert aggregated is not None


def test_too_few_accepted_updates_keep_the_global_model(task_identity) -> None:
    rng = np.random.default_rng(5)
    glob = _weights(rng)
    bad = {k: np.full(s, np.inf, np.float32) for k, s in SHAPES.items()}
    strategy = DeltaUpdates(FedAvg(min_train_nodes=2, min_available_nodes=2), min_train_nodes=2)
    strategy._global = glob
    aggregated, _ = strategy.aggregate_train(1, [_reply(_weights(rng), 0), _reply(bad, 1)])
    assert aggregated is None and len(strategy.rejected) == 1


# ---- Byzantine clients ----


def test_malicious_clients_are_a_seeded_fraction(make_scenario) -> None:
    scenario = make_scenario(
        partition={"num_clients": 10}, attack={"kind": "sign_flip", "fraction": 0.2}
    )
    chosen = malicious_clients(scenario)
    assert len(chosen) == 2 and chosen == malicious_clients(scenario)
    assert malicious_clients(make_scenario(partition={"num_clients": 10})) == set()
    update = {"w": np.ones(3, np.float32)}
    rng = np.random.default_rng(0)
    assert poison(update, AttackConfig(kind="sign_flip", scale=4), rng)["w"].tolist() == [-4] * 3
    assert poison(update, AttackConfig(kind="scale", scale=3), rng)["w"].tolist() == [3] * 3
    noisy = poison({"w": np.zeros(10_000, np.float32)}, AttackConfig(kind="gaussian_noise"), rng)
    assert noisy["w"].std() == pytest.approx(0.01, rel=0.05)


def test_label_flip_client_learns_the_wrong_labels(make_scenario, task_identity) -> None:
    honest = make_scenario(training={"local_epochs": 10})
    flipped = make_scenario(
        training={"local_epochs": 10}, attack={"kind": "label_flip", "fraction": 1.0}
    )
    fed = build_federated_data(honest)
    glob = trainable_weights(load_model(honest.model.name, fed.label_names, honest.seed))
    shard = client_splits(fed, 0, honest.data.val_size, honest.seed)[0]
    tokenizer = load_tokenizer(honest.model.name)
    labels = np.asarray(shard["label"])
    shifted = (labels + 1) % len(fed.label_names)
    for scenario, agrees_with in ((honest, labels), (flipped, shifted)):
        reply = _train(build_client_app(scenario), glob, _context())
        update = from_record(reply.content["arrays"])
        model = load_model(honest.model.name, fed.label_names, honest.seed)
        load_weights(model, {name: glob[name] + update[name] for name in update})
        loader = make_loader(tokenize(shard, tokenizer, 32), tokenizer, 64)
        with torch.no_grad():
            predicted = np.concatenate(
                [model(**batch).logits.argmax(-1).numpy() for batch in loader]
            )
        other = shifted if agrees_with is labels else labels
        assert np.mean(predicted == agrees_with) > 0.6 and np.mean(predicted == other) < 0.4


@pytest.mark.slow("trains four strategies over several rounds under attack (40 s in-process)")
def test_sign_flip_stalls_fedavg_not_robust_strategies(make_scenario, run_local) -> None:
    """5 clients, one (20%) sends -4x its update: FedAvg stalls at chance, Krum learns as
    fast as the clean run, FedMedian and FedTrimmedAvg learn more slowly (they also discard
    honest signal)."""

    def run(strategy: str, attack: str) -> dict:
        scenario = make_scenario(
            partition={"num_clients": 5},
            federation={"strategy": strategy, "rounds": 6, "min_available_nodes": 5},
            training={"local_epochs": 3},
            attack={"kind": attack, "fraction": 0.2, "scale": 4.0},
            data={"val_size": 0.0},
            output={"save_model": False, "tensorboard": False},
        )
        return run_local(scenario, f"{strategy}-{attack}")

    runs = {
        "clean": run("fedavg", "none"),
        "fedavg": run("fedavg", "sign_flip"),
        "fedmedian": run("fedmedian", "sign_flip"),
        "krum": run("krum", "sign_flip"),
        "fedtrimmedavg": run("fedtrimmedavg", "sign_flip"),
    }
    start = runs["clean"]["history"][0]["accuracy"]
    accuracy = {name: summary["final"]["accuracy"] for name, summary in runs.items()}
    print("byzantine:", start, accuracy)
    assert accuracy["clean"] > start + 0.3
    assert accuracy["fedavg"] < accuracy["clean"] - 0.3
    assert accuracy["krum"] > accuracy["clean"] - 0.1
    assert accuracy["fedtrimmedavg"] > accuracy["fedavg"] + 0.2
    assert accuracy["fedmedian"] > accuracy["fedavg"] + 0.2


def test_dp_run_writes_epsilon_and_fairness(make_scenario, run_local) -> None:
    scenario = make_scenario(
        privacy={"dp": {"enabled": True, "noise_multiplier": 0.5, "clipping_norm": 1.0}},
        data={"val_size": 0.2},
    )
    summary = run_local(scenario)
    lines = [
        json.loads(x) for x in Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
    ]
    epsilons = [line["epsilon"] for line in lines[1:]]
    assert epsilons[0] < epsilons[1] == summary["privacy"]["epsilon"]
    assert summary["privacy"]["delta"] == 1e-5
    fairness = summary["fairness"]
    assert set(fairness["per_class_f1"]) == {"negative", "neutral", "positive"}
    final = [c["eval_accuracy"] for c in lines[-1]["clients"]["evaluate"]]
    assert fairness["min_client_accuracy"] == min(final)
    assert fairness["max_client_accuracy"] == max(final)
    assert summary["rejected_updates"] == 0
    assert Path(summary["run_dir"], "figures", "epsilon.png").is_file()


def test_fairness_metrics_summarise_the_clients() -> None:
    accuracies = (0.5, 0.9, 0.7, 0.8, 0.6, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2)
    clients = [{"eval_accuracy": a} for a in accuracies]
    report = {"a": {"f1-score": 0.4}, "macro avg": {"f1-score": 0.5}, "accuracy": 0.7}
    central = {"per_class": report}
    fairness = fairness_metrics(clients, central)
    assert fairness["per_class_f1"] == {"a": 0.4}
    assert fairness["min_client_accuracy"] == 0.2 and fairness["max_client_accuracy"] == 0.9
    assert fairness["worst10_client_accuracy"] == pytest.approx((0.2 + 0.5) / 2)
    assert fairness["std_client_accuracy"] == pytest.approx(np.std(accuracies))


def test_dp_keeps_the_global_model_when_too_few_updates_are_accepted(
    make_scenario, run_local
) -> None:
    """Under client-level DP the strategy is Flower's DP wrapper: the too-few-updates guard
    still holds (min_train_nodes reaches DeltaUpdates itself, not through the wrapper). One
    of 4 clients sends a 1000x update, which validation rejects: 3 remain."""
    summaries = {}
    for needed in (4, 3):
        scenario = make_scenario(
            partition={"num_clients": 4},
            federation={"rounds": 2, "min_train_nodes": needed},
            attack={"kind": "scale", "fraction": 0.25, "scale": 1000.0},
            data={"val_size": 0.0},
            privacy={"dp": {"enabled": True, "adaptive": True, "noise_multiplier": 0.1}},
            output={"save_model": False, "tensorboard": False},
        )
        summaries[needed] = run_local(scenario, name=f"needs-{needed}")
    kept, aggregated = summaries[4], summaries[3]
    assert kept["rejected_updates"] == aggregated["rejected_updates"] == 2
    assert kept["rounds_aggregated"] == 0
    assert {h["loss"] for h in kept["history"]} == {kept["history"][0]["loss"]}
    assert aggregated["rounds_aggregated"] == 2
    assert aggregated["history"][-1]["loss"] != aggregated["history"][0]["loss"]
