"""`bf16`: bfloat16 (float32's range, 8 significand bits, 2 bytes per entry)."""

from __future__ import annotations

import numpy as np
import torch

from fedtune.federation.codecs.base import Cast


class BFloat16(Cast):
    """numpy has no bfloat16: its 16 bits travel as int16."""

    parts = {"": np.int16}

    def narrow(self, tensor: np.ndarray) -> np.ndarray:
        return torch.from_numpy(tensor).to(torch.bfloat16).view(torch.int16).numpy()

    def widen(self, sent: np.ndarray) -> np.ndarray:
        return torch.from_numpy(sent).view(torch.bfloat16).float().numpy()
