"""`none`: float32, as trained."""

from __future__ import annotations

import numpy as np

from fedtune.federation.codecs.base import Cast


class Float32(Cast):
    parts = {"": np.float32}
    lossless = True
