"""Running uvicorn for `fedtune serve` so that SIGINT and SIGTERM end it like any other
`fedtune` command: uvicorn's graceful shutdown (requests in progress get GRACE_SECONDS to
finish; a second SIGINT stops waiting), then `Interrupted`, which `fedtune` reports as
`fedtune: interrupted` and exit 128 + the signal number (130, 143), with no traceback.
(`uvicorn.run` swallows the signal and exits 0; after a forced shutdown uvicorn logs a
traceback for the app's lifespan and for each request it cancels.)"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

from fedtune.errors import FedtuneError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 10
"""How long a shutdown waits for requests in progress before it cancels them."""


class ServeError(FedtuneError):
    """`fedtune serve` cannot listen or serve where it was asked to."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the server; `exit_code` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _not_cancelled(record: logging.LogRecord) -> bool:
    """A log filter: no traceback for a request that a shutdown cancelled."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


class _Server(uvicorn.Server):
    """uvicorn's server, remembering the first stop signal (`stopped_by`)."""

    stopped_by = 0

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        logging.getLogger("uvicorn.error").addFilter(_not_cancelled)  # in each worker too
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by = self.stopped_by or (sig if sig in STOP_SIGNALS else 0)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:  # uvicorn skips the lifespan's shutdown: run it all the same
            await self.lifespan.shutdown()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of `--workers` processes, remembering the first stop signal."""

    stopped_by = 0

    def handle_signals(self) -> None:
        stops = [sig for sig in self.signal_queue if sig in STOP_SIGNALS]
        self.stopped_by = self.stopped_by or (stops[0] if stops else 0)
        super().handle_signals()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Where uvicorn re-raises the signals it handled, once it has stopped."""


def run_server(config: uvicorn.Config) -> None:
    """Serve `config` (in `config.workers` processes) until a signal stops it: then raise
    Interrupted. A server that stops by itself before serving is a ServeError."""
    config.timeout_graceful_shutdown = GRACE_SECONDS
    previous = {sig: signal.signal(sig, _ignore) for sig in STOP_SIGNALS}
    try:
        server = _Server(config)
        if config.workers == 1:
            server.run()
            stopped_by, started = server.stopped_by, server.started
        else:
            supervisor = _Supervisor(config, target=server.run, sockets=[config.bind_socket()])
            supervisor.run()
            stopped_by, started = supervisor.stopped_by, True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped_by:
        raise Interrupted(stopped_by)
    if not started:
        raise ServeError("the server stopped before it started serving (see its log above)")
