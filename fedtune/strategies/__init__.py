"""Server strategies: stock Flower strategies behind the update-to-weights layer."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedtune.config import FederationConfig
from fedtune.strategies.deltas import DeltaUpdates

__all__ = ["DeltaUpdates", "aggregate_client_metrics", "build_strategy"]


def aggregate_client_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's weighted mean of client metrics, without the (meaningless) mean client id."""
    aggregated = aggregate_metricrecords(records, weighting_key)
    aggregated.pop("partition-id", None)
    return aggregated


def build_strategy(cfg: FederationConfig, evaluate: bool = True) -> Strategy:
    """The scenario's strategy, receiving weight updates from clients."""
    inner = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate if evaluate else 0.0,
        min_train_nodes=cfg.min_train_nodes,
        min_evaluate_nodes=cfg.min_evaluate_nodes,
        min_available_nodes=cfg.min_available_nodes,
        train_metrics_aggr_fn=aggregate_client_metrics,
        evaluate_metrics_aggr_fn=aggregate_client_metrics,
    )
    return DeltaUpdates(inner)
