"""Reliability: bad input stops early with one line, injected faults never stop a run,
a killed run resumes to the same weights, and runs are deterministic on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import load_file

from fedtune.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedtune.cli import main
from fedtune.config import Scenario


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def csv_file(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)


def bad_input_cases(tmp: Path, base: dict, tiny_model_dir: Path) -> list[tuple]:
    """(name, scenario overrides or raw text, extra CLI args, expected message) rows."""
    rows = "\n".join(
        f"{w} {i},{lab}" for i in range(30) for w, lab in (("good", "pos"), ("bad", "neg"))
    )
    (tmp / "not-a-model").mkdir()
    (tmp / "held").mkdir()
    (tmp / "held" / "summary.json").write_text("{}")
    data = base["data"]
    return [
        ("malformed yaml", "federation: [1, 2\n", [], "malformed YAML"),
        ("not a mapping", "- a\n- b\n", [], "expected a mapping of sections"),
        ("unknown key", {"federation": {"roundz": 3}}, [], "federation.roundz: unknown key"),
        (
            "wrong type",
            {"training": {"batch_size": "big"}},
            [],
            "training.batch_size: Input should be a valid integer",
        ),
        (
            "out of range",
            {"federation": {"fraction_train": 1.5}},
            [],
            "federation.fraction_train: Input should be less than or equal to 1",
        ),
        (
            "negative lr",
            {"training": {"lr": -0.1}},
            [],
            "training.lr: Input should be greater than 0",
        ),
        (
            "unknown partition",
            {"partition": {"kind": "spiral"}},
            [],
            "partition.kind: Input should be",
        ),
        (
            "min nodes > clients",
            {"federation": {"min_available_nodes": 9}},
            [],
            "exceeds partition.num_clients=2",
        ),
        ("bad --set", {}, ["--set", "rounds"], "expected dotted.key=value"),
        (
            "missing data file",
            {"data": {**data, "source": str(tmp / "none.csv")}},
            [],
            "file not found",
        ),
        (
            "unsupported format",
            {"data": {**data, "source": str(tmp / "d.txt")}},
            [],
            "not a built-in source",
        ),
        (
            "missing text column",
            {"data": {**data, "text_column": "body"}},
            [],
            "data.text_column 'body' not among the columns",
        ),
        (
            "missing label column",
            {"data": {**data, "label_column": "stars"}},
            [],
            "data.label_column 'stars' not among the columns",
        ),
        (
            "empty file",
            {"data": {**data, "source": csv_file(tmp / "empty.csv", "message,sentiment\n")}},
            [],
            "no examples",
        ),
        (
            "one label only",
            {
                "data": {
                    **data,
                    "source": csv_file(
                        tmp / "one.csv",
                        "message,sentiment\n" + "\n".join(f"a {i},x" for i in range(20)),
                    ),
                }
            },
            [],
            "need at least 2",
        ),
        (
            "label only in test",
            {
                "data": {
                    **data,
                    "source": csv_file(
                        tmp / "rare.csv", f"message,sentiment\n{rows}\nodd one,rare\n"
                    ),
                },
                "seed": 2,
            },
            [],
            "appear only in the test split",
        ),
        (
            "non-UTF-8 text",
            {
                "data": {
                    **data,
                    "source": csv_file(
                        tmp / "latin.csv", "message,sentiment\ncafé déjà vu,pos\n" * 4, "latin-1"
                    ),
                }
            },
            [],
            "cannot read as csv",
        ),
        (
            "more clients than examples",
            {
                "partition": {"kind": "iid", "num_clients": 200},
                "federation": {"min_available_nodes": 1},
            },
            [],
            "only 240 examples",
        ),
        (
            "unsatisfiable dirichlet split",
            {
                "partition": {"kind": "dirichlet", "num_clients": 60, "alpha": 0.01},
                "federation": {"min_available_nodes": 1},
            },
            [],
            "partition.kind 'dirichlet': The max number of attempts",
        ),
        (
            "natural column missing",
            {"partition": {"kind": "natural", "column": "airline", "num_clients": 3}},
            [],
            "partition.column 'airline' not among the columns",
        ),
        (
            "natural count mismatch",
            {"partition": {"kind": "natural", "column": "company", "num_clients": 2}},
            [],
            "has 3 distinct values",
        ),
        (
            "model dir not a model",
            {"model": {"name": str(tmp / "not-a-model")}},
            [],
            "directory has no config.json, not a model",
        ),
        ("output holds a run", {"output": {"dir": str(tmp / "held")}}, [], "already holds a run"),
        (
            "resume without checkpoint",
            None,
            ["--resume", str(tmp / "held")],
            "not a fedtune run (no scenario.json)",
        ),
    ]


def test_bad_input_table(make_scenario, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    base = make_scenario().model_dump(mode="json")
    out = tmp_path / "out"
    base["output"]["dir"] = str(out)
    cases = bad_input_cases(tmp_path, base, tiny_model_dir)
    assert len(cases) >= 20
    for name, change, args, message in cases:
        if isinstance(change, str):
            path = tmp_path / "bad.yaml"
            path.write_text(change)
        else:
            raw = json.loads(json.dumps(base))
            for key, value in (change or {}).items():
                raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
            path = write_yaml(tmp_path / "bad.yaml", raw)
        held_before = sorted(p.name for p in (tmp_path / "held").iterdir())
        code = main(["run", *([] if name.startswith("resume") else [str(path)]), "--quiet", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert len(err) == 1 and message in err[0], (name, err)
        assert err[0].startswith("fedtune: error: "), name
        assert not out.exists(), f"{name}: partial output left behind"
        assert sorted(p.name for p in (tmp_path / "held").iterdir()) == held_before, name


def fedtune_run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedtune.cli", "run", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_faults_dropout_and_crashes_run_to_completion(make_scenario, tmp_path: Path) -> None:
    scenario = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"rounds": 3, "min_available_nodes": 4, "min_train_nodes": 1},
        faults={"dropout": 0.3, "crash": 0.4},
    )
    path = write_yaml(tmp_path / "faults.yaml", scenario.model_dump(mode="json"))
    result = fedtune_run(str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, "one line per failed client, not a traceback"
    run_dir = Path(scenario.output.dir)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    errors = []
    for line in lines[1:]:
        train = line["failures"]["train"]
        assert train["sampled"] == 4 == train["replied"] + train["errors"] + train["timed_out"]
        assert train["replied"] >= 1, "every round aggregates its survivors"
        assert sum("train_loss" in c for c in line["clients"]["train"]) == train["replied"]
        errors += [c["error"] for c in line["clients"]["train"] if "error" in c]
    assert errors, "with 30% dropout and 40% crashes over 12 client-rounds some fail"
    for error in errors:
        assert error.startswith("client ") and "InjectedFault" in error, error
        assert error.split(",")[0] in result.stderr, "reported on the console with its id"
    assert any("dropped out" in e for e in errors) and any("crashed after" in e for e in errors)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["failed_replies_total"] >= len(errors)


def test_stragglers_past_the_deadline_do_not_hang_the_run(make_scenario, tmp_path: Path) -> None:
    scenario = make_scenario(
        federation={"rounds": 1, "min_available_nodes": 2, "round_timeout": 2.0},
        faults={"straggler": 1.0, "straggler_delay": [6.0, 6.0]},
        data={"val_size": 0.0},
    )
    path = write_yaml(tmp_path / "slow.yaml", scenario.model_dump(mode="json"))
    start = time.monotonic()
    result = fedtune_run(str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - start < 120
    line = [
        json.loads(x) for x in Path(scenario.output.dir, "metrics.jsonl").read_text().splitlines()
    ][1]
    assert line["failures"]["train"]["timed_out"] == 2
    assert "missed the train deadline" in result.stderr
    summary = json.loads(Path(scenario.output.dir, "summary.json").read_text())
    history = summary["history"]
    assert history[1]["loss"] == history[0]["loss"], "no update arrived: the global model is kept"


def final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model" / "model.safetensors")


def test_kill_and_resume_gives_the_same_weights_and_runs_are_deterministic(
    make_scenario, tmp_path: Path
) -> None:
    # Half of 4 clients train each round: the seed must also fix which ones.
    raw = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"rounds": 4, "min_available_nodes": 4, "fraction_train": 0.5},
    ).model_dump(mode="json")
    runs = {}
    for name in ("clean", "again"):
        raw["output"]["dir"] = str(tmp_path / name)
        result = fedtune_run(str(write_yaml(tmp_path / f"{name}.yaml", raw)))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = final_weights(tmp_path / name)
    for key, value in runs["clean"].items():
        assert value.equal(runs["again"][key]), f"two runs differ in {key}"
    sampled = [
        [
            sorted(c["partition-id"] for c in json.loads(line)["clients"]["train"])
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()[1:]
        ]
        for name in ("clean", "again")
    ]
    assert sampled[0] == sampled[1] and all(len(s) == 2 for s in sampled[0])
    assert len({tuple(s) for s in sampled[0]}) > 1, "different clients across rounds"

    killed = tmp_path / "killed"
    raw["output"]["dir"] = str(killed)
    path = write_yaml(tmp_path / "killed.yaml", raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedtune.cli", "run", "--quiet", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until round 2 is checkpointed
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # summary.json follows metrics.jsonl, so it may still say round 1 when round 2 is logged.
    summary = json.loads((killed / "summary.json").read_text())
    assert 1 <= summary["rounds_completed"] < 4, "killed mid-run"
    assert not (killed / "model").exists()

    result = fedtune_run("--resume", str(killed))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert [h["round"] for h in summary["history"]] == [0, 1, 2, 3, 4]
    resumed = final_weights(killed)
    for key, value in runs["clean"].items():
        assert value.equal(resumed[key]), f"resumed run differs in {key}"


def test_resume_survives_a_kill_between_the_checkpoint_renames(tmp_path: Path) -> None:
    """save_dir_atomic moves the old checkpoint aside, then renames the new one in; a kill
    between the two leaves only `.checkpoint.old`, which load_checkpoint then uses."""
    weights = {"w": np.arange(3, dtype=np.float32)}
    record = {"history": [], "lines": [], "totals": {}}
    save_checkpoint(tmp_path, 2, weights, FedAvg(), record, Scenario())
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.server_round == 2
    np.testing.assert_array_equal(checkpoint.weights["w"], weights["w"])
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "elsewhere")
