"""The scenario's `privacy` section: client-level DP, DP-SGD and SecAgg+."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedtune.config.base import MAX_WAIT_SECONDS, Section


class DPConfig(Section):
    """Client-level differential privacy with Flower's DP strategy wrappers."""

    enabled: bool = False
    clipping: Literal["server", "client"] = "server"
    """Where updates are clipped: on the server (it sees raw updates), or on each client."""
    adaptive: bool = False
    """Adapt the clipping norm each round towards `target_clipped_quantile` (Andrew et al.)."""
    noise_multiplier: float = Field(1.0, gt=0.0)
    clipping_norm: float = Field(1.0, gt=0.0)
    """The clipping norm (adaptive: the initial one)."""
    target_clipped_quantile: float = Field(0.5, ge=0.0, le=1.0)
    clip_norm_lr: float = Field(0.2, gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)


class DPSGDConfig(Section):
    """Sample-level DP-SGD inside each client (opacus): per-example clipping and noise."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, gt=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)


class SecAggConfig(Section):
    """Secure aggregation with Flower's SecAgg+: each client quantizes its update and adds
    pairwise and private masks; the server can unmask only the sum over the round's clients."""

    enabled: bool = False
    num_shares: int = Field(3, ge=3)
    """Neighbours (the client itself included) that get a share of each client's mask keys;
    odd, at most the clients sampled per round."""
    reconstruction_threshold: int = Field(2, ge=2)
    """Shares needed to remove a client's masks (< num_shares). A client's neighbourhood
    tolerates num_shares - threshold dropouts; fewer than `threshold` colluding neighbours
    learn nothing from its shares."""
    clipping_range: float = Field(0.5, gt=0.0)
    """Each entry of a client's update, weighted by its share of the largest client's
    examples, is clipped to +-clipping_range before quantization; fine-tuning updates are
    typically below 0.1, and the quantization step is 2 * clipping_range / quantization_range."""
    quantization_range: int = Field(2**22, ge=2**8, lt=2**32)
    """Integer levels of the quantized updates (the masks work modulo 2**32)."""
    timeout: float | None = Field(None, gt=0.0, le=MAX_WAIT_SECONDS)
    """Seconds each of the four protocol stages waits for replies; default
    federation.round_timeout."""

    @model_validator(mode="after")
    def _threshold_below_shares(self) -> SecAggConfig:
        if self.reconstruction_threshold >= self.num_shares:
            raise ValueError(
                f"privacy.secagg.reconstruction_threshold={self.reconstruction_threshold} must "
                f"be below privacy.secagg.num_shares={self.num_shares}"
            )
        return self


class PrivacyConfig(Section):
    dp: DPConfig = DPConfig()
    dp_sgd: DPSGDConfig = DPSGDConfig()
    secagg: SecAggConfig = SecAggConfig()

    def summary(self) -> dict:
        """summary.json's `privacy`: the mechanisms that are on, with their parameters."""
        on = {name: getattr(self, name) for name in ("dp", "dp_sgd", "secagg")}
        return {
            name: section.model_dump(exclude={"enabled", "timeout"})
            for name, section in on.items()
            if section.enabled
        }
