"""`fedtune export --quantize onnx-int8`: the model as ONNX, its weights made int8 by ONNX
Runtime's dynamic quantization (per channel; activations quantized on the fly), and run by
ONNX Runtime's CPU kernels. An ONNX file is a protobuf graph: loading it executes no code.
Text-only models (a fusion model's tabular inputs are not exported)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import PretrainedConfig, PreTrainedModel

GRAPH = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def save_onnx_int8(model: PreTrainedModel, out: Path) -> None:
    """Export `model` (CPU, eval) to ONNX and write its int8 quantization to `out/model.onnx`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    example = {name: torch.ones(2, 8, dtype=torch.long) for name in INPUTS}
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
        fp32 = Path(tmp) / GRAPH
        torch.onnx.export(
            model.eval(),
            (),
            str(fp32),
            kwargs=example,
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        logging.disable(logging.WARNING)  # its advice to pre-process, on the root logger
        try:
            quantize_dynamic(fp32, out / GRAPH, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.disable(logging.NOTSET)
    (out / GRAPH).chmod(0o644)


class OnnxClassifier:
    """An ONNX Runtime session that `Predictor` calls like a transformers classifier:
    `model(**inputs).logits`, on as many threads as torch uses."""

    base_model_prefix = "onnx"

    def __init__(self, path: Path, config: PretrainedConfig) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # no busy-waiting between runs: its threads would take the cores the HTTP server and
        # the tokenizer need
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(path / GRAPH), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config = config

    def to(self, device: torch.device) -> OnnxClassifier:
        if device.type != "cpu":
            raise ValueError("an onnx-int8 export runs on the CPU")
        return self

    def eval(self) -> OnnxClassifier:
        return self

    def __call__(self, **inputs: torch.Tensor) -> SimpleNamespace:
        ids = inputs["input_ids"]
        feeds = {name: inputs.get(name, torch.zeros_like(ids)).numpy() for name in self.inputs}
        (logits,) = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits))
