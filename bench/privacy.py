"""Privacy benchmark: cross-device client-level DP that learns (`scenarios/dp_cross_device.yaml`
at no DP and three noise levels, with epsilon), and what `fedtune audit` recovers from runs with
full fine-tuning, LoRA, top-k compression and LoRA + DP (token recovery F1 at batch sizes 1
and 8, membership AUC).

    python bench/privacy.py                 # resumable: recorded commands are not rerun
    python bench/privacy.py --only dp       # the DP table alone (or: audit, memory)
    python bench/privacy.py --dp-rows 2     # its first 2 rows (the scenario's, no DP)
    python bench/privacy.py --quick         # 2 rounds / 400 tweets: a smoke run
    python bench/privacy.py --fresh         # rerun every command

Writes bench/privacy[-quick].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from commands import Cache, Invocation, execute, run_dir_for, run_fedtune  # noqa: E402
from run import peak_memory  # noqa: E402

DP_SCENARIO = "dp_cross_device"
DP_ROWS: dict[str, dict] = {
    "noise 1.0 (the scenario's)": {},
    "no DP": {"privacy.dp.enabled": False},
    "noise 0.7": {"privacy.dp.noise_multiplier": 0.7},
    "noise 1.5": {"privacy.dp.noise_multiplier": 1.5},
    "noise 0.7, 1,200 clients (q 0.05, 14,000 tweets)": {
        "privacy.dp.noise_multiplier": 0.7,
        "partition.num_clients": 1200,
        "federation.fraction_train": 0.05,
        "data.max_samples": 14000,
        "data.test_size": 0.0715,
    },
}
LORA = {"model.peft.method": "lora", "model.peft.rank": 8, "model.peft.alpha": 16}
AUDIT_ROWS: dict[str, tuple[str, dict]] = {
    "full fine-tuning (quickstart)": ("quickstart", {}),
    "LoRA r8 (quickstart, lr 2e-3)": ("quickstart", {**LORA, "training.lr": 2e-3}),
    "top-k 1% + error feedback (quickstart)": (
        "quickstart",
        {"codec.kind": "topk", "codec.topk_fraction": 0.01},
    ),
    "FFA-LoRA + DP, noise 1.0 (dp_cross_device)": (DP_SCENARIO, {}),
}
MEMORY_CLIENTS, MEMORY_SAMPLED = (600, 6000), 60
"""The DP scenario's memory check: 600 and 6,000 existing clients, about 60 drawn per round."""
AUDIT_BATCH_SIZES = {
    1: ("--batches", "2", "--inversion-steps", "200"),
    8: ("--batches", "1", "--inversion-steps", "100"),
}
"""`fedtune audit` options per batch size: gradient matching costs about 0.35 s per step at
batch size 1 on 2 CPUs with MiniLM, more at 8, so batch size 8 gets one update and fewer
steps."""
QUICK = {
    DP_SCENARIO: {"federation.rounds": 2},
    "quickstart": {"data.max_samples": 400, "federation.rounds": 1},
}


def run(scenario: str, overrides: dict, quick: bool, cache: Cache, work: Path) -> dict:
    """The run's record (cached), with the privacy its summary reports."""
    inv = Invocation.make("run", scenario, {**(QUICK[scenario] if quick else {}), **overrides})
    record = execute(inv, quick, cache, work, run_fedtune)
    out = run_dir_for(work, inv, quick)
    if "error" not in record and "privacy" not in record:
        summary = json.loads((out / "summary.json").read_text())
        record["privacy"] = summary.get("privacy") or {}
        cache.put(inv.key(quick), record)
    return {**record, "out": out}


def audited(record: dict, batch_size: int, quick: bool, cache: Cache) -> dict:
    """`fedtune audit` of the run at `batch_size` (cached)."""
    options = ["--batch-size", str(batch_size), *AUDIT_BATCH_SIZES[batch_size]]
    key = f"fedtune audit {record['command']} {' '.join(options)}" + (" [quick]" if quick else "")
    if not cache.usable(key):
        args = ["audit", str(record["out"]), *options]
        print(f"$ fedtune {' '.join(args)}", flush=True)
        run_fedtune(args)
        cache.put(key, json.loads((record["out"] / "audit.json").read_text()))
    return cache.get(key)


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def dp_table(quick: bool, cache: Cache, work: Path, rows: int) -> list[str]:
    lines = [
        "## Cross-device DP (`scenarios/dp_cross_device.yaml`)",
        "",
        "| run | epsilon (delta 1e-5) | accuracy | macro-F1 | majority class | command |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, overrides in list(DP_ROWS.items())[:rows]:
        record = run(DP_SCENARIO, overrides, quick, cache, work)
        if "error" in record:
            lines.append(f"| {name} | {record['error']} | | | | `{record['command']}` |")
            continue
        final, epsilon = record["final"], record["privacy"].get("epsilon")
        majority = record.get("majority", {})
        lines.append(
            f"| {name} | {cell(epsilon)} | {cell(final['accuracy'])} | "
            f"{cell(final['macro_f1'])} | {majority.get('label')} "
            f"({cell(majority.get('share'))}) | `{record['command']}` |"
        )
    return lines


def audit_table(quick: bool, cache: Cache, work: Path) -> list[str]:
    sizes = " | ".join(
        f"word rows, batch {b} | gradient matching, batch {b}" for b in AUDIT_BATCH_SIZES
    )
    lines = [
        "## `fedtune audit` (token recovery F1 / ROUGE-L; membership inference)",
        "",
        f"| run | epsilon | accuracy / macro-F1 | {sizes} | membership AUC | TPR at 1% FPR |"
        " command |",
        "| --- | --- | --- |" + " --- | --- |" * len(AUDIT_BATCH_SIZES) + " --- | --- | --- |",
    ]
    for name, (scenario, overrides) in AUDIT_ROWS.items():
        record = run(scenario, overrides, quick, cache, work)
        if "error" in record:
            lines.append(f"| {name} | {record['error']} |")
            continue
        audits = [audited(record, b, quick, cache) for b in AUDIT_BATCH_SIZES]
        member = audits[0]["membership"]
        recovery = " | ".join(
            f"{cell(found['f1'])} / {cell(found['rouge_l'])}"
            for a in audits
            for found in (a["inversion"], a["inversion"]["gradient_matching"])
        )
        final = record["final"]
        lines.append(
            f"| {name} | {cell(audits[0]['epsilon'])} | {cell(final['accuracy'])} / "
            f"{cell(final['macro_f1'])} | {recovery} | {cell(member['auc'])} | "
            f"{cell(member['tpr_at_1pct_fpr'])} | `{record['command']}` |"
        )
    return lines


def memory_table(quick: bool, cache: Cache, work: Path) -> list[str]:
    """Peak memory of the DP scenario (tiny model, 2 rounds) with 10x the existing clients."""
    small, large = MEMORY_CLIENTS
    key = f"memory {DP_SCENARIO} {small} vs {large} clients" + (" [quick]" if quick else "")
    if not cache.usable(key):
        print(f"$ {key}", flush=True)
        cache.put(key, peak_memory(DP_SCENARIO, MEMORY_CLIENTS, MEMORY_SAMPLED, 0, 2, work))
    found = cache.get(key)
    peaks, startup = found["peak_mb"], found["round0_s"]
    return [
        f"## Memory with existing clients (`{DP_SCENARIO}`, tiny model, 2 rounds, "
        f"about {MEMORY_SAMPLED} drawn per round)",
        "",
        "| existing clients | peak memory (PSS, process tree) | round 0 (start-up + evaluation) |",
        "| --- | --- | --- |",
        *(f"| {n:,} | {peaks[str(n)]:,.0f} MB | {startup[str(n)]:.1f} s |" for n in (small, large)),
        "",
        f"Growth {large:,} vs {small:,}: x{found['growth']:.3f}.",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on small data")
    parser.add_argument("--fresh", action="store_true", help="rerun recorded commands")
    parser.add_argument("--only", choices=("dp", "audit", "memory"), help="one table")
    parser.add_argument(
        "--dp-rows", type=int, default=len(DP_ROWS), help="the first N rows of the DP table"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stem = "privacy-quick" if args.quick else "privacy"
    cache = Cache(HERE / f"{stem}.json", fresh=args.fresh)
    work = HERE.parent / "runs" / stem
    lines = [f"# Privacy benchmark (`bench/privacy.py`), {'quick' if args.quick else 'full'}", ""]
    if args.only in (None, "dp"):
        lines += [*dp_table(args.quick, cache, work, args.dp_rows), ""]
    if args.only in (None, "audit"):
        lines += [*audit_table(args.quick, cache, work), ""]
    if args.only in (None, "memory"):
        lines += [*memory_table(args.quick, cache, work), ""]
    (HERE / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
