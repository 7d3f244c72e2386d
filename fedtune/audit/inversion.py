"""Optimisation-based update inversion (DLG: Zhu et al., 2019; TAG: Deng et al., 2021):
a relaxed text, one distribution over the vocabulary per position, is optimised until the
gradient it gives, on the parameters the client shares, points the way of the update the
server received (1 - cosine, per parameter tensor, averaged: each layer counts, not just
the largest, as TAG's layer-wise distance); each position is then read as its most likely
token.

As in TAG's and LAMP's evaluations, the attacker knows the batch's labels and lengths (and,
for a fusion model, its tabular features) and holds the global model the client started
from. Unlike the word-embedding attack, this
works when the embeddings are frozen (LoRA and other adapters)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel

Arrays = dict[str, np.ndarray]


def matched_parameters(
    model: PreTrainedModel, update: Arrays
) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    """The model's parameters that changed in the update and that an input embedding
    reaches (not the word-embedding table), and the descent direction the update shows."""
    named = dict(model.named_parameters())
    names = [
        n
        for n, u in update.items()
        if n in named and not n.endswith("word_embeddings.weight") and np.any(u)
    ]
    return [named[n] for n in names], [torch.from_numpy(-update[n]).float() for n in names]


def gradient_mismatch(
    grads: tuple[torch.Tensor | None, ...], targets: list[torch.Tensor]
) -> torch.Tensor:
    """1 - cosine of each gradient with its target, averaged over the tensors."""
    cosines = [
        torch.nn.functional.cosine_similarity(g.flatten(), t.flatten(), dim=0)
        for g, t in zip(grads, targets, strict=True)
        if g is not None
    ]
    return 1 - torch.stack(cosines).mean()


def invert_update(
    model: PreTrainedModel,
    update: Arrays,
    batch: Mapping[str, torch.Tensor],
    steps: int,
    seed: int,
    lr: float = 0.1,
) -> list[list[int]]:
    """Token ids, one list per text of `batch` (as long as its `attention_mask` says), whose
    gradient best matches `update` after `steps` Adam steps on the relaxed text's logits
    (seeded start). Of `batch` the attack reads what it is granted, all but the token ids.
    `model` holds the global weights the client started from. No tokens: nothing matched."""
    model.eval()
    params, targets = matched_parameters(model, update)
    known = {k: v for k, v in batch.items() if k not in ("input_ids", "token_type_ids")}
    lengths = known["attention_mask"].sum(dim=1).tolist()
    if not params:
        return [[] for _ in lengths]
    table = model.get_input_embeddings().weight.detach()
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((*known["attention_mask"].shape, table.shape[0]), generator=generator)
    logits = (logits * 0.01).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        embeds = torch.softmax(logits, dim=-1) @ table
        with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no second derivative
            loss = model(inputs_embeds=embeds, **known).loss
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        (logits.grad,) = torch.autograd.grad(gradient_mismatch(grads, targets), [logits])
        optimizer.step()
    return [ids[:n] for ids, n in zip(logits.argmax(dim=-1).tolist(), lengths, strict=True)]
