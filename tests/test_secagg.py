"""Secure aggregation (SecAgg+): the aggregate equals the plain weighted mean of the
updates, the server never receives an unmasked update, dropouts are tolerated, clients
refuse to bypass it, and a run through the `fedtune` command records it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import LocalGrid, fedtune, write_scenario
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import Key

from fedtune.config import ScenarioError
from fedtune.data.corpus import build_federated_data
from fedtune.federation.client.app import ClientError, build_client_app
from fedtune.federation.exchange import SECAGG_RECORD
from fedtune.federation.server.app import run_server
from fedtune.federation.server.checkpoint import load_checkpoint
from fedtune.modeling.model import load_model, trainable_weights
from fedtune.records import from_record, to_record

SECAGG = {"secagg": {"enabled": True, "num_shares": 3, "reconstruction_threshold": 2}}


def _scenario(make_scenario, tmp_path: Path, name: str, secagg: bool, rounds: int = 1):
    return make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={
            "rounds": rounds,
            "min_available_nodes": 4,
            "fraction_evaluate": 0.0,
            "min_evaluate_nodes": 0,
        },
        privacy={"secagg": {**SECAGG["secagg"], "enabled": secagg}},
        output={"dir": str(tmp_path / name), "save_model": False, "tensorboard": False},
    )


def _plain_round(make_scenario, tmp_path: Path) -> tuple[dict, dict[int, dict], dict[int, int]]:
    """The global weights and each node's update and example count, SecAgg+ off."""
    scenario = _scenario(make_scenario, tmp_path, "plain", secagg=False)
    grid = LocalGrid(scenario)
    run_server(grid, scenario, Path(scenario.output.dir), quiet=True)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    glob = from_record(train[0].content["arrays"])
    replies = [r for r in grid.received if r.metadata.message_type == "train"]
    updates = {r.metadata.src_node_id: from_record(r.content["arrays"]) for r in replies}
    counts = {r.metadata.src_node_id: int(r.content["metrics"]["num-examples"]) for r in replies}
    return glob, updates, counts


def _weighted_mean(updates: dict[int, dict], counts: dict[int, int], nodes) -> dict:
    total = sum(counts[n] for n in nodes)
    return {k: sum(updates[n][k] * counts[n] for n in nodes) / total for k in updates[nodes[0]]}


def _max_error(new: dict, glob: dict, expected: dict) -> float:
    return max(float(np.abs(new[k] - glob[k] - expected[k]).max()) for k in expected)


def _unmasked_vectors(reply: Message, updates: dict[int, dict]) -> list[str]:
    """What in a reply could be a client's update in the clear: a float array close to a
    tensor of one of the updates, or a SecAgg+ vector whose entries sit in the quantized
    range [0, 2**22] rather than spread over the 2**32 masking modulus."""
    if not reply.has_content():
        return []
    found = []
    tensors = [(n, k, t.ravel()) for n, u in updates.items() for k, t in u.items()]
    for record in reply.content.array_records.values():
        for key, array in from_record(record).items():
            values = np.asarray(array, dtype=np.float64).ravel()
            found += [
                f"{key} = {name} of node {node}"
                for node, name, tensor in tensors
                if values.size == tensor.size and np.allclose(values, tensor, atol=1e-4)
            ]
    blobs = reply.content.config_records.get(SECAGG_RECORD, {}).get(Key.MASKED_PARAMETERS, [])
    if blobs:  # the first array is the client's quantized weight
        vector = np.concatenate([bytes_to_ndarray(b).ravel() for b in blobs[1:]])
        if np.mean(vector <= 2**22) > 0.01:  # masked: ~1/1024 of the entries
            found.append("SecAgg+ vector in the quantized range")
    return found


def test_aggregate_equals_plain_mean_and_server_sees_only_masked_vectors(
    make_scenario, task_identity, tmp_path: Path
) -> None:
    glob, updates, counts = _plain_round(make_scenario, tmp_path)
    assert len(updates) == 4
    expected = _weighted_mean(updates, counts, sorted(updates))

    scenario = _scenario(make_scenario, tmp_path, "secure", secagg=True)
    grid = LocalGrid(scenario)
    run_server(grid, scenario, Path(scenario.output.dir), quiet=True)
    new = load_checkpoint(Path(scenario.output.dir)).weights

    error = _max_error(new, glob, expected)
    step = 2 * scenario.privacy.secagg.clipping_range / scenario.privacy.secagg.quantization_range
    print(f"SecAgg+ max |aggregate - plain weighted mean| = {error:.3g} (step {step:.3g})")
    assert error < 4 * step, "the unmasked aggregate is the plain weighted mean"
    assert max(float(np.abs(u).max()) for u in expected.values()) > 100 * step, "not trivial"

    # Positive control: the check finds the updates in the plain run's replies.
    plain_reply = Message(RecordDict({"arrays": to_record(updates[1])}), 1, "train")
    assert _unmasked_vectors(plain_reply, updates)
    train = [r for r in grid.received if r.metadata.message_type == "train"]
    masked = [r for r in train if Key.MASKED_PARAMETERS in r.content[SECAGG_RECORD]]
    assert len(masked) == 4, "one masked update per client"
    for reply in train:
        assert not _unmasked_vectors(reply, updates)
        assert all(r.count_bytes() == 0 for r in reply.content.array_records.values())
    # What the server learns per client besides the masked vector: scalar metrics only.
    metrics = dict(masked[0].content.config_records["fitres.metrics"])
    assert set(metrics) >= {"num-examples", "train_loss", "secagg_clipped"}
    assert metrics["secagg_clipped"] == 0.0

    line = json.loads((Path(scenario.output.dir) / "metrics.jsonl").read_text().splitlines()[1])
    clients = line["clients"]["train"]
    assert sorted(c["partition-id"] for c in clients) == [0, 1, 2, 3]
    assert all(c["bytes_up"] > 4 * sum(u.size for u in glob.values()) for c in clients)
    summary = json.loads((Path(scenario.output.dir) / "summary.json").read_text())
    assert summary["privacy"]["secagg"]["num_shares"] == 3


def test_one_dropout_is_tolerated(make_scenario, task_identity, tmp_path: Path) -> None:
    """A client fails after the key exchange: its masks are removed with its neighbours'
    shares and the aggregate is the weighted mean of the three others."""
    glob, updates, counts = _plain_round(make_scenario, tmp_path)
    scenario = _scenario(make_scenario, tmp_path, "dropout", secagg=True)
    grid = LocalGrid(scenario, drop=[2])
    run_server(grid, scenario, Path(scenario.output.dir), quiet=True)
    new = load_checkpoint(Path(scenario.output.dir)).weights
    expected = _weighted_mean(updates, counts, [1, 3, 4])
    assert _max_error(new, glob, expected) < 1e-5
    line = json.loads((Path(scenario.output.dir) / "metrics.jsonl").read_text().splitlines()[1])
    assert line["failures"]["train"] == {"sampled": 4, "replied": 3, "errors": 1, "timed_out": 0}


def test_client_refuses_an_unmasked_train_message(make_scenario, task_identity) -> None:
    scenario = make_scenario(
        partition={"num_clients": 3}, privacy=SECAGG, federation={"min_available_nodes": 3}
    )
    app = build_client_app(scenario)
    fed = build_federated_data(scenario)
    weights = trainable_weights(load_model(scenario.model.name, fed.label_names, scenario.seed))
    content = RecordDict({"arrays": to_record(weights), "config": ConfigRecord({})})
    context = Context(1, 1, {"partition-id": 0, "num-partitions": 3}, RecordDict(), {})
    with pytest.raises(ClientError, match="refusing to send an unmasked update"):
        app(Message(content, dst_node_id=1, message_type="train"), context)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"federation": {"strategy": "krum"}}, "needs federation.strategy fedavg"),
        ({"codec": {"kind": "int8"}}, "needs codec.kind none"),
        ({"partition": {"num_clients": 2}}, "num_shares=3 exceeds the 2 clients sampled"),
        (
            {"privacy": {"secagg": {"enabled": True, "num_shares": 4}}},
            "must be odd, or all the 5 clients",
        ),
        (
            {"privacy": {"secagg": {"enabled": True, "reconstruction_threshold": 3}}},
            "reconstruction_threshold=3 must be below privacy.secagg.num_shares=3",
        ),
        (
            {"privacy": {"secagg": {"enabled": True, "quantization_range": 2**31}}},
            "overflows the 2**32 masking modulus",
        ),
    ],
)
def test_invalid_secagg_settings_are_one_line_errors(make_scenario, sections, message) -> None:
    base = {"partition": {"num_clients": 5}, "privacy": SECAGG}
    for key, value in sections.items():
        base[key] = value
    with pytest.raises(ScenarioError) as err:
        make_scenario(federation={"min_available_nodes": 1, **base.pop("federation", {})}, **base)
    text = str(err.value)
    assert message in text and "\n" not in text, text


@pytest.mark.slow("a Ray simulation process with SecAgg+")
def test_secagg_run_through_the_command(make_scenario, tmp_path: Path) -> None:
    """The real simulation (Ray, one process per client): two SecAgg+ rounds complete."""
    scenario = make_scenario(
        partition={"num_clients": 3},
        federation={"min_available_nodes": 3},
        privacy=SECAGG,
        output={"save_model": False, "tensorboard": False},
    )
    result = fedtune("run", str(write_scenario(scenario, tmp_path / "secagg.yaml")), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(scenario.output.dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert summary["privacy"] == {
        "secagg": {
            "num_shares": 3,
            "reconstruction_threshold": 2,
            "clipping_range": 0.5,
            "quantization_range": 2**22,
        }
    }
    for line in (run_dir / "metrics.jsonl").read_text().splitlines()[1:]:
        clients = json.loads(line)["clients"]
        assert sorted(c["partition-id"] for c in clients["train"]) == [0, 1, 2]
        assert all(c["secagg_clipped"] < 0.01 for c in clients["train"])
        assert sorted(c["partition-id"] for c in clients["evaluate"]) == [0, 1, 2]
