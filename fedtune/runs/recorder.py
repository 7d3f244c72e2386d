"""Run outputs (written atomically) and live progress in the terminal."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from fedtune.atomic import make_dir, open_file, save_dir_atomic, write_atomic, write_json
from fedtune.config import Scenario
from fedtune.modeling.metrics import (
    CENTRAL_KEYS,
    TASK_KEYS,
    fairness_metrics,
    label_supports,
    majority_baseline,
)
from fedtune.runs.cost import cost_to_target, headline_metric

LOGGERS = ("flwr", "fedtune")
log = logging.getLogger("fedtune")
log.setLevel(logging.INFO)
log.propagate = False  # the console gets rich output; the run dir gets run.log


def default_run_dir(scenario: Scenario, mode: str = "") -> Path:
    """`output.dir`, else `runs/<name>[-mode]-<timestamp>/`."""
    if scenario.output.dir:
        return Path(scenario.output.dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "-".join(p for p in (scenario.name, mode, stamp) if p)


class Progress:
    """Round-by-round progress on stderr: phase, clients done, accuracy, elapsed and ETA."""

    def __init__(self, total_rounds: int, quiet: bool = False) -> None:
        self.total = total_rounds
        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.warnings = Console(stderr=True, highlight=False)
        self.status = self.console.status("starting", spinner="dots")
        self.start = time.monotonic()
        self.round_start = self.start
        self.round_seconds: list[float] = []
        self.accuracy = ""

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
            f"round {server_round}/{self.total} {text}{self.accuracy} "
            f"[{elapsed:.0f}s elapsed{self._eta()}]"
        )

    def phase(self, server_round: int, what: str, done: int, total: int) -> None:
        self.update(server_round, f"{what}: {done}/{total} clients done")

    def warn(self, text: str) -> None:
        """Failures are shown even with --quiet (and logged to run.log)."""
        console = self.warnings if self.console.quiet else self.console  # under the status
        console.print(f"[yellow]{text}[/yellow]", markup=True)
        log.warning(text)

    def round_done(self, server_round: int, metrics: dict) -> float:
        """Print the round's line; return its wall seconds."""
        now = time.monotonic()
        seconds = now - self.round_start
        self.round_start = now
        if server_round > 0:
            self.round_seconds.append(seconds)
        line = (
            f"round {server_round}/{self.total}  accuracy {metrics['accuracy']:.4f}  "
            f"macro-F1 {metrics['macro_f1']:.4f}  loss {metrics['loss']:.4f}  ({seconds:.1f}s)"
        )
        self.accuracy = f", accuracy {metrics['accuracy']:.4f} after round {server_round}"
        self.line(line)
        return seconds

    def line(self, text: str) -> None:
        """Print one result line and log it to run.log."""
        self.console.print(text)
        log.info(text)


class _RunLog(logging.FileHandler):
    """run.log, appended to (a resumed run continues it), never opened through a link."""

    def _open(self) -> IO[str]:
        fd = open_file(Path(self.baseFilename), os.O_APPEND)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class RunRecorder:
    """Collects per-round metrics and writes summary.json, metrics.jsonl, partition.json,
    run.log, TensorBoard events, figures and the model directory into one run directory."""

    def __init__(self, run_dir: Path, scenario: Scenario, mode: str, num_clients: int) -> None:
        self.run_dir = Path(run_dir)
        self.scenario = scenario
        self.mode = mode
        self.num_clients = num_clients
        self.history: list[dict] = []
        self.lines: list[str] = []
        self.local_clients: list[dict] = []
        """Local-only mode: each client's results (`client_done`)."""
        self._new_round()
        make_dir(self.run_dir)
        write_json(self.run_dir / "scenario.json", scenario.model_dump(mode="json"))
        self.log_handler = _RunLog(self.run_dir / "run.log", encoding="utf-8")
        self.log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.log_handler)
        self.tensorboard = (
            _tensorboard_writer(self.run_dir)
            if scenario.output.tensorboard and mode != "local"  # local: no rounds to plot
            else None
        )
        self.totals = {
            "bytes_up_total": 0,
            "bytes_down_total": 0,
            "failed_replies_total": 0,
            "rejected_updates": 0,
            **({"rounds_aggregated": 0} if mode == "federated" else {}),
        }
        self.extra: dict = {}
        """Latest `privacy` and `fairness` for summary.json."""
        self.majority_class: dict | None = None
        """Always predicting the test split's most common label (`majority_baseline`)."""

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        """Detach run.log and close TensorBoard, whether the run ended well or not."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self.log_handler)
        self.log_handler.close()

    def _new_round(self) -> None:
        self.clients: dict[str, list[dict]] = {"train": [], "evaluate": []}
        self.failures: dict[str, dict] = {}
        self.rejected: list[dict] = []
        self.federated: dict[str, dict] = {}
        self.bytes = {"bytes_down": 0, "bytes_up": 0}

    def write_partition(self, table: dict) -> None:
        write_json(self.run_dir / "partition.json", table)

    def exchange(
        self,
        kind: str,
        clients: list[dict],
        bytes_down: int,
        bytes_up: int,
        failures: dict | None = None,
    ) -> None:
        """Record one round trip with the clients (train or evaluate)."""
        self.clients[kind].extend(clients)
        if failures is not None:
            self.failures[kind] = failures
            self.totals["failed_replies_total"] += failures["errors"] + failures["timed_out"]
        self.bytes["bytes_down"] += bytes_down
        self.bytes["bytes_up"] += bytes_up
        self.totals["bytes_down_total"] += bytes_down
        self.totals["bytes_up_total"] += bytes_up

    def reject(self, rejected: list[dict]) -> None:
        """Record the updates the server rejected this round (client and reason)."""
        self.rejected.extend(rejected)
        self.totals["rejected_updates"] += len(rejected)

    def aggregated(self, kind: str, metrics: dict | None, new_weights: bool = False) -> None:
        """Record the strategy's aggregate of the clients' `kind` metrics; a train round
        with `new_weights` counts in `rounds_aggregated`."""
        self.federated[kind] = dict(metrics or {})
        if new_weights:
            self.totals["rounds_aggregated"] += 1

    def round_done(
        self,
        server_round: int,
        central: dict,
        seconds: float,
        privacy: dict | None = None,
    ) -> None:
        """Close a round: append its line to metrics.jsonl and refresh summary.json."""
        entry = {"round": server_round, **{k: central[k] for k in CENTRAL_KEYS}}
        entry.update({k: central[k] for k in TASK_KEYS if k in central})
        self._note_test_split(central)
        entry["seconds"] = round(seconds, 3)
        self.history.append(entry)
        fairness = fairness_metrics(self.clients["evaluate"], central)
        privacy = {**(privacy or {}), **self._dp_sgd_epsilon()}
        line = {
            **entry,
            **self.bytes,
            **privacy,
            "failures": self.failures,
            "rejected": self.rejected,
            "central": central,
            "federated_train": self.federated.get("train", {}),
            "federated_evaluate": self.federated.get("evaluate", {}),
            "fairness": fairness,
            "clients": self.clients,
        }
        self.extra["fairness"] = fairness
        if privacy:
            self.extra["privacy"] = {**self.extra.get("privacy", {}), **privacy}
        self._new_round()
        self._append_line(line)
        if self.tensorboard is not None:
            _tensorboard_round(self.tensorboard, line)

    def client_done(self, result: dict) -> None:
        """Local-only mode: one client's results become a line of metrics.jsonl and an entry
        of summary.json's `clients` (and count in its `final`)."""
        self.local_clients.append(result)
        self._note_test_split(result["test"])
        self._append_line(result)

    def _append_line(self, line: dict) -> None:
        self.lines.append(json.dumps(line))
        write_atomic(self.run_dir / "metrics.jsonl", "\n".join(self.lines) + "\n")
        self.write_summary()

    def _dp_sgd_epsilon(self) -> dict:
        """The largest DP-SGD ε any client reported this round (clients account their own)."""
        spent = [c["dp_sgd_epsilon"] for c in self.clients["train"] if "dp_sgd_epsilon" in c]
        if not spent:
            return {}
        return {"dp_sgd_epsilon": max(spent), "dp_sgd_delta": self.scenario.privacy.dp_sgd.delta}

    def state(self) -> dict:
        """What a checkpoint needs to continue this record."""
        return {
            "history": self.history,
            "lines": self.lines,
            "totals": self.totals,
            "extra": self.extra,
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's record; later lines of an interrupted run are dropped."""
        self.history, self.lines, self.totals = state["history"], state["lines"], state["totals"]
        self.extra = state["extra"]
        write_atomic(self.run_dir / "metrics.jsonl", "\n".join(self.lines) + "\n")
        self.write_summary()

    def save_model(self, model: Any, tokenizer: Any) -> None:
        """The final model as a plain transformers directory (PEFT adapters merged)."""
        from fedtune.modeling.model import export_model

        def save(tmp: Path) -> None:
            export_model(model).save_pretrained(tmp)
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
            "final": {
                **{k: last.get(k) for k in CENTRAL_KEYS},
                **{k: last[k] for k in TASK_KEYS if k in last},
            },
            "majority_class": self.majority_class,
            "history": self.history,
            "model_dir": str(model_dir) if model_dir.is_dir() else None,
            "wall_seconds": round(sum(h["seconds"] for h in self.history), 3),
            **self.totals,
            "fairness": self.extra.get("fairness", {}),
            "privacy": {**self.scenario.privacy.summary(), **self.extra.get("privacy", {})},
            "run_dir": str(self.run_dir),
        }
        if "converged" in self.extra:  # `fedtune centralized --converged`
            summary["converged"] = self.extra["converged"]
        if self.mode == "local":
            summary.update(local_summary(self.local_clients))
        elif (target := self.scenario.federation.target) is not None:
            rounds = [json.loads(line) for line in self.lines]
            summary["cost_to_target"] = cost_to_target(rounds, headline_metric(summary), target)
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def _note_test_split(self, report: dict) -> None:
        """The majority-class baseline, from a test evaluation's per-class supports."""
        if self.majority_class is None and "per_class" in report:
            self.majority_class = majority_baseline(label_supports(report["per_class"]))

    def finish(self) -> dict:
        """Write the final summary and the figures."""
        from fedtune.runs.report import make_figures  # matplotlib only when a run ends

        summary = self.write_summary()
        make_figures(self.run_dir)
        return summary


def local_summary(clients: list[dict]) -> dict:
    """A local-only run's `clients` (their results without per-class reports), `final` (the
    test metrics' mean weighted by the clients' training examples, `val_*` the validation
    metrics' weighted by validation examples, as federated evaluation aggregates) and wall time."""
    keys = [*CENTRAL_KEYS, *(k for k in TASK_KEYS if all(k in c["test"] for c in clients))]
    final = {k: _weighted([(c["test"][k], c["num_examples"]) for c in clients]) for k in keys}
    for k in CENTRAL_KEYS:
        val = [(c["val"][k], c["val"]["num_examples"]) for c in clients if k in c["val"]]
        final[f"val_{k}"] = _weighted(val)
    return {
        "clients": [{**c, "test": {k: c["test"][k] for k in keys}} for c in clients],
        "final": final,
        "wall_seconds": round(sum(c["seconds"] for c in clients), 3),
    }


def _weighted(pairs: list[tuple[float, int]]) -> float | None:
    """The mean of the values weighted by their counts (None without any count)."""
    total = sum(count for _, count in pairs)
    return sum(value * count for value, count in pairs) / total if total else None


def _tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter in `run_dir/tensorboard`, if tensorboard is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _tensorboard_round(writer: Any, line: dict) -> None:
    step = line["round"]
    for key in CENTRAL_KEYS:
        writer.add_scalar(f"central/{key}", line[key], step)
    for key, value in line["federated_evaluate"].items():
        writer.add_scalar(f"federated/{key}", value, step)
    for key in ("bytes_up", "bytes_down"):
        writer.add_scalar(f"communication/{key}", line[key], step)
    writer.flush()
