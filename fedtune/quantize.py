"""`fedtune export --quantize int8`: PyTorch's dynamic int8 quantization of a saved model.

Every Linear layer's weights become int8, one scale per output channel; activations are
quantized on the fly at inference (fbgemm / qnnpack int8 kernels, CPU). The export is stored
as safetensors (int8 weights, their scales and zero points, the other parameters as saved)
with the model's config marked `fedtune_quantization`: nothing loaded executes code, and
`Predictor` (hence `predict` and `serve`) loads it like any model directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from fedtune.errors import FedtuneError

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


def save_int8(model: PreTrainedModel, out: Path) -> None:
    """Quantize `model` and write its config and weights into the directory `out`."""
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
    config = model.config
    setattr(config, QUANTIZATION_KEY, {"method": METHOD, "modules": sorted(linears)})
    try:
        config.save_pretrained(out)
    finally:
        delattr(config, QUANTIZATION_KEY)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / WEIGHTS).chmod(0o644)


def is_quantized(path: Path) -> bool:
    """Whether the model directory `path` holds a quantized export."""
    return QUANTIZATION_KEY in AutoConfig.from_pretrained(path).to_dict()


def load_int8(path: Path) -> nn.Module:
    """The quantized model saved in `path` by `save_int8`, in eval mode (CPU)."""
    config = AutoConfig.from_pretrained(path)
    spec = getattr(config, QUANTIZATION_KEY)
    if spec.get("method") != METHOD:
        raise ValueError(f"unknown quantization {spec.get('method')!r}")
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
