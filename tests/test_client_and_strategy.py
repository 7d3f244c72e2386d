"""FedAvg over updates, the client's train/evaluate replies, and the payload audit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import node_context
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedtune.config import TrainingConfig
from fedtune.data.corpus import build_federated_data, client_splits, make_loader, tokenize
from fedtune.federation.client.app import build_client_app
from fedtune.federation.client.scaffold import CLIENT_CONTROL, CONTROL_DELTA, SERVER_CONTROL
from fedtune.federation.strategies.deltas import DeltaUpdates
from fedtune.federation.strategies.factory import aggregate_client_metrics
from fedtune.modeling.model import load_model, load_tokenizer, trainable_weights
from fedtune.modeling.train import train_steps
from fedtune.records import from_record, to_record

SHAPES = {"encoder.w": (4, 3), "encoder.b": (3,), "head": (2, 3)}


TRAIN_METRICS = {
    "num-examples",
    "train_loss",
    "partition-id",
    "train_seconds",
    "client_seconds",
    "startup_seconds",
    "setup_seconds",
}
"""Everything a train reply's MetricRecord may hold: counts, a loss and timings."""


def _train_message(weights: dict[str, np.ndarray], server_round: int = 1) -> Message:
    content = RecordDict(
        {"arrays": to_record(weights), "config": ConfigRecord({"server-round": server_round})}
    )
    return Message(content, dst_node_id=1, message_type="train")


def _reply(to: Message, weights: dict[str, np.ndarray], n: int) -> Message:
    metrics = MetricRecord({"num-examples": n})
    return Message(RecordDict({"arrays": to_record(weights), "metrics": metrics}), reply_to=to)


def test_fedavg_over_updates_equals_fedavg_over_weights(task_identity) -> None:
    rng = np.random.default_rng(0)
    glob = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    locals_ = [
        {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(3)
    ]
    counts = [10, 30, 60]
    msg = _train_message(glob)

    plain, _ = FedAvg().aggregate_train(
        1, [_reply(msg, w, n) for w, n in zip(locals_, counts, strict=True)]
    )

    wrapped = DeltaUpdates(FedAvg(), 1)
    wrapped._global = glob  # what configure_train records
    updates = [{k: w[k] - glob[k] for k in w} for w in locals_]
    via_updates, _ = wrapped.aggregate_train(
        1, [_reply(msg, u, n) for u, n in zip(updates, counts, strict=True)]
    )

    expected = {
        k: sum(w[k] * n for w, n in zip(locals_, counts, strict=True)) / sum(counts) for k in SHAPES
    }
    for key in SHAPES:
        np.testing.assert_allclose(
            from_record(via_updates)[key], from_record(plain)[key], atol=1e-6
        )
        np.testing.assert_allclose(from_record(via_updates)[key], expected[key], atol=1e-6)


def _context(scenario, partition_id: int = 0) -> Context:
    return node_context(scenario.partition.num_clients, partition_id)


def test_one_client_full_participation_equals_local_training(make_scenario, task_identity) -> None:
    scenario = make_scenario(
        partition={"kind": "iid", "num_clients": 1},
        federation={"rounds": 1, "min_available_nodes": 1},
    )
    fed = build_federated_data(scenario)
    model = load_model(scenario.model.name, fed.label_names, scenario.seed)
    glob = trainable_weights(model)

    app = build_client_app(scenario)
    msg = _train_message(glob, server_round=1)
    reply = app(msg, _context(scenario))
    strategy = DeltaUpdates(FedAvg(min_train_nodes=1, min_available_nodes=1), 1)
    strategy._global = glob
    federated, _ = strategy.aggregate_train(1, [reply])

    # The same local run by hand: same shard, seed, loader order and hyper-parameters.
    tokenizer = load_tokenizer(scenario.model.name)
    train, _ = client_splits(fed, 0, scenario.data.val_size, scenario.seed)
    local_model = load_model(scenario.model.name, fed.label_names, scenario.seed)
    run_seed = scenario.seed * 1_000_003 + 1 * 1_009 + 0
    torch.manual_seed(run_seed)
    grouped = scenario.training.group_by_length
    loader = make_loader(tokenize(train, tokenizer, 32), tokenizer, 16, run_seed, grouped)
    train_steps(local_model, loader, scenario.training, torch.device("cpu"))
    by_hand = trainable_weights(local_model)

    aggregated = from_record(federated)
    assert set(aggregated) == set(by_hand)
    for key, value in by_hand.items():
        np.testing.assert_allclose(aggregated[key], value, atol=1e-5)
    assert any(not np.allclose(by_hand[k], glob[k]) for k in glob), "training changed weights"


def test_train_reply_carries_only_updates_and_counts(make_scenario, task_identity) -> None:
    """Payload audit: nothing but parameter updates and scalar counts/metrics leaves a client."""
    scenario = make_scenario()
    fed = build_federated_data(scenario)
    model = load_model(scenario.model.name, fed.label_names, scenario.seed)
    glob = trainable_weights(model)
    shard_texts = set(client_splits(fed, 1, scenario.data.val_size, scenario.seed)[0]["text"])
    app = build_client_app(scenario)

    reply = app(_train_message(glob), _context(scenario, 1))
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics"}
    assert not content.config_records
    arrays = from_record(content.array_records["arrays"])
    assert set(arrays) == set(glob), "one update per trainable parameter, nothing else"
    for name, array in arrays.items():
        assert array.shape == glob[name].shape and array.dtype == np.float32
    metrics = dict(content.metric_records["metrics"])
    assert set(metrics) == TRAIN_METRICS
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["num-examples"] == len(shard_texts)

    evaluation = app(
        Message(
            RecordDict({"arrays": to_record(glob), "config": ConfigRecord({})}),
            dst_node_id=1,
            message_type="evaluate",
        ),
        _context(scenario, 1),
    )
    assert set(evaluation.content.keys()) == {"metrics"}
    query = app(Message(RecordDict(), dst_node_id=1, message_type="query"), _context(scenario, 1))
    assert dict(query.content.metric_records["metrics"]) == {"partition-id": 1}
    assert set(query.content.keys()) == {"metrics"}
    eval_metrics = dict(evaluation.content.metric_records["metrics"])
    assert set(eval_metrics) == {
        "num-examples",
        "partition-id",
        "client_seconds",
        "eval_loss",
        "eval_accuracy",
        "eval_macro_f1",
        "startup_seconds",
        "setup_seconds",
    }
    assert all(isinstance(v, (int, float)) for v in eval_metrics.values())


def test_scaffold_train_reply_carries_only_the_update_control_delta_and_counts(
    make_scenario, task_identity
) -> None:
    """Payload audit under SCAFFOLD: the reply adds the control-variate delta (one float32
    array per trainable parameter) and nothing else; the node's c_i stays in its state."""
    scenario = make_scenario(federation={"strategy": "scaffold"})
    fed = build_federated_data(scenario)
    glob = trainable_weights(load_model(scenario.model.name, fed.label_names, scenario.seed))
    msg = _train_message(glob)
    msg.content[SERVER_CONTROL] = to_record({k: np.zeros_like(v) for k, v in glob.items()})
    context = _context(scenario, 1)

    content = build_client_app(scenario)(msg, context).content
    assert set(content.keys()) == {"arrays", CONTROL_DELTA, "metrics"}
    assert not content.config_records
    for key in ("arrays", CONTROL_DELTA):
        arrays = from_record(content.array_records[key])
        assert set(arrays) == set(glob), f"{key}: one array per trainable parameter"
        for name, array in arrays.items():
            assert array.shape == glob[name].shape and array.dtype == np.float32
    metrics = dict(content.metric_records["metrics"])
    assert set(metrics) == TRAIN_METRICS
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    kept = from_record(context.state[CLIENT_CONTROL])  # c_i was 0: c_i+ is the delta
    for name, delta in from_record(content.array_records[CONTROL_DELTA]).items():
        np.testing.assert_array_equal(kept[name], delta)


@pytest.mark.parametrize("accum", [1, 2])
def test_train_steps_counts_examples_and_learns(make_scenario, accum: int) -> None:
    scenario = make_scenario()
    fed = build_federated_data(scenario)
    tokenizer = load_tokenizer(scenario.model.name)
    model = load_model(scenario.model.name, fed.label_names, scenario.seed)
    data = tokenize(fed.pool, tokenizer, 32)
    cfg = TrainingConfig(local_epochs=3, batch_size=16, lr=5e-3, grad_accum_steps=accum)
    first = train_steps(
        model, make_loader(data, tokenizer, 16, 0), cfg, torch.device("cpu"), max_examples=len(data)
    )
    later = train_steps(model, make_loader(data, tokenizer, 16, 1), cfg, torch.device("cpu"))
    assert first.num_examples == len(data)
    assert later.num_examples == 3 * len(data)
    assert later.mean_loss < first.mean_loss


def test_client_metrics_are_averaged_by_the_strategys_weighting_key() -> None:
    records = [
        RecordDict({"metrics": MetricRecord({"num-examples": n, "uniform-weight": 1, "loss": v})})
        for n, v in ((10, 1.0), (30, 2.0))
    ]
    by_examples = aggregate_client_metrics(records, "num-examples")
    assert by_examples["loss"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
    uniform = aggregate_client_metrics(records, "uniform-weight")  # client-level DP
    assert uniform["loss"] == pytest.approx(1.5) and uniform["num-examples"] == 20
