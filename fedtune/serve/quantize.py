"""`fedtune export --quantize METHOD`: a saved model quantized for CPU inference.

`int8`: PyTorch's dynamic int8 quantization. Every Linear layer's weights become int8, one
scale per output channel; activations are quantized on the fly at inference (fbgemm /
qnnpack int8 kernels). Stored as safetensors (int8 weights, their scales and zero points, the
other parameters as saved). `onnx-int8`: the same idea in ONNX Runtime (`fedtune.serve.onnx_int8`).
Either way the model's config is marked `fedtune_quantization` (the method): nothing loaded
executes code, and `Predictor` (hence `predict` and `serve`) loads it like any model directory.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from fedtune.errors import FedtuneError
from fedtune.serve.onnx_int8 import OnnxClassifier, save_onnx_int8

QUANTIZATION_KEY = "fedtune_quantization"
"""The config.json entry of a quantized export: method and quantized module names."""
METHOD = "dynamic-int8"
WEIGHTS = "model.safetensors"


class ExportError(FedtuneError):
    """`fedtune export` cannot read the model or write the export (one line, exit 2)."""


def quantized(model: nn.Module) -> nn.Module:
    """`model` with dynamically quantized int8 Linear layers (per-channel weight scales)."""
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notes
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model,
            {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8,
        )


def _linears(model: nn.Module) -> dict[str, DynamicLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, DynamicLinear)}


def _outside(linears: list[str], names: list[str]) -> list[str]:
    """The parameter names not under one of the quantized Linear modules `linears`."""
    return [n for n in names if not any(n.startswith(f"{m}.") for m in linears)]


def save_int8(model: PreTrainedModel, out: Path) -> dict:
    """Quantize `model` and write its weights into the directory `out`; the config's mark."""
    q = quantized(model.eval())
    linears = _linears(q)
    state = q.state_dict()
    tensors = {name: state[name].contiguous() for name in _outside(list(linears), list(state))}
    for name, module in linears.items():
        weight = module.weight()
        tensors[f"{name}.weight"] = weight.int_repr()
        tensors[f"{name}.weight_scale"] = weight.q_per_channel_scales().float()
        tensors[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().int()
        if module.bias() is not None:
            tensors[f"{name}.bias"] = module.bias().detach()
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / WEIGHTS).chmod(0o644)
    return {"method": METHOD, "modules": sorted(linears)}


def load_int8(path: Path, config: PretrainedConfig) -> nn.Module:
    """The quantized model saved in `path` by `save_int8`, in eval mode (CPU)."""
    spec = getattr(config, QUANTIZATION_KEY)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    tensors = load_file(str(path / WEIGHTS))
    linear_names = spec["modules"]
    rest = {name: tensors[name] for name in _outside(linear_names, list(tensors))}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = _outside(linear_names, missing)
    if missing or unexpected:
        raise ValueError(f"weights missing or unexpected: {(missing + unexpected)[:3]}")
    q = quantized(model)
    linears = _linears(q)
    if sorted(linears) != linear_names:
        raise ValueError("its quantized modules do not match the model's Linear layers")
    for name, module in linears.items():
        scale = tensors[f"{name}.weight_scale"].double()
        zero = tensors[f"{name}.weight_zero_point"].long()
        weights = tensors[f"{name}.weight"].float() * scale[:, None].float()
        weight = torch.quantize_per_channel(weights, scale, zero, 0, torch.qint8)
        module.set_weight_bias(weight, tensors.get(f"{name}.bias"))
    return q


def save_onnx(model: PreTrainedModel, out: Path) -> dict:
    """`save_onnx_int8` for a text-only model (ExportError for a fusion model)."""
    if getattr(model.config, "tabular", None) is not None:
        raise ExportError(
            "onnx-int8 exports text-only models; use --quantize int8 for a fusion model"
        )
    save_onnx_int8(model, out)
    return {"method": "onnx-int8"}


@dataclass(frozen=True)
class Quantization:
    """A `--quantize` choice: what writes an export's weights (returning the config's mark),
    and what loads them back (by the method the mark names)."""

    method: str
    save: Callable[[PreTrainedModel, Path], dict]
    load: Callable[[Path, PretrainedConfig], nn.Module | OnnxClassifier]


QUANTIZATIONS = {
    "int8": Quantization(METHOD, save_int8, load_int8),
    "onnx-int8": Quantization("onnx-int8", save_onnx, OnnxClassifier),
}
"""`fedtune export --quantize` choices."""


def save_quantized(model: PreTrainedModel, out: Path, choice: str) -> None:
    """Write `model` quantized by `QUANTIZATIONS[choice]`, and its marked config, into `out`."""
    config = model.config
    mark = QUANTIZATIONS[choice].save(model.eval(), out)
    setattr(config, QUANTIZATION_KEY, mark)
    try:
        config.save_pretrained(out)
    finally:
        delattr(config, QUANTIZATION_KEY)


def quantization_of(path: Path) -> str | None:
    """The method of the quantized export in the model directory `path` (None: not one)."""
    mark = AutoConfig.from_pretrained(path).to_dict().get(QUANTIZATION_KEY)
    return None if mark is None else mark.get("method")


def load_quantized(path: Path) -> nn.Module | OnnxClassifier:
    """The quantized export in `path`, in eval mode, on the CPU."""
    config = AutoConfig.from_pretrained(path)
    method = getattr(config, QUANTIZATION_KEY).get("method")
    loaders = {q.method: q.load for q in QUANTIZATIONS.values()}
    if method not in loaders:
        raise ValueError(f"unknown quantization {method!r}")
    return loaders[method](path, config)
