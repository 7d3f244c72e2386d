"""Checkpoints hold data only (safetensors + JSON), refuse what they did not write, and an
interrupted run resumes to the same weights for every kind of server and node state."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, LocalGrid

from fedtune.cli import main
from fedtune.federation.server.app import run_server
from fedtune.runs.checkpoint import CheckpointError, load_checkpoint

PACKAGE = ROOT / "fedtune"


class InterruptedGrid(LocalGrid):
    """Stops the server (as a kill would) right after the clients trained round `at`: they
    have saved their state for it, the server has not checkpointed it."""

    def __init__(self, scenario, at: int) -> None:
        super().__init__(scenario)
        self.at = at

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        config = messages[0].content.config_records.get("config", {}) if messages else {}
        if messages[0].metadata.message_type == "train" and config.get("server-round") == self.at:
            raise KeyboardInterrupt
        return ids


def _in(scenario, run_dir: Path):
    """The scenario writing to `run_dir` (nodes keep their state under it)."""
    return scenario.model_copy(
        update={"output": scenario.output.model_copy(update={"dir": str(run_dir)})}
    )


def interrupted_and_clean_runs(base, tmp_path: Path) -> None:
    """`base` run uninterrupted into `tmp_path/clean`, and into `tmp_path/killed` stopped
    after round 3's training, then resumed by a fresh server and fresh nodes."""
    clean = _in(base, tmp_path / "clean")
    run_server(LocalGrid(clean), clean, tmp_path / "clean", quiet=True)
    killed = _in(base, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_server(InterruptedGrid(killed, at=3), killed, tmp_path / "killed", quiet=True)
    assert load_checkpoint(tmp_path / "killed").server_round == 2
    run_server(LocalGrid(killed), killed, tmp_path / "killed", quiet=True, resume=True)


CASES = {
    "fedavg": {},
    "fedadam": {"federation": {"strategy": "fedadam", "strategy_params": {"eta": 0.01}}},
    "client-level DP": {"privacy": {"dp": {"enabled": True, "noise_multiplier": 0.5}}},
    "client-level DP, Poisson sampling": {
        "federation": {"sampling": "poisson"},
        "privacy": {"dp": {"enabled": True, "noise_multiplier": 0.5}},
    },
    "top-k codec with error feedback": {"codec": {"kind": "topk", "topk_fraction": 0.1}},
    "scaffold": {"federation": {"strategy": "scaffold"}},
    "fedavgm (server momentum by default)": {"federation": {"strategy": "fedavgm"}},
}


@pytest.mark.parametrize("sections", CASES.values(), ids=CASES.keys())
def test_interrupted_run_resumes_to_the_same_weights(
    make_scenario, task_identity, tmp_path: Path, sections: dict
) -> None:
    """Half of 4 clients train each round; the run is stopped after round 3's training and
    resumed by a fresh server and fresh nodes (as a new process would be)."""
    base = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"rounds": 4, "fraction_train": 0.5, **sections.get("federation", {})},
        data={"val_size": 0.0},
        output={"save_model": False, "tensorboard": False},
        **{k: v for k, v in sections.items() if k != "federation"},
    )
    interrupted_and_clean_runs(base, tmp_path)

    expected = load_checkpoint(tmp_path / "clean")
    resumed = load_checkpoint(tmp_path / "killed")
    assert resumed.server_round == expected.server_round == 4
    for name, weights in expected.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], weights, err_msg=name)
    summaries = [
        json.loads((tmp_path / d / "summary.json").read_text()) for d in ("clean", "killed")
    ]
    assert summaries[0]["history"][-1]["loss"] == summaries[1]["history"][-1]["loss"]
    assert summaries[0]["privacy"] == summaries[1]["privacy"]


@pytest.fixture
def finished_run(make_scenario, task_identity, tmp_path: Path) -> Path:
    """A one-round tiny run whose checkpoint the tests below tamper with."""
    scenario = make_scenario(federation={"rounds": 1}, output={"save_model": False})
    run_server(LocalGrid(scenario), scenario, Path(scenario.output.dir), quiet=True)
    return Path(scenario.output.dir)


class _WritesMarker:
    """Unpickled, it creates a file: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("keep_new_files", [False, True])
def test_a_pickled_state_file_is_refused_and_never_unpickled(
    finished_run: Path, tmp_path: Path, capsys, keep_new_files: bool
) -> None:
    marker = tmp_path / "unpickled"
    checkpoint = finished_run / "checkpoint"
    if not keep_new_files:
        for path in checkpoint.iterdir():
            path.unlink()
    (checkpoint / "state.pkl").write_bytes(pickle.dumps(_WritesMarker(marker)))
    assert main(["run", "--resume", str(finished_run), "--set", "federation.rounds=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "state.pkl" in err and "pickle" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["weights.safetensors", "state.safetensors", "state.json"])
def test_a_truncated_checkpoint_file_is_one_line(finished_run: Path, name: str) -> None:
    path = finished_run / "checkpoint" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)}: damaged checkpoint"):
        load_checkpoint(finished_run)


def test_resume_refuses_a_changed_federation(finished_run: Path, make_scenario) -> None:
    checkpoint = load_checkpoint(finished_run)
    checkpoint.check_scenario(make_scenario())  # the same federation: accepted
    for sections, named in (
        ({"partition": {"kind": "iid", "num_clients": 3}}, "partition.num_clients 2 -> 3"),
        ({"seed": 8}, "seed 7 -> 8"),
        ({"federation": {"strategy": "fedmedian"}}, "strategy.name 'fedavg' -> 'fedmedian'"),
        ({"model": {"max_length": 16}}, "model.max_length 32 -> 16"),
    ):
        with pytest.raises(CheckpointError, match=re.escape(named)):
            checkpoint.check_scenario(make_scenario(**sections))


def test_nothing_in_the_package_unpickles() -> None:
    """No module imports pickle or loads arrays/tensors in a way that could unpickle."""
    unsafe = re.compile(r"import pickle|from pickle|allow_pickle=True|torch\.load\(|dill|joblib")
    found = [
        f"{path.relative_to(PACKAGE)}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if unsafe.search(line)
    ]
    assert not found, found
