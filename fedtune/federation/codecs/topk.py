"""`topk`: only the `topk_fraction` largest-magnitude entries of each tensor, with their
int32 indices (ascending). A tensor of fewer than `dense_below` entries (biases, LayerNorms,
a small classification head) travels whole and exact instead, as its values with no indices
(an empty `::idx`): per-tensor top-k would send one or two of their entries a round."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from fedtune.config.base import Section
from fedtune.federation.codecs.base import Arrays, Codec

if TYPE_CHECKING:
    from fedtune.config import CodecConfig


class TopKParams(Section):
    topk_fraction: float = Field(0.01, gt=0.0, le=1.0)
    """Share of each tensor's entries sent."""
    dense_below: int = Field(4096, ge=0)
    """A tensor of fewer entries (biases, LayerNorms, a small head) is sent whole (MiniLM:
    33,027 entries, 0.15% of the model; 0: every tensor sparse)."""
    topk_warmup_rounds: int = Field(0, ge=0)
    """A node's first updates send more, falling geometrically to `topk_fraction` (DGC's
    density warm-up); counted in the error-feedback state, so it needs that on."""


class TopK(Codec):
    Params = TopKParams
    parts = {"::idx": np.int32, "::val": np.float32}

    def encode(self, tensor: np.ndarray, cfg: CodecConfig) -> Arrays:
        flat = tensor.ravel()
        if len(flat) < cfg.dense_below:
            return {"::idx": np.empty(0, np.int32), "::val": flat.astype(np.float32)}
        k = max(1, int(np.ceil(cfg.topk_fraction * len(flat))))
        idx = np.sort(np.argpartition(np.abs(flat), len(flat) - k)[len(flat) - k :])
        return {"::idx": idx.astype(np.int32), "::val": flat[idx].astype(np.float32)}

    def decode(self, parts: Arrays, ref: np.ndarray, cfg: CodecConfig) -> np.ndarray:
        idx, val = parts["::idx"], parts["::val"]
        if idx.size == 0:  # sent dense
            if val.size != ref.size:
                raise ValueError(f"{val.size} dense values, the model's tensor has {ref.size}")
            return val.astype(np.float32).ravel()
        if idx.shape != val.shape:
            raise ValueError(f"{idx.size} indices for {val.size} values")
        flat = np.zeros(ref.size, dtype=np.float32)
        flat[idx] = val
        return flat

    def scheduled(self, cfg: CodecConfig, sent_before: int) -> CodecConfig:
        """Density warm-up (DGC): over a node's first `topk_warmup_rounds` updates the share
        sent falls geometrically towards `topk_fraction`, f ** ((n + 1) / (W + 1)) for update
        n < W, e.g. 0.215, 0.046, then 0.01 for f = 0.01, W = 2."""
        warmup = cfg.topk_warmup_rounds
        if sent_before >= warmup:
            return cfg
        share = cfg.topk_fraction ** ((sent_before + 1) / (warmup + 1))
        return cfg.model_copy(update={"topk_fraction": share})
