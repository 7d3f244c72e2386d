"""Shared fixtures: a tiny random BERT with a character-level vocabulary, a toy corpus whose
labels are learnable from words, and Flower message helpers."""

from __future__ import annotations

import copy
import csv
import random
import string
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import yaml
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from fedtune.config import scenario_from_dict
from fedtune.federation.client.app import ClientError, build_client_app
from fedtune.federation.server.app import run_server

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root (the tests read its scenarios, README and packaging files)."""

WORDS = {
    "negative": ["late", "lost", "rude", "cancelled", "delayed", "awful"],
    "neutral": ["flight", "gate", "seat", "ticket", "boarding", "today"],
    "positive": ["great", "thanks", "love", "friendly", "smooth", "awesome"],
}


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert(
    words: list[str], labels: list[str], max_length: int = 128
) -> tuple[BertForSequenceClassification, BertTokenizerFast]:
    """A 2-layer, 32-wide random BERT whose vocabulary is the special tokens plus `words`
    (seeded: every test session gets the same weights)."""
    torch.manual_seed(0)
    vocab = [*SPECIAL_TOKENS, *words]
    tokenizer = BertTokenizerFast(
        vocab={token: i for i, token in enumerate(vocab)}, model_max_length=max_length
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_length,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return BertForSequenceClassification(config), tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT whose WordPiece tokenizer spells any word; saved with 2 labels, so
    loading it for 3 exercises a new classification head."""
    path = tmp_path_factory.mktemp("tiny-bert")
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = sorted({w for ws in WORDS.values() for w in ws})
    model, tokenizer = tiny_bert([*chars, *(f"##{c}" for c in chars), *words], ["a", "b"])
    assert tokenizer.tokenize("Late #7") == ["late", "#", "7"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_toy_corpus(path: Path, n: int, seed: int = 0, extra_column: bool = True) -> Path:
    """n short texts whose label is given by their words, plus a `company` column."""
    rng = random.Random(seed)
    labels = list(WORDS)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["message", "sentiment", "company"] if extra_column else ["message", "sentiment"]
        )
        for i in range(n):
            label = labels[i % 3]
            text = " ".join(rng.choice(WORDS[label]) for _ in range(rng.randint(2, 5)))
            row = [f"{text} #{i}", label, f"co{i % 3 if i % 2 else (i // 2) % 2}"]
            writer.writerow(row if extra_column else row[:2])
    return path


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("data") / "toy.csv", 240)


@pytest.fixture
def make_scenario(tiny_model_dir: Path, toy_csv: Path, tmp_path: Path):
    """A validated tiny scenario; keyword sections update the defaults."""

    def make(**sections: dict):
        raw = {
            "name": "tiny",
            "seed": 7,
            "model": {"name": str(tiny_model_dir), "max_length": 32},
            "data": {"source": str(toy_csv), "text_column": "message", "label_column": "sentiment"},
            "partition": {"kind": "iid", "num_clients": 2},
            "federation": {"rounds": 2, "min_available_nodes": 2},
            "training": {"batch_size": 16, "lr": 5e-3, "local_epochs": 1},
            "output": {"dir": str(tmp_path / "run")},
        }
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return scenario_from_dict(raw)

    return make


def node_context(num_partitions: int, partition_id: int = 0) -> Context:
    """A simulated node's Context, to call a ClientApp directly."""
    return Context(
        run_id=1,
        node_id=partition_id + 1,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config={},
    )


@pytest.fixture
def task_identity() -> None:
    """Flower needs a task identity to build messages outside a runtime."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


class LocalGrid(Grid):
    """A Grid whose nodes are a ClientApp called in this process, node i + 1 holding
    partition i: the real server loop (`run_server`) in seconds, without Ray (tests only).
    Messages are copied each way (as a transport would) and every reply that reaches the
    server is kept in `received`; `drop` nodes fail when asked for a SecAgg+ update."""

    def __init__(self, scenario, drop: Iterable[int] = ()) -> None:
        self.app = build_client_app(scenario)
        n = scenario.partition.num_clients
        self.contexts = {
            pid + 1: Context(
                run_id=1,
                node_id=pid + 1,
                node_config={"partition-id": pid, "num-partitions": n},
                state=RecordDict(),
                run_config={},
            )
            for pid in range(n)
        }
        self.drop = set(drop)
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._replies: dict[str, Message] = {}

    def set_run(self, run_id: int) -> None:
        pass

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            arrived = copy.deepcopy(msg)
            if node in self.drop and "fitins.parameters" in arrived.content:
                reply = Message(Error(code=0, reason="dropped out"), reply_to=arrived)
            else:
                try:
                    reply = self.app(arrived, self.contexts[node])
                except ClientError as exc:  # a handler failed: the runtime replies with an error
                    reply = Message(Error(code=0, reason=str(exc)), reply_to=arrived)
            self._replies[msg.metadata.message_id] = copy.deepcopy(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = [self._replies.pop(i) for i in list(message_ids) if i in self._replies]
        self.received.extend(copy.deepcopy(replies))  # as they arrived
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture
def run_local(task_identity, tmp_path: Path):
    """Run a scenario through `run_server` on a LocalGrid; returns summary.json's content."""

    def run(scenario, name: str = "run") -> dict:
        grid = LocalGrid(scenario)
        return run_server(grid, scenario, tmp_path / name, quiet=True)

    return run


def write_scenario(scenario, path: Path) -> Path:
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    return path


def fedtune(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The `fedtune` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "fedtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
