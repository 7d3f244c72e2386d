"""Cached `fedtune` commands for the benchmarks that tabulate single commands
(bench/privacy.py, bench/recommendation.py): each command's result is recorded in a JSON
file as soon as it ends, keyed by the command, so an interrupted benchmark resumes where it
stopped; a failed command is recorded with its error (and retried next time). The quality
benchmark runs `fedtune sweep` instead, which resumes by itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 6 * 3600
"""One command's limit; past it the command gets SIGTERM (fedtune stops Ray cleanly)."""

Value = str | int | float | bool
Overrides = dict[str, Value]


def yaml_value(value: Value) -> str:
    """An override value as typed after `--set key=` (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Invocation:
    """One `fedtune` command: run | centralized | local, a scenario and its overrides."""

    command: str
    scenario: str
    overrides: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(cls, command: str, scenario: str, overrides: Overrides) -> Invocation:
        return cls(
            command, scenario, tuple(sorted((k, yaml_value(v)) for k, v in overrides.items()))
        )

    def args(self) -> list[str]:
        """The arguments after `fedtune`, without --output and --quiet; the centralized
        reference also trains to convergence (the stronger of its two runs is the one used)."""
        sets = [item for key, value in self.overrides for item in ("--set", f"{key}={value}")]
        converged = ["--converged"] if self.command == "centralized" else []
        return [self.command, self.scenario, *sets, *converged]

    def argv(self, output: Path) -> list[str]:
        return [*self.args(), "--output", str(output), "--quiet"]

    def key(self, quick: bool) -> str:
        """The cache key: the command as typed, plus the mode."""
        return shlex.join(["fedtune", *self.args()]) + (" [quick]" if quick else "")

    def shell(self, output: Path) -> str:
        """The command to quote, with its output dir relative to the repository."""
        return shlex.join(["fedtune", *self.argv(Path(shown_path(output)))])

    def get(self, key: str) -> str | None:
        return dict(self.overrides).get(key)


def shown_path(path: Path) -> str:
    """A path relative to the repository where it lies inside it."""
    full = path.resolve()
    return str(full.relative_to(ROOT) if full.is_relative_to(ROOT) else path)


def run_dir_for(work: Path, inv: Invocation, quick: bool) -> Path:
    """A stable run directory per command: readable name + hash of the key."""
    digest = hashlib.sha1(inv.key(quick).encode()).hexdigest()[:8]
    label = inv.get("federation.strategy") or inv.get("codec.kind") or ""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{inv.command}-{inv.scenario}-{label}").strip("-")
    return work / f"{name}-{digest}"


# ------------------------------------------------------------------ running


class RunFailed(RuntimeError):
    """A fedtune command exited non-zero (or ran past its limit)."""


def _error_line(output: str) -> str:
    """fedtune's one-line error where there is one, else the last line of output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("fedtune: error")]
    return (errors or lines or ["(no output)"])[-1][:400]


def run_fedtune(argv: list[str], timeout: float = TIMEOUT_S) -> None:
    """`fedtune ARGV` in a subprocess; raise RunFailed when it fails or times out."""
    cmd = [sys.executable, "-m", "fedtune.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise RunFailed(f"timed out after {timeout:.0f}s") from None
    except BaseException:  # Ctrl-C: fedtune gets the same signal from the terminal
        proc.wait()
        raise
    if proc.returncode:
        raise RunFailed(f"exit {proc.returncode}: {_error_line(output)}")


def _majority(test_counts: dict[str, int]) -> dict:
    label = max(test_counts, key=lambda name: test_counts[name])
    return {"label": label, "share": test_counts[label] / sum(test_counts.values())}


def _bytes(lines: list[dict]) -> dict:
    """Bytes up: all clients per round (index = round) and the mean per client per round."""
    sent = [c["bytes_up"] for line in lines[1:] for c in line["clients"]["train"]]
    return {
        "bytes_up_rounds": [line.get("bytes_up", 0) for line in lines],
        "bytes_up_per_client_round": sum(sent) / len(sent) if sent else None,
    }


def stronger_final(summary: dict) -> dict:
    """The final metrics, or a centralized run's converged ones where its headline metric is
    higher (marked `converged_rounds`)."""
    from fedtune.runs.cost import headline_metric

    final, converged = summary["final"], summary.get("converged")
    metric = headline_metric(summary)
    if converged and converged["final"].get(metric, 0.0) > (final.get(metric) or 0.0):
        return {**converged["final"], "converged_rounds": converged["rounds"]}
    return final


def read_run(run_dir: Path) -> dict:
    """What the table and plot need from a run directory's summary, metrics, partition."""
    summary = json.loads((run_dir / "summary.json").read_text())
    record: dict[str, Any] = {
        "mode": summary["mode"],
        "final": stronger_final(summary),
        "history": [
            {k: h[k] for k in ("round", "accuracy", "macro_f1", "loss")}
            for h in summary.get("history", [])
        ],
        "wall_seconds": summary.get("wall_seconds"),
        "run_dir": shown_path(run_dir),
    }
    if summary["mode"] == "federated":
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        record.update(_bytes(lines))
        record["bytes_up_total"] = summary.get("bytes_up_total")
    partition = run_dir / "partition.json"
    if partition.exists():
        record["majority"] = _majority(json.loads(partition.read_text())["test"])
    return record


class Cache:
    """The results file: command key -> record, rewritten atomically after each command."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        self.data: dict[str, Any] = {"invocations": {}}
        if path.exists():
            self.data = json.loads(path.read_text())
            self.data.setdefault("invocations", {})
        self.fresh = fresh
        self._done: set[str] = set()  # run in this session (--fresh reruns a command once)

    def get(self, key: str) -> dict | None:
        return self.data["invocations"].get(key)

    def usable(self, key: str) -> bool:
        """Recorded, not failed, and not to be redone under --fresh."""
        record = self.get(key)
        if record is None or "error" in record:
            return False
        return not self.fresh or key in self._done

    def put(self, key: str, record: dict) -> None:
        self.data["invocations"][key] = record
        self._done.add(key)
        self.save()

    def save(self) -> None:
        self.data["updated"] = datetime.now().isoformat(timespec="seconds")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


Runner = Callable[[list[str]], None]


def execute(inv: Invocation, quick: bool, cache: Cache, work: Path, runner: Runner) -> dict:
    """The command's record: from the cache, else run it (a failure is recorded too)."""
    key = inv.key(quick)
    out = run_dir_for(work, inv, quick)
    if cache.usable(key):
        print(f"  cached: {inv.shell(out)}", flush=True)
        return cache.get(key)
    if out.exists():  # a directory of ours from an interrupted or failed attempt
        shutil.rmtree(out)
    print(f"$ {inv.shell(out)}", flush=True)
    start = time.monotonic()
    try:
        runner(inv.argv(out))
        record = read_run(out)
    except RunFailed as exc:
        record = {"error": str(exc)}
    except (OSError, ValueError, KeyError) as exc:  # it exited 0 but its outputs are unreadable
        record = {"error": f"{type(exc).__name__}: {exc}"}
    record["command"] = inv.shell(out)
    record["bench_seconds"] = round(time.monotonic() - start, 1)
    cache.put(key, record)
    print(f"  -> {_outcome(record)} ({record['bench_seconds']:.0f}s)", flush=True)
    return record


def _outcome(record: dict) -> str:
    if "error" in record:
        return f"FAILED: {record['error']}"
    final = record["final"]
    return f"accuracy {final['accuracy']:.4f}, macro-F1 {final['macro_f1']:.4f}"


def client_error_rounds(record: dict) -> list[int]:
    """Rounds of a federated run in which some client failed to reply to training (a worker
    killed, e.g. for memory), read from its run directory: its figures there are suspect."""
    path = ROOT / record.get("run_dir", "-") / "metrics.jsonl"
    if record.get("mode") != "federated" or not path.is_file():
        return []
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [
        line["round"]
        for line in lines
        if line.get("failures", {}).get("train", {}).get("errors", 0)
    ]
