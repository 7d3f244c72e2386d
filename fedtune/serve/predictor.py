"""`Predictor`: a trained model (fp32, int8 or ONNX int8) that labels texts, and
`MicroBatcher`, which gathers concurrent requests into one forward pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from fedtune.data.tabular import TabularSpec, encode_tabular
from fedtune.errors import DataError, first_line
from fedtune.modeling.fusion import FusionConfig  # registers Auto* too
from fedtune.modeling.model import ModelError
from fedtune.modeling.train import pick_device
from fedtune.serve.quantize import load_quantized, quantization_of

hf_logging.disable_progress_bar()  # no "Loading weights" bars in `fedtune predict` output

FUSION = FusionConfig.model_type


class Predictor:
    """A saved sequence classifier, loaded once, in eval mode, on CUDA when available.
    Refuses (ModelError) a directory that is not a model, or whose classification head was
    not saved with it (a pretrained encoder: its labels would come from random weights)."""

    def __init__(self, model_dir: str | Path, batch_size: int = 32, max_length: int = 128) -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ModelError(f"{str(model_dir)!r} is not a model directory: it has no config.json")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if quantization_of(path):  # `fedtune export --quantize ...`: CPU kernels
                model, info, self.device = load_quantized(path), {}, torch.device("cpu")
            else:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    path, output_loading_info=True
                )
                self.device = pick_device()
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the directory is the cause
            raise ModelError(
                f"{str(model_dir)!r}: cannot load the model: {first_line(exc)}"
            ) from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            prefix = f"{model.base_model_prefix}."
            head = [key for key in missing if not key.startswith(prefix)]
            what = "classification head" if head else "encoder"
            raise ModelError(
                f"{str(model_dir)!r} has no trained {what} (not in the saved weights: "
                f"{', '.join((head or missing)[:3])}{', ...' if len(missing) > 3 else ''}); "
                "give the model/ directory of a fedtune run"
            )
        self.model = model.to(self.device).eval()
        config = self.model.config
        self.spec = TabularSpec.from_dict(config.tabular) if config.model_type == FUSION else None
        """A fusion model's tabular features (None: the model reads text alone)."""
        self.labels: list[str] = [config.id2label[i] for i in range(config.num_labels)]
        self.batch_size = batch_size
        # Never longer than the model accepts (`model_max_length` comes from the saved tokenizer).
        self.max_length = min(max_length, self.tokenizer.model_max_length)

    @property
    def feature_names(self) -> list[str]:
        spec = self.spec
        return [] if spec is None else [c.name for c in (*spec.numeric, *spec.categorical)]

    def encode_features(self, features: list[dict] | None, n: int) -> dict[str, torch.Tensor]:
        """A fusion model's tabular inputs for `n` texts (a feature left out counts as
        missing); DataError naming what is wrong. Nothing for a text-only model."""
        if self.spec is None:
            return {}
        if features is None or len(features) != n:
            raise DataError(
                f"this model reads tabular features {self.feature_names} beside each text: "
                f"give one feature object per text ({n} texts, "
                f"{0 if features is None else len(features)} feature objects)"
            )
        columns = {name: [row.get(name) for row in features] for name in self.feature_names}
        return encode_tabular(columns, self.spec)

    @torch.inference_mode()
    def predict(self, texts: list[str], features: list[dict] | None = None) -> list[dict]:
        """`{"label", "score"}` per text, in order; score is the top label's probability.
        A fusion model needs `features`: one {column: value} object per text."""
        tabular = self.encode_features(features, len(texts))
        predictions = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            part = {
                k: v[start : start + self.batch_size].to(self.device) for k, v in tabular.items()
            }
            logits = self.model(**inputs, **part).logits
            scores, indices = logits.float().softmax(dim=-1).max(dim=-1)
            predictions += [
                {"label": self.labels[i], "score": s}
                for i, s in zip(indices.tolist(), scores.tolist(), strict=True)
            ]
        return predictions


# A request waiting in the queue: its texts, their features (a fusion model's; None for a
# text-only one) and the future that receives their predictions.
Pending = tuple[list[str], list[dict] | None, asyncio.Future]


class MicroBatcher:
    """Runs the texts of concurrent requests through the model together: it collects requests
    for up to `max_wait_ms` or until `max_batch` texts, then makes one `Predictor.predict` call
    in a worker thread and hands each request its slice. `batches` counts those calls."""

    def __init__(
        self,
        predictor: Predictor,
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.predictor = predictor
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.batches = 0
        self._held: Pending | None = None  # did not fit in the previous batch

    async def predict(self, texts: list[str], features: list[dict] | None = None) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((texts, features, future))
        return await future

    async def run(self) -> None:
        """Serve the queue forever (until cancelled)."""
        while True:
            batch = await self._collect()
            texts = [text for request_texts, _, _ in batch for text in request_texts]
            features = None
            if self.predictor.spec is not None:
                features = [row for _, rows, _ in batch for row in rows or []]
            try:
                predictions = await asyncio.to_thread(self.predictor.predict, texts, features)
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.on_batch(len(texts))
            start = 0
            for request_texts, _, future in batch:
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
