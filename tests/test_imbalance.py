"""`training.class_weights: balanced`: scikit-learn's balanced weights from a node's own
labels, used in the training loss (plain and DP-SGD steps, SCAFFOLD's gradients)."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import torch
from conftest import WORDS, LocalGrid, tiny_bert
from flwr.app import MessageType

import fedtune.federation.client.node
from fedtune.cli.runs import headline as _headline
from fedtune.config import TrainingConfig
from fedtune.federation.server.app import FederatedRun
from fedtune.federation.statistics import LABEL_COUNTS
from fedtune.modeling.metrics import majority_baseline
from fedtune.modeling.train import class_weights, evaluate, train_steps

LABELS = list(WORDS)


def toy_data(counts: dict[str, int], seed: int = 0) -> tuple[datasets.Dataset, object]:
    """Texts of 3 words of their label, `counts[label]` of each, tokenized for a tiny BERT
    without dropout (so a loss is a function of the weights alone)."""
    rng = random.Random(seed)
    words = sorted({w for ws in WORDS.values() for w in ws})
    model, tokenizer = tiny_bert(words, LABELS)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model = type(model)(model.config)  # rebuilt without dropout, seeded by tiny_bert
    rows = [
        {"text": " ".join(rng.choices(WORDS[label], k=3)), "labels": LABELS.index(label)}
        for label, n in counts.items()
        for _ in range(n)
    ]
    rng.shuffle(rows)
    encoded = datasets.Dataset.from_list(rows).map(
        lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"]
    )
    return encoded.with_format("torch"), (model, tokenizer)


def loader_of(ds: datasets.Dataset, tokenizer, batch_size: int, seed: int | None = None):
    from fedtune.data.corpus import make_loader

    return make_loader(ds, tokenizer, batch_size, seed)


def test_balanced_weights_are_sklearns_on_the_labels_present() -> None:
    ds, (_, tokenizer) = toy_data({"negative": 6, "neutral": 2, "positive": 0})
    loader = loader_of(ds, tokenizer, 4)
    assert class_weights(loader, TrainingConfig(), 3) is None
    got = class_weights(loader, TrainingConfig(class_weights="balanced"), 3)
    # n / (labels present x count): 8 / (2 x 6), 8 / (2 x 2); the absent label weighs 0
    np.testing.assert_allclose(got.numpy(), [8 / 12, 8 / 4, 0.0], rtol=1e-6)


def test_the_training_loss_is_the_weighted_mean_over_the_batch() -> None:
    ds, (model, tokenizer) = toy_data({"negative": 9, "neutral": 3, "positive": 2})
    loader = loader_of(ds, tokenizer, len(ds))  # one batch: the loss at the initial weights
    batch = next(iter(loader))
    with torch.no_grad():
        logits = model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits
    per_example = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
    weights = torch.tensor([14 / 27, 14 / 9, 14 / 6])[batch["labels"]]
    cfg = TrainingConfig(class_weights="balanced", lr=1e-9, local_epochs=1)
    result = train_steps(model, loader, cfg, torch.device("cpu"))
    assert result.mean_loss == pytest.approx(float((weights * per_example).mean()), rel=1e-5)
    assert result.mean_loss != pytest.approx(float(per_example.mean()), rel=1e-3)


def test_balanced_weights_lift_the_rare_labels_recall() -> None:
    """The same seeded model, data and steps: with balanced weights the rare labels are
    found more often than without."""
    counts = {"negative": 120, "neutral": 8, "positive": 8}
    recalls = {}
    for mode in ("none", "balanced"):
        ds, (model, tokenizer) = toy_data(counts)
        torch.manual_seed(0)
        cfg = TrainingConfig(class_weights=mode, lr=2e-3, batch_size=16, local_epochs=2)
        train_steps(model, loader_of(ds, tokenizer, 16, seed=0), cfg, torch.device("cpu"))
        test, _ = toy_data({label: 30 for label in LABELS}, seed=1)
        metrics = evaluate(model, loader_of(test, tokenizer, 64), torch.device("cpu"), LABELS)
        rare = [LABELS.index("neutral"), LABELS.index("positive")]
        recalls[mode] = np.mean([metrics["per_class"][LABELS[i]]["recall"] for i in rare])
    assert recalls["balanced"] > recalls["none"] + 0.2, recalls


def test_the_majority_baseline_and_the_headline_metric() -> None:
    airline = majority_baseline({"negative": 310, "neutral": 111, "positive": 79})
    assert airline["label"] == "negative" and airline["accuracy"] == pytest.approx(0.62)
    assert airline["macro_f1"] == pytest.approx(2 * 0.62 / 1.62 / 3)  # its F1, 0 for the others
    assert airline["headline"] == "macro_f1"  # 62% >= 1.5 x a third
    binary = majority_baseline({"skip": 55, "like": 45})
    assert (binary["headline"], binary["auc"]) == ("auc", 0.5)
    assert majority_baseline({"a": 45, "b": 30, "c": 25})["headline"] == "accuracy"
    assert majority_baseline({"a": 0}) is None
    final = {"accuracy": 0.8, "macro_f1": 0.72}
    assert _headline(final, airline) == (
        "macro-F1 0.7200, accuracy 0.8000 (majority class 'negative': 0.2551 / 0.6200)"
    )
    assert _headline(final, None) == "accuracy 0.8000, macro-F1 0.7200"
    assert _headline({**final, "auc": 0.75}, binary) == (
        "AUC 0.7500, accuracy 0.8000, macro-F1 0.7200 (majority class 'skip': 0.5000 / 0.5500 / "
        f"{binary['macro_f1']:.4f})"
    )


def test_given_label_counts_weigh_instead_of_the_loaders() -> None:
    ds, (_, tokenizer) = toy_data({"negative": 6, "neutral": 2, "positive": 0})
    loader = loader_of(ds, tokenizer, 4)
    cfg = TrainingConfig(class_weights="federated")
    got = class_weights(loader, cfg, 3, label_counts=[10, 5, 5])
    np.testing.assert_allclose(got.numpy(), [20 / 30, 20 / 15, 20 / 15], rtol=1e-6)
    own = class_weights(loader, cfg, 3)  # no federation (centralized, local-only): its own
    np.testing.assert_allclose(own.numpy(), [8 / 12, 8 / 4, 0.0], rtol=1e-6)


def test_federated_class_weights_come_from_every_nodes_label_counts(
    make_scenario, task_identity, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before round 1 every node answers a label-counts query with counts only (the payload
    audit); the server sums them and every train message carries the sum, which each node's
    loss weighs by."""
    scenario = make_scenario(
        partition={"kind": "dirichlet", "alpha": 0.5, "num_clients": 2},
        federation={"rounds": 1, "min_available_nodes": 2},
        training={"class_weights": "federated"},
    )
    used = []
    real_train_steps = fedtune.federation.client.node.train_steps

    def spy(*args, label_counts=None, **kwargs):  # noqa: ANN002, ANN003, ANN202
        used.append(label_counts)
        return real_train_steps(*args, label_counts=label_counts, **kwargs)

    monkeypatch.setattr(fedtune.federation.client.node, "train_steps", spy)
    grid = LocalGrid(scenario)
    run = FederatedRun(grid, scenario, tmp_path / "run", quiet=True, resume=False)
    run.run()
    query = f"{MessageType.QUERY}.label_counts"
    replies = [r for r in grid.received if r.metadata.message_type == query]
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2]
    per_node = []
    for reply in replies:  # the payload audit: one metric of counts, nothing else
        content = reply.content
        assert not content.array_records and not content.config_records
        assert list(content.metric_records) == ["metrics"]
        assert list(content["metrics"]) == [LABEL_COUNTS]
        per_node.append(list(content["metrics"][LABEL_COUNTS]))
    label_names = run.server.label_names
    expected = [0] * len(label_names)
    for pid in (0, 1):
        local = fedtune.federation.client.node._local_data(
            scenario, grid.contexts[pid + 1].node_config, pid, label_names
        )
        for label in local.train["labels"]:
            expected[int(label)] += 1
    assert [sum(c) for c in zip(*per_node, strict=True)] == expected
    assert per_node[0] != per_node[1], "Dirichlet shards differ: the sum is not one node's"
    trains = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert trains and all(list(m.content["config"][LABEL_COUNTS]) == expected for m in trains)
    assert used == [expected, expected]


def test_a_node_without_label_counts_stops_the_run_naming_it(
    make_scenario, task_identity, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = make_scenario(training={"class_weights": "federated"})

    def broken(scenario, node_config, pid, label_names):  # noqa: ANN001, ANN202
        raise OSError(f"shard {pid} unreadable")

    monkeypatch.setattr(fedtune.federation.client.node, "_local_data", broken)
    run = FederatedRun(LocalGrid(scenario), scenario, tmp_path / "run", quiet=True, resume=False)
    with pytest.raises(ValueError, match=r"label counts: node 1 sent none: client 0.*unreadable"):
        run.run()
