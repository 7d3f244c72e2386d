"""The one base of every error fedtune reports to a user as a single line."""

from __future__ import annotations


class FedtuneError(Exception):
    """A problem the user can fix (bad scenario, data, model, run directory, ...); its
    message is one line naming it. `fedtune` prints it and exits with `exit_code`."""

    exit_code = 2


TRACEBACK = "Traceback (most recent call last)"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters and before any
    traceback it quotes (its class name when nothing is left): what a one-line error quotes
    of a library's failure."""
    lines = str(exc).strip().splitlines()
    line = lines[0].split(TRACEBACK)[0].rstrip(" :") if lines else ""
    return cut(line, limit) if line else type(exc).__name__


def short(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: error messages never repeat a huge input."""
    return cut(repr(value), limit)


def cut(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters (with `...`)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class DataError(FedtuneError, ValueError):
    """The data cannot serve the scenario; the message names the problem in one line."""
