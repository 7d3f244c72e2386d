"""Client-level differential privacy: Flower's DP strategy wrappers with an RDP accountant."""

from __future__ import annotations

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


def accountant(scenario: Scenario) -> RdpAccountant:
    """Flower's RDP accountant for client-level DP: add/remove one client, no credit taken
    for client sampling (the noise is calibrated to the sampled clients alone)."""
    return RdpAccountant(
        PrivacyConfig(
            target_delta=scenario.privacy.dp.delta,
            population_size=scenario.partition.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


class _AccountedAdaptive:
    """Adds the RDP accountant Flower's adaptive-clipping wrappers lack: one Gaussian release
    per aggregated round at the configured noise multiplier. Flower splits that noise between
    the update and the clipped-count estimate so that together they spend what one Gaussian
    release at the configured multiplier spends (Andrew et al., 2021, Thm. 1)."""

    def _account(self, scenario: Scenario) -> None:
        self.accountant = accountant(scenario)
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
            self.accountant.compose(self.event)
        return arrays, metrics

    def privacy_spent(self) -> PrivacySpent:
        return self.accountant.get_privacy_spent()


class ServerSideAdaptiveClipping(_AccountedAdaptive, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, accounted."""


class ClientSideAdaptiveClipping(_AccountedAdaptive, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, accounted."""


def with_privacy(strategy: Strategy, scenario: Scenario) -> Strategy:
    """Wrap `strategy` with the DP wrapper `privacy.dp` asks for (or return it as is)."""
    dp = scenario.privacy.dp
    if not dp.enabled:
        return strategy
    sampled = scenario.clients_per_round
    if dp.adaptive:
        cls = ServerSideAdaptiveClipping if dp.clipping == "server" else ClientSideAdaptiveClipping
        wrapped = cls(
            strategy,
            dp.noise_multiplier,
            sampled,
            initial_clipping_norm=dp.clipping_norm,
            target_clipped_quantile=dp.target_clipped_quantile,
            clip_norm_lr=dp.clip_norm_lr,
        )
        wrapped._account(scenario)
        return wrapped
    fixed = (
        DifferentialPrivacyServerSideFixedClipping
        if dp.clipping == "server"
        else DifferentialPrivacyClientSideFixedClipping
    )
    return fixed(
        strategy, dp.noise_multiplier, dp.clipping_norm, sampled, accountant=accountant(scenario)
    )


def privacy_spent(strategy: Strategy) -> dict | None:
    """`{epsilon, delta}` spent so far by the DP wrapper inside `strategy`, if any."""
    while strategy is not None:
        if hasattr(strategy, "privacy_spent"):
            spent = strategy.privacy_spent()
            return {"epsilon": spent.epsilon, "delta": spent.delta} if spent else None
        strategy = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
    return None
