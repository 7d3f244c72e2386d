"""A node's work for each message: fine-tune on its private shard and reply with the weight
update only; evaluate; count labels. Run in the ClientApp's process
(`fedtune.federation.client.app`) or in a warm worker next to the node
(`fedtune.federation.client.worker`); each handler maps a message's content and the node's context
to the reply's content.

A reply holds exactly one ArrayRecord (the update of each shared trainable parameter, or
nothing for evaluate; under SCAFFOLD a train reply adds its control-variate delta) and one
MetricRecord (example counts and scalar metrics): never text, token ids or labels, and never
the parameters a PEFT method keeps personal (FedSA-LoRA's B: in the node's state only).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import datasets
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    adaptive_clip_inputs_inplace,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedtune.config import ModelConfig, Scenario, TabularConfig
from fedtune.data.corpus import federated_data, make_loader
from fedtune.data.shard import NodeConfig, node_shard, partition_id, state_dir
from fedtune.federation.attacks import ATTACKS, malicious_clients, poison
from fedtune.federation.client import label_skew, scaffold
from fedtune.federation.client.secagg import refuse_unmasked
from fedtune.federation.client.state import PREFIX, restore_state, save_state
from fedtune.federation.codecs import encode_with_feedback
from fedtune.federation.process import ray_node
from fedtune.federation.statistics import LABEL_COUNTS, LABEL_COUNTS_ACTION, label_counts_content
from fedtune.modeling.adapters.ranks import fresh_adapters, send_factors
from fedtune.modeling.model import (
    load_model,
    load_tokenizer,
    load_weights,
    personal_weights,
    shared_weights,
)
from fedtune.modeling.train import (
    dp_sgd_steps,
    evaluate,
    mean_gradient,
    pick_device,
    proximal_term,
    train_steps,
)
from fedtune.records import from_record, to_record


@dataclass(frozen=True)
class LocalData:
    """A client's tokenized shard, split into local train and validation."""

    train: datasets.Dataset
    val: datasets.Dataset


@dataclass(frozen=True)
class LoadedModel:
    """A worker process's model and tokenizer, and the initial values of the model's
    personal parameters (what a node starts from before it has its own)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    initial_personal: dict[str, np.ndarray]


@lru_cache(maxsize=2)
def _loaded_model(
    model: ModelConfig, label_names: tuple[str, ...], seed: int, tabular_json: str | None
) -> LoadedModel:
    """One model per worker process; each message overwrites its trainable weights.
    `tabular_json`: the data section's `tabular` as JSON (a dict is no cache key)."""
    tabular = None if tabular_json is None else TabularConfig.model_validate_json(tabular_json)
    loaded = load_model(model.name, label_names, seed, model.peft, tabular)
    initial = personal_weights(loaded, model.peft)
    return LoadedModel(loaded, load_tokenizer(model.name), initial)


def _local_data(
    scenario: Scenario, node_config: NodeConfig, pid: int, label_names: tuple[str, ...]
) -> LocalData:
    """Tokenized once per shard and process, reused every round (and kept on the node's
    disk in deployment, where each message may run in a fresh process)."""
    key = scenario.model_dump_json(include={"seed", "model", "data", "partition"})
    return _cached_local_data(key, tuple(sorted(node_config.items())), pid, label_names)


@lru_cache(maxsize=16)
def _cached_local_data(
    scenario_key: str, node_items: tuple, pid: int, label_names: tuple[str, ...]
) -> LocalData:
    scenario = Scenario.model_validate_json(scenario_key)
    tokenizer = load_tokenizer(scenario.model.name)
    return LocalData(*node_shard(scenario, dict(node_items), pid, label_names, tokenizer))


def node_model(model: ModelConfig, partition_id: int) -> ModelConfig:
    """The model this node trains: with `model.peft.rank_per_client`, LoRA of its own rank."""
    ranks = model.peft.rank_per_client
    if ranks is None:
        return model
    peft = model.peft.model_copy(update={"rank": ranks[partition_id]})
    return model.model_copy(update={"peft": peft})


def run_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Distinct per (seed, round, client) so every local run is reproducible."""
    return seed * 1_000_003 + server_round * 1_009 + partition_id


class LocalNode:
    """What one node needs for a message: scenario, its shard, the model with global weights."""

    def __init__(
        self, scenario: Scenario, context: Context, content: RecordDict, startup: float
    ) -> None:
        started, self.startup_seconds = time.perf_counter(), startup
        self.scenario = scenario
        self.partition_id = partition_id(context.node_config, context.node_id)
        nodes = int(context.node_config.get("num-partitions", scenario.partition.num_clients))
        if nodes != scenario.partition.num_clients:
            raise ValueError(
                f"the federation has {nodes} nodes but partition.num_clients="
                f"{scenario.partition.num_clients}; start it with num-supernodes="
                f"{scenario.partition.num_clients}"
            )
        config = content["config"]
        self.server_round = int(config.get("server-round", 0))
        # The federation's labels come with the message (a deployed node has only its file).
        label_names = tuple(config.get("label-names", ())) or federated_data(scenario).label_names
        tabular = scenario.data.tabular
        loaded = _loaded_model(
            node_model(scenario.model, self.partition_id),
            label_names,
            scenario.seed,
            None if tabular is None else tabular.model_dump_json(),
        )
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.initial_personal = loaded.initial_personal
        self.data = _local_data(scenario, context.node_config, self.partition_id, label_names)
        self.global_weights = from_record(content["arrays"])
        load_weights(self.model, self.global_weights)
        if scenario.model.peft.rank_per_client:  # adapters of its rank on the dense weights
            fresh_adapters(self.model, self.run_seed)
        self.device = pick_device()
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(scenario.federation.client_resources.num_cpus)))
        self.malicious = self.partition_id in malicious_clients(scenario)
        self.state_dir = state_dir(scenario, context, self.partition_id)
        self.setup_seconds = time.perf_counter() - started

    def setup_metrics(self) -> dict[str, float]:
        """What this message cost before training: the process's start-up (a fresh process
        per message in deployment) and the node's set-up (scenario, model, shard, weights);
        in simulation, the Ray node the client ran on."""
        return {
            "startup_seconds": self.startup_seconds,
            "setup_seconds": self.setup_seconds,
            **ray_node(),
        }

    def load_personal(self, state: RecordDict) -> None:
        """Put this node's own personal parameters (FedSA-LoRA's B) into the model: those
        its state holds, else their initial values."""
        if self.initial_personal:
            stored = state.array_records.get(PERSONAL)
            load_weights(self.model, from_record(stored) if stored else self.initial_personal)

    def keep_personal(self, state: RecordDict) -> None:
        """Store the trained personal parameters in the node's state (never in a reply)."""
        if self.initial_personal:
            state[PERSONAL] = to_record(personal_weights(self.model, self.scenario.model.peft))

    @property
    def run_seed(self) -> int:
        """This message's local-training seed (`run_seed`)."""
        return run_seed(self.scenario.seed, self.server_round, self.partition_id)


class InjectedFault(RuntimeError):
    """A failure injected by the scenario's `faults` section."""


def inject_faults(node: LocalNode) -> Callable[[int], None] | None:
    """Apply the scenario's faults for this client and round: drop out now, sleep (straggler),
    or return an `on_step` hook that crashes halfway through training."""
    faults = node.scenario.faults
    rng = random.Random(node.run_seed)
    dropout, crash, straggle, delay = rng.random(), rng.random(), rng.random(), rng.random()
    if dropout < faults.dropout:
        raise InjectedFault("dropped out of the round (faults.dropout)")
    if straggle < faults.straggler:
        low, high = faults.straggler_delay
        time.sleep(low + delay * (high - low))
    if crash >= faults.crash:
        return None
    half = len(node.data.train) * node.scenario.training.local_epochs // 2

    def crash_halfway(seen: int) -> None:
        if seen >= half:
            raise InjectedFault(f"crashed after {seen} examples (faults.crash)")

    return crash_halfway


DP_SGD_HISTORY = f"{PREFIX}dp-sgd-history"
"""The node-state record holding the node's opacus accountant history (DP-SGD)."""
PERSONAL = f"{PREFIX}personal-weights"
"""The node-state record holding the parameters its PEFT method keeps personal."""
RESIDUAL = f"{PREFIX}codec-residual"
"""The node-state record holding what the codec has not sent yet (error feedback)."""

Arrays = dict[str, np.ndarray]


@dataclass
class TrainStep:
    """One train message on one node: what the local update and its transforms read
    (node, the server's config, the node's own state) and the reply's metrics they add to."""

    node: LocalNode
    config: ConfigRecord
    state: RecordDict
    metrics: dict
    received: RecordDict = field(default_factory=RecordDict)
    """The train message's records (SCAFFOLD's server control variate comes with them)."""
    records: dict[str, ArrayRecord] = field(default_factory=dict)
    """What the reply carries besides the update and metrics (SCAFFOLD's control delta)."""
    control_gradient: Arrays | None = None
    """SCAFFOLD: the loss's mean gradient at the global weights (the node's new `c_i`)."""

    @property
    def label_counts(self) -> list[int] | None:
        """The federation's label counts, when the server gathered them (`class_weights:
        federated`, a label-skew method that reads them)."""
        counts = self.config.get(LABEL_COUNTS)
        return None if counts is None else list(counts)


def local_update(step: TrainStep) -> Arrays:
    """Fine-tune on the node's shard from the global weights; return `local - global`."""
    node, cfg = step.node, step.node.scenario.training
    torch.manual_seed(node.run_seed)
    data = node.data.train
    if node.malicious:  # a data-poisoning attack trains on what it poisoned
        data = ATTACKS[node.scenario.attack.kind].poison_data(data, len(node.model.config.id2label))
    loader = make_loader(data, node.tokenizer, cfg.batch_size, node.run_seed, cfg.group_by_length)
    on_step = inject_faults(node)
    training = time.perf_counter()
    weighted_by = step.label_counts if cfg.class_weights == "federated" else None
    skew = cfg.label_skew
    labels, num_labels = node.data.train["labels"], node.model.config.num_labels
    objective = label_skew.train_logits(skew, labels, num_labels, step.label_counts)
    rounds = node.scenario.federation.rounds
    frozen = label_skew.frozen_parameters(node.model, skew, node.server_round, rounds)
    dp_sgd = node.scenario.privacy.dp_sgd
    if dp_sgd.enabled:
        history = step.state.config_records.get(DP_SGD_HISTORY)
        history = json.loads(str(history["json"])) if history else None
        with frozen:
            result = dp_sgd_steps(
                node.model,
                loader,
                cfg,
                node.device,
                dp_sgd,
                history,
                on_step,
                weighted_by,
                objective,
            )
        step.state[DP_SGD_HISTORY] = ConfigRecord({"json": json.dumps(result.privacy_history)})
        step.metrics["dp_sgd_epsilon"] = result.epsilon
    else:
        mu = float(step.config.get("proximal-mu", 0.0))  # sent by FedProx
        terms = [proximal_term(node.model, mu)] if mu > 0 else []
        batches = scaffold.gradient_batches(step.received)
        if batches is not None:  # at the global weights, before any local step
            grad_loader = make_loader(data, node.tokenizer, cfg.batch_size, node.run_seed)
            step.control_gradient = mean_gradient(
                node.model, grad_loader, cfg, node.device, batches, weighted_by, objective
            )
        terms += scaffold.correction_terms(node.model, step.received, step.state)
        with frozen:
            result = train_steps(
                node.model,
                loader,
                cfg,
                node.device,
                on_step=on_step,
                loss_terms=terms,
                label_counts=weighted_by,
                train_logits=objective,
            )
    step.metrics.update(
        {
            "num-examples": len(node.data.train),
            "train_loss": result.mean_loss,
            "partition-id": node.partition_id,
            "train_seconds": time.perf_counter() - training,
            **node.setup_metrics(),
        }
    )
    local = shared_weights(node.model, node.scenario.model.peft)
    return {name: local[name] - weights for name, weights in node.global_weights.items()}


def factors(update: Arrays, step: TrainStep) -> Arrays:
    """With `rank_per_client`: the node's trained LoRA factors travel in place of the
    adapted modules' (zero) dense updates."""
    if not step.node.scenario.model.peft.rank_per_client:
        return update
    return send_factors(update, step.node.model)


def scaffold_control(update: Arrays, step: TrainStep) -> Arrays:
    """SCAFFOLD (when the server sends `c`): the node's new control variate (its gradient at
    the global weights) stays in its state, its delta goes with the reply."""
    if step.control_gradient is not None:
        delta = scaffold.new_client_control(step.control_gradient, step.received, step.state)
        if delta is not None:
            step.records[scaffold.CONTROL_DELTA] = delta
    return update


def clip_for_dp(update: Arrays, step: TrainStep) -> Arrays:
    """Client-side DP clipping, when the server's DP wrapper asks for it."""
    if KEY_CLIPPING_NORM not in step.config:
        return update
    norm_bit = adaptive_clip_inputs_inplace(list(update.values()), step.config[KEY_CLIPPING_NORM])
    step.metrics[KEY_NORM_BIT] = int(norm_bit)
    return update


def attack(update: Arrays, step: TrainStep) -> Arrays:
    """What a simulated malicious client sends instead (`attack` section)."""
    if not step.node.malicious:
        return update
    rng = np.random.default_rng(step.node.run_seed)
    return poison(update, step.node.scenario.attack, rng)


def pack(update: Arrays, step: TrainStep) -> Arrays:
    """The scenario's codec; the error-feedback residual stays in the node's own state."""
    previous = step.state.array_records.get(RESIDUAL)
    codec = step.node.scenario.codec
    packed, residual = encode_with_feedback(
        codec, update, from_record(previous) if previous else None
    )
    if residual is not None:
        step.state[RESIDUAL] = to_record(residual)
    return packed


UpdateTransform = Callable[[Arrays, TrainStep], Arrays]
UPDATE_TRANSFORMS: tuple[UpdateTransform, ...] = (
    factors,
    scaffold_control,
    clip_for_dp,
    attack,
    pack,
)
"""Applied in order to the local update before it is sent."""


def train(content: RecordDict, context: Context, scenario: Scenario, startup: float) -> RecordDict:
    """A train message: the local update after `UPDATE_TRANSFORMS`, and its metrics."""
    started = time.perf_counter()
    node = LocalNode(scenario, context, content, startup)
    refuse_unmasked(node.scenario, context)
    restore_state(context.state, node.state_dir, node.server_round)
    node.load_personal(context.state)
    step = TrainStep(node, content["config"], context.state, {}, content)
    update = local_update(step)
    node.keep_personal(context.state)
    for transform in UPDATE_TRANSFORMS:
        update = transform(update, step)
    save_state(context.state, node.state_dir, node.server_round)
    step.metrics["client_seconds"] = time.perf_counter() - started
    return RecordDict(
        {"arrays": to_record(update), "metrics": MetricRecord(step.metrics), **step.records}
    )


def evaluate_local(
    content: RecordDict, context: Context, scenario: Scenario, startup: float
) -> RecordDict:
    """An evaluate message: the global model (with the node's personal parameters) on the
    node's local validation split; metrics only."""
    started = time.perf_counter()
    node = LocalNode(scenario, context, content, startup)
    # The state after this round's training (a node evaluates after it trains).
    restore_state(context.state, node.state_dir, node.server_round + 1)
    node.load_personal(context.state)
    loader = make_loader(node.data.val, node.tokenizer, node.scenario.training.eval_batch_size)
    result = evaluate(node.model, loader, node.device)
    metrics = {
        "num-examples": result["num_examples"],
        "partition-id": node.partition_id,
        "client_seconds": time.perf_counter() - started,
        **node.setup_metrics(),
    }
    metrics.update({f"eval_{k}": result.get(k, 0.0) for k in ("loss", "accuracy", "macro_f1")})
    return RecordDict({"metrics": MetricRecord(metrics)})


def label_counts(
    content: RecordDict, context: Context, scenario: Scenario, startup: float
) -> RecordDict:
    """The node's training examples per label (`class_weights: federated`): counts only."""
    label_names = tuple(content["config"]["label-names"])
    pid = partition_id(context.node_config, context.node_id)
    data = _local_data(scenario, context.node_config, pid, label_names)
    return label_counts_content(data.train["labels"], len(label_names))


Handler = Callable[[RecordDict, Context, Scenario, float], RecordDict]
HANDLERS: dict[str, Handler] = {
    "train": train,
    "evaluate": evaluate_local,
    LABEL_COUNTS_ACTION: label_counts,
}
"""The node's work per message kind (a query's kind is its action)."""
