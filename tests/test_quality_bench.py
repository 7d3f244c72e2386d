"""bench/quality.py without training: a fake `fedtune sweep` writes sweep.json (planned by
fedtune's own sweep planner) and fabricated run directories, so the sweeps it issues, the
resume, failed runs, the verdicts and the page are checked in seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from fedtune.launch.sweep import SweepPlan, parse_grid, read_plan, save_plan

MB = 1_000_000
MAJORITY = {"label": "negative", "share": 0.62, "accuracy": 0.62, "macro_f1": 0.255}


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_bench"] = module
    spec.loader.exec_module(module)
    return module


def curve(scenario: str, sets: dict[str, str]) -> tuple[list[float], float]:
    """A federated run's accuracy after each round and bytes per client per round (each
    way): full FT reaches 0.80; LoRA r8 0.795 at round 2 with 1% of its bytes; r4 never."""
    if scenario == "lora":
        if sets.get("model.peft.rank") == "4":
            return [0.2, 0.6, 0.7, 0.7], 0.5 * MB
        return [0.2, 0.7, 0.795, 0.80], MB
    if scenario == "secagg":
        return [0.2, 0.7, 0.8, 0.80 if sets.get("privacy.secagg.enabled") == "false" else 0.803], MB
    return [0.2, 0.7, 0.78, 0.80], 100 * MB


def write_run(run_dir: Path, command: str, scenario: str, sets: dict[str, str]) -> None:
    """What fedtune writes that the bench reads: summary.json and metrics.jsonl."""
    run_dir.mkdir(parents=True)
    summary: dict = {"mode": {"run": "federated"}.get(command, command)}
    summary |= {"majority_class": {**MAJORITY, "headline": "accuracy"}, "wall_seconds": 9.0}
    if command == "local":
        final = {"accuracy": 0.7, "macro_f1": 0.6, "val_accuracy": 0.8, "val_macro_f1": 0.7}
    elif command == "centralized":  # same budget 0.79; converged (4 rounds) 0.81 (lora 0.75)
        final = {"accuracy": 0.79, "macro_f1": 0.69, "loss": 0.5}
        converged = {"accuracy": 0.75 if scenario == "lora" else 0.81, "macro_f1": 0.71}
        summary |= {"rounds_completed": 3, "converged": {"rounds": 4, "final": converged}}
    else:
        accuracy, per_client = curve(scenario, sets)
        lines = [
            {
                "round": r,
                "accuracy": a,
                "macro_f1": a - 0.1,
                "seconds": 10.0,
                "bytes_up": 4 * per_client * bool(r),
                "bytes_down": 4 * per_client * bool(r),
                "fairness": {"per_class_f1": {"negative": 0.8, "positive": a - 0.5}},
            }
            for r, a in enumerate(accuracy)
        ]
        (run_dir / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
        final = {k: lines[-1][k] for k in ("accuracy", "macro_f1")}
        summary |= {"rounds_completed": len(lines) - 1, "privacy": {"epsilon": 6.0}}
    (run_dir / "summary.json").write_text(json.dumps({**summary, "final": final}))


class FakeSweep:
    """Stands in for `fedtune sweep`: plans with fedtune's planner, writes every run (or
    leaves the runs whose sets contain `fail` failed, exit 1), resumes from sweep.json."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail, self.calls = fail, []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        if argv[1] == "--resume":
            out = Path(argv[2])
            plan = read_plan(out)
        else:
            out = Path(argv[argv.index("--output") + 1])
            args = argv[1 : argv.index("--output")]
            grid = [args[i + 1] for i, a in enumerate(args) if a == "--grid"]
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            plan = SweepPlan(args[0], parse_grid(grid), sets, "--with-baselines" in args)
            plan.plan_runs()
        for run in plan.runs:
            if run.status == "done":
                continue
            sets = dict(item.split("=", 1) for item in run.sets)
            failed = self.fail is not None and self.fail in " ".join(run.sets)
            run.status = "failed" if failed else "done"
            if not failed:
                write_run(out / run.name, run.command, plan.scenario, sets)
        out.mkdir(parents=True, exist_ok=True)
        save_plan(plan, out)
        return 1 if any(run.status == "failed" for run in plan.runs) else 0


@pytest.fixture
def bench(quality, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The bench's outputs and sweep directories redirected into tmp_path."""
    paths = {name: tmp_path / f"quality.{name}" for name in ("json", "md", "png")}
    paths["work"] = tmp_path / "runs"
    monkeypatch.setattr(quality, "output_paths", lambda quick: paths)
    return paths


def rows(paths: dict[str, Path], case: str) -> dict[str, dict]:
    rows = json.loads(paths["json"].read_text())["rows"]
    return {r["run"]: r for r in rows if r["case"] == case}


def test_cases_run_as_sweeps_and_are_judged(quality, bench) -> None:
    fake = FakeSweep()
    quality.main(["--only", "iid", "lora", "secagg"], runner=fake)
    # the quickstart sweep serves the IID and the LoRA case: it runs once
    quickstart = [c for c in fake.calls if c[1] == "quickstart"]
    assert len(quickstart) == 1 and "--with-baselines" in quickstart[0]
    assert {c[1] for c in fake.calls} == {"quickstart", "lora", "secagg"}

    iid = rows(bench, "iid")["full FT: strategy=fedavg"]
    # the reference is the converged centralized run (0.81 / 0.71 after 4 rounds): 0.80 /
    # 0.70 at round 3 is within 1 point, at 0.75x its examples
    assert iid["centralized"]["accuracy"] == 0.81 and iid["result"] == "met"
    assert "within at round 3 (0.75x its examples)" in iid["why"]
    lora = rows(bench, "lora")
    assert lora["full FT: strategy=fedavg"]["result"] == "reference"
    # r8 reaches 0.795 / 0.695 at round 2: 2 rounds of 8 MB against full FT's 3 of 800 MB
    r8 = lora["lora: strategy=fedavg"]
    assert r8["result"] == "met" and "(0.67% of the reference's" in r8["why"], r8
    assert lora["LoRA: rank=4"]["result"] == "missed"
    # each row has its own sweep's baselines: the LoRA centralized run's same-budget result is
    # the stronger; the rank-4 sweep has none and shows the case's first (the quickstart's)
    assert r8["centralized"]["accuracy"] == 0.79 and "converged_rounds" not in r8["centralized"]
    assert lora["LoRA: rank=4"]["centralized"]["accuracy"] == 0.81
    assert "not within 1 pt" in lora["LoRA: rank=4"]["why"]
    secagg = rows(bench, "secagg")["secagg: strategy=fedavg"]
    assert secagg["result"] == "met" and "vs secagg: enabled=false +0.3 / +0.3" in secagg["why"]
    page = bench["md"].read_text()
    assert "**met** by full FT: strategy=fedavg" in page and bench["png"].is_file()
    assert "fedtune sweep quickstart --grid federation.strategy=fedavg --with-baselines" in page


def test_an_interrupted_benchmark_resumes_its_sweeps(quality, bench) -> None:
    first = FakeSweep(fail="rank=4")
    quality.main(["--only", "lora"], runner=first)
    assert rows(bench, "lora")["LoRA: rank=4"]["result"] == "not finished"
    finished = {p: p.stat().st_mtime_ns for p in bench["work"].glob("*/*/summary.json")}
    again = FakeSweep()
    quality.main(["--only", "lora"], runner=again)
    assert all(call[1] == "--resume" for call in again.calls)
    assert rows(bench, "lora")["LoRA: rank=4"]["result"] == "missed"
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # not rerun


def test_a_sweep_that_cannot_start_stops_the_benchmark(quality, bench) -> None:
    with pytest.raises(SystemExit, match="exited 2"):
        quality.main(["--only", "iid"], runner=lambda argv: 2)


def test_quick_mode_adds_the_small_overrides_and_skips_slow_sweeps(quality, bench) -> None:
    fake = FakeSweep()
    quality.main(["--quick", "--only", "dirichlet", "dp"], runner=fake)
    assert [c[1] for c in fake.calls] == ["label_skew", "quickstart"]  # dp: not in --quick
    skew = " ".join(fake.calls[0])
    assert "--set data.max_samples=600" in skew and "--set federation.rounds=1" in skew
    # the reference is the IID case's centralized run, from its own (quick) sweep
    fedavg = rows(bench, "dirichlet")["label_skew: strategy=fedavg"]
    assert fedavg["centralized"]["accuracy"] == 0.81 and fedavg["result"] == "met"


def test_targets(quality, tmp_path: Path) -> None:
    from quality_cases import AboveMajority, NearCentralized

    def run(accuracy: list[float], **summary) -> object:
        lines = [{"round": r, "accuracy": a, "macro_f1": a} for r, a in enumerate(accuracy)]
        final = {"accuracy": accuracy[-1], "macro_f1": accuracy[-1]}
        summary = {"final": final, "majority_class": {**MAJORITY, "headline": "macro_f1"}}
        return quality.Run("x", {**summary, **extra}, lines, tmp_path)

    extra: dict = {}
    ref = quality.Run(
        "c", {"final": {"accuracy": 0.8, "macro_f1": 0.8}, "rounds_completed": 2}, [], tmp_path
    )
    late = run([0.1, 0.5, 0.7, 0.75, 0.8])  # within 3 points at round 4: 2x the examples
    assert quality.near_centralized(NearCentralized(3, 5, 3), late, ref)[0]
    assert not quality.near_centralized(NearCentralized(3, 5, 1.5), late, ref)[0]
    assert not quality.near_centralized(NearCentralized(3, 5), run([0.1, 0.7]), ref)[0]
    # a centralized run at the majority class measures nothing
    ref.summary |= {"final": {"accuracy": 0.62, "macro_f1": 0.255}, "majority_class": MAJORITY}
    assert quality.near_centralized(NearCentralized(3, 5), late, ref)[0] is None
    extra = {"privacy": {"epsilon": 9.5}}
    met, why = quality.above_majority(AboveMajority(0.15, max_epsilon=8), run([0.1, 0.5]), None)
    assert not met and "epsilon 9.50" in why  # 0.5 >= 0.255 + 0.15, but epsilon > 8
    extra = {"privacy": {"epsilon": 6.0}}
    assert quality.above_majority(AboveMajority(0.15, max_epsilon=8), run([0.1, 0.5]), None)[0]
    assert not quality.above_majority(AboveMajority(0.15), run([0.1, 0.4]), None)[0]


def test_dry_run_validates_every_shipped_sweep(quality, bench, capsys) -> None:
    quality.main(["--dry-run"])
    out = capsys.readouterr().out
    assert f"{len(quality.planned(quality.CASES, False, bench['work']))} sweeps" in out
    assert "[to run] fedtune sweep label_skew --grid federation.strategy=fedavg,fedprox" in out
