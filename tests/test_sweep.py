"""`fedtune sweep`: a grid of runs, resumable, compared; bad grids refused before anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LocalGrid, fedtune, write_scenario

from fedtune.cli import main
from fedtune.cli.parser import build_parser
from fedtune.cli.runs import _scenario
from fedtune.config import ScenarioError
from fedtune.federation.server.app import run_server
from fedtune.launch import sweep


def in_process(calls: list[list[str]], interrupt_at: int | None = None) -> sweep.Launch:
    """Runs each sweep command in this process: `run` on a LocalGrid (the real server loop
    without Ray), the baselines through `fedtune`'s own handlers."""

    def launch(args: list[str]) -> tuple[int, str]:
        calls.append(args)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        parsed = build_parser().parse_args(args)
        if parsed.command != "run":
            return main(args), "done"
        scenario = _scenario(parsed, parsed.resume)
        run_server(LocalGrid(scenario), scenario, Path(scenario.output.dir), quiet=True)
        return 0, "run done"

    return launch


def _plan(path: Path, grid: list[str], baselines: bool = False) -> sweep.SweepPlan:
    plan = sweep.SweepPlan(str(path), sweep.parse_grid(grid), ["federation.rounds=1"], baselines)
    plan.plan_runs()
    sweep.validate(plan)
    return plan


def test_grid_values_split_on_top_level_commas_only() -> None:
    assert sweep.split_values("fedavg, fedprox") == ["fedavg", "fedprox"]
    assert sweep.split_values("[query, value],{a: 1, b: 2},'x,y'") == [
        "[query, value]",
        "{a: 1, b: 2}",
        "'x,y'",
    ]


def test_a_2x2_grid_runs_4_runs_and_compares_them(
    make_scenario, tmp_path: Path, task_identity
) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    plan = _plan(path, ["training.lr=1e-3,5e-3", "federation.strategy=fedavg,fedprox"], True)
    calls: list[list[str]] = []
    out = tmp_path / "sweep"
    report = sweep.run_sweep(plan, out, quiet=True, launch=in_process(calls))
    assert [args[0] for args in calls] == ["centralized", "local", "run", "run", "run", "run"]
    names = [run.name for run in plan.runs[2:]]
    assert names == [
        "01-lr=1e-3_strategy=fedavg",
        "02-lr=1e-3_strategy=fedprox",
        "03-lr=5e-3_strategy=fedavg",
        "04-lr=5e-3_strategy=fedprox",
    ]
    for name, (lr, strategy) in zip(
        names,
        [(1e-3, "fedavg"), (1e-3, "fedprox"), (5e-3, "fedavg"), (5e-3, "fedprox")],
        strict=True,
    ):
        ran = json.loads((out / name / "scenario.json").read_text())
        assert (ran["training"]["lr"], ran["federation"]["strategy"]) == (lr, strategy)
        assert ran["federation"]["rounds"] == 1
    recorded = json.loads((out / sweep.SWEEP_FILE).read_text())
    assert [run["status"] for run in recorded["runs"]] == ["done"] * 6
    table = report.read_text()
    assert report == out / "compare.md" and all(name in table for name in names)
    # every federated row has a cost to the centralized run's final value
    assert table.count("macro-F1 ") + table.count("accuracy ") >= 4


def test_an_interrupted_sweep_resumes_without_rerunning_finished_runs(
    make_scenario, tmp_path: Path, task_identity
) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    plan = _plan(path, ["training.lr=1e-3,2e-3", "training.batch_size=8,16"])
    out, calls = tmp_path / "sweep", []
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(plan, out, quiet=True, launch=in_process(calls, interrupt_at=3))
    resumed = sweep.read_plan(out)
    assert [run.status for run in resumed.runs] == ["done", "done", "pending", "pending"]
    finished = {
        name: (out / name / "summary.json").stat().st_mtime_ns
        for name in (resumed.runs[0].name, resumed.runs[1].name)
    }
    again: list[list[str]] = []
    sweep.run_sweep(resumed, out, quiet=True, launch=in_process(again))
    assert [args[args.index("--output") + 1] for args in again] == [
        str(out / run.name) for run in resumed.runs[2:]
    ]
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in finished} == finished
    assert [run.status for run in sweep.read_plan(out).runs] == ["done"] * 4


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (
            ["federation.nope=1,2"],
            ("sweep run 01-nope=1: ", "tiny.yaml: federation.nope: unknown key"),
        ),
        (["training.lr="], "--grid training.lr: an empty value in ''"),
        (["training.lr=1e-3,,2e-3"], "--grid training.lr: an empty value"),
        (
            ["training.lr=1e-3,-1"],
            ("sweep run 02-lr=-1: ", "tiny.yaml: training.lr: Input should be"),
        ),
        (["training.lr=1e-3", "training.lr=2e-3"], "--grid training.lr: given twice"),
        ([], "give at least one --grid KEY=V1,V2,..."),
    ],
)
def test_bad_grids_are_one_line_and_exit_2_before_anything_starts(
    make_scenario, tmp_path: Path, capsys, monkeypatch, grid: list[str], message: str
) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("a sweep started"))
    out = tmp_path / "sweep"
    args = [item for g in grid for item in ("--grid", g)]
    assert main(["sweep", str(path), *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    fragments = (message,) if isinstance(message, str) else message
    assert len(err.splitlines()) == 1 and all(f in err for f in fragments), err
    assert not out.exists()


def test_resume_needs_a_sweep_and_a_sweep_dir_is_not_reused(
    make_scenario, tmp_path: Path, capsys
) -> None:
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a fedtune sweep (no sweep.json)" in capsys.readouterr().err
    (tmp_path / sweep.SWEEP_FILE).write_text("{not json")
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "sweep.json: damaged" in capsys.readouterr().err
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    assert main(["sweep", str(path), "--grid", "training.lr=1e-3", "--output", str(tmp_path)]) == 2
    assert "holds a sweep; continue it with fedtune sweep --resume" in capsys.readouterr().err


def test_a_failed_run_is_recorded_and_the_sweep_exits_1(
    make_scenario, tmp_path: Path, task_identity
) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    plan = _plan(path, ["training.lr=1e-3,2e-3"])
    calls: list[list[str]] = []
    real = in_process(calls)

    def second_fails(args: list[str]) -> tuple[int, str]:
        if len(calls) == 1:
            calls.append(args)
            return 1, "fedtune: error: no round aggregated any update"
        return real(args)

    with pytest.raises(sweep.SweepFailed, match=r"1 of 2 sweep runs failed \(02-lr=2e-3;"):
        sweep.run_sweep(plan, tmp_path / "sweep", quiet=True, launch=second_fails)
    runs = sweep.read_plan(tmp_path / "sweep").runs
    assert [r.status for r in runs] == ["done", "failed"]
    assert runs[1].result == "fedtune: error: no round aggregated any update"
    assert (tmp_path / "sweep" / "compare.md").is_file()


@pytest.mark.slow("two Ray simulation processes at once")
def test_a_sweep_runs_fedtune_processes_in_parallel(make_scenario, tmp_path: Path) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    out = tmp_path / "sweep"
    done = fedtune(
        "sweep",
        str(path),
        "--grid",
        "training.lr=1e-3,5e-3",
        "--set",
        "federation.rounds=1",
        "--parallel",
        "2",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert f"2 runs, comparison in {out / 'compare.md'}" in done.stdout
    for name in ("01-lr=1e-3", "02-lr=5e-3"):
        assert json.loads((out / name / "summary.json").read_text())["rounds_completed"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "../outside"), ("name", ".."), ("command", "deploy"), ("status", "odd")],
)
def test_an_edited_sweep_file_touches_nothing_outside_the_sweep(
    make_scenario, tmp_path: Path, capsys, field: str, value: str
) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    out = tmp_path / "sweep"
    out.mkdir()
    sweep.save_plan(_plan(path, ["training.lr=1e-3"]), out)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's")
    raw = json.loads((out / sweep.SWEEP_FILE).read_text())
    raw["runs"][0][field] = value
    (out / sweep.SWEEP_FILE).write_text(json.dumps(raw))
    assert main(["sweep", "--resume", str(out)]) == 2
    assert "sweep.json: damaged (ValueError: " in capsys.readouterr().err
    assert (outside / "keep.txt").read_text() == "the user's"


def test_a_link_planted_as_a_run_directory_is_refused(
    make_scenario, tmp_path: Path, task_identity
) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    plan, out = _plan(path, ["training.lr=1e-3"]), tmp_path / "sweep"
    out.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (out / plan.runs[0].name).symlink_to(target)
    with pytest.raises(ScenarioError, match="not a directory the sweep made; remove it"):
        sweep.run_sweep(plan, out, quiet=True, launch=in_process([]))
    assert target.is_dir()


def test_each_run_gets_the_target_and_the_cluster_it_may_use(tmp_path: Path) -> None:
    plan = sweep.SweepPlan("quickstart", [("training.lr", ["1e-3"])], [], True, 0.75)
    plan.plan_runs()
    args = {run.name: sweep.argv(plan, run, tmp_path, "auto") for run in plan.runs}
    assert args["centralized"][-5:] == [
        "--output",
        str(tmp_path / "centralized"),
        "--target",
        "0.75",
        "--quiet",
    ]
    assert "--target" not in args["local"] and "--ray-address" not in args["local"]
    run = args["01-lr=1e-3"]
    assert run[:4] == ["run", "quickstart", "--set", "training.lr=1e-3"]
    assert (
        run[run.index("--target") + 1] == "0.75" and run[run.index("--ray-address") + 1] == "auto"
    )
