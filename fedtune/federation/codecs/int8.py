"""`int8`: symmetric 8-bit quantization with one float32 scale per `block_size` entries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtune.federation.codecs.base import Arrays, BlockParams, Codec

if TYPE_CHECKING:
    from fedtune.config import CodecConfig


class Int8(Codec):
    Params = BlockParams
    parts = {"::q": np.int8, "::scale": np.float32}

    def encode(self, tensor: np.ndarray, cfg: CodecConfig) -> Arrays:
        flat = tensor.ravel()
        block = cfg.block_size or flat.size
        padded = np.pad(flat, (0, -len(flat) % block)).reshape(-1, block)
        scale = np.abs(padded).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(padded / scale[:, None]), -127, 127).astype(np.int8)
        return {"::q": q.ravel(), "::scale": scale.astype(np.float32)}

    def decode(self, parts: Arrays, ref: np.ndarray, cfg: CodecConfig) -> np.ndarray:
        scale = parts["::scale"]
        q = parts["::q"].reshape(len(scale), -1)
        return (q.astype(np.float32) * scale[:, None]).ravel()[: ref.size]
