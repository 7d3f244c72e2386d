"""Load check of `fedtune serve`, fp32 against its int8 exports, side by side in one run:
export the model (`fedtune export --quantize int8` and `--quantize onnx-int8`, each measured
against fp32 on the run's test split), then for each model start `fedtune serve`, send N
concurrent one-text requests and print requests/s and latency percentiles, then each
export's throughput over fp32's.

    python bench/serve_load.py runs/<run>/model [--requests 200] [--port 8765] [--threads 2]

Writes bench/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
EXPORTS = ("int8", "onnx-int8")
TEXTS = [
    "@united thanks for the smooth flight, great crew!",
    "@americanair lost my bag again and nobody answers",
    "@jetblue what time does boarding start for flight 123?",
]


async def _load(url: str, n: int) -> tuple[float, list[float]]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(i: int) -> float:
            start = time.perf_counter()
            response = await client.post(url, json={"texts": [TEXTS[i % len(TEXTS)]]})
            response.raise_for_status()
            assert len(response.json()["predictions"]) == 1
            return time.perf_counter() - start

        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start, sorted(latencies)


def measure(model_dir: str, requests: int, port: int, threads: int) -> dict:
    """requests/s and latency of `fedtune serve model_dir` under `requests` concurrent calls."""
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "fedtune.cli", "serve", model_dir, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        asyncio.run(_load(f"{base}/predict", 20))  # warm-up
        seconds, latencies = asyncio.run(_load(f"{base}/predict", requests))
    finally:
        server.terminate()
        server.wait()
    return {
        "requests_per_second": requests / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = parser.parse_args()
    paths, exports = {"fp32": args.model_dir}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for choice in EXPORTS:
            paths[choice] = str(Path(tmp) / choice)
            export = [sys.executable, "-m", "fedtune.cli", "export", args.model_dir, paths[choice]]
            subprocess.run([*export, "--quantize", choice], check=True)
            exports[choice] = json.loads((Path(paths[choice]) / "export.json").read_text())
        results = {
            name: measure(path, args.requests, args.port, args.threads)
            for name, path in paths.items()
        }
    for name, r in results.items():
        print(
            f"{name}: {args.requests} concurrent requests: {r['requests_per_second']:.1f} "
            f"requests/s, latency p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms"
        )
    fp32 = results["fp32"]["requests_per_second"]
    ratios = {choice: results[choice]["requests_per_second"] / fp32 for choice in EXPORTS}
    for choice, report in exports.items():
        line = f"{choice} / fp32 throughput: {ratios[choice]:.2f}x, {report['int8_mb']:.1f} MB"
        if "int8_accuracy" in report:
            drop = 100 * (report["fp32_accuracy"] - report["int8_accuracy"])
            line += (
                f"; test accuracy {report['int8_accuracy']:.3f} vs fp32 "
                f"{report['fp32_accuracy']:.3f} ({drop:.1f} points lost)"
            )
        print(line)
    out = {"model": args.model_dir, "requests": args.requests, "threads": args.threads}
    out.update({"results": results, "over_fp32": ratios, "exports": exports})
    (HERE / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
