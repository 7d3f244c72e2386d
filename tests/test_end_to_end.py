"""End to end through the `fedtune` command: simulation in separate processes, the
centralized baseline, bad input, and one run on the real embedded model and data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fedtune, write_scenario
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fedtune.cli import main


def check_outputs(run_dir: Path, mode: str, rounds: int, clients: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == mode
    assert summary["num_clients"] == clients
    assert summary["rounds_completed"] == rounds
    assert [h["round"] for h in summary["history"]] == list(range(rounds + 1))
    for entry in summary["history"]:
        assert set(entry) >= {"round", "accuracy", "macro_f1", "loss", "seconds"}
    assert summary["final"]["accuracy"] == summary["history"][-1]["accuracy"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == list(range(rounds + 1))
    per_class = lines[0]["central"]["per_class"]
    supports = {
        k: v["support"]
        for k, v in per_class.items()
        if k not in ("macro avg", "weighted avg") and isinstance(v, dict)
    }
    majority = summary["majority_class"]
    assert majority["label"] == max(supports, key=supports.get)
    assert majority["share"] == pytest.approx(max(supports.values()) / sum(supports.values()))
    assert f"round {rounds}/{rounds}" in (run_dir / "run.log").read_text()
    assert (run_dir / "figures" / "curves.png").stat().st_size > 5_000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    model_dir = Path(summary["model_dir"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    logits = model(
        **tokenizer(["great thanks", "late again"], return_tensors="pt", padding=True)
    ).logits
    assert logits.shape == (2, len(model.config.id2label))
    return {"summary": summary, "lines": lines}


@pytest.mark.slow("a Ray simulation process and an int8 export")
def test_simulation_two_clients_two_rounds(make_scenario, tmp_path: Path) -> None:
    scenario = make_scenario(data={"val_size": 0.2})
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    result = fedtune("run", str(path), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(scenario.output.dir)
    out = check_outputs(run_dir, "federated", rounds=2, clients=2)
    assert f"(majority class '{out['summary']['majority_class']['label']}': " in result.stdout
    partition = json.loads((run_dir / "partition.json").read_text())
    assert len(partition["clients"]) == 2
    for line in out["lines"][1:]:
        assert sorted(c["partition-id"] for c in line["clients"]["train"]) == [0, 1]
        assert sorted(c["partition-id"] for c in line["clients"]["evaluate"]) == [0, 1]
        evaluated = line["clients"]["evaluate"]
        weighted = sum(c["eval_accuracy"] * c["num-examples"] for c in evaluated)
        weighted /= sum(c["num-examples"] for c in evaluated)
        assert line["federated_evaluate"]["eval_accuracy"] == pytest.approx(weighted)
        trained = line["clients"]["train"]
        loss = sum(c["train_loss"] * c["num-examples"] for c in trained)
        loss /= sum(c["num-examples"] for c in trained)
        assert line["federated_train"]["train_loss"] == pytest.approx(loss)
        assert "per_class" in line["central"]
    labels = set(
        AutoModelForSequenceClassification.from_pretrained(
            run_dir / "model"
        ).config.id2label.values()
    )
    assert labels == {"negative", "neutral", "positive"}
    # the int8 export measures itself on the run's test split, next to the fp32 model
    export = fedtune("export", str(run_dir / "model"), str(tmp_path / "int8"), "--quantize", "int8")
    assert export.returncode == 0, export.stderr[-2000:]
    report = json.loads((tmp_path / "int8" / "export.json").read_text())
    summary = out["summary"]
    supports = out["lines"][-1]["central"]["per_class"]["macro avg"]["support"]
    assert report["test_examples"] == supports
    assert report["fp32_accuracy"] == pytest.approx(summary["final"]["accuracy"], abs=1e-6)
    assert 0 <= report["int8_accuracy"] <= 1
    change = 100 * (report["int8_accuracy"] - report["fp32_accuracy"])
    assert f"vs fp32 {report['fp32_accuracy']:.3f} ({change:+.1f} points, " in export.stdout


@pytest.mark.slow("a fedtune centralized process")
def test_centralized_baseline(make_scenario, tmp_path: Path) -> None:
    scenario = make_scenario(training={"lr": 5e-3, "batch_size": 16, "local_epochs": 2})
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    result = fedtune("centralized", str(path), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = check_outputs(Path(scenario.output.dir), "centralized", rounds=2, clients=2)
    history = out["summary"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["--set", "federation.rounds=0"],
            "federation.rounds: Input should be greater than or equal to 1",
        ),
        (["--set", "data.source=/nonexistent/data.csv"], "'/nonexistent/data.csv': file not found"),
        (["--set", "data.label_column=stars"], "data.label_column 'stars' not among the columns"),
        (["--set", "model.name=/tmp"], "directory has no config.json, not a model"),
        (
            ["--set", "partition.num_clients=500", "--set", "federation.min_available_nodes=1"],
            "only 240 examples",
        ),
        (["--set", "federation.rounds"], "expected dotted.key=value"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    make_scenario, tmp_path: Path, capsys, overrides, message
) -> None:
    scenario = make_scenario()
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    assert main(["run", str(path), *overrides]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not Path(scenario.output.dir).exists(), "no partial output"


@pytest.mark.slow("a fedtune process (its exit status and stderr)")
def test_bad_input_from_the_command_is_one_line_and_exit_2(make_scenario, tmp_path: Path) -> None:
    """The same through a real `fedtune` process: its exit status and its stderr."""
    scenario = make_scenario()
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    result = fedtune("run", str(path), "--set", "data.label_column=stars")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.label_column 'stars' not among" in lines[0], result.stderr
    assert not Path(scenario.output.dir).exists(), "no partial output"


@pytest.mark.slow("the real embedded model on real tweets")
def test_real_embedded_model_beats_round_zero(tmp_path: Path) -> None:
    """The shipped quickstart, shrunk to a few hundred real airline tweets."""
    run_dir = tmp_path / "real"
    result = fedtune(
        "run",
        "quickstart",
        "--quiet",
        "--output",
        str(run_dir),
        "--set",
        "data.max_samples=400",
        "--set",
        "partition.num_clients=2",
        "--set",
        "federation.min_available_nodes=2",
        "--set",
        "federation.rounds=2",
        "--set",
        "model.max_length=48",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((run_dir / "summary.json").read_text())["history"]
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.1, history


@pytest.mark.slow("flwr run . on Flower's Simulation Engine")
def test_flwr_run_uses_the_same_app(make_scenario, tmp_path: Path) -> None:
    """`flwr run .` (Flower's own CLI, local simulation SuperLink) runs the fedtune app."""
    root = Path(__file__).resolve().parents[1]
    scenario = make_scenario(federation={"rounds": 1, "min_available_nodes": 2})
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    flwr_home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    flwr = Path(sys.executable).with_name("flwr")
    try:
        result = subprocess.run(
            [
                str(flwr),
                "run",
                str(root),
                "--stream",
                "--run-config",
                f'scenario="{path}"',
                "--federation-config",
                "num-supernodes=2",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:  # the local SuperLink that `flwr run` started lives on; stop it
        subprocess.run(["pkill", "-f", str(flwr_home)], check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    check_outputs(Path(scenario.output.dir), "federated", rounds=1, clients=2)
