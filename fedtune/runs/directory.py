"""Run directories: what marks one, and which output directories fedtune may write into."""

from __future__ import annotations

import os
from pathlib import Path

from fedtune.config import ScenarioError
from fedtune.errors import cut

RUN_MARKERS = ("scenario.json", "summary.json", "checkpoint", ".checkpoint.old")
"""What a directory holds once fedtune started a run in it (scenario.json comes first)."""


def holds_run(path: Path) -> bool:
    """Whether `path` is a directory in which fedtune started a run (finished or not)."""
    return any((Path(path) / marker).exists() for marker in RUN_MARKERS)


def check_output_dir(path: str | Path, resume: bool = False, key: str = "output.dir") -> None:
    """Refuse, with one line naming `key`, an output directory fedtune must not write into:
    an existing file, a directory that holds a run (unless `resume`), a non-empty directory
    that is not a run of fedtune's (its files are the user's), or one that cannot be created.
    Cheap and side-effect free: called before anything starts."""
    path = Path(path)
    where = f"{key} {cut(str(path), 200)!r}"
    try:
        if path.exists() and not path.is_dir():
            raise ScenarioError(f"{where} is a file, not a directory")
        if path.is_dir():
            if resume:
                return
            if holds_run(path):
                raise ScenarioError(
                    f"{where} already holds a run (continue it with fedtune run --resume "
                    f"{path}, or choose another directory)"
                )
            if any(path.iterdir()):
                raise ScenarioError(
                    f"{where} is not empty and not a fedtune run directory; fedtune does not "
                    "write among other files (choose a new or empty directory)"
                )
            if not os.access(path, os.W_OK | os.X_OK):
                raise ScenarioError(f"{where}: permission denied")
            return
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ScenarioError(f"{where} cannot be created: {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ScenarioError(f"{where} cannot be created: {parent} is not writable")
    except OSError as exc:
        raise ScenarioError(f"{where}: {exc.strerror or exc}") from None
