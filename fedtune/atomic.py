"""File writing: atomic (readers, and a resumed run, never see half a file or directory),
and never through a link (fedtune creates its files; it does not follow what it finds)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

NO_LINK = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
"""Flags of every file fedtune opens to write: created if missing, a link there an error."""


def open_file(path: Path, flags: int = os.O_EXCL, mode: int = 0o644) -> int:
    """A write-only descriptor of `path`, created with `mode` (never wider, whatever the
    umask) if missing; a link at `path`, even a dangling one, is an OSError, never followed.
    With the default `O_EXCL` anything already at `path` is an error (FileExistsError)."""
    return os.open(path, os.O_WRONLY | NO_LINK | flags, mode)


def create_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create `path` holding `data`, with `mode` from the start (0o600 for a private key);
    FileExistsError if anything, a link included, is already there: nothing is replaced
    and nothing is written elsewhere. A write that fails removes the file it created."""
    fd = open_file(path, os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exactly `mode`, whatever the umask
            handle.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def make_dir(path: Path) -> bool:
    """Make directory `path` and its missing parents; True if it made `path`, False if it
    was a directory already. A link in its place (even to a directory) or a file is
    NotADirectoryError: fedtune never writes through a link it did not make."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "a link or a file, not a directory", str(path)
            ) from None
        return False


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file through a temp file + fsync + rename (a link at `path` is replaced by
    the file, never followed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def save_dir_atomic(path: Path, save: Callable[[Path], None]) -> None:
    """`save(tmp_dir)` then swap it in for `path` (e.g. a `save_pretrained` model dir).
    Killed between the two renames, `path` is missing and `.<name>.old` holds the previous."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp.chmod(0o755)
        save(tmp)
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
