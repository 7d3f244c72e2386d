"""Heterogeneous LoRA ranks: each client trains its own rank; the server aggregates the exact
products of the factors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import LocalGrid
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian

from fedtune.config import ScenarioError
from fedtune.federation.server.app import FederatedRun
from fedtune.federation.strategies.deltas import DeltaUpdates
from fedtune.modeling.adapters.ranks import BASE, RankedLora, factor_names
from fedtune.records import from_record, to_record

MODULES = {"layer.0.query": (6, 5), "layer.1.value": (4, 6)}


def _global(rng: np.random.Generator) -> dict[str, np.ndarray]:
    weights = {f"{m}{BASE}": rng.normal(size=s).astype(np.float32) for m, s in MODULES.items()}
    return weights | {"head.weight": rng.normal(size=(3, 6)).astype(np.float32)}


def _factors(rng: np.random.Generator, rank: int) -> dict[str, np.ndarray]:
    update = {"head.weight": rng.normal(size=(3, 6)).astype(np.float32)}
    for module, (out_features, in_features) in MODULES.items():
        a, b = factor_names(f"{module}{BASE}")
        update[a] = rng.normal(size=(rank, in_features)).astype(np.float32)
        update[b] = rng.normal(size=(out_features, rank)).astype(np.float32)
    return update


def _reply(update: dict, client: int, n: int) -> Message:
    train = Message(RecordDict(), dst_node_id=client + 1, message_type="train")
    metrics = MetricRecord({"num-examples": n, "partition-id": client})
    return Message(RecordDict({"arrays": to_record(update), "metrics": metrics}), reply_to=train)


def test_the_aggregate_is_the_exact_weighted_mean_of_the_products(task_identity) -> None:
    rng = np.random.default_rng(0)
    ranks, alpha, examples = (2, 4, 8), 16.0, (10, 30, 60)
    glob = _global(rng)
    updates = [_factors(rng, r) for r in ranks]
    strategy = DeltaUpdates(FedAvg(), 1, ranked=RankedLora(ranks, alpha))
    strategy._global = glob
    replies = [_reply(u, i, n) for i, (u, n) in enumerate(zip(updates, examples, strict=True))]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert not strategy.rejected
    result, weights = from_record(aggregated), np.array(examples) / sum(examples)
    for name, value in glob.items():
        if name.endswith(BASE):
            a, b = factor_names(name)
            pairs = zip(ranks, updates, strict=True)
            deltas = [alpha / r * (u[b].astype(np.float64) @ u[a]) for r, u in pairs]
        else:
            deltas = [u[name] for u in updates]
        expected = value + sum(w * d for w, d in zip(weights, deltas, strict=True))
        np.testing.assert_allclose(result[name], expected, rtol=1e-5, atol=1e-5)


def test_a_reply_with_another_clients_rank_is_rejected(task_identity) -> None:
    rng = np.random.default_rng(1)
    glob = _global(rng)
    strategy = DeltaUpdates(FedMedian(), 1, ranked=RankedLora((2, 4), 16.0))
    strategy._global = glob
    replies = [_reply(_factors(rng, 2), 0, 10), _reply(_factors(rng, 2), 1, 10)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert [r["client"] for r in strategy.rejected] == [1]
    assert "cannot be decoded" in strategy.rejected[0]["reason"]
    assert aggregated is not None


COMBINATIONS = {
    "fedavg": {},
    "fedmedian, int8 without feedback": {
        "federation": {"strategy": "fedmedian"},
        "codec": {"kind": "int8", "error_feedback": False},
    },
    "server-side DP": {"privacy": {"dp": {"enabled": True, "noise_multiplier": 0.1}}},
}


@pytest.mark.parametrize("sections", COMBINATIONS.values(), ids=COMBINATIONS)
def test_clients_train_their_own_rank_and_only_factors_travel_up(
    make_scenario, task_identity, tmp_path: Path, sections: dict
) -> None:
    ranks = (2, 6)
    peft = {"method": "lora", "rank_per_client": list(ranks)}
    scenario = make_scenario(model={"peft": peft}, **sections)
    grid = LocalGrid(scenario)
    run = FederatedRun(grid, scenario, tmp_path / "run", quiet=True, resume=False)
    initial = dict(run.weights)
    dense = [name for name in initial if name.endswith(BASE)]
    assert dense and not any(".lora_" in name for name in initial)
    assert run.run()["rounds_aggregated"] == 2
    for name in dense:
        assert not np.allclose(run.weights[name], initial[name]), f"{name} never moved"
    replies = [m for m in grid.received if m.metadata.message_type == MessageType.TRAIN]
    assert len(replies) == 2 * 2
    for reply in replies:
        arrays = from_record(reply.content["arrays"])
        sent = {key.split("::")[0] for key in arrays}
        client = int(reply.content["metrics"]["partition-id"])
        assert not any(name.endswith(BASE) for name in sent)
        for name in dense:
            a, b = factor_names(name)
            assert {a, b} <= sent
            if "codec" not in sections:  # float32: the factors of the client's own rank
                assert arrays[a].shape[0] == arrays[b].shape[1] == ranks[client]


@pytest.mark.parametrize(
    ("sections", "says"),
    [
        ({"model": {"peft": {"method": "lora", "rank_per_client": [2, 4, 8]}}}, "3 ranks for 2"),
        ({"model": {"peft": {"method": "ffa_lora", "rank_per_client": [2, 4]}}}, "method"),
        (
            {"model": {"peft": {"method": "lora", "rank_per_client": [2, 4], "use_rslora": True}}},
            "use_rslora",
        ),
        (
            {
                "model": {"peft": {"method": "lora", "rank_per_client": [2, 4]}},
                "federation": {"strategy": "scaffold"},
            },
            "scaffold",
        ),
        ({"model": {"peft": {"method": "lora", "rank_per_client": [0, 4]}}}, "greater than"),
        (
            {
                "model": {"peft": {"method": "lora", "rank_per_client": [2, 4]}},
                "codec": {"kind": "int8"},
            },
            "error_feedback=false",
        ),
    ],
)
def test_ranks_that_do_not_fit_are_one_line(make_scenario, sections: dict, says: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        make_scenario(**sections)
    message = str(caught.value)
    assert "rank_per_client" in message and says in message and "\n" not in message
