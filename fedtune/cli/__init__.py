"""The `fedtune` command line.

Every command is a handler in `COMMANDS`. A problem the user can fix is a `FedtuneError`:
`main` prints it as one line, `fedtune: error: ...`, and exits with its `exit_code`
(2, or 1 for a deployment that failed); bad command-line syntax is one too. Ctrl-C (SIGINT)
and SIGTERM end a command with one line and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

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
from fedtune.errors import FedtuneError


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


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return COMMANDS[args.command](args)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except FedtuneError as exc:
        print(f"fedtune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("fedtune: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except BrokenPipeError:  # `fedtune predict ... | head`: the reader left; stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
