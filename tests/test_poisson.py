"""`federation.sampling: poisson`: each client takes part independently each round, and the
DP accountant credits that subsampling (equal to opacus' for the same rate, noise, rounds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import LocalGrid
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from opacus.accountants import RDPAccountant

from fedtune.federation.server.app import run_server
from fedtune.federation.strategies.poisson import PoissonSampling, poisson_sample
from fedtune.records import from_record, to_record


def test_each_node_is_drawn_independently_and_reproducibly() -> None:
    nodes = list(range(100, 300))
    rounds = [poisson_sample(nodes, 0.1, seed=7, server_round=r) for r in range(1, 201)]
    assert rounds[0] == poisson_sample(nodes, 0.1, seed=7, server_round=1)  # a resume draws it
    assert rounds[0] != poisson_sample(nodes, 0.1, seed=8, server_round=1)
    sizes = [len(r) for r in rounds]
    assert np.mean(sizes) == pytest.approx(20, abs=1.0)  # rate x nodes on average
    assert len(set(sizes)) > 5, "the count varies from round to round"
    share = np.mean([[node in r for node in nodes] for r in rounds], axis=0)
    assert share.min() > 0.0 and share.max() < 0.25  # every node about 10% of the time


def _reply(weights: dict, client: int) -> Message:
    train = Message(RecordDict(), dst_node_id=client + 1, message_type=MessageType.TRAIN)
    metrics = MetricRecord({"num-examples": 1, "partition-id": client})
    return Message(RecordDict({"arrays": to_record(weights), "metrics": metrics}), reply_to=train)


def test_under_dp_the_aggregate_is_the_sum_over_the_expected_count(task_identity) -> None:
    glob = {"w": np.zeros(3, np.float32)}
    strategy = PoissonSampling(FedAvg(), 0.5, 0, 1, expected=4, fixed_denominator=True)
    strategy._global = glob  # what configure_train records
    replies = [_reply({"w": np.full(3, v, np.float32)}, i) for i, v in enumerate((1.0, 3.0))]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(from_record(arrays)["w"], (1.0 + 3.0) / 4)  # not their mean, 2
    plain = PoissonSampling(FedAvg(), 0.5, 0, 1, expected=4)
    plain._global = glob
    np.testing.assert_allclose(from_record(plain.aggregate_train(1, replies)[0])["w"], 2.0)
    assert isinstance(arrays, ArrayRecord)


def test_a_poisson_dp_run_trains_the_drawn_clients_and_credits_the_sampling(
    make_scenario, task_identity, tmp_path: Path
) -> None:
    scenario = make_scenario(
        partition={"kind": "iid", "num_clients": 8},
        federation={"rounds": 4, "fraction_train": 0.25, "sampling": "poisson"},
        privacy={"dp": {"enabled": True, "noise_multiplier": 1.0, "clipping_norm": 1.0}},
        data={"val_size": 0.0},
        output={"save_model": False, "tensorboard": False},
    )
    trained: dict[int, set[int]] = {}

    class RecordingGrid(LocalGrid):
        def push_messages(self, messages):  # noqa: ANN001, ANN202
            messages = list(messages)
            for msg in messages:  # the round as sent (the config record is reused later)
                if msg.metadata.message_type == MessageType.TRAIN:
                    server_round = int(msg.content["config"]["server-round"])
                    trained.setdefault(server_round, set()).add(msg.metadata.dst_node_id)
            return super().push_messages(messages)

    grid = RecordingGrid(scenario)
    summary = run_server(grid, scenario, tmp_path / "run", quiet=True)
    nodes = sorted(grid.contexts)  # node i + 1 holds partition i: partition order
    for server_round in range(1, 5):
        expected = set(poisson_sample(nodes, 2 / 8, scenario.seed, server_round))
        assert trained.get(server_round, set()) == expected, server_round
    assert len({frozenset(s) for s in trained.values()}) > 1, "a new draw each round"
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    epsilons = [line["epsilon"] for line in lines if line.get("round", 0) >= 1]
    aggregated = summary["rounds_aggregated"]
    assert aggregated >= 1 and all(b >= a for a, b in zip(epsilons, epsilons[1:], strict=False))
    reference = RDPAccountant()  # opacus, Poisson rate 2/8, noise 1, one step per round
    reference.history = [(1.0, 2 / 8, aggregated)]
    assert summary["privacy"]["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-3)
    no_credit = RDPAccountant()
    no_credit.history = [(1.0, 1.0, aggregated)]
    assert summary["privacy"]["epsilon"] < 0.5 * no_credit.get_epsilon(1e-5)
