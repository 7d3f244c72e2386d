"""The codec interface: how one float32 tensor is packed into named parts and unpacked."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field

from fedtune.config.base import Section

if TYPE_CHECKING:
    from fedtune.config import CodecConfig

Arrays = dict[str, np.ndarray]


class BlockParams(Section):
    """Codecs with one scale per block of entries (`int8`, `onebit`)."""

    block_size: int = Field(0, ge=0)
    """Entries per scale; 0 means one scale per tensor."""


class Codec(ABC):
    """Packs a tensor into parts (name suffix -> array) sent as `<tensor name><suffix>`."""

    parts: ClassVar[dict[str, type]]
    """Each part's name suffix -> dtype; `decode` rejects a packed update that differs."""
    lossless: ClassVar[bool] = False
    """Decoding gives back exactly what was encoded: error feedback has nothing to keep."""

    def scheduled(self, cfg: CodecConfig, sent_before: int) -> CodecConfig:
        """The settings for a node's update after `sent_before` earlier ones (a schedule such
        as top-k's density warm-up; error feedback counts them); decoding must not need it."""
        return cfg

    @abstractmethod
    def encode(self, tensor: np.ndarray, cfg: CodecConfig) -> Arrays:
        """The parts of a float32 `tensor`."""

    @abstractmethod
    def decode(self, parts: Arrays, ref: np.ndarray, cfg: CodecConfig) -> np.ndarray:
        """The float32 tensor (any shape of `ref.size` entries) from its parts; raise
        ValueError, KeyError or IndexError if they do not fit `ref`, the model's tensor."""


class Cast(Codec):
    """Base of the codecs that send each tensor whole, shape kept, as one part (suffix "")."""

    def encode(self, tensor: np.ndarray, cfg: CodecConfig) -> Arrays:
        return {"": self.narrow(tensor)}

    def decode(self, parts: Arrays, ref: np.ndarray, cfg: CodecConfig) -> np.ndarray:
        sent = parts[""]
        if sent.shape != ref.shape:
            raise ValueError(f"shape {sent.shape}, the model's is {ref.shape}")
        return self.widen(sent)

    def narrow(self, tensor: np.ndarray) -> np.ndarray:
        """float32 -> the part's dtype."""
        return np.asarray(tensor, dtype=self.parts[""])

    def widen(self, sent: np.ndarray) -> np.ndarray:
        """The part's dtype -> float32."""
        return sent.astype(np.float32)
