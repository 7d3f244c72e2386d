"""This OS process's age: what a message cost before fedtune's own set-up began."""

from __future__ import annotations

import os
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


def process_age() -> float:
    """Seconds since this OS process started (Linux /proc; 0.0 where unavailable)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
