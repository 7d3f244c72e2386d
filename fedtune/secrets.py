"""Reading the secret files fedtune is given (`serve --api-key-file`, `serve --ssl-keyfile`).

A secret file must be a regular file (not a directory, FIFO or device: `/dev/zero` would
be read forever, a FIFO would block) of at most `max_bytes` bytes, of which no more than
`max_bytes + 1` are ever read. One that group or others may read or write gets a warning
on standard error (`chmod 600` it), not a refusal, once its contents are accepted. A file
that fails these checks is a SecretFileError: one line naming the file and the problem,
exit 2.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from fedtune.errors import FedtuneError

MAX_SECRET_BYTES = 64 * 1024
"""The default size limit (a PEM private key is about 300 bytes, an API key 64)."""
_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class SecretFileError(FedtuneError):
    """A secret file (or another file given beside one) cannot be used."""


def warn(text: str) -> None:
    """One line on standard error: `fedtune: warning: TEXT`."""
    print(f"fedtune: warning: {text}", file=sys.stderr)


def _read(path: str | Path, what: str, max_bytes: int) -> tuple[bytes, int]:
    """The bytes of `path` and its permission bits; SecretFileError unless it is a regular
    file of at most `max_bytes` bytes."""
    where = f"{what} {path}"
    try:  # O_NONBLOCK: opening a FIFO with no writer does not block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SecretFileError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode  # of what was opened, not of what the path names now
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _NOT_REGULAR if test(mode)), "special")
            raise SecretFileError(f"{where}: {kind}, not a regular file")
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SecretFileError(f"{where}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SecretFileError(f"{where}: larger than {max_bytes} bytes")
    return data, stat.S_IMODE(mode)


def read_regular_file(path: str | Path, what: str, max_bytes: int) -> bytes:
    """The bytes of `path` (`what` names it: an option such as `--ssl-certfile`), a regular
    file of at most `max_bytes` bytes; SecretFileError otherwise."""
    return _read(path, what, max_bytes)[0]


@contextlib.contextmanager
def read_secret_file(
    path: str | Path, what: str, max_bytes: int = MAX_SECRET_BYTES, warn_access: bool = True
) -> Iterator[bytes]:
    """`with read_secret_file(path, what) as data:` the bytes of secret file `path`, checked
    as `read_regular_file` does. With `warn_access`, if group or others may read or write
    it, a warning on stderr once the block ends without an error (a file refused for its
    contents, such as /etc/passwd, gets no advice to chmod it)."""
    data, mode = _read(path, what, max_bytes)
    yield data
    if warn_access and mode & 0o077:
        warn(f"{what} {path}: group or others can access it (mode {mode:04o}); chmod 600 it")
