"""fedtune benchmark: every figure is a ratio or a side-by-side measurement from one run on
one machine. Prints a table and writes bench/results.json.

    python bench/run.py            # full (about an hour on 2 CPUs)
    python bench/run.py --quick    # a few minutes, smaller data
    python bench/run.py --gpu      # P6 only: clients packed on one GPU (needs CUDA)

P1  client training samples/s inside fedtune's ClientApp vs a plain PyTorch loop
P2  share of round wall time that is neither client training nor evaluation
P4  bytes up per client per round and final accuracy: full FT, LoRA, LoRA+int8, top-k
P5  peak memory (PSS of the whole process tree) with 100 and 1,000 existing clients
P6  (--gpu) samples/s and GPU memory per client, 1 client alone vs 4 sharing one GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
)

from fedtune.config import load_scenario
from fedtune.data.corpus import client_splits, federated_data, tokenize
from fedtune.federation.client.app import build_client_app
from fedtune.modeling.model import (
    load_model,
    load_tokenizer,
    resolve_model_source,
    trainable_weights,
)
from fedtune.records import to_record

HERE = Path(__file__).resolve().parent


def tiny_model(path: Path) -> str:
    """A 1-layer, 64-wide random BERT with the embedded model's tokenizer (for P5)."""
    source = resolve_model_source("embedded")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def fedtune_run(overrides: dict, out: Path, scenario: str = "quickstart") -> tuple[dict, list]:
    """`fedtune run` in a subprocess; returns summary.json and metrics.jsonl lines."""
    sets = [f"{k}={json.dumps(v)}" for k, v in {**overrides, "output.dir": str(out)}.items()]
    cmd = [sys.executable, "-m", "fedtune.cli", "run", scenario, "--quiet"]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), lines


def p1_throughput(quick: bool) -> dict:
    """Samples/s of one local epoch through the ClientApp's train handler (message in,
    update out) vs the plain loop: same model, shard, batch size and max length; fedtune
    with its default length-grouped batches and with random ones."""
    overrides = {"data.max_samples": 700 if quick else 2500, "training.local_epochs": 1}
    scenario = load_scenario("quickstart", overrides)
    ungrouped = load_scenario("quickstart", {**overrides, "training.group_by_length": False})
    fed = federated_data(scenario)
    train, _ = client_splits(fed, 0, scenario.data.val_size, scenario.seed)
    tokenizer = load_tokenizer(scenario.model.name)
    data = tokenize(train, tokenizer, scenario.model.max_length)
    cfg = scenario.training
    torch.set_num_threads(int(scenario.federation.client_resources.num_cpus))

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    apps = {"grouped": build_client_app(scenario), "ungrouped": build_client_app(ungrouped)}
    glob = trainable_weights(load_model(scenario.model.name, fed.label_names, scenario.seed))

    def fedtune_epoch(server_round: int, app: ClientApp) -> float:
        content = RecordDict(
            {"arrays": to_record(glob), "config": ConfigRecord({"server-round": server_round})}
        )
        context = Context(1, 1, {"partition-id": 0}, RecordDict(), {})
        start = time.perf_counter()
        app(Message(content, dst_node_id=1, message_type="train"), context)
        return len(data) / (time.perf_counter() - start)

    def plain_epoch(seed: int) -> float:
        model = load_model(scenario.model.name, fed.label_names, scenario.seed).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=DataCollatorWithPadding(tokenizer),
        )
        start = time.perf_counter()
        for batch in loader:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return len(data) / (time.perf_counter() - start)

    fedtune_epoch(1, apps["grouped"])  # the first message builds the worker's caches
    speed: dict[str, list[float]] = {"grouped": [], "ungrouped": [], "plain": []}
    for i in range(2 if quick else 3):  # interleaved, so drift hits all alike
        for name, app in apps.items():
            speed[name].append(fedtune_epoch(i + 2, app))
        speed["plain"].append(plain_epoch(i))
    best = {name: max(values) for name, values in speed.items()}
    return {
        "examples": len(data),
        "fedtune_samples_per_s": best["grouped"],
        "fedtune_ungrouped_samples_per_s": best["ungrouped"],
        "plain_samples_per_s": best["plain"],
        "p1_throughput_ratio": best["grouped"] / best["plain"],
        "p1_throughput_ratio_ungrouped": best["ungrouped"] / best["plain"],
    }


def p2_overhead(quick: bool, work: Path) -> dict:
    """Round wall time minus client training, client evaluation and server evaluation,
    over rounds 1..N (clients run one at a time: num_cpus = all cores)."""
    overrides = {
        "data.max_samples": 800 if quick else 2500,
        "federation.rounds": 2 if quick else 3,
        "federation.client_resources.num_cpus": os.cpu_count(),
    }
    summary, lines = fedtune_run(overrides, work / "p2")
    wall = train = evaluation = 0.0
    for line in lines[1:]:
        wall += line["seconds"]
        train += sum(c.get("train_seconds", 0.0) for c in line["clients"]["train"])
        evaluation += line["central"]["eval_seconds"]
        evaluation += sum(c.get("client_seconds", 0.0) for c in line["clients"]["evaluate"])
    return {
        "round_wall_s": wall,
        "client_train_s": train,
        "evaluation_s": evaluation,
        "startup_s": lines[0]["seconds"],
        "p2_overhead_share": (wall - train - evaluation) / wall,
        "final_accuracy": summary["final"]["accuracy"],
    }


P4_VARIANTS = {
    "full": ("quickstart", {}),
    "lora": ("lora", {}),
    "lora+int8": ("lora", {"codec.kind": "int8"}),
    "topk": ("quickstart", {"codec.kind": "topk", "codec.topk_fraction": 0.01}),
}
"""Variant -> (scenario, overrides): `lora` is the quickstart with LoRA and its own lr."""


def p4_bytes(quick: bool, work: Path) -> list[dict]:
    """The quickstart federation under each variant: bytes each client sends per round and
    the final centralized accuracy."""
    base = {"data.max_samples": 800 if quick else 2500}
    if quick:
        base["federation.rounds"] = 2
    results = []
    for name, (scenario, overrides) in P4_VARIANTS.items():
        summary, lines = fedtune_run({**base, **overrides}, work / f"p4-{name}", scenario)
        sent = [c["bytes_up"] for line in lines[1:] for c in line["clients"]["train"]]
        results.append(
            {
                "variant": name,
                "bytes_up_per_round": statistics.mean(sent),
                "bytes_down_per_round": statistics.mean(
                    c["bytes_down"] for line in lines[1:] for c in line["clients"]["train"]
                ),
                "final_accuracy": summary["final"]["accuracy"],
                "final_macro_f1": summary["final"]["macro_f1"],
                "wall_s": summary["wall_seconds"],
            }
        )
    full = results[0]["bytes_up_per_round"]
    for row in results:
        row["bytes_vs_full"] = row["bytes_up_per_round"] / full
    return results


def _peak_pss_mb(cmd: list[str]) -> float:
    """Run `cmd`; the peak of the summed PSS (shared pages split fairly) of its process tree."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    root, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        total = 0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_full_info().pss
        peak = max(peak, total / 2**20)
        time.sleep(0.5)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return peak


def peak_memory(
    scenario: str, counts: tuple[int, int], sampled: int, evaluated: int, rounds: int, work: Path
) -> dict:
    """Peak memory (PSS of the process tree) and round-0 seconds of `scenario` (tiny model,
    all the data) with each of `counts` existing clients, `sampled` drawn per round to train
    and `evaluated` to evaluate."""
    model = tiny_model(work / "tiny-bert")
    peaks, startup = {}, {}
    for clients in counts:
        out = work / f"{scenario}-{clients}"
        overrides = {
            "model.name": model,
            "data.max_samples": None,
            "partition.num_clients": clients,
            "federation.fraction_train": sampled / clients,
            "federation.fraction_evaluate": evaluated / clients,
            "federation.rounds": rounds,
            "output.dir": str(out),
            "output.save_model": False,
        }
        cmd = [sys.executable, "-m", "fedtune.cli", "run", scenario, "--quiet"]
        for key, value in overrides.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        peaks[str(clients)] = round(_peak_pss_mb(cmd), 1)  # str keys: as JSON reads them back
        first = (out / "metrics.jsonl").read_text().splitlines()[0]
        startup[str(clients)] = json.loads(first)["seconds"]  # round 0: start-up + evaluation
    growth = peaks[str(counts[1])] / peaks[str(counts[0])]
    return {"peak_mb": peaks, "growth": growth, "round0_s": startup}


def p5_memory(quick: bool, work: Path) -> dict:
    """Peak memory of a run with 100 and 1,000 existing clients, 10 sampled per round."""
    found = peak_memory("quickstart", (100, 1000), 10, 10, 2 if quick else 3, work)
    return {
        "p5_peak_rss_mb": found["peak_mb"],
        "growth_1000_vs_100": found["growth"],
        "p5_round0_seconds": found["round0_s"],
    }


def p6_gpu(clients: int = 4) -> dict:
    """Samples/s and peak GPU memory per client: one client alone vs `clients` processes
    training at once on the same GPU (bf16 autocast, the embedded model)."""
    if not torch.cuda.is_available():
        raise SystemExit("P6 needs a CUDA GPU")
    alone = _gpu_workers(1)
    packed = _gpu_workers(clients)
    return {
        "alone": alone[0],
        "packed": packed,
        "per_client_speed_ratio": statistics.mean(p["samples_per_s"] for p in packed)
        / alone[0]["samples_per_s"],
        "aggregate_speed_ratio": sum(p["samples_per_s"] for p in packed)
        / alone[0]["samples_per_s"],
    }


def _gpu_workers(n: int) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__)), "--gpu-worker"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [json.loads(p.communicate()[0].splitlines()[-1]) for p in procs]


def gpu_worker() -> None:
    """One client's local training on the GPU (bf16), printing samples/s and peak memory."""
    from fedtune.data.corpus import make_loader
    from fedtune.modeling.train import train_steps

    scenario = load_scenario("quickstart", {"training.precision": "bf16"})
    fed = federated_data(scenario)
    train, _ = client_splits(fed, 0, scenario.data.val_size, scenario.seed)
    tokenizer = load_tokenizer(scenario.model.name)
    data = tokenize(train, tokenizer, scenario.model.max_length)
    model = load_model(scenario.model.name, fed.label_names, scenario.seed)
    device = torch.device("cuda")
    loader = make_loader(data, tokenizer, scenario.training.batch_size, 0, True)
    train_steps(model, loader, scenario.training, device, max_examples=256)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = train_steps(model, loader, scenario.training, device)
    torch.cuda.synchronize()
    print(
        json.dumps(
            {
                "samples_per_s": result.num_examples / (time.perf_counter() - start),
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute version")
    parser.add_argument("--gpu", action="store_true", help="P6 only (needs CUDA)")
    parser.add_argument("--gpu-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", default=["p1", "p2", "p4", "p5"])
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.gpu_worker:
        return gpu_worker()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    results.pop("quick", None)
    modes = results.setdefault("modes", {})  # which sections ran --quick, which in full
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = (
            {"p6": p6_gpu}
            if args.gpu
            else {
                "p1": lambda: p1_throughput(args.quick),
                "p2": lambda: p2_overhead(args.quick, work),
                "p4": lambda: p4_bytes(args.quick, work),
                "p5": lambda: p5_memory(args.quick, work),
            }
        )
        for name, step in steps.items():
            if name not in args.only and not args.gpu:
                continue
            started = time.perf_counter()
            value = step()
            print(f"{name} ({time.perf_counter() - started:.0f}s): {json.dumps(value)}", flush=True)
            results[name] = value
            modes[name] = "quick" if args.quick else "full"
            if isinstance(value, dict):  # the headline figures also at the top level
                results.update({k: v for k, v in value.items() if k.startswith(f"{name}_")})
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    rows = []
    if "p1_throughput_ratio" in results:
        rows.append(
            ("P1 ClientApp / plain loop samples/s", f"{results['p1_throughput_ratio']:.3f}")
        )
        if "p1_throughput_ratio_ungrouped" in results["p1"]:
            ratio = results["p1"]["p1_throughput_ratio_ungrouped"]
            rows.append(("P1 same, random batches (group_by_length off)", f"{ratio:.3f}"))
    if "p2_overhead_share" in results:
        rows.append(("P2 round overhead share", f"{results['p2_overhead_share']:.3%}"))
    for row in results.get("p4", []):
        rows.append(
            (
                f"P4 {row['variant']}: bytes up/client/round, accuracy",
                f"{row['bytes_up_per_round']:,.0f} B ({row['bytes_vs_full']:.2%}), "
                f"{row['final_accuracy']:.4f}",
            )
        )
    for clients, mb in results.get("p5_peak_rss_mb", {}).items():
        rows.append((f"P5 peak memory, {clients} clients (10/round)", f"{mb:,.0f} MB"))
    for clients, seconds in results.get("p5_round0_seconds", {}).items():
        rows.append((f"P5 round 0 (start-up + evaluation), {clients} clients", f"{seconds:.1f} s"))
    if "p6" in results:
        p6 = results["p6"]
        rows.append(
            ("P6 per-client speed, 4 on one GPU vs alone", f"{p6['per_client_speed_ratio']:.2f}")
        )
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
