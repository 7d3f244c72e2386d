"""Run outputs (written atomically) and live progress in the terminal."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from fedtune.config import Scenario

CENTRAL_KEYS = ("accuracy", "macro_f1", "loss")


def default_run_dir(scenario: Scenario, mode: str = "") -> Path:
    """`output.dir`, else `runs/<name>[-mode]-<timestamp>/`."""
    if scenario.output.dir:
        return Path(scenario.output.dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "-".join(p for p in (scenario.name, mode, stamp) if p)


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temp file + rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def save_dir_atomic(path: Path, save: callable) -> None:
    """`save(tmp_dir)` then swap it in for `path` (e.g. a `save_pretrained` model dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp.chmod(0o755)
        save(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Progress:
    """Round-by-round progress on stderr: phase, clients done, accuracy, elapsed and ETA."""

    def __init__(self, total_rounds: int, quiet: bool = False) -> None:
        self.total = total_rounds
        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.status = self.console.status("starting", spinner="dots")
        self.start = time.monotonic()
        self.round_start = self.start
        self.round_seconds: list[float] = []

    def __enter__(self) -> Progress:
        self.status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.__exit__(*exc)

    def _eta(self) -> str:
        if not self.round_seconds:
            return ""
        per_round = sum(self.round_seconds) / len(self.round_seconds)
        left = per_round * (self.total - len(self.round_seconds))
        return f", ETA {left:.0f}s"

    def update(self, server_round: int, text: str) -> None:
        elapsed = time.monotonic() - self.start
        self.status.update(
            f"round {server_round}/{self.total} {text} [{elapsed:.0f}s elapsed{self._eta()}]"
        )

    def phase(self, server_round: int, what: str, done: int, total: int) -> None:
        self.update(server_round, f"{what}: {done}/{total} clients done")

    def round_done(self, server_round: int, metrics: dict) -> float:
        """Print the round's line; return its wall seconds."""
        now = time.monotonic()
        seconds = now - self.round_start
        self.round_start = now
        if server_round > 0:
            self.round_seconds.append(seconds)
        self.console.print(
            f"round {server_round}/{self.total}  accuracy {metrics['accuracy']:.4f}  "
            f"macro-F1 {metrics['macro_f1']:.4f}  loss {metrics['loss']:.4f}  "
            f"({seconds:.1f}s)"
        )
        return seconds


class RunRecorder:
    """Collects per-round metrics and writes summary.json, metrics.jsonl, partition.json
    and the model directory into one run directory."""

    def __init__(self, run_dir: Path, scenario: Scenario, mode: str, num_clients: int) -> None:
        self.run_dir = Path(run_dir)
        self.scenario = scenario
        self.mode = mode
        self.num_clients = num_clients
        self.history: list[dict] = []
        self.lines: list[str] = []
        self.clients: dict[str, list[dict]] = {"train": [], "evaluate": []}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "scenario.json", scenario.model_dump(mode="json"))

    def write_partition(self, table: dict) -> None:
        write_json(self.run_dir / "partition.json", table)

    def client_reply(self, kind: str, metrics: dict) -> None:
        self.clients[kind].append(metrics)

    def round_done(
        self, server_round: int, central: dict, seconds: float, federated: dict | None = None
    ) -> None:
        """Close a round: append its line to metrics.jsonl and refresh summary.json."""
        entry = {"round": server_round, **{k: central[k] for k in CENTRAL_KEYS}}
        entry["seconds"] = round(seconds, 3)
        self.history.append(entry)
        line = {
            **entry,
            "central": central,
            "federated_evaluate": federated or {},
            "clients": self.clients,
        }
        self.clients = {"train": [], "evaluate": []}
        self.lines.append(json.dumps(line))
        write_atomic(self.run_dir / "metrics.jsonl", "\n".join(self.lines) + "\n")
        self.write_summary()

    def save_model(self, model: Any, tokenizer: Any) -> None:
        def save(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        save_dir_atomic(self.run_dir / "model", save)

    def write_summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        model_dir = self.run_dir / "model"
        summary = {
            "scenario": self.scenario.name,
            "mode": self.mode,
            "num_clients": self.num_clients,
            "rounds_completed": max(0, len(self.history) - 1),
            "final": {k: last.get(k) for k in CENTRAL_KEYS},
            "history": self.history,
            "model_dir": str(model_dir) if model_dir.is_dir() else None,
            "wall_seconds": round(sum(h["seconds"] for h in self.history), 3),
            "run_dir": str(self.run_dir),
        }
        write_json(self.run_dir / "summary.json", summary)
        return summary
