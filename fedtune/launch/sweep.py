"""`fedtune sweep`: a scenario run once per point of a grid of `--set` overrides (one run at
a time, or several at once), optionally with the centralized and local-only baselines once,
each run a `fedtune` command in its own process and directory. `sweep.json` records the
plan and every run's outcome as it ends, so an interrupted sweep resumes without rerunning
a finished run (an interrupted federated run continues from its checkpoint); the end is a
`fedtune compare` of every finished run, cost to target included.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedtune.atomic import write_atomic
from fedtune.config import ScenarioError, load_scenario, parse_override
from fedtune.errors import FedtuneError, cut, short
from fedtune.federation.server.checkpoint import checkpoint_dir
from fedtune.runs.directory import lock_dir, lock_holder

SWEEP_FILE = "sweep.json"
BASELINES = ("centralized", "local")
"""Run once, on the base scenario (its `--set` overrides, no grid value), with
`--with-baselines`."""


class SweepFailed(FedtuneError):
    """Some runs of the sweep failed; the others' results and the comparison are written."""

    exit_code = 1


def split_values(text: str) -> list[str]:
    """`a,b,[c, d],{e: f}` -> `['a', 'b', '[c, d]', '{e: f}']`: commas inside brackets,
    braces or quotes separate nothing."""
    values, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += char
    return [*values, current.strip()]


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`--grid KEY=V1,V2` items -> (key, values as typed); one line for an empty value list
    or a key given twice."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(f"--grid {short(item)}: expected dotted.key=V1,V2,...")
        values = split_values(raw)
        if not all(values):
            raise ScenarioError(f"--grid {cut(key, 80)}: an empty value in {short(raw)}")
        if key in grid:
            raise ScenarioError(f"--grid {cut(key, 80)}: given twice")
        grid[key] = values
    if not grid:
        raise ScenarioError("give at least one --grid KEY=V1,V2,...")
    return list(grid.items())


@dataclass
class SweepRun:
    """One command of the sweep and what became of it."""

    name: str
    command: str
    sets: list[str]
    """Its `--set KEY=VALUE` items: the base ones, then its grid point's."""
    status: str = "pending"
    """pending | done | failed."""
    seconds: float | None = None
    result: str | None = None
    """The command's closing line (its metrics), or its error."""


@dataclass
class SweepPlan:
    """What `fedtune sweep` was asked, as sweep.json keeps it (and `--resume` reads it)."""

    scenario: str
    grid: list[tuple[str, list[str]]]
    sets: list[str] = field(default_factory=list)
    with_baselines: bool = False
    target: float | None = None
    runs: list[SweepRun] = field(default_factory=list)

    def plan_runs(self) -> None:
        """The baselines first (a run's cost to target defaults to the centralized one's),
        then each grid point, named by its index and values."""
        self.runs = [SweepRun(c, c, list(self.sets)) for c in BASELINES if self.with_baselines]
        keys = [key for key, _ in self.grid]
        for index, values in enumerate(itertools.product(*(v for _, v in self.grid)), 1):
            pairs = list(zip(keys, values, strict=True))
            label = "_".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in pairs)
            name = f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.=+-]+', '', label)[:80]}"
            point = [f"{key}={value}" for key, value in pairs]
            self.runs.append(SweepRun(name, "run", [*self.sets, *point]))


def validate(plan: SweepPlan) -> None:
    """Every run's scenario, loaded as it will run: the first that fails is one line naming
    its run, before anything starts."""
    for run in plan.runs:
        overrides = dict(parse_override(item) for item in run.sets)
        try:
            load_scenario(plan.scenario, overrides)
        except ScenarioError as exc:
            raise ScenarioError(f"sweep run {run.name}: {exc}") from None


def read_plan(sweep_dir: Path) -> SweepPlan:
    """The plan of an earlier sweep (`--resume`); one line when there is none or it is
    damaged."""
    path = sweep_dir / SWEEP_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        runs = [SweepRun(**run) for run in raw.pop("runs")]
        plan = SweepPlan(**raw, runs=runs)
        plan.grid = [(str(key), [str(v) for v in values]) for key, values in plan.grid]
        _check_runs(plan.runs)
    except FileNotFoundError:
        raise ScenarioError(f"{sweep_dir}: not a fedtune sweep (no {SWEEP_FILE})") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ScenarioError(
            f"{path}: damaged ({type(exc).__name__}: {cut(str(exc), 80)})"
        ) from None
    return plan


RUN_NAME = re.compile(r"[A-Za-z0-9_.=+-]+")
COMMANDS = ("run", *BASELINES)


def _check_runs(runs: list[SweepRun]) -> None:
    """A run of a sweep.json read back names a directory inside the sweep and one of the
    sweep's commands (the file may have been edited: nothing outside the sweep is touched)."""
    for run in runs:
        if not RUN_NAME.fullmatch(run.name) or set(run.name) == {"."}:
            raise ValueError(f"run name {short(run.name)}")
        if run.command not in COMMANDS or run.status not in ("pending", "done", "failed"):
            raise ValueError(
                f"run {run.name}: command {short(run.command)}, status {short(run.status)}"
            )
        if not all(isinstance(item, str) and "=" in item for item in run.sets):
            raise ValueError(f"run {run.name}: sets")


def save_plan(plan: SweepPlan, sweep_dir: Path) -> None:
    write_atomic(sweep_dir / SWEEP_FILE, json.dumps(asdict(plan), indent=2) + "\n")


def argv(plan: SweepPlan, run: SweepRun, sweep_dir: Path, ray_address: str | None) -> list[str]:
    """The `fedtune` arguments of one run: a fresh one, or `run --resume` of an
    interrupted federated run with a checkpoint."""
    run_dir = sweep_dir / run.name
    if run.command == "run" and run_dir.is_dir() and checkpoint_dir(run_dir) is not None:
        args = ["run", "--resume", str(run_dir)]
    else:
        sets = [part for item in run.sets for part in ("--set", item)]
        args = [run.command, plan.scenario, *sets, "--output", str(run_dir)]
        if plan.target is not None and run.command != "local":
            args += ["--target", str(plan.target)]
    if ray_address and run.command == "run":
        args += ["--ray-address", ray_address]
    return [*args, "--quiet"]


def _fresh_dir(run_dir: Path) -> None:
    """Clear a run directory the sweep made and no finished run or checkpoint holds (a run
    killed before its first checkpoint); refuse a link planted in its place."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise ScenarioError(f"{run_dir}: not a directory the sweep made; remove it")
    if run_dir.is_dir() and (pid := lock_holder(run_dir)) is not None:
        raise ScenarioError(f"{run_dir}: process {pid or '?'} still runs there; stop it first")
    if run_dir.is_dir() and checkpoint_dir(run_dir) is None:
        shutil.rmtree(run_dir)


Launch = Callable[[list[str]], tuple[int, str]]
"""Runs `fedtune ARGS`; returns its exit code and its output (stdout and stderr)."""


class _Children:
    """The sweep's running `fedtune` processes, stopped (SIGTERM: each ends cleanly, its
    checkpoint kept) when the sweep is interrupted."""

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def launch(self, args: list[str]) -> tuple[int, str]:
        cmd = [sys.executable, "-m", "fedtune.cli", *args]
        with self.lock:
            if self.stopping:
                return 130, "fedtune: interrupted"
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # Ctrl-C reaches the sweep, which stops each child
            )
            self.procs.add(proc)
        output, _ = proc.communicate()
        with self.lock:
            self.procs.discard(proc)
        return proc.returncode, output

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()


def _closing_line(output: str) -> str:
    """fedtune's error line where there is one, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("fedtune: error")]
    return cut((errors or lines or ["(no output)"])[-1], 300)


def run_sweep(
    plan: SweepPlan,
    sweep_dir: Path,
    parallel: int = 1,
    ray_address: str | None = None,
    quiet: bool = False,
    launch: Launch | None = None,
) -> Path:
    """Run every pending or failed run of `plan` (`parallel` at once), recording each in
    sweep.json as it ends, then compare the finished ones in `sweep_dir`. SweepFailed when
    a run failed; KeyboardInterrupt stops the running ones (resumable)."""
    lock_dir(sweep_dir, "sweep")  # one sweep at a time in it, until this process ends
    children = _Children()
    launch = launch or children.launch
    todo = [run for run in plan.runs if run.status != "done"]
    for run in todo:
        _fresh_dir(sweep_dir / run.name)
    save_plan(plan, sweep_dir)

    def one(run: SweepRun) -> SweepRun:
        started = time.perf_counter()
        code, output = launch(argv(plan, run, sweep_dir, ray_address))
        finished = (sweep_dir / run.name / "summary.json").is_file()
        run.status = "done" if code == 0 and finished else "failed"
        run.seconds, run.result = time.perf_counter() - started, _closing_line(output)
        return run

    queue, running, count = iter(todo), set(), 0
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        while True:  # at most `parallel` submitted: an interrupt leaves the rest pending
            running |= {
                pool.submit(one, run) for run in itertools.islice(queue, parallel - len(running))
            }
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run, count = future.result(), count + 1
                save_plan(plan, sweep_dir)
                if not quiet:
                    print(
                        f"[{count}/{len(todo)}] {run.name} {run.status} ({run.seconds:.0f} s): "
                        f"{run.result}",
                        flush=True,
                    )
    except BaseException:
        children.stop()
        pool.shutdown(wait=True)
        save_plan(plan, sweep_dir)
        raise
    pool.shutdown()
    return finish(plan, sweep_dir)


def finish(plan: SweepPlan, sweep_dir: Path) -> Path:
    """`fedtune compare` of the finished runs into the sweep directory; SweepFailed (after
    it) naming the runs that failed."""
    from fedtune.runs.compare import compare

    done = [sweep_dir / run.name for run in plan.runs if run.status == "done"]
    report = compare(done, sweep_dir) if done else sweep_dir / SWEEP_FILE
    failed = [run.name for run in plan.runs if run.status == "failed"]
    if failed:
        raise SweepFailed(
            f"{len(failed)} of {len(plan.runs)} sweep runs failed ({', '.join(failed)}; "
            f"see {sweep_dir / SWEEP_FILE}); rerun them with fedtune sweep --resume {sweep_dir}"
        )
    return report
