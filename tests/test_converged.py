"""`fedtune centralized --converged`: the strong centralized reference, trained from the
same start until its pooled validation score stops improving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_scenario

import fedtune.launch.baselines as baselines
from fedtune.cli import main
from fedtune.runs.compare import default_target


def test_the_converged_run_stops_after_its_patience_and_keeps_the_best(
    make_scenario, tmp_path: Path, monkeypatch, capsys
) -> None:
    scores = iter([0.30, 0.50, 0.70, 0.60, 0.65, 0.99])  # before training, then per round
    real = baselines.evaluate

    def scripted(model, loader, device, *args):  # noqa: ANN001, ANN002, ANN202
        result = real(model, loader, device, *args)
        if args:  # the test split (with label names): real metrics
            return result
        return {**result, "accuracy": next(scores), "macro_f1": 0.0}

    monkeypatch.setattr(baselines, "evaluate", scripted)
    scenario = make_scenario(federation={"rounds": 3})
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    assert main(["centralized", str(path), "--converged", "--quiet"]) == 0
    summary = json.loads((Path(scenario.output.dir) / "summary.json").read_text())
    run = summary["converged"]
    assert (run["rounds"], run["rounds_trained"], run["val"]) == (2, 4, 0.70)
    assert run["examples_seen"] > 0 and run["examples_seen"] % 2 == 0
    assert set(run["final"]) >= {"accuracy", "macro_f1", "loss"}
    assert "patience 2 round-equivalents, at most 9" in run["method"]
    assert "converged reference: " in capsys.readouterr().out


def test_the_stronger_centralized_run_is_the_default_target() -> None:
    summary = {
        "mode": "centralized",
        "majority_class": {"headline": "macro_f1"},
        "final": {"macro_f1": 0.60},
        "converged": {"final": {"macro_f1": 0.72}},
    }
    assert default_target([{"summary": summary}]) == ("macro_f1", 0.72)
    summary["final"]["macro_f1"] = 0.80
    assert default_target([{"summary": summary}]) == ("macro_f1", 0.80)


def test_converged_needs_validation_splits(make_scenario, tmp_path: Path, capsys) -> None:
    scenario = make_scenario(data={"val_size": 0.0})
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    assert main(["centralized", str(path), "--converged", "--quiet"]) == 2
    assert "--converged needs data.val_size > 0" in capsys.readouterr().err
    assert not Path(scenario.output.dir).exists()  # refused before anything started


@pytest.mark.parametrize("command", ["run", "local"])
def test_only_centralized_takes_converged(command: str, capsys) -> None:
    assert main([command, "quickstart", "--converged"]) == 2
    assert "unrecognized arguments: --converged" in capsys.readouterr().err
