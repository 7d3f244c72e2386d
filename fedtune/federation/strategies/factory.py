"""The scenario's strategy: a registered Flower strategy behind the update-to-weights layer."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedtune.config import Scenario, ScenarioError
from fedtune.federation.strategies import STRATEGIES
from fedtune.federation.strategies.deltas import UNIFORM_WEIGHT, DeltaUpdates
from fedtune.federation.strategies.poisson import PoissonSampling
from fedtune.federation.strategies.privacy import with_privacy
from fedtune.modeling.adapters.ranks import RankedLora


def aggregate_client_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's mean of the clients' metrics weighted by `weighting_key` (the key the
    strategy weights updates by: example counts, or 1 each under client-level DP), without
    the (meaningless) mean client id."""
    aggregated = aggregate_metricrecords(records, weighting_key)
    aggregated.pop("partition-id", None)
    return aggregated


SERVER_OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    # Clients send `local - global` after tens of AdamW steps at lr ~3e-4 (warm-up, decay):
    # most coordinates move by 1e-4..1e-2; pretrained weights are ~0.05. Once its moments
    # fill, an Adam-type server moves each coordinate by up to about `eta` whatever the size
    # of its update: at Flower's eta=0.1, weights move by hundredths each round and the model
    # collapses below round 0. At eta=1e-3 the capped steps were too small to leave the
    # majority class in 3 rounds under Dirichlet(0.1) skew (label_skew: FedAdam 0.620 /
    # 0.255, also at tau 1e-3 or 1e-6); eta=3e-3 learns (FedAdam 0.672 / 0.385, FedYogi
    # 0.698 / 0.437, FedAdagrad at tau 1e-3 0.684 / 0.410; FedAvg 0.678 / 0.398), eta=1e-2
    # less (FedAdam 0.640 / 0.317). tau bounds round 1 at about 2x FedAvg's step on every
    # coordinate d (FedAdam: 0.74*eta*0.1*d / (0.1*|d| + tau) <= 2.2*d; FedYogi: <= 3*d;
    # FedAdagrad, without momentum: eta*d / (|d| + tau) <= 3*d). eta_l, which Flower only
    # logs, is set to training.lr below.
    "fedadam": {"eta": 3e-3, "tau": 1e-4},
    "fedyogi": {"eta": 3e-3, "tau": 1e-4},
    "fedadagrad": {"eta": 3e-3, "tau": 1e-3},
    # FedAvgM (Hsu et al., 2019): server learning rate and momentum over FedAvg's average.
    # Their rule, effective rate server_learning_rate / (1 - server_momentum) = 1, makes
    # the long-run step FedAvg's (itself right for a pretrained model); momentum 0.5 averages
    # the skewed rounds over about two, which suits runs of a few rounds.
    "fedavgm": {"server_learning_rate": 0.5, "server_momentum": 0.5},
}
"""Server-optimizer defaults for fine-tuning a pretrained transformer, applied unless
`federation.strategy_params` sets them: choosing one by name never makes the model worse
than round 0 (README, "Comparing strategies")."""


def build_strategy(scenario: Scenario, evaluate: bool = True) -> Strategy:
    """The scenario's Flower strategy with its parameters, behind Flower's DP wrapper when
    `privacy.dp` is on, receiving weight updates packed with the scenario's codec."""
    cfg = scenario.federation
    params = dict(cfg.strategy_params)
    if cfg.strategy == "qfedavg":  # q-FedAvg's Lipschitz estimate needs the client LR
        params.setdefault("client_learning_rate", scenario.training.lr)
    for key, value in SERVER_OPTIMIZER_DEFAULTS.get(cfg.strategy, {}).items():
        params.setdefault(key, value)
    if cfg.strategy in ("fedadam", "fedyogi", "fedadagrad"):
        params.setdefault("eta_l", scenario.training.lr)
    dp = scenario.privacy.dp.enabled
    if dp:  # client-level DP counts every client equally
        params["weighted_by_key"] = UNIFORM_WEIGHT
    poisson = cfg.sampling == "poisson"  # the inner strategy trains every node it is shown
    try:
        inner = STRATEGIES[cfg.strategy](
            fraction_train=1.0 if poisson else cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate if evaluate else 0.0,
            min_train_nodes=1 if poisson else scenario.min_train_nodes,
            min_evaluate_nodes=scenario.min_evaluate_nodes,
            min_available_nodes=1 if poisson else scenario.min_available_nodes,
            train_metrics_aggr_fn=aggregate_client_metrics,
            evaluate_metrics_aggr_fn=aggregate_client_metrics,
            **params,
        )
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"federation.strategy_params for {cfg.strategy}: {exc}") from None
    if poisson:
        sampled = scenario.clients_per_round
        inner = PoissonSampling(
            inner,
            rate=sampled / scenario.partition.num_clients,
            seed=scenario.seed,
            min_available_nodes=scenario.min_available_nodes,
            expected=sampled,
            fixed_denominator=dp,
        )
    inner = with_privacy(inner, scenario)
    peft = scenario.model.peft
    ranked = RankedLora(peft.rank_per_client, peft.alpha) if peft.rank_per_client else None
    return DeltaUpdates(
        inner,
        scenario.min_train_nodes,
        scenario.codec,
        scenario.validation,
        uniform_weights=dp,
        ranked=ranked,
    )
