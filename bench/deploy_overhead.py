"""What deployment costs beyond training, side by side in one run: the quickstart scenario
(400 samples, 2 clients, 2 rounds) under `fedtune run` (simulation), `fedtune deploy` (a
fresh ClientApp process per message, importing fedtune.federation.client.node on each) and `fedtune
deploy --worker` (a warm worker per node). Per client message, from metrics.jsonl:

    overhead = startup_seconds + client_seconds - work seconds
    (work: train_seconds for train messages; for evaluate, client_seconds - setup_seconds)

and the mean round time of each against the simulation's. Also the import time of the
ClientApp module (`fedtune.federation.client.app`) against that of the node's heavy module
(`fedtune.federation.client.node`, what the ClientApp module imported before it was made thin).

    python bench/deploy_overhead.py [--rounds 2] [--samples 400] [--set KEY=VALUE ...]
                                    [--output bench/deploy_overhead.json]

Writes bench/deploy_overhead.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = {"simulation": ["run"], "deploy": ["deploy"], "deploy --worker": ["deploy", "--worker"]}


def import_seconds(module: str, repeats: int = 3) -> float:
    """Median wall time of `import module` in a fresh interpreter."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        for _ in range(repeats)
    ]
    return statistics.median(runs)


def overheads(run_dir: Path) -> list[float]:
    """Each client message's overhead (seconds), train and evaluate, every round."""
    found = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines()[1:]:
        clients = json.loads(line)["clients"]
        for c in clients.get("train", []):
            found.append(c["startup_seconds"] + c["client_seconds"] - c["train_seconds"])
        for c in clients.get("evaluate", []):
            found.append(c["startup_seconds"] + c["setup_seconds"])
    return found


def measure(mode: list[str], overrides: list[str], work: Path) -> dict:
    out = work / "-".join(mode)
    cmd = [sys.executable, "-m", "fedtune.cli", mode[0], "quickstart", *mode[1:], "--quiet"]
    cmd += [*(f"--set={o}" for o in overrides), "--output", str(out)]
    print("$", " ".join(cmd[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    rounds = [h["seconds"] for h in summary["history"][1:]]
    per_message = overheads(out)
    return {
        "wall_seconds": wall,
        "round_seconds": rounds,
        "mean_round_seconds": statistics.mean(rounds),
        "median_overhead_seconds": statistics.median(per_message),
        "overheads": per_message,
        "final_accuracy": summary["final"]["accuracy"],
        "final_loss": summary["final"]["loss"],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--output", default=str(HERE / "deploy_overhead.json"))
    args = parser.parse_args()
    overrides = [
        f"data.max_samples={args.samples}",
        f"federation.rounds={args.rounds}",
        "partition.num_clients=2",
        "federation.min_available_nodes=2",
        *args.overrides,
    ]
    imports = {
        m: import_seconds(m)
        for m in (
            "fedtune.federation.client.app",
            "fedtune.federation.client.node",
            "flwr.clientapp",
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(mode, overrides, Path(tmp)) for name, mode in MODES.items()}
    simulated = results["simulation"]["mean_round_seconds"]
    for r in results.values():
        r["round_time_over_simulation"] = r["mean_round_seconds"] / simulated
    print(f"import: {', '.join(f'{m} {s:.2f} s' for m, s in imports.items())}")
    print("| run | median overhead per message (s) | mean round (s) | / simulation | wall (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['median_overhead_seconds']:.2f} | {r['mean_round_seconds']:.1f} | "
            f"{r['round_time_over_simulation']:.2f} | {r['wall_seconds']:.0f} |"
        )
    out = {"overrides": overrides, "import_seconds": imports, "results": results}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
