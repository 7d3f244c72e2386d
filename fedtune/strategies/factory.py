"""The scenario's strategy: a registered Flower strategy behind the update-to-weights layer."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedtune.config import Scenario, ScenarioError
from fedtune.strategies import STRATEGIES
from fedtune.strategies.deltas import UNIFORM_WEIGHT, DeltaUpdates
from fedtune.strategies.privacy import with_privacy


def aggregate_client_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's mean of the clients' metrics weighted by `weighting_key` (the key the
    strategy weights updates by: example counts, or 1 each under client-level DP), without
    the (meaningless) mean client id."""
    aggregated = aggregate_metricrecords(records, weighting_key)
    aggregated.pop("partition-id", None)
    return aggregated


def build_strategy(scenario: Scenario, evaluate: bool = True) -> Strategy:
    """The scenario's Flower strategy with its parameters, behind Flower's DP wrapper when
    `privacy.dp` is on, receiving weight updates packed with the scenario's codec."""
    cfg = scenario.federation
    params = dict(cfg.strategy_params)
    if cfg.strategy == "qfedavg":  # q-FedAvg's Lipschitz estimate needs the client LR
        params.setdefault("client_learning_rate", scenario.training.lr)
    dp = scenario.privacy.dp.enabled
    if dp:  # client-level DP counts every client equally
        params["weighted_by_key"] = UNIFORM_WEIGHT
    try:
        inner = STRATEGIES[cfg.strategy](
            fraction_train=cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate if evaluate else 0.0,
            min_train_nodes=scenario.min_train_nodes,
            min_evaluate_nodes=scenario.min_evaluate_nodes,
            min_available_nodes=scenario.min_available_nodes,
            train_metrics_aggr_fn=aggregate_client_metrics,
            evaluate_metrics_aggr_fn=aggregate_client_metrics,
            **params,
        )
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"federation.strategy_params for {cfg.strategy}: {exc}") from None
    inner = with_privacy(inner, scenario)
    return DeltaUpdates(
        inner, scenario.min_train_nodes, scenario.codec, scenario.validation, uniform_weights=dp
    )
