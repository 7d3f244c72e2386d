"""Server strategies: stock Flower strategies behind the update-to-weights layer."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg, Strategy

from fedtune.config import FederationConfig
from fedtune.strategies.deltas import DeltaUpdates

__all__ = ["DeltaUpdates", "build_strategy"]


def build_strategy(cfg: FederationConfig, evaluate: bool = True) -> Strategy:
    """The scenario's strategy, receiving weight updates from clients."""
    inner = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate if evaluate else 0.0,
        min_train_nodes=cfg.min_train_nodes,
        min_evaluate_nodes=cfg.min_evaluate_nodes,
        min_available_nodes=cfg.min_available_nodes,
    )
    return DeltaUpdates(inner)
