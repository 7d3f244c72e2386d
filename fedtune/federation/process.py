"""Processes as Linux's /proc shows them: this process's age (what a message cost before
fedtune's own set-up began), the fields of any process's `stat` line, and the Ray node a
simulated client runs on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_first_message = True


def startup_seconds() -> float:
    """On the first message a process handles, the seconds since the process started
    (interpreter, imports, connecting: in deployment each message gets a fresh process);
    0.0 on later messages of a reused process (as in simulation)."""
    global _first_message
    if not _first_message:
        return 0.0
    _first_message = False
    return process_age()


STATE, PARENT, START_TIME = 0, 1, 19
"""Indices in `stat_fields`: the process's state letter, parent pid, start time (ticks)."""


def stat_fields(pid: int | str = "self") -> list[str] | None:
    """The fields of `/proc/<pid>/stat` after the command name; None where unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_age() -> float:
    """Seconds since this OS process started (Linux /proc; 0.0 where unavailable)."""
    fields = stat_fields()
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[START_TIME]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def ray_node() -> dict[str, int]:
    """In a Ray worker (simulation): `{"ray-node": ...}`, the first 60 bits of the Ray node
    id this process runs on, so a run on a Ray cluster shows where each client ran; else {}."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    return {"ray-node": int(ray.get_runtime_context().get_node_id()[:15], 16)}
