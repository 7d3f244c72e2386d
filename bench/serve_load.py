"""Load check of `fedtune serve`: start it on a saved model, send N concurrent one-text
requests from this process, print requests/s and latency percentiles.

    python bench/serve_load.py runs/<run>/model [--requests 200] [--port 8765]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import httpx

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "fedtune.cli", "serve", args.model_dir, "--port", str(args.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        asyncio.run(_load(f"{base}/predict", 10))  # warm-up
        seconds, latencies = asyncio.run(_load(f"{base}/predict", args.requests))
    finally:
        server.terminate()
        server.wait()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"{args.requests} concurrent requests in {seconds:.2f}s: "
        f"{args.requests / seconds:.1f} requests/s, latency p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
