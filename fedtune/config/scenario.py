"""The scenario: one experiment, its sections, and the checks that span them."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from fedtune.config.base import MAX_SEED, Section
from fedtune.config.privacy import PrivacyConfig
from fedtune.config.sections import (
    AttackConfig,
    CodecConfig,
    DataConfig,
    FaultsConfig,
    FederationConfig,
    FederationNodes,
    ModelConfig,
    OutputConfig,
    PartitionConfig,
    TrainingConfig,
    ValidationConfig,
)
from fedtune.errors import short


class Scenario(Section):
    """One experiment: everything a run needs, validated."""

    name: str = "scenario"
    """Names run directories (`runs/<name>-<time>`): 1-100 characters, no path separators."""
    description: str = ""
    seed: int = Field(42, ge=0, le=MAX_SEED)
    """Seeds numpy (which takes 0 <= seed < 2**32), torch and Python's RNG; seeds derived
    from it (seed + client, ...) stay in numpy's range."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    partition: PartitionConfig = Field(default_factory=PartitionConfig)  # lazy: reads a registry
    federation: FederationConfig = FederationConfig()
    training: TrainingConfig = TrainingConfig()
    codec: CodecConfig = Field(default_factory=CodecConfig)  # lazy: reads a registry
    faults: FaultsConfig = FaultsConfig()
    attack: AttackConfig = Field(default_factory=AttackConfig)  # lazy: reads a registry
    validation: ValidationConfig = ValidationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("name")
    @classmethod
    def _not_a_path(cls, name: str) -> str:
        bad = any(c in "/\\" or ord(c) < 32 for c in name) or name.strip(".") == ""
        if bad or len(name) > 100:
            raise ValueError(
                f"name {short(name)} names run directories: 1-100 characters, no '/', '\\' "
                "or control characters, not '.' or '..'"
            )
        return name

    @property
    def nodes(self) -> FederationNodes:
        """`federation.min_*_nodes` resolved for `partition.num_clients` (nulls filled in)."""
        return self.federation.nodes(self.partition.num_clients)

    @property
    def min_train_nodes(self) -> int:
        """Resolved `federation.min_train_nodes`: what the strategy gets."""
        return self.nodes.min_train_nodes

    @property
    def min_evaluate_nodes(self) -> int:
        """Resolved `federation.min_evaluate_nodes`: what the strategy gets."""
        return self.nodes.min_evaluate_nodes

    @property
    def min_available_nodes(self) -> int:
        """Resolved `federation.min_available_nodes`: what the strategy gets."""
        return self.nodes.min_available_nodes

    @property
    def clients_per_round(self) -> int:
        """How many clients are sampled for training each round (as Flower's
        `FedAvg.configure_train` computes it)."""
        fed, n = self.federation, self.partition.num_clients
        return max(int(n * fed.fraction_train), self.min_train_nodes)

    @model_validator(mode="after")
    def _privacy_fits(self) -> Scenario:
        dp = self.privacy.dp
        if dp.enabled and self.federation.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                "privacy.dp works with federation.strategy fedavg or fedprox (uniform FedAvg "
                f"is what the accountant assumes), not {self.federation.strategy}"
            )
        if dp.enabled and dp.clipping == "client" and self.codec.kind != "none":
            raise ValueError("privacy.dp.clipping 'client' needs codec.kind 'none'")
        private = dp.enabled or self.privacy.dp_sgd.enabled
        if private and self.training.federation_label_counts:
            raise ValueError(
                "training.class_weights 'federated' and training.label_skew.method "
                "'logit_adjustment' send each client's label counts without DP noise, outside "
                "what privacy.dp / dp_sgd account; use class_weights 'balanced' or a method "
                "that reads the client's own counts (fedlc, fedrs)"
            )
        if self.privacy.dp_sgd.enabled:
            if self.model.peft.method == "none":
                raise ValueError(
                    "privacy.dp_sgd needs model.peft.method (lora, loha, lokr or ia3): opacus "
                    "cannot give per-example gradients for BERT's shared position embeddings"
                )
            if self.federation.strategy == "fedprox":
                raise ValueError("privacy.dp_sgd does not combine with fedprox's proximal term")
        if self.privacy.secagg.enabled:
            if self.data.eval_source is not None:
                raise ValueError(
                    "privacy.secagg needs the clients' data sizes from data.source; it does "
                    "not combine with data.eval_source"
                )
            if dp.enabled:
                raise ValueError(
                    "privacy.secagg does not combine with privacy.dp (the DP wrapper would "
                    "never see the masked updates, so no noise would be added)"
                )
            _check_secagg(self)
        return self

    @model_validator(mode="after")
    def _scaffold_fits(self) -> Scenario:
        """SCAFFOLD: client-level DP and SecAgg+ are refused above (fedavg/fedprox only); its
        correction is a loss term, which opacus' DP-SGD loop does not take."""
        fed = self.federation
        if fed.strategy == "scaffold" and self.privacy.dp_sgd.enabled:
            raise ValueError("privacy.dp_sgd does not combine with scaffold's correction term")
        eta_g = fed.strategy_params.get("eta_g", 1.0)
        if fed.strategy == "scaffold" and not eta_g > 0:
            raise ValueError(f"federation.strategy_params.eta_g={eta_g} must be positive")
        return self

    @model_validator(mode="after")
    def _ranks_fit(self) -> Scenario:
        """Heterogeneous ranks: one per client; the dense products they are aggregated as
        exist on the server only, so nothing that sums or clips the factors combines."""
        ranks, n = self.model.peft.rank_per_client, self.partition.num_clients
        if ranks is None:
            return self
        refused = {
            "model.peft.method other than lora": self.model.peft.method != "lora",
            # the server's products scale by alpha / rank
            "model.peft.use_rslora": getattr(self.model.peft, "use_rslora", False),
            "privacy.secagg": self.privacy.secagg.enabled,
            "privacy.dp.clipping 'client'": self.privacy.dp.enabled
            and self.privacy.dp.clipping == "client",
            "federation.strategy scaffold": self.federation.strategy == "scaffold",
            # the residual of last round's factors does not add to fresh factors
            f"codec {self.codec.kind} with error_feedback (set codec.error_feedback=false)": (
                self.codec.kind != "none" and self.codec.error_feedback
            ),
        }
        for what, present in refused.items():
            if present:
                raise ValueError(f"model.peft.rank_per_client does not combine with {what}")
        if len(ranks) != n:
            raise ValueError(
                f"model.peft.rank_per_client has {len(ranks)} ranks for {n} clients "
                "(partition.num_clients): give one per client"
            )
        return self

    @model_validator(mode="after")
    def _nodes_fit_federation(self) -> Scenario:
        """Only values the user set can fail here: resolved nulls always fit."""
        fed, n = self.federation, self.partition.num_clients
        for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
            value = getattr(fed, key)
            if value is not None and value > n:
                raise ValueError(f"federation.{key}={value} exceeds partition.num_clients={n}")
        return self


def _check_secagg(scenario: Scenario) -> None:
    """Raise ValueError unless SecAgg+ fits the scenario's federation."""
    secagg = scenario.privacy.secagg
    fed, sampled = scenario.federation, scenario.clients_per_round
    if fed.strategy != "fedavg":
        raise ValueError(
            f"privacy.secagg needs federation.strategy fedavg (the server sees only the "
            f"sum of the updates), not {fed.strategy!r}"
        )
    if scenario.codec.kind != "none":
        raise ValueError("privacy.secagg needs codec.kind none (SecAgg+ quantizes updates)")
    if secagg.num_shares > sampled:
        raise ValueError(
            f"privacy.secagg.num_shares={secagg.num_shares} exceeds the {sampled} clients "
            "sampled per round"
        )
    if secagg.num_shares % 2 == 0 and secagg.num_shares != sampled:
        raise ValueError(
            f"privacy.secagg.num_shares={secagg.num_shares} must be odd, or all the {sampled} "
            "clients sampled per round"
        )
    if sampled * secagg.quantization_range > 2**32:
        raise ValueError(
            f"privacy.secagg.quantization_range={secagg.quantization_range} times {sampled} "
            "clients overflows the 2**32 masking modulus"
        )
