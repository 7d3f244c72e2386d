"""Use a trained model: `Predictor` labels texts, `create_app`/`serve` expose it over HTTP.

HTTP API: `GET /health` -> `{"status": "ok", "labels": [...]}`; `POST /predict` with
`{"texts": ["...", ...]}` -> `{"predictions": [{"label": ..., "score": ...}, ...]}` in input
order. Every invalid request (malformed JSON, missing or empty `texts`, a non-string item, more
than `max_texts` texts, a text longer than `max_chars`) gets 422 and `{"detail": "<message>"}`;
only a body that is not UTF-8 gets FastAPI's own 400.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictStr, StringConstraints
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from fedtune.train import pick_device

hf_logging.disable_progress_bar()  # no "Loading weights" bars in `fedtune predict` output


class Predictor:
    """A saved sequence classifier, loaded once, in eval mode, on CUDA when available."""

    def __init__(self, model_dir: str | Path, batch_size: int = 32, max_length: int = 128) -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"{str(model_dir)!r} is not a model directory: it has no config.json")
        self.device = pick_device()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        config = self.model.config
        self.labels: list[str] = [config.id2label[i] for i in range(config.num_labels)]
        self.batch_size = batch_size
        # Never longer than the model accepts (`model_max_length` comes from the saved tokenizer).
        self.max_length = min(max_length, self.tokenizer.model_max_length)

    @torch.inference_mode()
    def predict(self, texts: list[str]) -> list[dict]:
        """`{"label", "score"}` per text, in order; score is the top label's probability."""
        predictions = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            scores, indices = self.model(**inputs).logits.float().softmax(dim=-1).max(dim=-1)
            predictions += [
                {"label": self.labels[i], "score": s}
                for i, s in zip(indices.tolist(), scores.tolist(), strict=True)
            ]
        return predictions


# A request waiting in the queue: its texts and the future that receives their predictions.
Pending = tuple[list[str], asyncio.Future]


class MicroBatcher:
    """Runs the texts of concurrent requests through the model together: it collects requests
    for up to `max_wait_ms` or until `max_batch` texts, then makes one `Predictor.predict` call
    in a worker thread and hands each request its slice. `batches` counts those calls."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_ms: float) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.batches = 0
        self._held: Pending | None = None  # did not fit in the previous batch

    async def predict(self, texts: list[str]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((texts, future))
        return await future

    async def run(self) -> None:
        """Serve the queue forever (until cancelled)."""
        while True:
            batch = await self._collect()
            texts = [text for request_texts, _ in batch for text in request_texts]
            try:
                predictions = await asyncio.to_thread(self.predictor.predict, texts)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for request_texts, future in batch:
                if not future.done():  # done = cancelled: its client went away
                    future.set_result(predictions[start : start + len(request_texts)])
                start += len(request_texts)

    async def _collect(self) -> list[Pending]:
        """The next batch: at most `max_batch` texts, unless one request alone has more."""
        loop = asyncio.get_running_loop()
        batch = [self._held or await self.queue.get()]
        self._held = None
        size = len(batch[0][0])
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            try:
                request = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
            except TimeoutError:
                break
            if size + len(request[0]) > self.max_batch:
                self._held = request
                break
            batch.append(request)
            size += len(request[0])
        return batch


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def _error_message(error: dict) -> str:
    """One pydantic/FastAPI validation error as `where: what`."""
    if error["type"] == "json_invalid":
        return f"malformed JSON: {error['ctx']['error']} at character {error['loc'][-1]}"
    if error["loc"] == ("body",) and isinstance(error.get("input"), bytes):
        return "body: send a JSON object with Content-Type: application/json"
    where = ".".join(str(part) for part in error["loc"][1:]) or "body"
    return f"{where}: {error['msg']}"


def create_app(
    predictor: Predictor,
    max_texts: int = 64,
    max_chars: int = 2000,
    max_batch: int = 32,
    max_wait_ms: float = 5,
) -> FastAPI:
    """The HTTP API around `predictor`; its micro-batcher is `app.state.batcher` while running."""

    # A local class because its limits are arguments. FastAPI resolves `body: PredictRequest`
    # at runtime, so this module must not use `from __future__ import annotations`.
    class PredictRequest(BaseModel):
        texts: list[Annotated[StrictStr, StringConstraints(max_length=max_chars)]] = Field(
            min_length=1, max_length=max_texts
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = MicroBatcher(predictor, max_batch, max_wait_ms)
        task = asyncio.create_task(app.state.batcher.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="fedtune", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(_error_message(error) for error in exc.errors())
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "labels": predictor.labels}

    @app.post("/predict")
    async def predict(body: PredictRequest) -> PredictResponse:
        return PredictResponse(predictions=await app.state.batcher.predict(body.texts))

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the model in `model_dir` and serve it with uvicorn until interrupted."""
    uvicorn.run(create_app(Predictor(model_dir)), host=host, port=port)
