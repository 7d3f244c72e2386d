"""Ending a simulation cleanly: the stop event of Flower's ServerApp thread, and Ray's
processes shut down, then killed children first (Linux /proc)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fedtune.federation.process import PARENT, START_TIME, STATE, stat_fields

RAY_SHUTDOWN_SECONDS = 5.0


class NoSigtermNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


@contextlib.contextmanager
def capture_stop_event(sink: list[threading.Event]) -> Iterator[None]:
    """Collect the stop event (`f_stop`) that `run_simulation` hands its ServerApp thread
    and its message loop; setting it stops the loop from moving messages either way. Flower
    1.42 internals: where they change, nothing is collected and Ray's shutdown alone stops
    the run."""
    module = sys.modules.get("flwr.simulation.run_simulation")
    original: Callable | None = getattr(module, "run_serverapp_th", None)
    if original is None:
        yield
        return

    def run_serverapp_th(*args: Any, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("f_stop"), threading.Event):
            sink.append(kwargs["f_stop"])
        return original(*args, **kwargs)

    module.run_serverapp_th = run_serverapp_th
    try:
        yield
    finally:
        module.run_serverapp_th = original


def stop_ray(descendants: list[tuple[int, str]]) -> None:
    """`ray.shutdown()` (at most RAY_SHUTDOWN_SECONDS), then SIGKILL every process of
    `descendants` (pid, start time, parents first) that still runs: Ray's GCS, raylet,
    agents and workers.

    Two races: Flower's simulation thread, still calling Ray, would start a second cluster
    through Ray's auto-init once the first is shut down; and this driver exits at once when
    its raylet dies, so the raylet's children (its agents) are killed before it: children
    before parents."""
    import ray
    from ray._private import auto_init_hook

    auto_init_hook.enable_auto_connect = False  # what RAY_ENABLE_AUTO_CONNECT=0 sets

    def shutdown() -> None:
        with contextlib.suppress(Exception):
            ray.shutdown()

    helper = threading.Thread(target=shutdown, name="fedtune-ray-shutdown", daemon=True)
    helper.start()
    helper.join(RAY_SHUTDOWN_SECONDS)
    deadline = time.monotonic() + 5.0
    for pid, started in reversed(descendants):
        if _start_time(pid) == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    while time.monotonic() < deadline and any(
        _start_time(pid) == started for pid, started in descendants
    ):
        time.sleep(0.05)  # zombies of our own children count as gone (see _start_time)


def _start_time(pid: int) -> str | None:
    """A live process's start time (to tell it from a later one with the same pid); None
    when it is gone or a zombie."""
    fields = stat_fields(pid)
    return None if fields is None or fields[STATE] in ("Z", "X") else fields[START_TIME]


def process_tree() -> list[tuple[int, str]]:
    """(pid, start time) of every process below this one, parents before their children
    (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = stat_fields(entry.name)
            if fields is None:
                continue
            children.setdefault(int(fields[PARENT]), []).append(int(entry.name))
            started[int(entry.name)] = fields[START_TIME]
    found, stack = [], list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        found.append((pid, started[pid]))
        stack += children.get(pid, [])
    return found
