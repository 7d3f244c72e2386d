"""fedtune quality benchmark: every claim of bench/quality_cases.py measured by `fedtune
sweep`, judged against its target, beside the majority class and the centralized and
local-only baselines, with what reaching the target cost (rounds, wall time, bytes).

    python bench/quality.py              # full: the shipped scenarios (many hours on 2 CPUs)
    python bench/quality.py --quick      # smoke: small data, 1 round
    python bench/quality.py --dry-run    # print the sweeps and validate their runs
    python bench/quality.py --only lora codecs    # chosen cases only
    python bench/quality.py --table      # rebuild the page from what has run

Each sweep runs in its own directory under runs/quality/ (runs/quality-quick/), named by
its arguments; a sweep that was interrupted is continued with `fedtune sweep --resume`
(finished runs are kept) and a sweep shared by several cases runs once. The page
(bench/quality.md, also printed) and its plot are built from the run directories alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench/quality_cases.py beside this script

from commands import shown_path as shown  # noqa: E402
from commands import stronger_final  # noqa: E402
from quality_cases import (  # noqa: E402
    CASES,
    QUICK,
    AboveMajority,
    Case,
    MatchesReference,
    NearCentralized,
    Sweep,
)

from fedtune.runs.cost import headline_metric, size, spent_by_round  # noqa: E402

PLOTTED = ("lora", "codecs")
"""Cases whose runs the bytes-to-accuracy plot shows."""
EPS = 1e-9
"""Tolerance of a gap in points (0.80 - 0.81 is -1.0000000000000009 points)."""

# ------------------------------------------------------------------ sweeps


def sweep_args(case: Case, sweep: Sweep, quick: bool) -> list[str]:
    return sweep.args({**QUICK, **case.quick} if quick else {})


def sweep_dir(work: Path, args: list[str]) -> Path:
    """A stable directory per sweep: its scenario + a hash of its arguments."""
    digest = hashlib.sha1(shlex.join(args).encode()).hexdigest()[:8]
    return work / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', args[0])}-{digest}"


def planned(cases: list[Case], quick: bool, work: Path) -> dict[Path, list[str]]:
    """Every sweep to run (directory -> arguments), once, in the cases' order."""
    sweeps = {}
    for case in cases:
        for owner, sweep in [*((case, s) for s in case.sweeps), *_borrowed(case)]:
            if sweep.quick or not quick:
                args = sweep_args(owner, sweep, quick)
                sweeps.setdefault(sweep_dir(work, args), args)
    return sweeps


def _borrowed(case: Case) -> list[tuple[Case, Sweep]]:
    """The sweep with baselines of the case whose centralized run this one uses."""
    other = next((c for c in CASES if c.name == case.centralized_from), None)
    return [(other, s) for s in other.sweeps if s.baselines][:1] if other else []


def command(out: Path, args: list[str]) -> list[str]:
    """`fedtune sweep ...`, or `fedtune sweep --resume DIR` where it already started."""
    if (out / "sweep.json").is_file():
        return ["sweep", "--resume", str(out)]
    return ["sweep", *args, "--output", str(out)]


def run_fedtune(argv: list[str]) -> int:
    """`fedtune ARGV` in a subprocess, its progress on this terminal; its exit code."""
    return subprocess.call([sys.executable, "-m", "fedtune.cli", *argv])


# ------------------------------------------------------------------ reading runs


@dataclass
class Run:
    """One finished run of a sweep, as the table needs it."""

    label: str
    summary: dict
    rounds: list[dict]
    """metrics.jsonl's lines (federated runs; round 0 first)."""
    run_dir: Path

    @property
    def final(self) -> dict:
        """The stronger final metrics (a centralized run's converged ones where better),
        with the rounds (round-equivalents) they took."""
        final = stronger_final(self.summary)
        rounds = final.get("converged_rounds", self.summary.get("rounds_completed"))
        return {**final, "rounds": rounds}


BASELINES = ("centralized", "local")


def prefix(sweep: Sweep) -> str:
    """What its runs' labels start with."""
    return sweep.name or sweep.scenario


def label_of(sweep: Sweep, run_name: str, command: str) -> str:
    """`PREFIX: key=value` for a run, `centralized (PREFIX)` for a baseline."""
    if command in BASELINES:
        return f"{command} ({prefix(sweep)})"
    return f"{prefix(sweep)}: {run_name.split('-', 1)[-1]}"


def baseline(runs: dict, command: str, label: str | None = None) -> Run | None:
    """The baseline of the sweep a run label belongs to, else the case's first."""
    own = runs.get(f"{command} ({label.split(': ', 1)[0]})") if label else None
    found = own or next((r for k, r in runs.items() if k.startswith(f"{command} (")), None)
    return found if isinstance(found, Run) else None


def read_sweep(sweep: Sweep, out: Path) -> dict[str, Run | str]:
    """Label -> finished run, or the reason it has none (failed, not run)."""
    try:
        plan = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}
    found: dict[str, Run | str] = {}
    for entry in plan["runs"]:
        label = label_of(sweep, entry["name"], entry["command"])
        if entry["status"] != "done":
            found[label] = f"{entry['status']}: {entry.get('result') or ''}"[:200]
            continue
        run_dir = out / entry["name"]
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if summary["mode"] == "federated" else []
        found[label] = Run(label, summary, [json.loads(x) for x in lines], run_dir)
    return found


def case_runs(case: Case, quick: bool, work: Path) -> dict[str, Run | str]:
    """Every run of the case's sweeps, baselines included (each labelled with its sweep)."""
    runs: dict[str, Run | str] = {}
    for sweep in case.sweeps:
        if sweep.quick or not quick:
            found = read_sweep(sweep, sweep_dir(work, sweep_args(case, sweep, quick)))
            runs.update((k, v) for k, v in found.items() if k not in runs)
    return runs


# ------------------------------------------------------------------ judging


def gaps(point: dict, ref: dict) -> tuple[float, float]:
    """Accuracy and macro-F1 minus the reference's, in points."""
    return 100 * (point["accuracy"] - ref["accuracy"]), 100 * (point["macro_f1"] - ref["macro_f1"])


def first_round(run: Run, ok: Callable[[dict], bool]) -> int | None:
    """The first round (from 1) whose metrics pass `ok`."""
    return next((line["round"] for line in run.rounds[1:] if ok(line)), None)


def at_majority(values: dict, summary: dict) -> bool:
    """Whether `values` are (within half a point) the always-majority-class model's."""
    metric, majority = headline_metric(summary), summary.get("majority_class") or {}
    return metric in majority and values[metric] <= majority[metric] + 0.005


def near_centralized(target: NearCentralized, run: Run, ref: Run) -> tuple[bool | None, str]:
    point = ref.final
    if at_majority(point, ref.summary):
        return None, "the centralized reference is at the majority class"
    limits = (target.acc, target.f1)

    def within(line: dict) -> bool:
        pairs = zip(gaps(line, point), limits, strict=True)
        return all(limit is None or gap >= -limit - EPS for gap, limit in pairs)

    reached = first_round(run, within)
    gap = gaps(run.summary["final"], point)
    text = f"final {gap[0]:+.1f} / {gap[1]:+.1f} pts vs centralized after {point['rounds']} rounds"
    met = reached is not None
    if met:
        ratio = reached / max(point["rounds"], 1)
        text += f"; within at round {reached} ({ratio:.2g}x its examples)"
        met = target.max_examples is None or ratio <= target.max_examples + 1e-9
    if target.every_class:
        per_class = run.rounds[-1].get("fairness", {}).get("per_class_f1", {})
        zero = sorted(name for name, f1 in per_class.items() if not f1)
        met = met and bool(per_class) and not zero
        text += f"; F1 = 0 on {', '.join(zero)}" if zero else "; every class F1 > 0"
    return met, text


def matches_reference(target: MatchesReference, run: Run, ref: Run) -> tuple[bool, str]:
    point, ref_spent = ref.summary["final"], spent_by_round(ref.rounds)[-1]
    reached = first_round(run, lambda line: min(gaps(line, point)) >= -target.points - EPS)
    if reached is None:
        gap = gaps(run.summary["final"], point)
        return False, f"not within {target.points:g} pt (final {gap[0]:+.1f} / {gap[1]:+.1f})"
    spent = spent_by_round(run.rounds)[reached]
    share = spent["bytes"] / ref_spent["bytes"]
    wall = spent["wall_seconds"] / ref_spent["wall_seconds"]
    met = share <= target.max_bytes and (target.max_wall is None or wall <= target.max_wall)
    return met, (
        f"within at round {reached}: {size(spent['bytes'])} ({share:.2%} of the reference's "
        f"{size(ref_spent['bytes'])}), {spent['wall_seconds']:.0f} s ({wall:.2f}x)"
    )


def above_majority(target: AboveMajority, run: Run, paired: Run | None) -> tuple[bool, str]:
    metric, final = headline_metric(run.summary), run.summary["final"]
    floor = run.summary["majority_class"][metric] + target.margin
    met, text = final[metric] >= floor, f"{metric} {final[metric]:.3f} vs {floor:.3f}"
    if target.max_epsilon is not None:
        epsilon = (run.summary.get("privacy") or {}).get("epsilon")
        met = met and epsilon is not None and epsilon <= target.max_epsilon
        text += f"; epsilon {epsilon:.2f}" if epsilon is not None else "; no epsilon"
    if target.paired:
        if paired is None:
            return False, text + f"; {target.paired} not run"
        gap = gaps(final, paired.summary["final"])
        met = met and max(map(abs, gap)) <= target.paired_points + EPS
        text += f"; vs {target.paired} {gap[0]:+.1f} / {gap[1]:+.1f} pts"
    return met, text


def judge(case: Case, run: Run, runs: dict, reference: Run | None) -> tuple[str, str]:
    """(met | missed | no reference, why) for one run of the case."""
    target = case.target
    if isinstance(target, AboveMajority):
        paired = runs.get(target.paired) if target.paired else None
        return _verdict(above_majority(target, run, paired if isinstance(paired, Run) else None))
    if reference is None:
        return "no reference", ""
    if isinstance(target, MatchesReference):
        return _verdict(matches_reference(target, run, reference))
    return _verdict(near_centralized(target, run, reference))


def _verdict(result: tuple[bool | None, str]) -> tuple[str, str]:
    return {True: "met", False: "missed", None: "no verdict"}[result[0]], result[1]


def centralized_of(case: Case, runs: dict, label: str, quick: bool, work: Path) -> Run | None:
    """A run's centralized reference: its sweep's, or that of the case the case names."""
    if case.centralized_from:
        other = next(c for c in CASES if c.name == case.centralized_from)
        return baseline(case_runs(other, quick, work), "centralized")
    return baseline(runs, "centralized", label)


def case_rows(case: Case, quick: bool, work: Path) -> list[dict]:
    """One row per run of the case (its sweep's baselines as columns), with its verdict."""
    runs, target = case_runs(case, quick, work), case.target
    finished = [r for r in runs.values() if isinstance(r, Run)]
    not_judged = {getattr(target, "reference", None), getattr(target, "paired", None)}
    rows = []
    for label, run in runs.items():
        if label.startswith(tuple(f"{command} (" for command in BASELINES)):
            continue
        centralized = centralized_of(case, runs, label, quick, work)
        local = baseline(runs, "local", label)
        row = {"case": case.name, "title": case.title, "run": label, "target": target.text()}
        row["centralized"] = centralized.final if centralized else None
        row["local"] = local.summary["final"] if local else None
        own = run if isinstance(run, Run) else (finished or [None])[0]
        row["majority"] = own.summary["majority_class"] if own else None
        if isinstance(run, str):
            row["result"], row["why"] = "not finished", run
        elif label in not_judged:
            row |= _measured(run) | {"result": "reference", "why": ""}
        else:
            row |= _measured(run)
            reference = centralized
            if isinstance(target, MatchesReference):
                found = runs.get(target.reference)
                reference = found if isinstance(found, Run) else None
            row["result"], row["why"] = judge(case, run, runs, reference)
        rows.append(row)
    return rows


def _measured(run: Run) -> dict:
    spent = spent_by_round(run.rounds)[-1] if run.rounds else {}
    cost = run.summary.get("cost_to_target")
    return {
        "final": run.summary["final"],
        "rounds": run.summary.get("rounds_completed"),
        "wall_seconds": run.summary.get("wall_seconds"),
        "bytes": spent.get("bytes"),
        "cost_to_target": cost,
        "run_dir": shown(run.run_dir),
    }


# ------------------------------------------------------------------ the page


def _pair(values: dict | None) -> str:
    if not values:
        return "-"
    pair = f"{values['accuracy']:.3f} / {values['macro_f1']:.3f}"
    converged = values.get("converged_rounds")
    return pair + (f" (converged, {converged} rounds)" if converged else "")


def _local(values: dict | None) -> str:
    if not values:
        return "-"
    own = values.get("val_accuracy"), values.get("val_macro_f1")
    return _pair(values) + (f" (own val {own[0]:.3f} / {own[1]:.3f})" if None not in own else "")


def _result(row: dict) -> str:
    result = row["result"]
    text = f"**{result}**" if result in ("met", "missed") else result
    return f"{text}: {row['why']}" if row["why"] else text


COLUMNS = [
    "run",
    "acc / macro-F1",
    "rounds, wall, bytes",
    "majority class",
    "centralized (stronger run)",
    "local-only: test (own val)",
    "result",
]


def _cells(row: dict) -> list[str]:
    majority = row["majority"]
    spent = "-"
    if "final" in row:
        spent = f"{row['rounds']}, {row['wall_seconds']:.0f} s"
        spent += f", {size(row['bytes'])}" if row.get("bytes") else ""
    return [
        row["run"],
        _pair(row.get("final")),
        spent,
        f"{majority['accuracy']:.3f} / {majority['macro_f1']:.3f} ({majority['label']})"
        if majority
        else "-",
        _pair(row["centralized"]),
        _local(row["local"]),
        _result(row),
    ]


def case_section(case: Case, rows: list[dict]) -> str:
    met = [row["run"] for row in rows if row["result"] == "met"]
    verdict = f"**met** by {', '.join(met)}" if met else "**not met** by any run"
    if not rows:
        verdict = "not run"
    lines = [
        f"### {case.title} (`{case.name}`)",
        f"Target: {case.target.text()}. {verdict}.",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:])


def markdown(sections: list[str], sweeps: dict[Path, list[str]], quick: bool) -> str:
    mode = "--quick (smoke: small data, 1 round; not results)" if quick else "full"
    commands = [
        f"- `{shlex.join(['fedtune', 'sweep', *args, '--output', shown(out)])}`"
        for out, args in sweeps.items()
        if (out / "sweep.json").is_file()
    ]
    intro = (
        "Accuracy / macro-F1 on the server's test split at the end of each run; the "
        "centralized reference is the stronger of its same-budget and converged runs. Cost: "
        "rounds, wall seconds (rounds only, as metrics.jsonl records them) and bytes up + down "
        "of all clients. Local-only: each client trained alone, the mean over clients on the "
        "test split and on their own validation splits."
    )
    stamp = datetime.now().isoformat(timespec="seconds")
    head = [
        "# Quality benchmark (`bench/quality.py`)",
        f"Mode: {mode}. Machine: {os.cpu_count()} CPUs, {platform.platform(terse=True)}; {stamp}.",
        intro,
    ]
    return "\n\n".join([*head, *sections, "## Commands", "\n".join(commands)]) + "\n"


def plot(curves: list[tuple[str, list[float], list[float]]], path: Path) -> None:
    """Accuracy against cumulative bytes (log x), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, sent, accuracy in curves:
        ax.plot(sent, accuracy, marker="o", label=name)
    ax.set(xscale="log", xlabel="cumulative bytes, up + down (all clients)")
    ax.set(ylabel="test accuracy after the round", title="Bytes to accuracy (quickstart)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves(cases: list[Case], quick: bool, work: Path) -> list[tuple[str, list, list]]:
    found = {}
    for case in cases:
        if case.name in PLOTTED:
            for label, run in case_runs(case, quick, work).items():
                if isinstance(run, Run) and run.rounds:
                    sent = [s["bytes"] for s in spent_by_round(run.rounds)][1:]
                    found[label] = (label, sent, [line["accuracy"] for line in run.rounds[1:]])
    return list(found.values())


def write_page(cases: list[Case], quick: bool, paths: dict[str, Path]) -> None:
    """The page (markdown, printed too), its JSON rows and the plot, from the run dirs."""
    sections, rows = [], []
    for case in cases:
        found = case_rows(case, quick, paths["work"])
        rows += found
        sections.append(case_section(case, found))
    text = markdown(sections, planned(cases, quick, paths["work"]), quick)
    paths["md"].write_text(text)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(terse=True)}
    record = {"machine": machine, "rows": rows}
    paths["json"].write_text(json.dumps(record, indent=2, default=str) + "\n")
    print("\n" + "\n\n".join(sections))
    lines = curves(cases, quick, paths["work"])
    if lines:
        plot(lines, paths["png"])


# ------------------------------------------------------------------ main


def output_paths(quick: bool) -> dict[str, Path]:
    stem = "quality-quick" if quick else "quality"
    return {
        "json": HERE / f"{stem}.json",
        "md": HERE / f"{stem}.md",
        "png": HERE / f"{stem}_bytes.png",
        "work": ROOT / "runs" / stem,
    }


def selected(names: list[str] | None) -> list[Case]:
    by_name = {case.name: case for case in CASES}
    unknown = sorted(set(names or []) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; cases: {', '.join(by_name)}")
    return [by_name[name] for name in dict.fromkeys(names)] if names else CASES


def main(argv: list[str] | None = None, runner: Callable[[list[str]], int] = run_fedtune) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on small data")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="these cases only")
    parser.add_argument("--dry-run", action="store_true", help="print and validate the sweeps")
    parser.add_argument("--table", action="store_true", help="only rebuild the page")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    paths, cases = output_paths(args.quick), selected(args.only)
    sweeps = planned(cases, args.quick, paths["work"])
    if args.dry_run:
        return dry_run(sweeps)
    for out, sweep in sweeps.items() if not args.table else ():
        argv_ = command(out, sweep)
        print(f"$ fedtune {shlex.join(argv_)}", flush=True)
        code = runner(argv_)
        if code not in (0, 1):  # 1: some runs failed (the table says which); 2: a bad sweep
            raise SystemExit(f"fedtune sweep exited {code}; stopping")
    write_page(CASES, args.quick, paths)  # every case: what has not run says so
    print(f"\n{shown(paths['md'])} written")


def dry_run(sweeps: dict[Path, list[str]]) -> None:
    """Each sweep's command, and every run of it validated as it would run."""
    from fedtune.config import ScenarioError
    from fedtune.launch.sweep import SweepPlan, parse_grid, validate

    for out, args in sweeps.items():
        state = "started" if (out / "sweep.json").is_file() else "to run"
        print(f"[{state}] fedtune {shlex.join(command(out, args))}")
        grid = [args[i + 1] for i, a in enumerate(args) if a == "--grid"]
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        plan = SweepPlan(args[0], parse_grid(grid), sets, "--with-baselines" in args)
        plan.plan_runs()
        try:
            validate(plan)
        except ScenarioError as exc:
            raise SystemExit(f"invalid sweep: {exc}") from None
    print(f"{len(sweeps)} sweeps")


if __name__ == "__main__":
    main()
