"""`fp16`: IEEE half precision (11 significand bits, 2 bytes per entry)."""

from __future__ import annotations

import numpy as np

from fedtune.federation.codecs.base import Cast


class Float16(Cast):
    parts = {"": np.float16}
