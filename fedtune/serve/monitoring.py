"""What `fedtune serve` tells its operators: Prometheus metrics (`GET /metrics`: requests by
path and status, errors, a latency histogram, micro-batch sizes) and one structured (JSON)
access-log line per request on the `fedtune.access` logger. With several server processes
(`--workers`) the metrics are prometheus_client's multiprocess ones, summed over processes."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (to an empty directory) for prometheus_client's multiprocess mode (`--workers N`)."""
access_log = logging.getLogger("fedtune.access")


class ServeMetrics:
    """The server's metrics, in their own registry (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fedtune_requests", "HTTP requests", ["path", "status"], registry=self.registry
        )
        self.errors = Counter(
            "fedtune_request_errors",
            "HTTP requests answered 4xx/5xx",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fedtune_request_seconds", "request latency", ["path"], registry=self.registry
        )
        self.batch_texts = Histogram(
            "fedtune_batch_texts",
            "texts per model call (micro-batch size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        if status >= 400:
            self.errors.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (over all processes in multiprocess mode)."""
        registry = self.registry
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def log_access(client: str, method: str, path: str, status: int, seconds: float) -> None:
    """One JSON line: time, client address, method, path, status, milliseconds."""
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client": client,
        "method": method,
        "path": path,
        "status": status,
        "ms": round(seconds * 1000, 2),
    }
    access_log.info(json.dumps(entry))


def log_to_stderr() -> None:
    """Access-log lines go to standard error (what `fedtune serve` does)."""
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False


class Observed:
    """ASGI middleware: every HTTP request is timed, counted and access-logged (paths other
    than the app's own are counted as `other`: a scan cannot grow the metrics). A request
    left without an answer because its client went away counts as status 499 (nginx's
    "client closed request"), one that failed as 500."""

    def __init__(self, app, metrics: ServeMetrics, paths: frozenset[str]) -> None:  # noqa: ANN001
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [499]

        async def observed_send(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            if status[0] == 499:
                status[0] = 500
            raise
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            self.metrics.observe(path if path in self.paths else "other", status[0], seconds)
            client = scope.get("client") or ("-", 0)
            log_access(str(client[0]), scope.get("method", ""), path, status[0], seconds)
