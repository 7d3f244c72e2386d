"""`fedtune export MODEL OUT --quantize int8|onnx-int8`: a smaller, faster model for CPU
inference, with what it costs: its size against the fp32 model's, and both models' accuracy
on the run's test split (when MODEL is a run's `model/` directory). Written atomically, with
`export.json` holding those figures."""

from __future__ import annotations

from pathlib import Path

import datasets
from transformers import AutoModelForSequenceClassification

from fedtune.atomic import save_dir_atomic, write_json
from fedtune.config import load_scenario
from fedtune.data.corpus import LABEL, TEXT, federated_data
from fedtune.serve.predictor import Predictor
from fedtune.serve.quantize import QUANTIZATIONS, ExportError, quantization_of, save_quantized

REPORT = "export.json"


def size_mb(model_dir: Path) -> float:
    """The model directory's weight files (safetensors, ONNX), in MB."""
    files = [*model_dir.glob("*.safetensors"), *model_dir.glob("*.onnx")]
    return sum(p.stat().st_size for p in files) / 1e6


def run_test_split(run_dir: Path) -> tuple[datasets.Dataset, tuple[str, ...]] | None:
    """The test split and label names of the simulated run in `run_dir` (None: not one)."""
    scenario_file = run_dir / "scenario.json"
    if not scenario_file.is_file():
        return None
    scenario = load_scenario(scenario_file)
    if scenario.data.eval_source is not None:  # deployed: the data is on the clients
        return None
    fed = federated_data(scenario)
    return fed.test, fed.label_names


def accuracy(predictor: Predictor, test: datasets.Dataset, label_names: tuple[str, ...]) -> float:
    """The predictor's accuracy on `test` (texts, labels and a fusion model's features)."""
    features = None
    if predictor.spec is not None:
        names = predictor.feature_names
        columns = [test[name] for name in names]
        features = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    predictions = predictor.predict(list(test[TEXT]), features)
    right = sum(p["label"] == label_names[y] for p, y in zip(predictions, test[LABEL], strict=True))
    return right / len(test)


def export_quantized(model_dir: Path, out: Path, choice: str = "int8") -> dict:
    """Quantize the model in `model_dir` into `out` (`QUANTIZATIONS[choice]`); return (and
    write) the export's report."""
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir}: not a model directory (no config.json)")
    if quantization_of(model_dir):
        raise ExportError(f"{model_dir}: already a quantized export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists; choose a new directory")
    fp32 = Predictor(model_dir)  # also refuses a directory that is not a trained model
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)  # on the CPU

    def save(tmp: Path) -> None:
        save_quantized(model, tmp, choice)
        fp32.tokenizer.save_pretrained(tmp)

    if out.is_dir():
        out.rmdir()  # empty: replaced atomically
    try:
        save_dir_atomic(out, save)
    except OSError as exc:
        raise ExportError(f"{out}: cannot write: {exc.strerror or exc}") from None
    report: dict = {"method": QUANTIZATIONS[choice].method, "model": str(model_dir)}
    report["export"] = str(out)
    report.update({"fp32_mb": size_mb(model_dir), "int8_mb": size_mb(out)})
    split = run_test_split(model_dir.resolve().parent)
    if split is not None:
        test, label_names = split
        report["test_examples"] = len(test)
        report["fp32_accuracy"] = accuracy(fp32, test, label_names)
        report["int8_accuracy"] = accuracy(Predictor(out), test, label_names)
    write_json(out / REPORT, report)
    return report
