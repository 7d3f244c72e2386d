"""Update codecs: how a client's update is packed for the trip to the server, and unpacked.

A packed update is a flat dict of numpy arrays (one ArrayRecord): per tensor `name` for
`none`/`fp16`/`bf16`, `name::q` + `name::scale` for `int8`, `name::idx` + `name::val` for
`topk`. Unpacking needs the tensors' shapes, which the server has (the global weights).
"""

from __future__ import annotations

import numpy as np
import torch

from fedtune.config import CodecConfig

Arrays = dict[str, np.ndarray]


def _int8(flat: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit quantization with one float32 scale per `block` entries."""
    padded = np.pad(flat, (0, -len(flat) % block)).reshape(-1, block)
    scale = np.abs(padded).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(padded / scale[:, None]), -127, 127).astype(np.int8)
    return q.ravel(), scale.astype(np.float32)


def _topk(flat: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (int32, ascending) and values of the largest-magnitude entries."""
    k = max(1, int(np.ceil(fraction * len(flat))))
    idx = np.sort(np.argpartition(np.abs(flat), len(flat) - k)[len(flat) - k :])
    return idx.astype(np.int32), flat[idx].astype(np.float32)


def encode(cfg: CodecConfig, update: Arrays) -> Arrays:
    """Pack float32 tensors with the configured codec."""
    packed: Arrays = {}
    for name, tensor in update.items():
        flat = np.asarray(tensor, dtype=np.float32).ravel()
        if cfg.kind == "none":
            packed[name] = np.asarray(tensor, dtype=np.float32)
        elif cfg.kind == "fp16":
            packed[name] = tensor.astype(np.float16)
        elif cfg.kind == "bf16":  # numpy has no bfloat16: its 16 bits travel as int16
            half = torch.from_numpy(flat.reshape(np.shape(tensor))).to(torch.bfloat16)
            packed[name] = half.view(torch.int16).numpy()
        elif cfg.kind == "int8":
            packed[f"{name}::q"], packed[f"{name}::scale"] = _int8(
                flat, cfg.block_size or flat.size
            )
        else:
            packed[f"{name}::idx"], packed[f"{name}::val"] = _topk(flat, cfg.topk_fraction)
    return packed


PARTS: dict[str, dict[str, type]] = {
    "none": {"": np.float32},
    "fp16": {"": np.float16},
    "bf16": {"": np.int16},
    "int8": {"::q": np.int8, "::scale": np.float32},
    "topk": {"::idx": np.int32, "::val": np.float32},
}
"""Each codec's arrays per tensor: name suffix -> dtype."""


def decode(cfg: CodecConfig, packed: Arrays, like: Arrays) -> Arrays:
    """Unpack into float32 tensors shaped as in `like` (names and shapes of the model);
    a missing, extra, misshapen or mistyped part raises ValueError naming it."""
    parts = PARTS[cfg.kind]
    expected = {name + suffix: dtype for name in like for suffix, dtype in parts.items()}
    if set(packed) != set(expected):
        odd = sorted(set(packed) ^ set(expected))
        raise ValueError(f"update tensors do not match the model's (e.g. {odd[0]!r})")
    for key, dtype in expected.items():
        if packed[key].dtype != dtype:
            raise ValueError(f"{key!r} is {packed[key].dtype}, {cfg.kind} sends {np.dtype(dtype)}")
    update: Arrays = {}
    for name, ref in like.items():
        try:
            update[name] = _decode_one(cfg, packed, name, ref).reshape(ref.shape)
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(
                f"update for {name!r} cannot be decoded as {cfg.kind}: {exc}"
            ) from None
    return update


def _decode_one(cfg: CodecConfig, packed: Arrays, name: str, ref: np.ndarray) -> np.ndarray:
    size = ref.size
    if cfg.kind in ("none", "fp16", "bf16") and packed[name].shape != ref.shape:
        raise ValueError(f"shape {packed[name].shape}, the model's is {ref.shape}")
    if cfg.kind in ("none", "fp16"):
        return packed[name].astype(np.float32)
    if cfg.kind == "bf16":
        return torch.from_numpy(packed[name]).view(torch.bfloat16).float().numpy()
    if cfg.kind == "int8":
        scale = packed[f"{name}::scale"]
        q = packed[f"{name}::q"].reshape(len(scale), -1)
        return (q.astype(np.float32) * scale[:, None]).ravel()[:size]
    flat = np.zeros(size, dtype=np.float32)
    flat[packed[f"{name}::idx"]] = packed[f"{name}::val"]
    return flat


def encode_with_feedback(
    cfg: CodecConfig, update: Arrays, residual: Arrays | None
) -> tuple[Arrays, Arrays | None]:
    """Pack `update` plus what earlier rounds' packing dropped (error feedback); returns the
    packed update and the new residual (None when the codec is lossless or feedback is off)."""
    if cfg.kind == "none" or not cfg.error_feedback:
        return encode(cfg, update), None
    if residual:
        update = {name: u + residual.get(name, 0.0) for name, u in update.items()}
    packed = encode(cfg, update)
    sent = decode(cfg, packed, update)
    return packed, {name: update[name] - sent[name] for name in update}
