"""Scenario files: typed sections, validation with one-line errors, and `--set` overrides."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fedtune.bounded_yaml import YamlTooLarge, safe_load
from fedtune.errors import FedtuneError, cut, first_line, short


def _shipped_scenario_dir() -> Path:
    """The shipped scenarios: inside the package when installed from a wheel, else the
    source tree's (or the Flower App bundle's) top-level `scenarios/`."""
    here = Path(__file__).resolve().parent
    packaged = here / "scenarios"
    return packaged if packaged.is_dir() else here.parent / "scenarios"


SCENARIO_DIR = _shipped_scenario_dir()
MAX_SCENARIO_BYTES = 256 * 1024
"""Largest scenario file read (shipped ones are about 1.5 KB)."""
MAX_SEED = 2**31 - 1
MAX_WAIT_SECONDS = 30 * 24 * 3600.0
"""Longest timeout or delay a scenario may ask for (30 days; Python's waits overflow past
about 292 years, and a round that long is a typo)."""


class ScenarioError(FedtuneError, ValueError):
    """A scenario file or override is invalid; the message is one line naming the key."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=True, allow_inf_nan=False
    )


def registered(module: str, registry: str, *extra: str) -> AfterValidator:
    """A `str` field's check that it names an entry of `module.registry` (or is one of
    `extra`), read when validating: registries import heavy packages, and entries added later
    count. The error reads as a Literal's."""

    def check(name: str) -> str:
        names = [*extra, *getattr(importlib.import_module(module), registry)]
        if name not in names:
            quoted = [repr(n) for n in names]
            expected = " or ".join(filter(None, [", ".join(quoted[:-1]), quoted[-1]]))
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected}
            )
        return name

    return AfterValidator(check)


class PeftSettings(Section):
    """Parameter-efficient fine-tuning with HF `peft`: only the adapters and the
    classification head train and travel; the frozen backbone never leaves a node."""

    method: Annotated[str, registered("fedtune.modeling.adapters", "ADAPTERS", "none")] = "none"
    """A method registered in `fedtune.modeling.adapters.ADAPTERS` (lora, ffa_lora, fedsa_lora, loha,
    lokr, ia3), or `none`."""
    rank: int = Field(8, ge=1)
    """Adapter rank (`lora`, `ffa_lora`, `loha`, `lokr`)."""
    alpha: float = Field(16.0, gt=0.0)
    """Scaling numerator (`lora`, `ffa_lora`, `loha`, `lokr`): updates are scaled by
    alpha / rank."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input (`lora`, `ffa_lora`, `loha`, `lokr`)."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; default: peft's choice for the architecture (BERT: query, value;
    ia3: key, value, output.dense)."""
    rank_per_client: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    """`lora` only: client i trains adapters of rank `rank_per_client[i]` (one per client), and
    the server aggregates their exact products (see `fedtune.modeling.adapters.ranks`); `rank` is then
    unused by the clients."""


class ModelConfig(Section):
    name: str = "embedded"
    """`embedded` (the offline MiniLM-L6 BERT), a local model directory, or a hub id."""
    max_length: int = Field(128, ge=8, le=512)
    peft: PeftSettings = PeftSettings()


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
    `pip install --no-deps recbole==1.2.1`), or a path to a .csv/.jsonl/.json/.parquet file."""
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


class PartitionConfig(Section):
    kind: Annotated[str, registered("fedtune.data.partitioners", "PARTITIONERS")] = "iid"
    """A kind registered in `fedtune.data.partitioners.PARTITIONERS`: iid, dirichlet, shard,
    pathological, natural."""
    num_clients: int = Field(4, ge=1)
    alpha: float = Field(0.5, gt=0.0)
    """Dirichlet concentration: smaller means more label skew."""
    labels_per_client: int = Field(2, ge=1)
    """`pathological`: labels per client; `shard`: label-sorted shards per client."""
    column: str | None = None
    """`natural`: the column whose values define the clients (e.g. `airline`)."""

    @model_validator(mode="after")
    def _natural_needs_column(self) -> PartitionConfig:
        if self.kind == "natural" and not self.column:
            raise ValueError("partition.kind 'natural' needs partition.column")
        return self


class ClientResources(Section):
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)


class FederationConfig(Section):
    strategy: str = "fedavg"
    """A strategy registered in `fedtune.federation.strategies.STRATEGIES`, by lower-case name (all of
    Flower's `flwr.serverapp.strategy`)."""
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
    client_resources: ClientResources = ClientResources()

    @field_validator("strategy")
    @classmethod
    def _registered(cls, name: str) -> str:
        from fedtune.federation.strategies import STRATEGIES  # imports flwr; only when validating

        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")
        return name

    @field_validator("strategy_params")
    @classmethod
    def _fit_strategy(cls, params: dict, info: ValidationInfo) -> dict:
        from fedtune.federation.strategies.params import check_strategy_params  # imports flwr

        name = info.data.get("strategy")
        return params if name is None else check_strategy_params(name, params)

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


class CodecConfig(Section):
    """How a client's update travels to the server (the global model goes down as float32)."""

    kind: Annotated[str, registered("fedtune.federation.codecs", "CODECS")] = "none"
    """A codec registered in `fedtune.federation.codecs.CODECS`. `none`: float32; `fp16`/`bf16`: half
    precision; `int8`: 8-bit with a float32 scale per block; `topk`: only the
    largest-magnitude entries of each tensor, with their indices; `onebit`: each entry's sign
    (1 bit) with a float32 mean magnitude per block."""
    block_size: int = Field(0, ge=0)
    """`int8`, `onebit`: entries per scale; 0 means one scale per tensor."""
    topk_fraction: float = Field(0.01, gt=0.0, le=1.0)
    """`topk`: share of each tensor's entries sent."""
    dense_below: int = Field(4096, ge=0)
    """`topk`: a tensor of fewer entries (biases, LayerNorms, a small head) is sent whole
    (MiniLM: 33,027 entries, 0.15% of the model; 0: every tensor sparse)."""
    topk_warmup_rounds: int = Field(0, ge=0)
    """`topk`: a node's first updates send more, falling geometrically to `topk_fraction`
    (DGC's density warm-up); counted in the error-feedback state, so it needs that on."""
    error_feedback: bool = True
    """Lossy codecs: what rounding or sparsification dropped is kept in the node's state and
    added to its next update."""

    @model_validator(mode="after")
    def _warmup_counts_in_feedback(self) -> CodecConfig:
        if self.topk_warmup_rounds and not self.error_feedback:
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


class AttackConfig(Section):
    """Simulated Byzantine clients: a seeded `fraction` of the clients is malicious."""

    kind: Annotated[str, registered("fedtune.federation.attacks", "ATTACKS")] = "none"
    """An attack registered in `fedtune.federation.attacks.ATTACKS`. `label_flip`: train on labels
    shifted by one class; `sign_flip`: send `-scale` times the honest update; `scale`: send
    `scale` times it; `gaussian_noise`: send N(0, noise_std)."""
    fraction: float = Field(0.2, ge=0.0, le=1.0)
    scale: float = Field(4.0, gt=0.0)
    noise_std: float = Field(0.01, gt=0.0)


class ValidationConfig(Section):
    """Server-side checks of each update before aggregation; failures are rejected."""

    enabled: bool = True
    """Reject updates with missing, extra or misshapen tensors, a wrong dtype, or NaN/Inf."""
    max_norm_ratio: float | None = Field(10.0, gt=1.0)
    """Also reject an update whose L2 norm exceeds this multiple of the round's median norm
    (null: no norm check)."""


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

    def check(self, scenario: Scenario) -> None:
        """Raise ValueError unless SecAgg+ fits the scenario's federation."""
        fed, sampled = scenario.federation, scenario.clients_per_round
        if fed.strategy != "fedavg":
            raise ValueError(
                f"privacy.secagg needs federation.strategy fedavg (the server sees only the "
                f"sum of the updates), not {fed.strategy!r}"
            )
        if scenario.codec.kind != "none":
            raise ValueError("privacy.secagg needs codec.kind none (SecAgg+ quantizes updates)")
        if self.num_shares > sampled:
            raise ValueError(
                f"privacy.secagg.num_shares={self.num_shares} exceeds the {sampled} clients "
                "sampled per round"
            )
        if self.num_shares % 2 == 0 and self.num_shares != sampled:
            raise ValueError(
                f"privacy.secagg.num_shares={self.num_shares} must be odd, or all the {sampled} "
                "clients sampled per round"
            )
        if sampled * self.quantization_range > 2**32:
            raise ValueError(
                f"privacy.secagg.quantization_range={self.quantization_range} times {sampled} "
                "clients overflows the 2**32 masking modulus"
            )


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


class OutputConfig(Section):
    dir: str | None = None
    """Run directory; default `runs/<name>-<timestamp>/`."""
    save_model: bool = True
    tensorboard: bool = True
    """Write TensorBoard events to `<run dir>/tensorboard` (when tensorboard is installed)."""


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
    partition: PartitionConfig = PartitionConfig()
    federation: FederationConfig = FederationConfig()
    training: TrainingConfig = TrainingConfig()
    codec: CodecConfig = CodecConfig()
    faults: FaultsConfig = FaultsConfig()
    attack: AttackConfig = AttackConfig()
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
        if private and self.training.class_weights == "federated":
            raise ValueError(
                "training.class_weights 'federated' sends each client's label counts without "
                "DP noise, outside what privacy.dp / dp_sgd account; use 'balanced' (each "
                "client's own counts)"
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
            self.privacy.secagg.check(self)
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


def _one_line(err: ValidationError, origin: str) -> str:
    """The first validation error as `origin: dotted.key: what (got input)`, on one line and
    short: the key's parts and the input are cut to 40 and 80 characters."""
    first = err.errors()[0]
    key = ".".join(cut(str(p), 40) for p in first["loc"])
    msg = " ".join(first["msg"].removeprefix("Value error, ").split())
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing", "value_error"):
        msg += f" (got {short(first['input'])})"
    where = f"{origin}: {key}: " if key else f"{origin}: "
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}{msg}{more}"


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> (`a.b`, YAML-parsed value; the raw text where it is not YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ScenarioError(f"--set {short(item)}: expected dotted.key=value")
    try:
        value = safe_load(raw) if raw.strip() else None
    except YamlTooLarge as exc:
        raise ScenarioError(f"--set {cut(key.strip(), 40)}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key in a nested dict (creating sections as needed)."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(f"--set {cut(dotted, 80)}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return raw


def resolve_scenario_path(ref: str | Path) -> Path:
    """A path as given, else a shipped scenario by file name or bare name."""
    path = Path(ref)
    for candidate in (path, SCENARIO_DIR / path, SCENARIO_DIR / f"{ref}.yaml"):
        try:
            if candidate.is_file():
                return candidate
        except (OSError, ValueError):  # a name too long for the OS, a NUL byte, ...
            continue
    if path.is_dir():
        raise ScenarioError(f"{cut(str(ref), 200)}: a directory, not a scenario file")
    raise ScenarioError(f"{cut(str(ref), 200)}: scenario file not found")


def load_scenario(ref: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read, override and validate a scenario file; raise ScenarioError on any problem."""
    path = resolve_scenario_path(ref)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            f"{path}: larger than {MAX_SCENARIO_BYTES // 1024} KiB; not a scenario file"
        )
    try:
        raw = safe_load(data.decode("utf-8"))
    except YamlTooLarge as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: malformed YAML: {first_line(exc)}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping of sections at the top level")
    raw.setdefault("name", path.stem)
    return scenario_from_dict(apply_overrides(raw, overrides or {}), str(path))


def scenario_from_dict(raw: dict[str, Any], origin: str = "scenario") -> Scenario:
    """Validate a nested dict into a Scenario."""
    try:
        return Scenario.model_validate(raw)
    except ValidationError as err:
        raise ScenarioError(_one_line(err, origin)) from None


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """A Flower run config: `scenario` (file or shipped name) and `set`, space-separated
    `dotted.key=value` overrides (as `fedtune run --set`)."""
    overrides = dict(parse_override(item) for item in str(run_config.get("set", "")).split())
    return load_scenario(str(run_config.get("scenario", "quickstart")), overrides)
