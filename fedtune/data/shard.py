"""A node's own data and its on-disk cache.

In simulation a node is told its `partition-id` and derives its shard from the scenario's
data. In deployment each SuperNode is started with its own node config: `data-path` (a
CSV/JSON(L)/parquet file on that machine, columns as the scenario's `data.text_column` and
`data.label_column`, labels as names) and, optionally, `partition-id` (a distinct small
integer: seeds local training and orders nodes) and `cache-dir`. The label names are the
federation's: the server sends them with every message.

Each ClientApp message may run in a fresh OS process, so the tokenized shard is kept on the
node's disk (`cache-dir`, default `~/.cache/fedtune`) and a later round only loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import datasets
from flwr.app import Context
from transformers import PreTrainedTokenizerBase

from fedtune.config import Scenario
from fedtune.data.corpus import federated_data, load_node_file, split_shard, tokenize

NodeConfig = Mapping[str, bool | int | float | str]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedtune"


def state_dir(scenario: Scenario, context: Context, pid: int) -> Path | None:
    """Where the node keeps its own state between messages (`fedtune.federation.client.state`): in
    deployment its cache directory, per run; in simulation the run directory's
    `nodes/node-<i>/state` (None when the run directory is not known)."""
    config = context.node_config
    if "data-path" in config or "cache-dir" in config:
        root = Path(str(config["cache-dir"])) if "cache-dir" in config else default_cache_dir()
        return root / "state" / f"run-{context.run_id}"
    if scenario.output.dir is None:
        return None
    return Path(scenario.output.dir) / "nodes" / f"node-{pid}" / "state"


def partition_id(node_config: NodeConfig, node_id: int) -> int:
    """The node's `partition-id`; a node started with only a `data-path` gets one from its
    Flower node id."""
    return int(node_config.get("partition-id", node_id % 2**31))


def _build(
    scenario: Scenario,
    node_config: NodeConfig,
    pid: int,
    label_names: tuple[str, ...],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    path = node_config.get("data-path")
    if path is None:
        shard = federated_data(scenario).partition(pid)
    else:
        shard = load_node_file(str(path), scenario.data, label_names)
    train, val = split_shard(shard, pid, scenario.data.val_size, scenario.seed)
    max_length, tabular = scenario.model.max_length, scenario.data.tabular
    return tokenize(train, tokenizer, max_length, tabular), tokenize(
        val, tokenizer, max_length, tabular
    )


def _cache_key(
    scenario: Scenario, node_config: NodeConfig, pid: int, label_names: tuple[str, ...]
) -> str:
    """Changes whenever the node's file, its split or its tokenization would."""
    key: dict = {
        "scenario": scenario.model_dump(mode="json", include={"seed", "model", "data"}),
        "partition-id": pid,
        "labels": label_names,
    }
    if "data-path" in node_config:
        stat = Path(str(node_config["data-path"])).stat()
        key["file"] = [str(Path(str(node_config["data-path"])).resolve()), stat.st_size]
        key["file"].append(stat.st_mtime_ns)
    else:
        key["partition"] = scenario.partition.model_dump(mode="json")
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def node_shard(
    scenario: Scenario,
    node_config: NodeConfig,
    pid: int,
    label_names: tuple[str, ...],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """This node's tokenized local train and validation sets, from its `data-path` or its
    partition. With a `data-path` or a `cache-dir` they are cached on disk."""
    cache_dir = node_config.get("cache-dir")
    if cache_dir is None and "data-path" not in node_config:
        return _build(scenario, node_config, pid, label_names, tokenizer)  # simulation
    root = Path(str(cache_dir)) if cache_dir is not None else default_cache_dir()
    target = root / "shards" / _cache_key(scenario, node_config, pid, label_names)
    if not target.is_dir():
        train, val = _build(scenario, node_config, pid, label_names, tokenizer)
        root.joinpath("shards").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            train.save_to_disk(str(tmp / "train"))
            if len(val):  # an empty dataset is not saved (nor loadable)
                val.save_to_disk(str(tmp / "val"))
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    train = datasets.load_from_disk(str(target / "train")).with_format("torch")
    if not (target / "val").is_dir():
        return train, train.select([])
    return train, datasets.load_from_disk(str(target / "val")).with_format("torch")
