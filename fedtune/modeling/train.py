"""Training and evaluation loops shared by clients and the centralized baseline."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, f1_score
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from fedtune.config import DPSGDConfig, TrainingConfig
from fedtune.modeling.metrics import binary_metrics, ranking_metrics


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `training.precision` (mixed precision on CUDA only)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class TrainResult:
    num_examples: int
    """Examples processed (epochs x shard size), the FedAvg weight."""
    mean_loss: float
    """Mean training loss per example."""
    privacy_history: list | None = None
    """DP-SGD: the opacus RDP accountant's history so far, (noise, sample rate, steps)."""
    epsilon: float | None = None
    """DP-SGD: the ε spent by this client so far, at `dp_sgd.delta`."""


LossTerm = Callable[[], torch.Tensor]
"""An extra term added to each batch's loss (e.g. FedProx's proximal term)."""
TrainLogits = Callable[[torch.Tensor], torch.Tensor]
"""The logits a training loss is computed on, from the model's (a label-skew method's)."""


def proximal_term(model: PreTrainedModel, mu: float) -> LossTerm:
    """FedProx's `mu/2 * ||w - w_start||^2` over the trainable weights (w_start: now)."""
    params = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
    return lambda: mu / 2 * sum(((p - start) ** 2).sum() for p, start in params)


@dataclass
class _Steps:
    """What the optimisation loop runs: the forward callable, its optimizer and batches."""

    forward: Callable
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    batches: int
    """Micro-batches to run (the budget, planned on the non-private loader)."""
    clip: bool
    """Clip the whole gradient's norm (DP-SGD clips each example's instead)."""
    dtype: torch.dtype | None
    class_weights: torch.Tensor | None = None
    """Per-label loss weights (`training.class_weights`)."""
    train_logits: TrainLogits | None = None
    """The logits the loss reads (`training.label_skew`); None with no weights either: the
    model's own loss."""


def class_weights(
    loader: DataLoader,
    cfg: TrainingConfig,
    num_labels: int,
    label_counts: Sequence[int] | None = None,
) -> torch.Tensor | None:
    """scikit-learn's `balanced` weights from `label_counts` (the federation's, under
    `class_weights: federated`) or else the loader's labels; a label with no example gets 0.
    None for the model's unweighted loss."""
    if cfg.class_weights == "none":
        return None
    if label_counts is None:
        label_counts = np.bincount(np.asarray(loader.dataset["labels"]), minlength=num_labels)
    counts = np.asarray(label_counts, dtype=np.int64)
    present = np.flatnonzero(counts)
    labels = np.repeat(np.arange(num_labels), counts)
    weights = np.zeros(num_labels, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.from_numpy(weights)


def _loss(
    output: Any,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    train_logits: TrainLogits | None = None,
) -> torch.Tensor:
    """The batch's mean loss: the model's, or cross-entropy on `train_logits(logits)` with
    each example weighted by its label's weight (divided by the batch size, as opacus'
    per-example mean expects)."""
    if weights is None and train_logits is None:
        return output.loss
    logits = output.logits.float()
    logits = logits if train_logits is None else train_logits(logits)
    weight = None if weights is None else weights.to(labels.device)
    per_example = torch.nn.functional.cross_entropy(logits, labels, weight=weight, reduction="none")
    return per_example.mean()


def _batches(loader: DataLoader, cfg: TrainingConfig, max_examples: int | None) -> int:
    """Batches until the budget of examples: whole epochs (each ending in a partial batch)
    plus the rest."""
    size = len(loader.dataset)
    epochs, rest = divmod(max_examples or cfg.local_epochs * size, size)
    return epochs * len(loader) + math.ceil(rest / loader.batch_size)


def _optimizer(model: PreTrainedModel, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay except on biases and LayerNorm weights."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not n.endswith(no_decay)]},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )


def train_steps(
    model: PreTrainedModel,
    loader: DataLoader,
    cfg: TrainingConfig,
    device: torch.device,
    max_examples: int | None = None,
    on_step: Callable[[int], None] | None = None,
    loss_terms: Sequence[LossTerm] = (),
    label_counts: Sequence[int] | None = None,
    train_logits: TrainLogits | None = None,
) -> TrainResult:
    """AdamW with linear warm-up/decay, weight decay, gradient clipping and accumulation,
    for `cfg.local_epochs` epochs or until `max_examples` examples have been seen.
    `on_step(examples_seen)` is called after each optimizer step; `loss_terms` are added
    to every batch's loss; `label_counts` are what `class_weights` weighs by; the loss
    reads `train_logits(logits)` where given."""
    model.to(device).train()
    dtype = autocast_dtype(cfg.precision, device)
    steps = _Steps(
        model,
        _optimizer(model, cfg),
        loader,
        _batches(loader, cfg, max_examples),
        clip=True,
        dtype=dtype,
        class_weights=class_weights(loader, cfg, model.config.num_labels, label_counts),
        train_logits=train_logits,
    )
    return _run(model, steps, cfg, device, on_step, loss_terms)


def dp_sgd_steps(
    model: PreTrainedModel,
    loader: DataLoader,
    cfg: TrainingConfig,
    device: torch.device,
    dp_sgd: DPSGDConfig,
    history: list | None,
    on_step: Callable[[int], None] | None = None,
    label_counts: Sequence[int] | None = None,
    train_logits: TrainLogits | None = None,
) -> TrainResult:
    """`train_steps` as opacus' DP-SGD (per-example clipping, Gaussian noise, Poisson
    batches, fp32), accounted on top of `history` from earlier rounds."""
    from opacus import PrivacyEngine

    model.to(device).train()
    batches = _batches(loader, cfg, None)
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = [tuple(step) for step in history or []]
    forward, optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=_optimizer(model, cfg),
        data_loader=loader,
        noise_multiplier=dp_sgd.noise_multiplier,
        max_grad_norm=dp_sgd.max_grad_norm,
    )
    try:
        weights = class_weights(loader, cfg, model.config.num_labels, label_counts)
        steps = _Steps(
            forward, optimizer, private_loader, batches, False, None, weights, train_logits
        )
        result = _run(model, steps, cfg, device, on_step, ())
    finally:
        forward._close()  # remove opacus' hooks: the model object is reused next round
    result.privacy_history = [list(step) for step in engine.accountant.history]
    result.epsilon = engine.get_epsilon(dp_sgd.delta)
    return result


def _run(
    model: PreTrainedModel,
    steps: _Steps,
    cfg: TrainingConfig,
    device: torch.device,
    on_step: Callable[[int], None] | None,
    loss_terms: Sequence[LossTerm],
) -> TrainResult:
    """The optimisation loop: accumulate, unscale, clip, step, schedule."""
    optimizer = steps.optimizer
    total_steps = max(1, math.ceil(steps.batches / cfg.grad_accum_steps))
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps
    )
    scaler = torch.amp.GradScaler(enabled=steps.dtype == torch.float16)
    seen, loss_sum, micro = 0, 0.0, 0
    while micro < steps.batches:
        for batch in steps.loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            n = len(batch["labels"])
            with _autocast(steps.dtype, device):
                output = steps.forward(**batch)
                loss = _loss(output, batch["labels"], steps.class_weights, steps.train_logits)
            objective = loss + sum(term() for term in loss_terms) if loss_terms else loss
            scaler.scale(objective / cfg.grad_accum_steps).backward()
            seen, loss_sum, micro = seen + n, loss_sum + loss.item() * n, micro + 1
            last = micro == steps.batches
            if micro % cfg.grad_accum_steps == 0 or last:
                scaler.unscale_(optimizer)
                if steps.clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if on_step is not None:
                    on_step(seen)
            if last:
                break
    return TrainResult(num_examples=seen, mean_loss=loss_sum / max(seen, 1))


def mean_gradient(
    model: PreTrainedModel,
    loader: DataLoader,
    cfg: TrainingConfig,
    device: torch.device,
    max_batches: int,
    label_counts: Sequence[int] | None = None,
    train_logits: TrainLogits | None = None,
) -> dict[str, np.ndarray]:
    """The mean gradient of the training loss (with `cfg.class_weights`) over the first
    `max_batches` batches of `loader`, for every trainable parameter, at the model's current
    weights (no step is taken)."""
    model.to(device).train()
    model.zero_grad(set_to_none=True)
    weights = class_weights(loader, cfg, model.config.num_labels, label_counts)
    batches = 0
    for batch in itertools.islice(loader, max_batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        _loss(model(**batch), batch["labels"], weights, train_logits).backward()
        batches += 1
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    mean = {
        name: (p.grad / max(batches, 1)).cpu().numpy().copy()
        if p.grad is not None
        else np.zeros(p.shape, np.float32)
        for name, p in params
    }
    model.zero_grad(set_to_none=True)
    return mean


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    loader: DataLoader,
    device: torch.device,
    label_names: tuple[str, ...] | None = None,
    groups: Sequence | None = None,
) -> dict:
    """Mean loss, accuracy and macro-F1 (and a per-class report when label names are given);
    with two labels also AUC and log-loss, and with `groups` (one per example, in the
    loader's order) NDCG@10 and HR@10 of each group's examples ranked by the second
    label's probability."""
    model.to(device).eval()
    losses, probs, golds = [], [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        losses.append(out.loss.item() * len(batch["labels"]))
        probs.append(out.logits.float().softmax(-1).cpu().numpy())
        golds.append(batch["labels"].cpu().numpy())
    if not golds:
        return {"num_examples": 0}
    p, y_true = np.concatenate(probs), np.concatenate(golds)
    y_pred = p.argmax(-1)
    result = {
        "num_examples": len(y_true),
        "loss": float(sum(losses) / len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
    }
    if p.shape[1] == 2:
        result.update(binary_metrics(y_true, p))
        if groups is not None:
            result.update(ranking_metrics(y_true, p[:, 1], groups))
    if label_names is not None:
        result["per_class"] = classification_report(
            y_true,
            y_pred,
            labels=list(range(len(label_names))),
            target_names=list(label_names),
            output_dict=True,
            zero_division=0,
        )
    return result
