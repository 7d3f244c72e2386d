"""Cost to a target: the first round that reached it and what was spent until then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtune.cli import main
from fedtune.runs.cost import cost_to_target, size

ROUNDS = [
    {"round": 0, "accuracy": 0.2, "seconds": 10.0},
    {
        "round": 1,
        "accuracy": 0.6,
        "seconds": 20.0,
        "bytes_up": 100,
        "bytes_down": 300,
        "clients": {"train": [{"client_seconds": 5.0}, {"client_seconds": 7.0}]},
    },
    {
        "round": 2,
        "accuracy": 0.7,
        "seconds": 30.0,
        "bytes_up": 100,
        "bytes_down": 300,
        "clients": {"train": [{"client_seconds": 6.0}], "evaluate": [{"client_seconds": 1.0}]},
    },
]


def test_the_first_round_at_or_above_the_target_and_what_it_took() -> None:
    cost = cost_to_target(ROUNDS, "accuracy", 0.7)  # reached exactly at round 2
    assert cost == {
        "metric": "accuracy",
        "target": 0.7,
        "reached": True,
        "round": 2,
        "wall_seconds": 60.0,
        "client_seconds": 19.0,
        "bytes_up": 200,
        "bytes_down": 600,
        "bytes": 800,
    }
    early = cost_to_target(ROUNDS, "accuracy", 0.5)
    assert (early["round"], early["wall_seconds"], early["bytes"]) == (1, 30.0, 400)
    assert cost_to_target(ROUNDS, "accuracy", 0.1)["round"] == 0


def test_a_target_not_reached_reports_what_the_whole_run_spent() -> None:
    cost = cost_to_target(ROUNDS, "accuracy", 0.9)
    assert (cost["reached"], cost["round"], cost["wall_seconds"], cost["bytes"]) == (
        False,
        None,
        60.0,
        800,
    )
    assert cost_to_target(ROUNDS, "macro_f1", 0.1)["reached"] is False  # never measured
    assert cost_to_target([], "accuracy", 0.5)["wall_seconds"] == 0.0


def test_sizes_read_as_a_person_reads_them() -> None:
    assert [size(b) for b in (512, 18_000, 90_880_000, 1_250_000_000)] == [
        "512 B",
        "18.0 KB",
        "90.9 MB",
        "1.25 GB",
    ]


def test_a_run_with_a_target_records_its_cost_and_reports_it(
    make_scenario, run_local, tmp_path: Path
) -> None:
    scenario = make_scenario(federation={"rounds": 2, "min_available_nodes": 2, "target": 0.01})
    summary = run_local(scenario)
    run_dir = Path(summary["run_dir"])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    headline = summary["majority_class"]["headline"]
    assert summary["cost_to_target"] == cost_to_target(lines, headline, 0.01)
    assert summary["cost_to_target"]["round"] == 0  # any model beats 1%
    assert main(["report", str(run_dir)]) == 0
    assert (
        f"Cost to {'accuracy' if headline == 'accuracy' else 'macro-F1'} 0.010: round 0"
        in (run_dir / "report.md").read_text()
    )
    assert (run_dir / "figures" / "cost.png").stat().st_size > 5_000


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "high"])
def test_a_bad_target_is_one_line_and_exit_2(value: str, capsys) -> None:
    assert main(["run", "quickstart", "--target", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target" in err[0], err
