"""The `fedtune` command line.

Every command is a handler in `COMMANDS`, and every one ends by the same contract
(docs/reference/contract.md, "Exit codes"): 0 success; 1 a run that failed, or an
unexpected error (a bug: one line, its traceback in a file); 2 a problem the user can fix,
a `FedtuneError` (bad command-line syntax is one too), one line `fedtune: error: ...`;
130 / 143 after Ctrl-C (SIGINT) / SIGTERM, with `fedtune: interrupted`. No traceback
reaches the terminal unless FEDTUNE_DEBUG=1 asks for it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator

from fedtune.cli.deployment import certs_command, shards_command
from fedtune.cli.parser import build_parser
from fedtune.cli.predict import export_command, predict_command, serve_command
from fedtune.cli.reports import audit_command, compare_command, report_command
from fedtune.cli.runs import (
    centralized_command,
    deploy_command,
    local_command,
    run_command,
    sweep_command,
    worker_command,
)
from fedtune.errors import FedtuneError, first_line


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt of the main thread (exit 143)."""

    exit_code = 128 + signal.SIGTERM


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run_command,
    "centralized": centralized_command,
    "local": local_command,
    "deploy": deploy_command,
    "sweep": sweep_command,
    "worker": worker_command,
    "certs": certs_command,
    "shards": shards_command,
    "report": report_command,
    "compare": compare_command,
    "audit": audit_command,
    "predict": predict_command,
    "export": export_command,
    "serve": serve_command,
}
"""Command name -> handler (its argparse namespace -> exit code)."""

DEBUG_VARIABLE = "FEDTUNE_DEBUG"
"""Set to 1: an error's full traceback goes to stderr too (for a bug report)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises `_Terminated` in the main thread while the command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def _traceback(exc: BaseException) -> str:
    """Where the full traceback of `exc` went: stderr under FEDTUNE_DEBUG=1, else a new
    file in the temporary directory (for a bug report)."""
    if _debugging():
        traceback.print_exception(exc)
        return "traceback above"
    try:
        fd, path = tempfile.mkstemp(prefix="fedtune-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(traceback.format_exception(exc)))
    except OSError:
        return f"rerun with {DEBUG_VARIABLE}=1 for its traceback"
    return f"traceback in {path}; please report it"


def main(argv: list[str] | None = None) -> int:
    """Run one `fedtune` command; its exit code (see the module's docstring)."""
    try:
        with _sigterm_interrupts():
            args = build_parser().parse_args(argv)
            return COMMANDS[args.command](args)
    except FedtuneError as exc:
        if _debugging():
            traceback.print_exception(exc)
        print(f"fedtune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("fedtune: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except BrokenPipeError:  # `fedtune predict ... | head`: the reader left; stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: one line, its traceback kept
        name, detail = type(exc).__name__, first_line(exc)
        what = name if detail == name else f"{name}: {detail}"
        print(f"fedtune: error: unexpected {what} ({_traceback(exc)})", file=sys.stderr)
        return 1
