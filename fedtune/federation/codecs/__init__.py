"""Update codecs: how a client's update is packed for the trip to the server, and unpacked.

A packed update is a flat dict of numpy arrays (one ArrayRecord): each tensor `name` travels
as the parts of its codec, `name<suffix>` (`name` for `none`/`fp16`/`bf16`, `name::q` +
`name::scale` for `int8`, `name::idx` + `name::val` for `topk`,
`name::bits` + `name::scale` for `onebit`). Unpacking needs the tensors'
shapes, which the server has (the global weights). A new codec is one file holding a
`Codec` subclass plus its entry in `CODECS`; `codec.kind` accepts every registered name. Its
parameters, if any, are a `Params` section on the class (see `topk.py`): the `codec` section
then accepts, validates and holds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtune.federation.codecs.base import Arrays, Codec
from fedtune.federation.codecs.bf16 import BFloat16
from fedtune.federation.codecs.fp16 import Float16
from fedtune.federation.codecs.int8 import Int8
from fedtune.federation.codecs.none import Float32
from fedtune.federation.codecs.onebit import OneBit
from fedtune.federation.codecs.topk import TopK

if TYPE_CHECKING:
    from fedtune.config import CodecConfig

CODECS: dict[str, Codec] = {
    "none": Float32(),
    "fp16": Float16(),
    "bf16": BFloat16(),
    "int8": Int8(),
    "topk": TopK(),
    "onebit": OneBit(),
}
"""`codec.kind` -> codec; registering a new codec is one entry."""


def encode(cfg: CodecConfig, update: Arrays) -> Arrays:
    """Pack float32 tensors with the configured codec."""
    codec = CODECS[cfg.kind]
    return {
        name + suffix: part
        for name, tensor in update.items()
        for suffix, part in codec.encode(np.asarray(tensor, dtype=np.float32), cfg).items()
    }


def decode(cfg: CodecConfig, packed: Arrays, like: Arrays) -> Arrays:
    """Unpack into float32 tensors shaped as in `like` (names and shapes of the model);
    a missing, extra, misshapen or mistyped part raises ValueError naming it."""
    codec = CODECS[cfg.kind]
    expected = {name + suffix: dtype for name in like for suffix, dtype in codec.parts.items()}
    if set(packed) != set(expected):
        odd = sorted(set(packed) ^ set(expected))
        raise ValueError(f"update tensors do not match the model's (e.g. {odd[0]!r})")
    for key, dtype in expected.items():
        if packed[key].dtype != dtype:
            raise ValueError(f"{key!r} is {packed[key].dtype}, {cfg.kind} sends {np.dtype(dtype)}")
    update: Arrays = {}
    for name, ref in like.items():
        parts = {suffix: packed[name + suffix] for suffix in codec.parts}
        try:
            update[name] = codec.decode(parts, ref, cfg).reshape(ref.shape)
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(
                f"update for {name!r} cannot be decoded as {cfg.kind}: {exc}"
            ) from None
    return update


ROUNDS = "::rounds"
"""The residual's entry counting the node's packed updates, kept while a codec's schedule
(top-k's density warm-up) depends on it; no tensor name starts with "::"."""


def encode_with_feedback(
    cfg: CodecConfig, update: Arrays, residual: Arrays | None
) -> tuple[Arrays, Arrays | None]:
    """Pack `update` plus what earlier rounds' packing dropped (error feedback); returns the
    packed update and the new residual (None when the codec is lossless or feedback is off).
    The codec packs the node's n-th update (n = 0, 1, ...) with `codec.scheduled(cfg, n)`."""
    codec = CODECS[cfg.kind]
    if codec.lossless or not cfg.error_feedback:
        return encode(cfg, update), None
    residual = dict(residual or {})
    sent_before = int(residual.pop(ROUNDS, np.zeros(1))[0])
    if residual:
        update = {name: u + residual.get(name, 0.0) for name, u in update.items()}
    now = codec.scheduled(cfg, sent_before)
    packed = encode(now, update)
    sent = decode(now, packed, update)
    residual = {name: update[name] - sent[name] for name in update}
    if codec.scheduled(cfg, 0) != cfg:  # the codec follows a schedule: keep counting
        residual[ROUNDS] = np.array([sent_before + 1], dtype=np.int64)
    return packed, residual
