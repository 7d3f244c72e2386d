"""Client-level differential privacy: Flower's DP strategy wrappers with an RDP accountant."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedtune.config import Scenario


class _SkipConvergenceNotes(logging.Filter):
    """dp_accounting warns once per RDP order whose series does not converge (small orders at
    small sampling rates) and leaves that order out, which keeps the bound valid: dozens of
    lines a round that a user cannot act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_SkipConvergenceNotes())


def accountant(scenario: Scenario) -> RdpAccountant:
    """Flower's RDP accountant for client-level DP (add/remove one client). With
    `federation.sampling: poisson` it credits the subsampling (each client takes part with
    probability clients_per_round / num_clients: the Poisson subsampled Gaussian of opacus
    and dp_accounting); with Flower's fixed-size sampling it takes no credit (the noise is
    calibrated to the sampled clients alone)."""
    poisson = scenario.federation.sampling == "poisson"
    return RdpAccountant(
        PrivacyConfig(
            target_delta=scenario.privacy.dp.delta,
            population_size=scenario.partition.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.POISSON if poisson else SamplingMethod.NO_AMPLIFICATION,
        )
    )


class _Accounted:
    """An RDP accountant for the DP wrappers Flower cannot account: its adaptive-clipping
    ones (none), and its fixed-clipping ones under Poisson sampling (no-amplification only).
    One Gaussian release per aggregated round at the configured noise multiplier; with
    adaptive clipping Flower splits that noise between the update and the clipped-count
    estimate so that together they spend what one release at that multiplier spends
    (Andrew et al., 2021, Thm. 1)."""

    def _account(self, scenario: Scenario) -> None:
        self.privacy_accountant = accountant(scenario)
        self.event = GaussianPrivacyEvent(
            noise_multiplier=scenario.privacy.dp.noise_multiplier,
            sample_size=scenario.clients_per_round,
            population_size=scenario.partition.num_clients,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.privacy_accountant.compose(self.event)
        return arrays, metrics

    def privacy_spent(self) -> PrivacySpent:
        return self.privacy_accountant.get_privacy_spent()


class ServerSideAdaptiveClipping(_Accounted, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, accounted."""


class ClientSideAdaptiveClipping(_Accounted, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, accounted."""


class ServerSideFixedClipping(_Accounted, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, accounted with Poisson subsampling."""


class ClientSideFixedClipping(_Accounted, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping, accounted with Poisson subsampling."""


def with_privacy(strategy: Strategy, scenario: Scenario) -> Strategy:
    """Wrap `strategy` with the DP wrapper `privacy.dp` asks for (or return it as is)."""
    dp = scenario.privacy.dp
    if not dp.enabled:
        return strategy
    sampled, server = scenario.clients_per_round, dp.clipping == "server"
    if dp.adaptive:
        cls = ServerSideAdaptiveClipping if server else ClientSideAdaptiveClipping
        wrapped = cls(
            strategy,
            dp.noise_multiplier,
            sampled,
            initial_clipping_norm=dp.clipping_norm,
            target_clipped_quantile=dp.target_clipped_quantile,
            clip_norm_lr=dp.clip_norm_lr,
        )
    elif scenario.federation.sampling == "poisson":
        cls = ServerSideFixedClipping if server else ClientSideFixedClipping
        wrapped = cls(strategy, dp.noise_multiplier, dp.clipping_norm, sampled)
    else:  # Flower's own accounted mode
        cls = (
            DifferentialPrivacyServerSideFixedClipping
            if server
            else DifferentialPrivacyClientSideFixedClipping
        )
        return cls(
            strategy,
            dp.noise_multiplier,
            dp.clipping_norm,
            sampled,
            accountant=accountant(scenario),
        )
    wrapped._account(scenario)
    return wrapped


def privacy_spent(strategy: Strategy) -> dict | None:
    """`{epsilon, delta}` spent so far by the DP wrapper inside `strategy`, if any."""
    while strategy is not None:
        if hasattr(strategy, "privacy_spent"):
            spent = strategy.privacy_spent()
            return {"epsilon": spent.epsilon, "delta": spent.delta} if spent else None
        strategy = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
    return None
