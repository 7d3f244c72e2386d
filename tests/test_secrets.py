"""fedtune.secrets: a secret file is a regular file of bounded size, read only so far, and
one that group or others may access gets a warning (not a refusal) once it is accepted."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fedtune.errors import FedtuneError
from fedtune.secrets import SecretFileError, read_regular_file, read_secret_file


def _secret(tmp_path: Path, data: bytes = b"s" * 32, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_an_owner_only_secret_is_read_without_a_word(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _secret(tmp_path)
    with read_secret_file(path, "--key") as data:
        assert data == b"s" * 32
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_group_or_others_access_is_a_warning_after_the_contents_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture, mode: int
) -> None:
    path = _secret(tmp_path, mode=mode)
    with read_secret_file(path, "--key") as data:
        assert data == b"s" * 32
    assert capsys.readouterr().err == (
        f"fedtune: warning: --key {path}: group or others can access it "
        f"(mode {mode:04o}); chmod 600 it\n"
    )
    with pytest.raises(SecretFileError), read_secret_file(path, "--key"):  # contents refused
        raise SecretFileError("not a key")
    assert capsys.readouterr().err == ""  # no advice to chmod a file that is no secret
    with read_secret_file(path, "--key", warn_access=False):
        pass
    assert capsys.readouterr().err == ""


def test_size_is_bounded(tmp_path: Path) -> None:
    path = _secret(tmp_path, b"x" * 100)
    with read_secret_file(path, "--key", max_bytes=100) as data:
        assert len(data) == 100
    with pytest.raises(SecretFileError, match=rf"^--key {path}: larger than 99 bytes$"):
        read_regular_file(path, "--key", 99)


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: Path("/dev/zero"), "a character device, not a regular file"),
        (lambda tmp: tmp, "a directory, not a regular file"),
        (_fifo, "a FIFO, not a regular file"),
        (lambda tmp: tmp / "missing", "cannot read: No such file or directory"),
    ],
)
def test_what_is_not_a_regular_file_is_refused_in_one_line(
    tmp_path: Path, make: Callable[[Path], Path], problem: str
) -> None:
    path = make(tmp_path)
    failures: list[BaseException] = []

    def read() -> None:
        try:
            with read_secret_file(path, "--key"):
                pass
        except BaseException as exc:  # the test reads it
            failures.append(exc)

    reader = threading.Thread(target=read, daemon=True)  # a FIFO must not block the read
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), f"reading {path} blocked"
    (failure,) = failures
    assert isinstance(failure, SecretFileError) and isinstance(failure, FedtuneError)
    assert str(failure) == f"--key {path}: {problem}"
    assert failure.exit_code == 2
