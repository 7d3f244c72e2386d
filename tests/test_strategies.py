"""Every Flower strategy by name, over client updates; FedProx's proximal term in the client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedtune.config import ScenarioError
from fedtune.data.corpus import build_federated_data
from fedtune.federation.client.app import build_client_app
from fedtune.federation.strategies import STRATEGIES
from fedtune.modeling.model import load_model, trainable_weights
from fedtune.modeling.train import proximal_term
from fedtune.records import from_record, to_record


def _update(app, glob: dict, config: dict, scenario) -> dict[str, np.ndarray]:
    msg = Message(
        RecordDict(
            {"arrays": to_record(glob), "config": ConfigRecord({"server-round": 1, **config})}
        ),
        dst_node_id=1,
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": scenario.partition.num_clients},
        state=RecordDict(),
        run_config={},
    )
    return from_record(app(msg, context).content.array_records["arrays"])


def test_proximal_term_is_mu_half_squared_distance_from_the_start(make_scenario) -> None:
    scenario = make_scenario()
    model = load_model(scenario.model.name, ("a", "b", "c"), scenario.seed)
    term = proximal_term(model, mu=0.3)
    assert term().item() == 0.0
    shift = 0.0
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
                shift += 0.01**2 * p.numel()
    assert term().item() == pytest.approx(0.3 / 2 * shift, rel=1e-4)
    term().backward()  # its gradient, mu * (w - w_start), reaches every trainable weight
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.allclose(g, torch.full_like(g, 0.3 * 0.01)) for g in grads)


def test_fedprox_mu_sent_by_the_server_pulls_the_update_towards_global(
    make_scenario, task_identity
) -> None:
    scenario = make_scenario(training={"lr": 5e-3, "local_epochs": 2})
    fed = build_federated_data(scenario)
    glob = trainable_weights(load_model(scenario.model.name, fed.label_names, scenario.seed))
    app = build_client_app(scenario)
    fedavg = _update(app, glob, {}, scenario)
    strong = _update(app, glob, {"proximal-mu": 50.0}, scenario)

    def norm(update: dict) -> float:
        return float(np.sqrt(sum((u.astype(np.float64) ** 2).sum() for u in update.values())))

    assert norm(strong) < 0.9 * norm(fedavg), "the proximal term keeps the update smaller"


def test_strategy_params_the_strategy_refuses_are_one_line_before_anything_starts(
    make_scenario,
) -> None:
    with pytest.raises(ScenarioError, match=r"strategy_params: fedtrimmedavg refuses .*beta"):
        make_scenario(federation={"strategy": "fedtrimmedavg", "strategy_params": {"beta": 0.9}})


def _one_round(make_scenario, tmp_path: Path, name: str):
    """A one-round scenario of 4 clients for strategy `name`, writing to tmp_path/run."""
    params = {"fedprox": {"proximal_mu": 0.1}, "fedtrimmedavg": {"beta": 0.25}}.get(name, {})
    return make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={
            "rounds": 1,
            "min_available_nodes": 4,
            "min_train_nodes": 4,
            "strategy": name,
            "strategy_params": params,
        },
        data={"val_size": 0.0},
        output={"dir": str(tmp_path / "run"), "save_model": False, "tensorboard": False},
    )


def _check_round(run_dir: Path) -> None:
    """All 4 clients trained and replied, and the aggregate moved the global model."""
    line = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1]
    assert line["failures"]["train"] == {"sampled": 4, "replied": 4, "errors": 0, "timed_out": 0}
    history = json.loads((run_dir / "summary.json").read_text())["history"]
    assert history[1]["loss"] != history[0]["loss"], "the aggregate moved the global model"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_runs_a_round_in_the_server_loop(
    make_scenario, run_local, tmp_path: Path, name: str
) -> None:
    """Every registered strategy through the real round loop, its clients in-process."""
    run_local(_one_round(make_scenario, tmp_path, name), name="run")
    _check_round(tmp_path / "run")


@pytest.mark.slow("a Ray simulation in a fedtune process")
@pytest.mark.parametrize("name", ["fedavg", "scaffold"])
def test_a_strategy_runs_a_round_on_ray(make_scenario, tmp_path: Path, name: str) -> None:
    """The same through `fedtune run` on the Simulation Engine (Ray), in a subprocess:
    FedAvg, and SCAFFOLD, whose clients keep state between messages."""
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(_one_round(make_scenario, tmp_path, name).model_dump(mode="json"))
    )
    result = subprocess.run(
        [sys.executable, "-m", "fedtune.cli", "run", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _check_round(tmp_path / "run")
