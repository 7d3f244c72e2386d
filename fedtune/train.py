"""Training and evaluation loops shared by clients and the centralized baseline."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, f1_score
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from fedtune.config import DPSGDConfig, TrainingConfig


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


def train_steps(
    model: PreTrainedModel,
    loader: DataLoader,
    cfg: TrainingConfig,
    device: torch.device,
    max_examples: int | None = None,
    on_step: Callable[[int], None] | None = None,
    proximal_mu: float = 0.0,
    dp_sgd: DPSGDConfig | None = None,
    privacy_history: list | None = None,
) -> TrainResult:
    """AdamW with linear warm-up/decay, weight decay, gradient clipping and accumulation,
    for `cfg.local_epochs` epochs or until `max_examples` examples have been seen.
    `on_step(examples_seen)` is called after each optimizer step. With `proximal_mu` > 0
    the loss gets FedProx's `mu/2 * ||w - w_start||^2` (w_start: the weights on entry).
    With `dp_sgd` it is opacus' DP-SGD instead (per-example clipping, Gaussian noise, Poisson
    batches, fp32), accounted on top of `privacy_history` from earlier rounds."""
    size = len(loader.dataset)
    budget = max_examples or cfg.local_epochs * size
    # Batches until `budget` examples: whole epochs (each ending in a partial batch) + the rest.
    epochs, rest = divmod(budget, size)
    batches = epochs * len(loader) + math.ceil(rest / loader.batch_size)
    total_steps = max(1, math.ceil(batches / cfg.grad_accum_steps))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not n.endswith(no_decay)]},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps
    )
    model.to(device).train()
    engine = forward = None
    if dp_sgd is not None:
        engine, forward, optimizer, loader = _make_private(
            model, optimizer, loader, dp_sgd, privacy_history
        )
    dtype = None if engine else autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    anchor = {n: p.detach().clone() for n, p in params} if proximal_mu > 0 else {}
    seen, loss_sum, micro = 0, 0.0, 0
    while micro < batches:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            n = len(batch["labels"])
            with _autocast(dtype, device):
                loss = (forward or model)(**batch).loss
            objective = loss
            if proximal_mu > 0:
                drift = sum(((p - anchor[name]) ** 2).sum() for name, p in params)
                objective = loss + proximal_mu / 2 * drift
            scaler.scale(objective / cfg.grad_accum_steps).backward()
            seen, loss_sum, micro = seen + n, loss_sum + loss.item() * n, micro + 1
            last = micro == batches
            if micro % cfg.grad_accum_steps == 0 or last:
                scaler.unscale_(optimizer)
                if engine is None:  # DP-SGD clips each example's gradient instead
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if on_step is not None:
                    on_step(seen)
            if last:
                break
    result = TrainResult(num_examples=seen, mean_loss=loss_sum / max(seen, 1))
    if engine is not None:
        forward._close()  # remove opacus' hooks: the model object is reused next round
        result.privacy_history = [list(step) for step in engine.accountant.history]
        result.epsilon = engine.get_epsilon(dp_sgd.delta)
    return result


def _make_private(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    dp_sgd: DPSGDConfig,
    history: list | None,
) -> tuple:
    """Opacus' PrivacyEngine around the model, optimizer and loader (Poisson sampling)."""
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = [tuple(step) for step in history or []]
    forward, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=dp_sgd.noise_multiplier,
        max_grad_norm=dp_sgd.max_grad_norm,
    )
    return engine, forward, optimizer, loader


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    loader: DataLoader,
    device: torch.device,
    label_names: tuple[str, ...] | None = None,
) -> dict:
    """Mean loss, accuracy and macro-F1 (and a per-class report when label names are given)."""
    model.to(device).eval()
    losses, preds, golds = [], [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        losses.append(out.loss.item() * len(batch["labels"]))
        preds.append(out.logits.argmax(-1).cpu().numpy())
        golds.append(batch["labels"].cpu().numpy())
    if not golds:
        return {"num_examples": 0}
    y_pred, y_true = np.concatenate(preds), np.concatenate(golds)
    result = {
        "num_examples": len(y_true),
        "loss": float(sum(losses) / len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
    }
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
