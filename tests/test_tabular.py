"""Text + tabular data through fedtune: declared features, a split column, the fusion model
in a federated run (AUC, log-loss, ranking metrics), what a fusion client sends, and bad
tabular input as one line."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORDS, fedtune, node_context, write_scenario
from fastapi.testclient import TestClient
from flwr.app import ConfigRecord, Message, RecordDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fedtune.audit.privacy import inversion_audit
from fedtune.cli import main
from fedtune.data import tabular
from fedtune.data.corpus import build_federated_data, federated_data, load_node_file, tokenize
from fedtune.errors import DataError
from fedtune.federation.client.app import build_client_app
from fedtune.modeling.model import load_model, load_tokenizer, trainable_weights
from fedtune.records import from_record, to_record
from fedtune.runs.report import write_report
from fedtune.serve.app import create_app
from fedtune.serve.predictor import Predictor

TABULAR = {
    "numeric": {"age": {"mean": 40.0, "std": 15.0}, "score": {"mean": 0.0, "std": 1.0}},
    "categorical": {"city": ["paris", "rome"]},
}


def write_rows(
    path: Path, n: int = 160, users: int = 20, test_from: int | None = None, **bad: dict
) -> Path:
    """Binary rows: `like` when the words are positive; age, score, city; rows from
    `test_from` on (default: the last 20) are `test`. `bad={column: {row: value}}` overrides
    cells."""
    test_from = n - 20 if test_from is None else test_from
    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = "like" if i % 2 else "skip"
        words = WORDS["positive" if label == "like" else "negative"]
        rows.append(
            {
                "text": " ".join(rng.choices(words, k=3)),
                "label": label,
                "age": 20 + i % 50,
                "score": round(rng.gauss(1 if label == "like" else -1, 1), 3),
                "city": ["paris", "rome", "oslo"][i % 3],  # oslo is not declared
                "user": f"u{i % users}",
                "split": "test" if i >= test_from else "train",
            }
        )
    for column, cells in bad.items():
        for row, value in cells.items():
            rows[row][column] = value
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def tabular_scenario(make_scenario, tmp_path: Path):
    def make(path: Path | None = None, **sections: dict):
        data = {
            "source": str(path or write_rows(tmp_path / "rows.csv")),
            "text_column": "text",
            "label_column": "label",
            "split_column": "split",
            "group_column": "user",
            "tabular": TABULAR,
            **sections.pop("data", {}),
        }
        return make_scenario(data=data, **sections)

    return make


def test_split_column_and_encoded_features(tabular_scenario) -> None:
    scenario = tabular_scenario()
    fed = build_federated_data(scenario)
    assert set(fed.test["split"]) == {"test"} and len(fed.test) == 20
    assert set(fed.pool["split"]) == {"train"} and len(fed.pool) == 140
    tokens = tokenize(fed.test, load_tokenizer(scenario.model.name), 32, scenario.data.tabular)
    assert {"numeric", "categorical"} <= set(tokens.column_names)
    numeric, categorical = tokens[:]["numeric"], tokens[:]["categorical"]
    assert numeric.shape == (20, 4)  # 2 values and their 2 missing flags
    ages = np.asarray(fed.test["age"], dtype=float)
    np.testing.assert_allclose(numeric[:, 0].numpy(), (ages - 40) / 15, rtol=1e-5)
    expected = [{"paris": 1, "rome": 2}.get(c, 0) for c in fed.test["city"]]
    assert categorical[:, 0].tolist() == expected and 0 in expected  # oslo: unknown


def test_a_fusion_federation_reports_auc_and_ranking(tabular_scenario, run_local) -> None:
    scenario = tabular_scenario(training={"lr": 5e-3, "batch_size": 16, "local_epochs": 3})
    summary = run_local(scenario)
    final = summary["final"]
    assert {"auc", "log_loss", "ndcg_at_10", "hit_rate_at_10"} <= set(final)
    assert summary["history"][-1]["auc"] > summary["history"][0]["auc"]
    assert final["auc"] > 0.8, final  # the score column alone separates the labels
    report = write_report(Path(summary["run_dir"])).read_text()
    assert "| AUC | log-loss | NDCG@10 | HR@10 |" in report
    assert f"{final['auc']:.4f}" in report


def test_a_fusion_client_sends_only_its_trainable_weights(tabular_scenario, task_identity) -> None:
    """Payload audit for a fusion model: updates of the encoder, tabular tower and head, and
    scalar metrics; no feature value or row leaves the client."""
    scenario = tabular_scenario()
    fed = build_federated_data(scenario)
    model = load_model(
        scenario.model.name, fed.label_names, scenario.seed, None, scenario.data.tabular
    )
    glob = trainable_weights(model)
    assert any(k.startswith("tabular.") for k in glob) and any(
        k.startswith("classifier.") for k in glob
    )
    content = RecordDict({"arrays": to_record(glob), "config": ConfigRecord({"server-round": 1})})
    context = node_context(2)
    reply = build_client_app(scenario)(
        Message(content, dst_node_id=1, message_type="train"), context
    )
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    arrays = from_record(reply.content.array_records["arrays"])
    assert {k: a.shape for k, a in arrays.items()} == {k: a.shape for k, a in glob.items()}
    metrics = dict(reply.content.metric_records["metrics"])
    assert all(isinstance(v, int | float) for v in metrics.values())
    # Evaluation replies hold the same keys whatever a node's labels (Flower refuses to
    # aggregate MetricRecords whose keys differ): no AUC, which one label cannot give.
    content = RecordDict({"arrays": to_record(glob), "config": ConfigRecord({})})
    evaluate = Message(content, dst_node_id=1, message_type="evaluate")
    reply = build_client_app(scenario)(evaluate, node_context(2))
    keys = set(reply.content.metric_records["metrics"])
    assert {k for k in keys if k.startswith("eval_")} == {
        "eval_loss",
        "eval_accuracy",
        "eval_macro_f1",
    }


def test_lora_on_a_fusion_model_trains_adapters_tower_and_head(tabular_scenario) -> None:
    scenario = tabular_scenario(model={"peft": {"method": "lora", "rank": 4}})
    fed = build_federated_data(scenario)
    model = load_model(
        scenario.model.name,
        fed.label_names,
        scenario.seed,
        scenario.model.peft,
        scenario.data.tabular,
    )
    names = list(trainable_weights(model))
    assert names and all("lora_" in n or ".tabular." in n or ".classifier." in n for n in names), (
        names
    )
    assert any(".tabular." in n for n in names) and any("lora_" in n for n in names)


def test_the_saved_fusion_model_predicts_and_serves_text_plus_features(
    tabular_scenario, tmp_path: Path, capsys
) -> None:
    scenario = tabular_scenario(federation={"rounds": 1, "min_available_nodes": 2})
    path = write_scenario(scenario, tmp_path / "tab.yaml")
    assert main(["centralized", str(path), "--quiet"]) == 0
    model_dir = Path(scenario.output.dir) / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["great thanks", "late again"], return_tensors="pt", padding=True)
    rows = [{"age": 30, "score": 1.5, "city": "rome"}, {"score": -1.0, "city": "tokyo"}]
    features = tabular.encode_tabular(
        {name: [row.get(name) for row in rows] for name in ("age", "score", "city")},
        tabular.TabularSpec.from_dict(model.config.tabular),
    )
    with torch.no_grad():
        probs = model.eval()(**batch, **features).logits.softmax(-1)
    capsys.readouterr()

    predictor = Predictor(model_dir)
    direct = predictor.predict(["great thanks", "late again"], rows)
    assert [p["score"] for p in direct] == pytest.approx(probs.max(-1).values.tolist(), rel=1e-5)
    with pytest.raises(DataError, match=r"reads tabular features \['age', 'score', 'city'\]"):
        predictor.predict(["great thanks"])

    with TestClient(create_app(predictor)) as client:
        ok = client.post(
            "/predict", json={"texts": ["great thanks", "late again"], "features": rows}
        )
        assert ok.status_code == 200 and ok.json()["predictions"] == [
            {"label": p["label"], "score": pytest.approx(p["score"])} for p in direct
        ]
        missing = client.post("/predict", json={"texts": ["great thanks"]})
        assert missing.status_code == 422 and "tabular features" in missing.json()["detail"]
        bad = client.post("/predict", json={"texts": ["x"], "features": [{"age": "old"}]})
        assert bad.status_code == 422 and "'age': non-numeric value 'old'" in bad.json()["detail"]

    lines = tmp_path / "rows.jsonl"
    lines.write_text(
        "".join(
            json.dumps({"text": t, **r}) + "\n"
            for t, r in zip(["great thanks", "late again"], rows, strict=True)
        )
    )
    assert main(["predict", str(model_dir), "--file", str(lines)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in printed] == [p["label"] for p in direct]
    assert main(["predict", str(model_dir), "great thanks"]) == 2  # a text without features
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads tabular features ['age', 'score', 'city']" in err[0], err
    lines.write_text('{"txt": "no text key"}\n')
    assert main(["predict", str(model_dir), "--file", str(lines)]) == 2
    assert "line 1: not a JSON object with a text" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "tabular", "message"),
    [
        (
            {},
            {"numeric": {"height": {"mean": 1.0, "std": 1.0}}},
            "data.tabular column 'height' not among",
        ),
        ({"age": {3: "old"}}, None, "tabular column 'age': non-numeric value 'old' (row"),
        (
            {"score": dict.fromkeys(range(160), "")},
            None,
            "data.tabular column 'score' has no value in any row",
        ),
    ],
)
def test_bad_tabular_input_is_one_line_and_writes_nothing(
    tabular_scenario, tmp_path: Path, capsys, bad, tabular, message
) -> None:
    scenario = tabular_scenario(write_rows(tmp_path / "bad.csv", **bad))
    if tabular is not None:
        scenario = tabular_scenario(write_rows(tmp_path / "bad.csv"), data={"tabular": tabular})
    path = write_scenario(scenario, tmp_path / "bad.yaml")
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not Path(scenario.output.dir).exists()


@pytest.mark.slow("a Ray simulation process of 300 clients")
def test_a_cross_device_federation_samples_a_few_of_300_clients(
    tabular_scenario, tmp_path: Path
) -> None:
    """One client per user (300 users, 2 training rows each), 6 sampled per round."""
    rows = write_rows(tmp_path / "users.csv", n=900, users=300, test_from=600)
    scenario = tabular_scenario(
        rows,
        data={"val_size": 0.0},
        partition={"kind": "natural", "column": "user", "num_clients": 300},
        federation={"rounds": 2, "fraction_train": 0.02, "fraction_evaluate": 0.0},
    )
    result = fedtune("run", str(write_scenario(scenario, tmp_path / "devices.yaml")), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(scenario.output.dir)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]
    for line in lines[1:]:
        trained = [c["partition-id"] for c in line["clients"]["train"]]
        assert len(trained) == len(set(trained)) == 6, trained
    assert json.loads((run_dir / "summary.json").read_text())["rounds_aggregated"] == 2


def test_node_files_carry_the_tabular_columns(tabular_scenario, tmp_path: Path) -> None:
    """`fedtune shards` writes what a deployed node needs: text, label and features, which
    its loader reads back into the same encoded features."""
    scenario = tabular_scenario()
    path = write_scenario(scenario, tmp_path / "tab.yaml")
    assert main(["shards", str(path), str(tmp_path / "nodes")]) == 0
    node_file = tmp_path / "nodes" / "node-0" / "data.jsonl"
    rows = [json.loads(line) for line in node_file.read_text().splitlines()]
    assert set(rows[0]) == {"text", "label", "age", "score", "city"}
    fed = build_federated_data(scenario)
    node = load_node_file(str(node_file), scenario.data, fed.label_names)
    tokenizer = load_tokenizer(scenario.model.name)
    ours = tokenize(node, tokenizer, 32, scenario.data.tabular)[:]
    theirs = tokenize(fed.partition(0), tokenizer, 32, scenario.data.tabular)[:]
    assert torch.equal(ours["numeric"], theirs["numeric"])
    assert torch.equal(ours["categorical"], theirs["categorical"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"split_column": "fold"}, "data.split_column 'fold' not among the columns"),
        ({"group_column": "person"}, "data.group_column 'person' not among the columns"),
        ({"split_column": "city"}, "data.split_column 'city': no test row (test rows say 'test')"),
    ],
)
def test_bad_split_and_group_columns_are_one_line(
    tabular_scenario, tmp_path: Path, capsys, data: dict, message: str
) -> None:
    scenario = tabular_scenario(data=data)
    path = write_scenario(scenario, tmp_path / "bad.yaml")
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not Path(scenario.output.dir).exists()


def test_gradient_matching_runs_on_a_fusion_model_given_its_features(tabular_scenario) -> None:
    """The audit's gradient matching feeds a fusion model its batch's tabular features (the
    attacker is granted them, as the labels) and relaxed text."""
    scenario = tabular_scenario()
    labels = federated_data(scenario).label_names
    found = inversion_audit(scenario, labels, batch_size=2, batches=1, steps=5)
    assert found["gradient_matching"]["steps"] == 5
    assert 0.0 <= found["gradient_matching"]["f1"] <= 1.0
