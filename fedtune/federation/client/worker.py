"""`fedtune worker`: a warm, long-lived process next to a SuperNode.

Flower's SuperNode starts a fresh `flwr-clientapp` process for every message, which would
import torch and load the model and the shard each time. With `worker-socket=PATH` in the
node's `--node-config`, fedtune's (thin) ClientApp instead hands each message and the node's
context to the worker listening on that unix socket, and returns its reply: the worker keeps
the model (on the GPU when there is one), the tokenized shard and its caches between messages.

The socket is created owner-only (mode 0600) and the worker answers only processes of its
own user (checked with SO_PEERCRED). It serves one message at a time; a failed message is
answered with its error and the next one is served. Messages travel as Flower's own protobuf
(no pickle): a JSON header, then the Message, then the Context; the reply is a JSON header,
then the reply's RecordDict and the node's state.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common import serde
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedtune.errors import FedtuneError

WORKER_SOCKET = "worker-socket"
"""The node-config key naming the worker's socket."""
_LENGTH = struct.Struct("!Q")
_PEER = struct.Struct("3i")  # struct ucred: pid, uid, gid


class WorkerError(RuntimeError):
    """The node's worker is down, refused the connection, or failed the message."""


class WorkerSocketError(FedtuneError, OSError):
    """The worker cannot listen where it was asked to (one line, exit 2)."""


def _send(sock: socket.socket, *frames: bytes) -> None:
    for frame in frames:
        sock.sendall(_LENGTH.pack(len(frame)) + frame)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the connection closed mid-frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket) -> bytes:
    (size,) = _LENGTH.unpack(_receive_exactly(sock, _LENGTH.size))
    return _receive_exactly(sock, size)


def _replace_state(context: Context, state: RecordDict) -> None:
    """The node's state as the worker left it, in place (mods hold `context.state`)."""
    for key in list(context.state):
        if key not in state:
            del context.state[key]
    for key, record in state.items():
        context.state[key] = record


def call(path: str, kind: str, msg: Message, context: Context, startup: float) -> RecordDict:
    """The worker's reply content to `msg` (a `kind` message); `context.state` is updated."""
    header = {"kind": kind, "startup": startup}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                _send(  # a worker that refuses us closes before reading: its reason waits
                    sock,
                    json.dumps(header).encode(),
                    serde.message_to_proto(msg).SerializeToString(),
                    serde.context_to_proto(context).SerializeToString(),
                )
            reply = json.loads(_receive(sock))
            if "error" in reply:
                raise WorkerError(f"the node's worker ({path}): {reply['error']}")
            content = ProtoRecordDict.FromString(_receive(sock))
            state = ProtoRecordDict.FromString(_receive(sock))
    except OSError as exc:
        raise WorkerError(f"the node's worker ({path}) is down: {exc}") from exc
    _replace_state(context, serde.recorddict_from_proto(state))
    return serde.recorddict_from_proto(content)


def _clear(path: Path) -> None:
    """Remove a stale socket of this user's at `path` (its worker died); refuse anything
    else there: a file, a folder or a link is not fedtune's to delete, a live socket is
    another process's."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise WorkerSocketError(
            f"{path} exists and is not a socket; fedtune replaces only a stale socket of its own"
        )
    if info.st_uid != os.getuid():
        raise WorkerSocketError(f"{path} is another user's socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # no one listens: a worker that died
            return
    raise WorkerSocketError(f"a worker already listens on {path}")


def listen(path: Path) -> socket.socket:
    """A unix socket at `path`, created owner-only; a stale socket of this user's is
    replaced, anything else at `path` refused (`_clear`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _clear(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        umask = os.umask(0o177)  # the socket file is born 0600: no window for other users
        try:
            sock.bind(str(path))
        finally:
            os.umask(umask)
    except OSError as exc:
        sock.close()
        if isinstance(exc, WorkerSocketError):
            raise
        raise WorkerSocketError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    sock.listen(8)
    return sock


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a unix socket."""
    _, uid, _ = _PEER.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size))
    return uid


def serve(path: Path, ready: Callable[[], None] = lambda: None) -> None:
    """Answer messages on `path`, one at a time, until interrupted (its socket is then
    removed, unless something else has taken its place)."""
    from fedtune.config import scenario_from_run_config  # heavy: loaded once, kept warm
    from fedtune.federation.client.node import HANDLERS

    listener = listen(path)
    made = path.lstat()
    ready()
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                _answer(conn, HANDLERS, scenario_from_run_config)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(path.lstat(), made):  # still its own socket
                path.unlink()


def _answer(conn: socket.socket, handlers: Mapping[str, Callable], scenario_of: Callable) -> None:
    """One message: the handler's reply and the node's new state, or the error."""
    try:
        if peer_uid(conn) != os.getuid():
            raise PermissionError(f"refused a connection from user id {peer_uid(conn)}")
        header = json.loads(_receive(conn))
        msg = serde.message_from_proto(ProtoMessage.FromString(_receive(conn)))
        context = serde.context_from_proto(ProtoContext.FromString(_receive(conn)))
        handler = handlers[header["kind"]]
        scenario = scenario_of(context.run_config)
        content = handler(msg.content, context, scenario, float(header["startup"]))
    except Exception as exc:  # the worker survives a failed message
        print(f"fedtune worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            _send(conn, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    with contextlib.suppress(OSError):  # the ClientApp may have gone (it reports that itself)
        _send(
            conn,
            b"{}",
            serde.recorddict_to_proto(content).SerializeToString(),
            serde.recorddict_to_proto(context.state).SerializeToString(),
        )
