"""`onebit`: one bit per entry (its sign, packed 8 to a byte) and one float32 scale per
`block_size` entries (0: per tensor), the block's mean magnitude: the scaled sign of
EF-signSGD (Karimireddy et al., 2019), 1/32 of float32's bytes. With error feedback what the
sign does not say is added to the next update."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtune.federation.codecs.base import Arrays, BlockParams, Codec

if TYPE_CHECKING:
    from fedtune.config import CodecConfig


class OneBit(Codec):
    Params = BlockParams
    parts = {"::bits": np.uint8, "::scale": np.float32}

    def encode(self, tensor: np.ndarray, cfg: CodecConfig) -> Arrays:
        flat = tensor.ravel()
        block = cfg.block_size or flat.size
        padded = np.pad(flat, (0, -len(flat) % block)).reshape(-1, block)
        # mean magnitude over the block's real entries (the padding is zeros)
        counts = np.full(len(padded), block)
        counts[-1] -= -len(flat) % block
        scale = np.abs(padded).sum(axis=1) / counts
        return {"::bits": np.packbits(flat >= 0), "::scale": scale.astype(np.float32)}

    def decode(self, parts: Arrays, ref: np.ndarray, cfg: CodecConfig) -> np.ndarray:
        scale, bits = parts["::scale"], parts["::bits"]
        block = cfg.block_size or ref.size
        if bits.size != -(-ref.size // 8) or len(scale) != -(-ref.size // block):
            raise ValueError(f"{bits.size} bytes of signs and {len(scale)} scales")
        signs = np.unpackbits(bits, count=ref.size).astype(np.float32) * 2 - 1
        return signs * np.repeat(scale, block)[: ref.size]
