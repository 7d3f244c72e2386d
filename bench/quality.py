"""fedtune quality benchmark: accuracy and macro-F1 of each case (bench/quality_cases.py)
beside the majority class, the centralized and the local-only baselines, and bytes sent up.

    python bench/quality.py              # full: shipped scenarios (a few hours on 2 CPUs)
    python bench/quality.py --quick      # smoke: small data, 1 round, 1 strategy
    python bench/quality.py --dry-run    # print (and validate) the commands, run nothing
    python bench/quality.py --only lora codecs    # chosen cases only
    python bench/quality.py --fresh      # rerun what is already recorded

Every measurement is a `fedtune run|centralized|local` command run in a subprocess. Its
result is recorded in bench/quality.json (bench/quality-quick.json with --quick) as soon as
it ends, keyed by the command, so an interrupted benchmark resumes where it stopped; a
failed command is recorded with its error (and retried next time) and the benchmark goes
on. The table (bench/quality.md, also printed) and the bytes-to-accuracy plot
(bench/quality_bytes.png) are built from that file alone. Run directories are kept under
runs/quality/ (runs/quality-quick/) for `fedtune compare`.

Cases (`CASES` in bench/quality_cases.py) and their variants are data: adding a row is
adding one dict there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
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
sys.path.insert(0, str(HERE))  # bench/quality_cases.py beside this script

from quality_cases import (  # noqa: E402
    CASES,
    FULL_FT,
    PLOTTED_CASES,
    QUICK,
    QUICK_EXTRA_ROUNDS,
    TIMEOUT_S,
    Overrides,
    Value,
)

# ------------------------------------------------------------------ commands


def _fmt(value: Value) -> str:
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
        return cls(command, scenario, tuple(sorted((k, _fmt(v)) for k, v in overrides.items())))

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


def _base_rounds(scenario: str, overrides: Overrides) -> int:
    """The rounds a command runs: its override, else the scenario's own."""
    if "federation.rounds" in overrides:
        return int(overrides["federation.rounds"])
    from fedtune.config import load_scenario

    return load_scenario(scenario).federation.rounds


def case_overrides(case: dict, overrides: Overrides, quick: bool) -> Overrides:
    """A command's overrides: the quick ones first (in --quick), then its own."""
    if not quick:
        return dict(overrides)
    return {**QUICK, **case.get("quick", {}), **overrides}


def variant_invocation(case: dict, variant: dict, quick: bool) -> Invocation:
    overrides = case_overrides(case, variant["overrides"], quick)
    extra = variant.get("extra_rounds", 0)
    if extra:
        extra = min(extra, QUICK_EXTRA_ROUNDS) if quick else extra
        overrides["federation.rounds"] = _base_rounds(variant["scenario"], overrides) + extra
    return Invocation.make("run", variant["scenario"], overrides)


def case_invocations(case: dict, quick: bool) -> dict[str, Invocation]:
    """`centralized`, `local` and each variant's name (those that run in this mode) ->
    command, in the order they run."""
    found = {}
    for command in ("centralized", "local"):  # the baselines first: every row needs them
        scenario, overrides = case.get(command, case["baseline"])
        found[command] = Invocation.make(command, scenario, case_overrides(case, overrides, quick))
    found.update(
        (v["name"], variant_invocation(case, v, quick))
        for v in case["variants"]
        if v.get("quick") or not quick
    )
    return found


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


def _stronger(summary: dict) -> dict:
    """The final metrics, or a centralized run's converged ones where its headline metric is
    higher (marked `converged_rounds`)."""
    final, converged = summary["final"], summary.get("converged")
    metric = (summary.get("majority_class") or {}).get("headline", "accuracy")
    if converged and converged["final"].get(metric, 0.0) > (final.get(metric) or 0.0):
        return {**converged["final"], "converged_rounds": converged["rounds"]}
    return final


def read_run(run_dir: Path) -> dict:
    """What the table and plot need from a run directory's summary, metrics, partition."""
    summary = json.loads((run_dir / "summary.json").read_text())
    record: dict[str, Any] = {
        "mode": summary["mode"],
        "final": _stronger(summary),
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


# ------------------------------------------------------------------ evaluation


def at_round(record: dict, rounds: int) -> dict:
    """The history entry of round `rounds` (the last one when the run is shorter)."""
    earlier = [h for h in record["history"] if h["round"] <= rounds]
    return earlier[-1] if earlier else record["final"]


def gaps(point: dict, ref: dict) -> tuple[float, float]:
    """Accuracy and macro-F1 minus the reference's, in points."""
    return (
        100 * (point["accuracy"] - ref["accuracy"]),
        100 * (point["macro_f1"] - ref["macro_f1"]),
    )


def within(gap: tuple[float, float], points: float) -> bool:
    """At most `points` below the reference on both (above it is fine)."""
    return min(gap) >= -points - 1e-9


def first_round_within(record: dict, ref: dict, points: float, start: int) -> int | None:
    """The first round from `start` on at which the run is within `points` of `ref`."""
    for entry in record["history"]:
        if entry["round"] >= start and within(gaps(entry, ref), points):
            return entry["round"]
    return None


def ok(record: dict | None) -> bool:
    return record is not None and "error" not in record


def pick_best(
    names: list[str], gap_of: dict[str, tuple[float, float]], met: set[str]
) -> str | None:
    """The candidate that meets the target (with its extra rounds) or, among equals, whose
    worse gap is smallest (ties: the larger sum)."""
    scored = [n for n in names if n in gap_of]
    if not scored:
        return None
    return max(scored, key=lambda n: (n in met, min(gap_of[n]), sum(gap_of[n])))


def verdict(
    case: dict, variant: dict, record: dict, ref: dict, rounds: int, share: float | None
) -> tuple[str, str]:
    """`met`/`missed`/`report` and its explanation for the case's chosen candidate."""
    target = case.get("target")
    gap = gaps(at_round(record, rounds), ref)
    text = f"{gap[0]:+.1f} / {gap[1]:+.1f} pts"
    if target is None:
        return "report", text
    points = target["points"]
    met, notes = within(gap, points), []
    if not met and variant.get("extra_rounds"):
        late = first_round_within(record, ref, points, rounds + 1)
        met = late is not None
        text = f"same rounds {text}"
        notes.append(_late_note(record, ref, late, rounds, points))
    limit = target.get("max_bytes_share")
    if limit is not None and (share is None or share > limit):
        met = False
        notes.append("bytes " + ("unknown" if share is None else f"{share:.2%} > {limit:.0%}"))
    return ("met" if met else "missed"), "; ".join([text, *notes])


def _late_note(record: dict, ref: dict, late: int | None, rounds: int, points: float) -> str:
    """When (if ever) a run with extra rounds came within `points` of the reference."""
    if late is None:
        last = record["history"][-1]["round"] if record["history"] else rounds
        return f"not within {points:g} pts by round {last}"
    gap = gaps(at_round(record, late), ref)
    return f"within at round {late} (+{late - rounds}): {gap[0]:+.1f} / {gap[1]:+.1f} pts"


def _reference(case: dict, records: dict[str, dict | None]) -> tuple[str, dict | None]:
    if case["reference"] == "centralized":
        return "centralized", records.get("centralized")
    name = next(v["name"] for v in case["variants"] if v.get("role") == "reference")
    return name, records.get(name)


def case_rows(case: dict, records: dict[str, dict | None], full_bytes: float | None) -> list[dict]:
    """One row per variant of the case: its values, the baselines', gap and verdict."""
    ref_name, ref_record = _reference(case, records)
    rounds = _rounds_of(ref_record)
    ref_point = at_round(ref_record, rounds) if ok(ref_record) else None
    variants = [v for v in case["variants"] if v["name"] in records]
    gap_of = {
        v["name"]: gaps(at_round(records[v["name"]], rounds), ref_point)
        for v in variants
        if ok(records[v["name"]]) and ref_point is not None
    }
    candidates = [v["name"] for v in variants if v.get("role", "candidate") == "candidate"]
    rows = {
        v["name"]: _base_row(case, v, records[v["name"]], records, rounds, full_bytes)
        for v in variants
    }
    verdicts = {
        v["name"]: verdict(
            case, v, records[v["name"]], ref_point, rounds, rows[v["name"]]["bytes_share"]
        )
        for v in variants
        if v["name"] in candidates and v["name"] in gap_of
    }
    best = pick_best(
        candidates, gap_of, {n for n, (result, _) in verdicts.items() if result == "met"}
    )
    for variant in variants:
        name, record, row = variant["name"], records[variant["name"]], rows[variant["name"]]
        row["best"] = name == best and len(candidates) > 1
        if not ok(record):
            row["result"] = "failed" if record else "not run"
        elif variant.get("role") == "reference" and ref_name == name:
            row["result"] = "reference"
        elif ref_point is None:
            row["result"] = "no reference"
        elif name == best and _reference_at_majority(row, ref_point):
            row["result"] = "no verdict"
            row["detail"] = "the reference is at the majority class"
        elif name == best:
            row["result"], row["detail"] = verdicts[name]
        else:
            g = gap_of[name]
            row["result"], row["detail"] = "-", f"{g[0]:+.1f} / {g[1]:+.1f} pts"
    return list(rows.values())


def _reference_at_majority(row: dict, ref_point: dict) -> bool:
    """A reference that learnt nothing (the majority class) measures no gap."""
    return at_majority({**ref_point, "majority": row.get("majority")})


def _rounds_of(record: dict | None) -> int:
    if not ok(record) or not record["history"]:
        return 0
    return record["history"][-1]["round"]


def _base_row(
    case: dict,
    variant: dict,
    record: dict | None,
    records: dict[str, dict | None],
    rounds: int,
    full_bytes: float | None,
) -> dict:
    """The values of one row: the variant's, the majority class, the baselines', bytes."""
    row: dict[str, Any] = {"case": case["name"], "title": case["title"], "variant": variant["name"]}
    role = variant.get("role", "candidate")
    row["target"] = {"extra": "(bytes plot)", "reference": "(reference)"}.get(
        role, case["target_text"]
    )
    if ok(record):
        point = at_round(record, rounds) if rounds else record["final"]
        row["accuracy"], row["macro_f1"] = point["accuracy"], point["macro_f1"]
        row["rounds"] = point.get("round")
        if record["history"] and record["history"][-1]["round"] > rounds:
            row["last"] = record["history"][-1]
        row["bytes_up"] = record.get("bytes_up_per_client_round")
        row["client_error_rounds"] = client_error_rounds(record)
    elif record:
        row["error"] = record["error"]
    row["bytes_share"] = (
        row["bytes_up"] / full_bytes if row.get("bytes_up") and full_bytes else None
    )
    majority = next((r["majority"] for r in records.values() if ok(r) and "majority" in r), None)
    row["majority"] = majority
    for name in ("centralized", "local"):
        base = records.get(name)
        row[name] = base["final"] if ok(base) else ({"error": base["error"]} if base else None)
    return row


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


def full_ft_bytes(cache: Cache, quick: bool) -> float | None:
    """Bytes up per client per round of full fine-tuning (the quickstart as shipped)."""
    case = CASES[0]
    record = cache.get(variant_invocation(case, FULL_FT, quick).key(quick))
    return record.get("bytes_up_per_client_round") if ok(record) else None


def table(cache: Cache, quick: bool, names: list[str] | None = None) -> list[dict]:
    """Every case's rows, from the recorded results."""
    full = full_ft_bytes(cache, quick)
    rows = []
    for case in CASES:
        if names and case["name"] not in names:
            continue
        invs = case_invocations(case, quick)
        records = {name: cache.get(inv.key(quick)) for name, inv in invs.items()}
        rows += case_rows(case, records, full)
    return rows


# ------------------------------------------------------------------ outputs


def _pair(values: dict | None) -> str:
    if not values:
        return "not run"
    if "error" in values:
        return "failed"
    pair = f"{values['accuracy']:.3f} / {values['macro_f1']:.3f}"
    rounds = values.get("converged_rounds")
    return pair if rounds is None else f"{pair} (converged, {rounds} round-equivalents)"


def _local(values: dict | None) -> str:
    if not values or "error" in values:
        return _pair(values)
    own = f"{values['val_accuracy']:.3f} / {values['val_macro_f1']:.3f}"
    return f"{_pair(values)} (own val {own})"


def _bytes_cell(row: dict) -> str:
    if not row.get("bytes_up"):
        return "-"
    share = f" ({row['bytes_share']:.2%})" if row["bytes_share"] is not None else ""
    return f"{row['bytes_up'] / 1e6:,.2f} MB{share}"


def _value_cell(row: dict) -> str:
    if "accuracy" not in row:
        return "failed" if row.get("error") else "not run"
    text = _pair(row)
    if row.get("last"):
        text += f" (round {row['last']['round']}: {_pair(row['last'])})"
    if row.get("client_error_rounds"):
        text += f"; clients failed in round(s) {', '.join(map(str, row['client_error_rounds']))}"
    return text


def at_majority(row: dict) -> bool:
    """The row's model is (as good as) the always-majority-class one: its accuracy is the
    majority's share and its macro-F1 no more than that predictor's with two classes."""
    majority, accuracy = row.get("majority"), row.get("accuracy")
    if not majority or accuracy is None:
        return False
    share = majority["share"]
    return abs(accuracy - share) < 0.005 and row["macro_f1"] < share / (1 + share) + 0.005


def _result_cell(row: dict) -> str:
    result = row["result"]
    if result in ("met", "missed"):
        result = f"**{result}**"
    if at_majority(row):
        result += ", at the majority class"
    text = f"{result} ({row['detail']})" if row.get("detail") else result
    if row.get("error"):
        text += f": {row['error'][:160]}"
    return ("best: " if row.get("best") else "") + text


COLUMNS = [
    "case",
    "variant",
    "acc / macro-F1",
    "majority class",
    "centralized",
    "local-only: test (own val)",
    "bytes up / client / round",
    "target",
    "result (gap: acc / macro-F1)",
]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    previous = None
    for row in rows:
        majority = row["majority"]
        cells = [
            row["title"] if row["case"] != previous else "",
            row["variant"],
            _value_cell(row),
            f"{majority['share']:.3f} ({majority['label']})" if majority else "-",
            _pair(row["centralized"]),
            _local(row["local"]),
            _bytes_cell(row),
            row["target"] if row["case"] != previous else "",
            _result_cell(row),
        ]
        previous = row["case"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def commands_section(cache: Cache, quick: bool, names: list[str] | None) -> str:
    """Each command the table uses, once, with its wall time."""
    lines, seen = [], set()
    for case in CASES:
        if names and case["name"] not in names:
            continue
        for inv in case_invocations(case, quick).values():
            record = cache.get(inv.key(quick))
            if record is None or inv.key(quick) in seen:
                continue
            seen.add(inv.key(quick))
            status = "FAILED" if "error" in record else f"{record['bench_seconds']:.0f} s"
            lines.append(f"- `{record['command']}` ({status})")
    return "\n".join(lines)


def markdown(cache: Cache, quick: bool, rows: list[dict]) -> str:
    mode = "--quick (smoke: small data, 1 round; not results)" if quick else "full"
    machine = cache.data.get("machine", {})
    return (
        "\n\n".join(
            [
                "# Quality benchmark (`bench/quality.py`)",
                f"Mode: {mode}. Machine: {machine.get('cpus', '?')} CPUs, "
                f"{machine.get('platform', '?')}; updated {cache.data.get('updated', '?')}.",
                "Accuracy / macro-F1 on the server's test split after the reference's rounds "
                "(after each later round where a variant states extra rounds). *Within N pts* "
                "means at most N points below the reference on both; a gap is the variant minus "
                "the reference (the reference variant, or the centralized run). Local-only: each "
                "client trained alone, the mean over clients (weighted by their examples) on the "
                "test split and on their own validation splits. Bytes: what one client sends up "
                "per round, mean over rounds and clients, and its share of full fine-tuning's.",
                markdown_table(rows),
                "## Commands",
                commands_section(cache, quick, None),
            ]
        )
        + "\n"
    )


def plot_curves(cache: Cache, quick: bool) -> list[tuple[str, list[float], list[float]]]:
    """(variant, cumulative bytes up after each round, test accuracy) for the plot."""
    curves, seen = [], set()
    for case in CASES:
        if case["name"] not in PLOTTED_CASES:
            continue
        for variant in case["variants"]:
            inv = variant_invocation(case, variant, quick)
            record = cache.get(inv.key(quick))
            if not ok(record) or inv in seen or "bytes_up_rounds" not in record:
                continue
            seen.add(inv)
            sent, total = [], 0.0
            for value in record["bytes_up_rounds"][1:]:
                total += value
                sent.append(total)
            accuracy = [h["accuracy"] for h in record["history"][1:]]
            curves.append((variant["name"], sent, accuracy[: len(sent)]))
    return curves


def plot(curves: list[tuple[str, list[float], list[float]]], majority: float | None, path: Path):
    """Bytes-to-accuracy: one line per variant, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, sent, accuracy in curves:
        if sent and all(x > 0 for x in sent):
            ax.plot(sent, accuracy, marker="o", label=name)
    if majority is not None:
        ax.axhline(majority, color="grey", linestyle="--", linewidth=1, label="majority class")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes sent up (all clients)")
    ax.set_ylabel("test accuracy after the round")
    ax.set_title("Bytes to accuracy (quickstart federation)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(cache: Cache, quick: bool, paths: dict[str, Path]) -> list[dict]:
    """Table into the results file, markdown (printed too) and the plot."""
    rows = table(cache, quick)
    cache.data["table"] = rows
    cache.save()
    text = markdown(cache, quick, rows)
    paths["md"].write_text(text)
    print("\n" + markdown_table(rows))
    curves = plot_curves(cache, quick)
    majority = next((r["majority"]["share"] for r in rows if r.get("majority")), None)
    if curves:
        plot(curves, majority, paths["png"])
    return rows


# ------------------------------------------------------------------ main


def output_paths(quick: bool) -> dict[str, Path]:
    stem = "quality-quick" if quick else "quality"
    return {
        "json": HERE / f"{stem}.json",
        "md": HERE / f"{stem}.md",
        "png": HERE / f"{stem}_bytes.png",
        "work": ROOT / "runs" / stem,
    }


def selected(names: list[str] | None) -> list[dict]:
    known = [c["name"] for c in CASES]
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; cases: {', '.join(known)}")
    by_name = {c["name"]: c for c in CASES}
    return [by_name[name] for name in dict.fromkeys(names)] if names else CASES


def dry_run(cases: list[dict], quick: bool, cache: Cache, work: Path) -> None:
    """Print every command (validating its scenario and overrides) and what is recorded."""
    from fedtune.config import load_scenario, parse_override

    seen: set[str] = set()
    for case in cases:
        print(f"# {case['name']}: {case['title']}")
        for inv in case_invocations(case, quick).values():
            overrides = dict(parse_override(f"{k}={v}") for k, v in inv.overrides)
            load_scenario(inv.scenario, overrides)  # raises on an unknown key or bad value
            key = inv.key(quick)
            state = "recorded" if cache.usable(key) else "to run"
            if key in seen:
                state = "same as above"
            seen.add(key)
            print(f"  [{state}] {inv.shell(run_dir_for(work, inv, quick))}")
    print(f"{len(seen)} distinct commands")


def main(argv: list[str] | None = None, runner: Runner = run_fedtune) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on small data")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="run these cases only")
    parser.add_argument("--fresh", action="store_true", help="rerun recorded commands")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    paths = output_paths(args.quick)
    cases = selected(args.only)
    cache = Cache(paths["json"], fresh=args.fresh)
    if args.dry_run:
        return dry_run(cases, args.quick, cache, paths["work"])
    cache.data["mode"] = "quick" if args.quick else "full"
    cache.data["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(terse=True)}
    started = time.monotonic()
    for case in cases:
        print(f"# {case['name']}: {case['title']}", flush=True)
        for inv in case_invocations(case, args.quick).values():
            execute(inv, args.quick, cache, paths["work"], runner)
    write_outputs(cache, args.quick, paths)
    seconds = time.monotonic() - started
    print(f"\n{shown_path(paths['md'])} written; this session took {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
