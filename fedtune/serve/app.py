"""Serve a trained model over HTTP: `create_app` and `serve` (the model itself is
`fedtune.serve.predictor.Predictor`).

HTTP API: `GET /health` -> `{"status": "ok", "labels": [...]}` (always open); `GET /metrics`
-> Prometheus text; `POST /predict` with
`{"texts": ["...", ...]}` (a fusion model also needs `"features": [{column: value}, ...]`,
one object per text) -> `{"predictions": [{"label": ..., "score": ...}, ...]}` in input
order. Every invalid body (not JSON by its Content-Type, not UTF-8, malformed or nested too
deeply for pydantic's JSON parser, missing or empty `texts`, a non-string item, more than
`max_texts` texts, a text longer than `max_chars`, missing or bad features) gets 422 and
`{"detail": "<message>"}`; a body over `max_body_bytes` gets 413 with the same shape (read no
further than the limit). With API keys (`fedtune.serve.keys`), `/predict` and `/metrics`
without a valid key get 401 before any of the body is read.
"""

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, FiniteFloat, StrictStr, StringConstraints, ValidationError
from pydantic_core import ErrorDetails

from fedtune.errors import DataError, cut, first_line
from fedtune.secrets import read_regular_file, read_secret_file, warn
from fedtune.serve.keys import is_valid, load_keys, presented_key
from fedtune.serve.monitoring import MULTIPROCESS_ENV, Observed, ServeMetrics, log_to_stderr
from fedtune.serve.predictor import MicroBatcher, Predictor
from fedtune.serve.server import ServeError, run_server

MAX_BODY_BYTES = 1 << 20
"""Largest `POST /predict` body `fedtune serve` reads (64 texts of 2,000 characters fit)."""


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def _error_message(error: ErrorDetails) -> str:
    """One pydantic error of a JSON body as `where: what`."""
    if error["type"] == "json_invalid":
        return f"malformed JSON: {error['ctx']['error']}"
    parts = [str(part) if str(part).isprintable() else repr(part) for part in error["loc"]]
    return f"{cut('.'.join(parts), 100) or 'body'}: {error['msg']}"  # keys are the client's


def _is_json(content_type: str) -> bool:
    """Whether a Content-Type is JSON (`application/json` or `application/*+json`)."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _unprocessable(detail: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": detail})


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: an HTTP request whose body exceeds `max_bytes` gets 413 and
    `{"detail": ...}`. A Content-Length over the limit is refused before any of the body is
    read; otherwise the body is read chunk by chunk and refused as soon as it passes the
    limit (chunked uploads too), so at most `max_bytes` of it is ever held. A client that
    goes away before its body is whole gets no answer (there is no one to read it)."""

    def __init__(self, app: Callable, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                chunks_left = [{"type": "http.request", "body": b"".join(chunks)}]
                break

        async def replay() -> MutableMapping[str, Any]:
            return chunks_left.pop() if chunks_left else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes} bytes"
        await send_detail(send, 413, detail, (b"connection", b"close"))


async def send_detail(send: Send, status: int, detail: str, *headers: tuple[bytes, bytes]) -> None:
    """An ASGI response `{"detail": detail}` with `status` (and extra `headers`)."""
    body = JSONResponse(status_code=status, content={"detail": detail}).body
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*head, *headers]})
    await send({"type": "http.response.body", "body": body})


ROUTES = frozenset({"/health", "/metrics", "/predict"})
OPEN_PATHS = frozenset({"/health"})
"""Paths served without an API key."""


class RequireKey:
    """ASGI middleware: with `keys`, an HTTP request outside OPEN_PATHS without a valid key
    (`fedtune.serve.keys`) gets 401 and `{"detail": ...}`, before its body is read."""

    def __init__(self, app: Callable, keys: tuple[bytes, ...]) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or scope["path"] in OPEN_PATHS
            or is_valid(presented_key(dict(scope.get("headers") or [])), self.keys)
        ):
            await self.app(scope, receive, send)
            return
        await send_detail(send, 401, "missing or invalid API key", (b"www-authenticate", b"Bearer"))


def create_app(
    predictor: Predictor,
    max_texts: int = 64,
    max_chars: int = 2000,
    max_batch: int = 32,
    max_wait_ms: float = 5,
    max_body_bytes: int = MAX_BODY_BYTES,
    api_keys: tuple[bytes, ...] = (),
) -> FastAPI:
    """The HTTP API around `predictor`; its micro-batcher is `app.state.batcher` while running,
    its metrics `app.state.metrics`. Request bodies over `max_body_bytes` get 413; with
    `api_keys`, requests without one of them get 401 (`/health` stays open)."""
    metrics = ServeMetrics()

    # A local class because its limits are arguments.
    class PredictRequest(BaseModel):
        texts: list[Annotated[StrictStr, StringConstraints(max_length=max_chars)]] = Field(
            min_length=1, max_length=max_texts
        )
        features: list[dict[str, StrictStr | FiniteFloat | None]] | None = Field(
            None, max_length=max_texts
        )
        """A fusion model's tabular features: one {column: value} object per text."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = MicroBatcher(
            predictor, max_batch, max_wait_ms, metrics.batch_texts.observe
        )
        task = asyncio.create_task(app.state.batcher.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="fedtune", lifespan=lifespan)
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)  # the innermost
    app.add_middleware(RequireKey, keys=api_keys)
    app.add_middleware(
        Observed, metrics=metrics, paths=frozenset({"/health", "/metrics", "/predict"})
    )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "labels": predictor.labels}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    schema = {"content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}

    @app.post("/predict", response_model=None, openapi_extra={"requestBody": schema})
    async def predict(request: Request) -> PredictResponse | JSONResponse:
        if not _is_json(request.headers.get("content-type", "")):
            return _unprocessable("body: send a JSON object with Content-Type: application/json")
        try:  # pydantic parses the JSON itself: UTF-8 checked, nesting bounded, one error kind
            body = PredictRequest.model_validate_json(await request.body())
            # checked here, so that one bad request never fails a shared batch
            predictor.encode_features(body.features, len(body.texts))
        except ValidationError as exc:
            return _unprocessable("; ".join(_error_message(error) for error in exc.errors()))
        except DataError as exc:
            return _unprocessable(str(exc))
        features = body.features if predictor.spec is not None else None
        predictions = await app.state.batcher.predict(body.texts, features)
        return PredictResponse(predictions=predictions)

    return app


def check_address(host: str, port: int) -> None:
    """Raise ServeError unless `host:port` can be listened on now (before the model loads)."""
    if not 0 < port < 65536:
        raise ServeError(f"--port {port}: not a TCP port (1-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ServeError(f"--host {host!r}: cannot resolve: {first_line(exc)}") from None
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback one (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
    except (OSError, UnicodeError, ValueError):
        return False


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Raise ServeError unless both or neither are given and they load as a key pair (the
    key checked as a secret file, the certificate as a regular file of at most 1 MiB)."""
    if (certfile is None) != (keyfile is None):
        raise ServeError("give both --ssl-certfile and --ssl-keyfile (or neither)")
    if certfile is None:
        return
    read_regular_file(certfile, "--ssl-certfile", 1 << 20)
    with read_secret_file(keyfile, "--ssl-keyfile"):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ServeError(
                f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: cannot load: "
                f"{getattr(exc, 'strerror', None) or first_line(exc)}"
            ) from None


SERVE_ENV = "FEDTUNE_SERVE"
"""How `serve` hands its settings (JSON) to `app_from_env` in each worker process."""


def app_from_env() -> FastAPI:
    """The app of one `--workers` process, from the settings `serve` put in SERVE_ENV."""
    settings = json.loads(os.environ[SERVE_ENV])
    log_to_stderr()
    key_file = settings["api_key_file"]
    keys = load_keys(Path(key_file), warn_access=False) if key_file else ()  # `serve` warned
    return create_app(
        Predictor(settings["model_dir"]), max_body_bytes=settings["max_body_bytes"], api_keys=keys
    )


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_bytes: int = MAX_BODY_BYTES,
    api_key_file: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    workers: int = 1,
) -> None:
    """Load the model in `model_dir` and serve it with uvicorn (`workers` processes, each
    with its own copy of the model) until SIGINT or SIGTERM (then `Interrupted`)."""
    check_address(host, port)
    check_tls(ssl_certfile, ssl_keyfile)
    keys = load_keys(Path(api_key_file)) if api_key_file else ()
    if not keys and not is_loopback(host):
        warn(f"--host {host} without --api-key-file: anyone who can reach it can use the model")
    predictor = Predictor(model_dir)  # refuses a bad model directory before any worker starts
    options = {"host": host, "port": port, "access_log": False}
    options |= {"ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    log_to_stderr()
    if workers == 1:
        app = create_app(predictor, max_body_bytes=max_body_bytes, api_keys=keys)
        run_server(uvicorn.Config(app, **options))
        return
    del predictor
    settings = {"model_dir": model_dir, "max_body_bytes": max_body_bytes}
    settings["api_key_file"] = api_key_file
    with tempfile.TemporaryDirectory(prefix="fedtune-metrics-") as metrics_dir:
        os.environ.update({MULTIPROCESS_ENV: metrics_dir, SERVE_ENV: json.dumps(settings)})
        factory = "fedtune.serve.app:app_from_env"
        run_server(uvicorn.Config(factory, factory=True, workers=workers, **options))
