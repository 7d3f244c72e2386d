"""`topk`: only the `topk_fraction` largest-magnitude entries of each tensor, with their
int32 indices (ascending)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtune.codecs.base import Arrays, Codec

if TYPE_CHECKING:
    from fedtune.config import CodecConfig


class TopK(Codec):
    parts = {"::idx": np.int32, "::val": np.float32}

    def encode(self, tensor: np.ndarray, cfg: CodecConfig) -> Arrays:
        flat = tensor.ravel()
        k = max(1, int(np.ceil(cfg.topk_fraction * len(flat))))
        idx = np.sort(np.argpartition(np.abs(flat), len(flat) - k)[len(flat) - k :])
        return {"::idx": idx.astype(np.int32), "::val": flat[idx].astype(np.float32)}

    def decode(self, parts: Arrays, ref: np.ndarray, cfg: CodecConfig) -> np.ndarray:
        flat = np.zeros(ref.size, dtype=np.float32)
        flat[parts["::idx"]] = parts["::val"]
        return flat
