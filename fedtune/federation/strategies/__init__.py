"""Server strategies: the registry of Flower strategies by scenario name.

`fedtune.federation.strategies.factory.build_strategy` puts the chosen one behind the
update-to-weights layer (`deltas`) and, with client-level DP, Flower's DP wrapper
(`privacy`). This module imports nothing of fedtune's outside this package (nor do the
strategy modules it imports), so the config can read it.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from fedtune.federation.strategies.fedavgm import FedAvgM
from fedtune.federation.strategies.scaffold import Scaffold

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
    "scaffold": Scaffold,
}
"""Scenario name -> strategy class (Flower's own, FedAvgM with a checkpointable momentum, and
SCAFFOLD); registering a new strategy is one entry."""
