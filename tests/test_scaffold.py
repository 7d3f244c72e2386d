"""SCAFFOLD: it removes client drift on a toy problem, its control variates evolve as the
paper says through the real server loop, survive an interruption exactly, and what it cannot
combine with is refused; the server optimizers' fine-tuning defaults."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LocalGrid
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg
from safetensors.numpy import load_file
from test_checkpoint import interrupted_and_clean_runs

from fedtune.config import ScenarioError, ValidationConfig
from fedtune.data.corpus import build_federated_data, make_loader, tokenize
from fedtune.federation.client import scaffold
from fedtune.federation.client.state import PREFIX
from fedtune.federation.server.app import run_server
from fedtune.federation.server.checkpoint import load_checkpoint
from fedtune.federation.strategies import scaffold as scaffold_server
from fedtune.federation.strategies.deltas import DeltaUpdates
from fedtune.federation.strategies.factory import SERVER_OPTIMIZER_DEFAULTS, build_strategy
from fedtune.modeling.model import load_model, load_tokenizer
from fedtune.modeling.train import mean_gradient
from fedtune.records import from_record

# ------------------------------------------------------------------ toy problem


class _Nodes:
    """What the strategies ask of a grid before sending: the node ids."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.ids


class _QuadraticClient:
    """f_i(w) = 1/2 sum_j h_ij (w_j - a_ij)^2, trained with plain SGD; with SCAFFOLD it uses
    fedtune's client functions on the message's and its own state's records."""

    def __init__(self, a: np.ndarray, h: np.ndarray, n: int, steps: int, lr: float) -> None:
        self.a, self.h, self.n, self.steps, self.lr = a, h, n, steps, lr
        self.state = RecordDict()

    def train(self, msg: Message) -> Message:
        x = msg.content["arrays"]["w"].numpy().astype(np.float64)
        controls = scaffold.client_controls(msg.content, self.state)
        correction = 0.0 if controls is None else controls[0]["w"] - controls[1]["w"]
        y = x.copy()
        for _ in range(self.steps):
            y -= self.lr * (self.h * (y - self.a) + correction)
        update = {"w": (y - x).astype(np.float32)}
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(update["w"])}),
                "metrics": MetricRecord({"num-examples": self.n}),
            }
        )
        gradient = {"w": (self.h * (x - self.a)).astype(np.float32)}  # option I: g_i(x)
        delta = scaffold.new_client_control(gradient, msg.content, self.state)
        if delta is not None:
            content[scaffold.CONTROL_DELTA] = delta
        return Message(content, reply_to=msg)


def _federate(strategy, clients: list[_QuadraticClient], rounds: int) -> np.ndarray:
    grid = _Nodes(len(clients))
    x = np.zeros_like(clients[0].a, dtype=np.float32)
    for server_round in range(1, rounds + 1):
        arrays = ArrayRecord({"w": Array(x)})
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = [clients[m.metadata.dst_node_id - 1].train(m) for m in messages]
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        x = aggregated["w"].numpy()
    return x.astype(np.float64)


@pytest.mark.parametrize(
    ("sampled", "sizes"),
    [(4, [10, 20, 30, 40]), (2, [25, 25, 25, 25])],
    ids=["full participation, unequal shards", "half of the clients each round"],
)
def test_scaffold_reaches_the_global_optimum_where_fedavg_drifts(
    task_identity, sampled: int, sizes: list[int]
) -> None:
    """Clients with different optima and curvatures, 20 local SGD steps: FedAvg settles at a
    point weighted by how far each client gets, SCAFFOLD at the optimum of the federation's
    objective, sum_i p_i f_i (p_i: example shares)."""
    rng = np.random.default_rng(0)
    a = rng.normal(scale=3.0, size=(4, 5))
    h = rng.uniform(0.5, 10.0, size=(4, 5))
    p = np.asarray(sizes, dtype=np.float64)[:, None] / sum(sizes)
    optimum = (p * h * a).sum(0) / (p * h).sum(0)

    def run(cls) -> np.ndarray:
        random.seed(0)  # Flower's node sampling
        clients = [_QuadraticClient(a[i], h[i], sizes[i], steps=20, lr=0.05) for i in range(4)]
        inner = cls(min_train_nodes=sampled, min_available_nodes=4, fraction_train=sampled / 4)
        # Validation off: near the optimum most updates are ~0, and one client's 1e-1 update
        # would be "10x the median" (a toy's artefact, not SCAFFOLD's).
        off = ValidationConfig(enabled=False)
        return _federate(DeltaUpdates(inner, sampled, validation=off), clients, rounds=300)

    fedavg_error = np.abs(run(FedAvg) - optimum).max()
    scaffold_error = np.abs(run(scaffold_server.Scaffold) - optimum).max()
    assert scaffold_error < 1e-3, scaffold_error
    assert fedavg_error > 0.3, f"FedAvg should drift here: {fedavg_error}"


def test_server_control_moves_by_the_participation_share_of_the_mean_delta() -> None:
    c = {"w": np.ones(3, dtype=np.float32)}
    deltas = [{"w": np.full(3, 2.0, np.float32)}, {"w": np.full(3, 4.0, np.float32)}]
    new = scaffold_server.aggregate_controls(c, deltas, [1.0, 3.0], num_clients=8)
    np.testing.assert_allclose(new["w"], 1.0 + 2 / 8 * (0.25 * 2.0 + 0.75 * 4.0))
    assert new["w"].dtype == np.float32
    assert scaffold_server.aggregate_controls(c, [], [], 8) is c
    x, averaged = {"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}
    assert scaffold_server.server_step(x, averaged, 1.0) is averaged
    np.testing.assert_allclose(scaffold_server.server_step(x, averaged, 0.5)["w"], 0.5)


def test_scaffold_term_gradient_is_c_minus_ci_and_c_i_is_the_mean_gradient(make_scenario) -> None:
    """The loss term's gradient reaches every trainable weight as c - c_i, and the client's
    new c_i (`mean_gradient`) is the mean of its batches' loss gradients at the weights it
    was given, which it leaves as they were."""
    scenario = make_scenario()
    model = load_model(scenario.model.name, ("a", "b", "c"), scenario.seed)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rng = np.random.default_rng(1)
    c = {n: rng.normal(size=p.shape).astype(np.float32) for n, p in named.items()}
    c_i = {n: rng.normal(size=p.shape).astype(np.float32) for n, p in named.items()}
    scaffold.scaffold_term(model, c, c_i)().backward()
    for name, p in named.items():
        np.testing.assert_allclose(p.grad.numpy(), c[name] - c_i[name], rtol=1e-6, err_msg=name)

    fed = build_federated_data(scenario)
    tokenizer = load_tokenizer(scenario.model.name)
    data = tokenize(fed.pool.select(range(50)), tokenizer, 32)

    def loader():  # noqa: ANN202 - a fresh one each time: the same batches in the same order
        return make_loader(data, tokenizer, 8, 0, True)

    model.train()
    torch.manual_seed(0)  # the same dropout masks below and in mean_gradient
    expected = {n: np.zeros(p.shape) for n, p in named.items()}
    for batch in list(loader())[:3]:
        model.zero_grad()
        model(**batch).loss.backward()
        for name, p in named.items():
            expected[name] += p.grad.numpy() / 3
    before = {n: p.detach().clone() for n, p in named.items()}
    torch.manual_seed(0)
    got = mean_gradient(model, loader(), scenario.training, torch.device("cpu"), max_batches=3)
    assert set(got) == set(named)
    for name, p in named.items():
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
        assert torch.equal(p.detach(), before[name]) and p.grad is None


# ------------------------------------------------------------------ the real server loop


def _server_control(run_dir: Path) -> dict[str, np.ndarray]:
    """`c` as checkpointed: the inner strategy's public `control`."""
    arrays = load_checkpoint(run_dir).state_arrays
    key = ".inner.control/"
    return {k.removeprefix(key): v for k, v in arrays.items() if k.startswith(key)}


def _node_controls(run_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    """Each node's `c_i` in its latest state file on disk, by partition id."""
    found = {}
    for node in sorted((run_dir / "nodes").iterdir()):
        files = sorted(
            (node / "state").glob("round-*.safetensors"), key=lambda f: int(f.stem.split("-")[1])
        )
        stored = load_file(str(files[-1]))
        prefix = f"{scaffold.CLIENT_CONTROL}\n"
        found[int(node.name.split("-")[1])] = {
            k.removeprefix(prefix): v for k, v in stored.items() if k.startswith(prefix)
        }
    return found


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_control_variates_evolve_through_the_server_loop(
    make_scenario, task_identity, tmp_path: Path, codec: str
) -> None:
    """3 rounds of 2 clients: every train message carries the current c, every reply its
    client's delta; c moves by their example-weighted mean each round and stays the weighted
    mean of the nodes' c_i (full participation). The codec and validation see the update
    alone; federated evaluation carries no control variate."""
    assert scaffold.CLIENT_CONTROL.startswith(PREFIX), "node_state persists it"
    run_dir = tmp_path / "run"
    scenario = make_scenario(
        federation={"strategy": "scaffold", "rounds": 3},
        codec={"kind": codec},
        output={"dir": str(run_dir), "save_model": False, "tensorboard": False},
    )
    grid = LocalGrid(scenario)
    summary = run_server(grid, scenario, run_dir, quiet=True)
    assert summary["rounds_aggregated"] == 3

    sent = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert len(sent) == 6  # in round order; the config record is shared, so not by it
    controls = {  # round -> c as sent in that round, the same to both clients
        r: from_record(sent[2 * (r - 1)].content[scaffold.SERVER_CONTROL]) for r in (1, 2, 3)
    }
    for r in (1, 2, 3):
        second = from_record(sent[2 * r - 1].content[scaffold.SERVER_CONTROL])
        assert all(np.array_equal(second[k], v) for k, v in controls[r].items())
    assert all(not v.any() for v in controls[1].values()), "c starts at 0"
    controls[4] = _server_control(run_dir)
    for message in grid.sent:
        if message.metadata.message_type == MessageType.EVALUATE:
            assert scaffold.SERVER_CONTROL not in message.content

    replies = [r for r in grid.received if r.metadata.message_type == MessageType.TRAIN]
    assert len(replies) == 6
    for server_round in (1, 2, 3):
        these = replies[2 * (server_round - 1) : 2 * server_round]  # as they arrived
        counts = [float(r.content["metrics"]["num-examples"]) for r in these]
        deltas = [from_record(r.content[scaffold.CONTROL_DELTA]) for r in these]
        for name, before in controls[server_round].items():
            mean = sum(n * d[name] for n, d in zip(counts, deltas, strict=True)) / sum(counts)
            np.testing.assert_allclose(controls[server_round + 1][name], before + mean, atol=1e-5)
    moved = [
        max(np.abs(controls[r + 1][k] - controls[r][k]).max() for k in controls[r])
        for r in (1, 2, 3)
    ]
    assert all(m > 0 for m in moved), f"c changes every round: {moved}"

    nodes = _node_controls(run_dir)
    weights = {
        int(r.content["metrics"]["partition-id"]): float(r.content["metrics"]["num-examples"])
        for r in replies
    }
    total = sum(weights.values())
    for name, value in controls[4].items():
        mean = sum(weights[pid] / total * nodes[pid][name] for pid in nodes)
        np.testing.assert_allclose(value, mean, atol=1e-5, err_msg=name)
    assert all(scaffold.CLIENT_CONTROL in grid.contexts[pid + 1].state for pid in nodes)
    assert nodes[0].keys() == controls[4].keys()
    assert any(np.abs(nodes[0][k] - nodes[1][k]).max() > 0 for k in nodes[0]), "c_i differ"


def test_control_variates_survive_an_interruption_exactly(
    make_scenario, task_identity, tmp_path: Path
) -> None:
    """Half of 4 clients train each round; the run is stopped after round 3's training and
    resumed by a fresh server and fresh nodes: c and every node's c_i end bit for bit as in
    an uninterrupted run."""
    base = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"strategy": "scaffold", "rounds": 4, "fraction_train": 0.5},
        data={"val_size": 0.0},
        output={"save_model": False, "tensorboard": False},
    )
    interrupted_and_clean_runs(base, tmp_path)

    expected, resumed = _server_control(tmp_path / "clean"), _server_control(tmp_path / "killed")
    assert expected.keys() == resumed.keys() and expected
    assert any(v.any() for v in expected.values())
    for name, value in expected.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    expected_nodes = _node_controls(tmp_path / "clean")
    resumed_nodes = _node_controls(tmp_path / "killed")
    assert expected_nodes.keys() == resumed_nodes.keys() == {0, 1, 2, 3}
    for pid, controls in expected_nodes.items():
        assert controls, f"node {pid} holds no c_i"
        for name, value in controls.items():
            np.testing.assert_array_equal(resumed_nodes[pid][name], value, err_msg=name)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"privacy": {"dp_sgd": {"enabled": True}}, "model": {"peft": {"method": "lora"}}},
            "privacy.dp_sgd does not combine with scaffold",
        ),
        ({"privacy": {"dp": {"enabled": True}}}, "privacy.dp works with federation.strategy"),
        ({"privacy": {"secagg": {"enabled": True}}}, "privacy.secagg needs federation.strategy"),
        ({"federation": {"strategy_params": {"eta_g": 0.0}}}, "eta_g=0.0 must be positive"),
        ({"federation": {"strategy_params": {"mu": 1.0}}}, "mu: not a parameter of scaffold"),
    ],
    ids=["dp_sgd", "client-level dp", "secagg", "eta_g 0", "unknown parameter"],
)
def test_scaffold_refuses_what_it_cannot_combine_with(
    make_scenario, sections: dict, message: str
) -> None:
    federation = {"strategy": "scaffold", "rounds": 1, **sections.pop("federation", {})}
    with pytest.raises(ScenarioError, match=message) as err:
        make_scenario(federation=federation, **sections)
    assert len(str(err.value).splitlines()) == 1


def test_server_optimizer_defaults_suit_fine_tuning_and_params_override_them(
    make_scenario,
) -> None:
    for name, defaults in SERVER_OPTIMIZER_DEFAULTS.items():
        inner = build_strategy(make_scenario(federation={"strategy": name})).inner
        for key, value in defaults.items():
            assert getattr(inner, key) == value, (name, key)
        if hasattr(inner, "eta_l"):
            assert inner.eta_l == make_scenario().training.lr
    assert SERVER_OPTIMIZER_DEFAULTS["fedadam"]["eta"] <= 1e-2, "Flower's 0.1 collapses"
    overridden = make_scenario(federation={"strategy": "fedadam", "strategy_params": {"eta": 0.05}})
    assert build_strategy(overridden).inner.eta == 0.05
    assert build_strategy(overridden).inner.tau == SERVER_OPTIMIZER_DEFAULTS["fedadam"]["tau"]
    assert build_strategy(make_scenario(federation={"strategy": "scaffold"})).inner.eta_g == 1.0
