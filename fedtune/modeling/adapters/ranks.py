"""Heterogeneous LoRA ranks (`model.peft.rank_per_client`): each client trains LoRA of its own
rank, and aggregation stays exact.

Each round a client gets the dense weights of the adapted modules (the server's merged model)
and the head, starts fresh adapters of its rank r_i on them (A seeded, B zero), trains, and
sends its factors A_i, B_i with its head update. The server turns each reply into the dense
update (alpha / r_i) B_i A_i of every adapted module, as FLoRA (Wang et al., 2024) and FlexLoRA
(Bai et al., 2024) do, and the strategy aggregates these as any other update: FedAvg's mean of
the products is exact (plain LoRA's mean(B) mean(A) adds cross terms), and robust strategies,
server-side DP and codecs see one shape per tensor. Up: the rank-r_i factors; down: the
adapted modules' dense weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BASE = ".base_layer.weight"
"""Name suffix of an adapted module's dense weight (peft's LoRA wrapper keeps it there)."""
ADAPTER = "default"
"""peft's adapter name."""

Arrays = dict[str, np.ndarray]


def factor_names(base: str) -> tuple[str, str]:
    """The names of the A and B factors of the module whose dense weight is `base`."""
    prefix = base.removesuffix(BASE)
    return f"{prefix}.lora_A.{ADAPTER}.weight", f"{prefix}.lora_B.{ADAPTER}.weight"


@dataclass(frozen=True)
class RankedLora:
    """The federation's ranks (client `i` trains rank `ranks[i]`) and LoRA's alpha."""

    ranks: tuple[int, ...]
    alpha: float

    def reply_shapes(self, global_weights: Arrays, client: int) -> Arrays:
        """What client `client`'s update holds: its factors in place of each adapted
        module's dense weight, the other tensors as they are (zero-cost arrays of the
        shapes, for the codec's decoder)."""
        rank, shapes = self.ranks[client], {}
        for name, weight in global_weights.items():
            if not name.endswith(BASE):
                shapes[name] = weight
                continue
            out_features, in_features = weight.shape
            a, b = factor_names(name)
            shapes[a] = np.broadcast_to(np.float32(0), (rank, in_features))
            shapes[b] = np.broadcast_to(np.float32(0), (out_features, rank))
        return shapes

    def dense_update(self, update: Arrays, global_weights: Arrays, client: int) -> Arrays:
        """Client `client`'s update with each module's factors turned into its dense update
        (alpha / r) B A."""
        scale = self.alpha / self.ranks[client]
        dense = {}
        for name in global_weights:
            if name.endswith(BASE):
                a, b = factor_names(name)
                product = update[b].astype(np.float64) @ update[a].astype(np.float64)
                dense[name] = (scale * product).astype(np.float32)
            else:
                dense[name] = update[name]
        return dense


def send_factors(update: Arrays, model: torch.nn.Module) -> Arrays:
    """A client's update as it travels: its trained factors in place of the (zero) updates
    of the adapted modules' dense weights."""
    params = dict(model.named_parameters())
    sent = {name: u for name, u in update.items() if not name.endswith(BASE)}
    for name in update:
        if name.endswith(BASE):
            for factor in factor_names(name):
                sent[factor] = params[factor].detach().cpu().float().numpy().copy()
    return sent


def fresh_adapters(model: torch.nn.Module, seed: int) -> None:
    """Start every LoRA layer of `model` afresh: A drawn with `seed`, B zero (the adapters
    then add nothing to the dense weights the model was loaded with)."""
    from peft.tuners.lora.layer import LoraLayer

    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.reset_lora_parameters(ADAPTER, True)
