"""Run directories: what marks one, which output directories fedtune may write into, and the
lock that lets one process at a time write into one."""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path

from fedtune.atomic import make_dir, open_file
from fedtune.config import ScenarioError
from fedtune.errors import cut

RUN_MARKERS = ("scenario.json", "summary.json", "checkpoint", ".checkpoint.old")
"""What a directory holds once fedtune started a run in it (scenario.json comes first)."""
LOCK_FILE = ".lock"
"""In a run (or sweep) directory: the pid of the process writing there, flock-ed while it
runs (the kernel drops the lock when that process dies: a stale file is simply reused)."""
_HELD: dict[str, int] = {}
"""The locks this process holds (real path of the directory -> descriptor of its lock)."""


def holds_run(path: Path) -> bool:
    """Whether `path` is a directory in which fedtune started a run (finished or not)."""
    return any((Path(path) / marker).exists() for marker in RUN_MARKERS)


def _held_here(path: Path) -> bool:
    """Whether this process holds directory `path`'s lock (its lock file is still there)."""
    fd = _HELD.get(os.path.realpath(path))
    try:
        return fd is not None and os.path.samestat(os.fstat(fd), (path / LOCK_FILE).lstat())
    except FileNotFoundError:
        return False


def lock_holder(path: Path) -> int | None:
    """The pid of another live process holding directory `path`'s lock (0 when it has not
    written it yet), or None."""
    path = Path(path)
    if _held_here(path):
        return None
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # none, or not one fedtune made (a link): `lock_dir` refuses it
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read(20).strip()
            return int(text) if text.isdigit() else 0
    return None


def _where(key: str, path: Path) -> str:
    """How a refusal names the directory: the option or key that gave it, and the path."""
    return f"{key} {cut(str(path), 200)!r}"


def _in_use(where: str, pid: int) -> ScenarioError:
    """The refusal of a directory that process `pid` holds."""
    return ScenarioError(
        f"{where} is in use by process {pid or '?'} (another fedtune writes there)"
    )


def _probe(directory: Path) -> None:
    """Create and remove a file in `directory`: whether fedtune can write there (an
    `os.access` check trusts the mode bits, which /proc or a read-only mount belie)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".fedtune-probe-")
    os.close(fd)
    os.unlink(name)


def check_output_dir(path: str | Path, resume: bool = False, key: str = "output.dir") -> None:
    """Refuse, with one line naming `key`, an output directory fedtune must not write into:
    a link, an existing file, a directory another process is writing into, one that holds a
    run (unless `resume`), a non-empty directory that is not a run of fedtune's (its files
    are the user's), or one that cannot be created or written (a probe file says).
    Called before anything starts; leaves nothing behind."""
    path = Path(path)
    where = _where(key, path)
    try:
        if path.is_symlink():
            raise ScenarioError(
                f"{where} is a symbolic link; fedtune writes only into a real directory"
            )
        if path.exists() and not path.is_dir():
            raise ScenarioError(f"{where} is a file, not a directory")
        if path.is_dir():
            holder = lock_holder(path)
            if holder is not None:
                raise _in_use(where, holder)
            if not resume and holds_run(path):
                raise ScenarioError(
                    f"{where} already holds a run (continue it with fedtune run --resume "
                    f"{path}, or choose another directory)"
                )
            if not resume and any(p.name != LOCK_FILE for p in path.iterdir()):
                raise ScenarioError(
                    f"{where} is not empty and not a fedtune run directory; fedtune does not "
                    "write among other files (choose a new or empty directory)"
                )
            _probe(path)
            return
        parent = path.parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ScenarioError(f"{where} cannot be created: {parent} is not a directory")
        try:
            _probe(parent)
        except OSError as exc:
            raise ScenarioError(
                f"{where} cannot be created: {parent} is not writable ({exc.strerror or exc})"
            ) from None
    except OSError as exc:
        raise ScenarioError(f"{where}: {exc.strerror or exc}") from None


def lock_dir(path: Path, key: str = "output.dir") -> None:
    """Make directory `path` (not through a link) and hold its lock until this process ends;
    refuse, in one line, one that another live process holds. Held already: nothing to do."""
    path = Path(path)
    where = _where(key, path)
    try:
        make_dir(path)
        if _held_here(path):
            return
        if (gone := _HELD.pop(os.path.realpath(path), None)) is not None:
            os.close(gone)  # the lock of a directory removed since (`_fresh_dir` of a sweep)
        # not O_EXCL: a dead holder's is reused; O_NONBLOCK: a FIFO planted there never blocks
        fd = open_file(path / LOCK_FILE, flags=os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ScenarioError(f"{where}: {LOCK_FILE} is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(where, lock_holder(path) or 0) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[os.path.realpath(path)] = fd
    except OSError as exc:
        raise ScenarioError(f"{where}: {exc.strerror or exc}") from None


def claim_run_dir(path: Path, resume: bool = False, key: str = "output.dir") -> None:
    """Check `path` (`check_output_dir`), make it and hold its lock; check again holding
    the lock (a run that another process finished there meanwhile is not overwritten)."""
    check_output_dir(path, resume, key)
    lock_dir(path, key)
    check_output_dir(path, resume, key)
