"""Server strategies: the registry of Flower strategies by scenario name.

`fedtune.strategies.factory.build_strategy` puts the chosen one behind the
update-to-weights layer (`deltas`) and, with client-level DP, Flower's DP wrapper
(`privacy`). This module imports nothing of fedtune's, so the config can read it.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "qfedavg": QFedAvg,
}
"""Scenario name -> Flower strategy class; registering a new strategy is one entry."""
