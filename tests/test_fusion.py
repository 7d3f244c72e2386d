"""The text + tabular fusion classifier on a tiny random BERT (no downloads), tabular encoding,
federated statistics and LoRA wrapping."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import peft
import pytest
import torch
from flwr.app import MetricRecord
from transformers import BertConfig, BertModel, BertTokenizerFast, DataCollatorWithPadding

from fedtune.data import DataError
from fedtune.fusion import (
    CategoricalColumn,
    FusionConfig,
    FusionModel,
    NumericColumn,
    TabularSpec,
    encode_tabular,
    flatten_statistics,
    fusion_lora_config,
    fusion_trainable_modules,
    local_statistics,
    merge_statistics,
    unflatten_statistics,
    with_tabular,
)

SPEC = TabularSpec(
    numeric=(
        NumericColumn(name="age", mean=30.0, std=10.0),
        NumericColumn(name="year", mean=1990.0, std=5.0),
    ),
    categorical=(
        CategoricalColumn(name="gender", vocabulary=("M", "F")),
        CategoricalColumn(name="genre", vocabulary=("Drama", "Comedy", "Action")),
    ),
)
ROWS = {
    "age": [20, 35.5, None, 50],
    "year": [1995, float("nan"), 1980, 1990],
    "gender": ["M", "F", "X", None],
    "genre": ["Comedy", "Drama", "Action", "Western"],
}
LABELS = ("skip", "like")


def tiny_encoder() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config)


def tiny_fusion(**kwargs) -> FusionModel:
    return FusionModel.from_encoder(tiny_encoder(), SPEC, LABELS, seed=1, **kwargs)


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, **encode_tabular(ROWS, SPEC)}


@pytest.mark.parametrize("fusion", ["concat", "gated"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_forward_backward_reaches_encoder_tower_and_head(fusion: str, pooling: str) -> None:
    model = tiny_fusion(fusion=fusion, pooling=pooling)
    out = model(**batch(), labels=torch.tensor([0, 1, 1, 0]))
    assert out.logits.shape == (4, 2)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    params = dict(model.named_parameters())
    for name in (
        "encoder.embeddings.word_embeddings.weight",
        "encoder.encoder.layer.0.attention.self.query.weight",
        "tabular.embeddings.0.weight",
        "tabular.embeddings.1.weight",
        "tabular.mlp.0.weight",
        "classifier.out.weight",
    ):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in model.parameters())  # the pooler only with cls


def test_from_encoder_copies_weights_and_seeds_the_rest() -> None:
    encoder = tiny_encoder()
    model = FusionModel.from_encoder(encoder, SPEC, LABELS, seed=1, pooling="cls")
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name
    again = FusionModel.from_encoder(tiny_encoder(), SPEC, LABELS, seed=1, pooling="cls")
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    assert model.config.id2label == {0: "skip", 1: "like"}
    assert model.config.label2id == {"skip": 0, "like": 1}


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_save_and_load_give_equal_logits(tmp_path: Path, fusion: str) -> None:
    model = tiny_fusion(fusion=fusion).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "fedtune-fusion"
    assert TabularSpec.from_dict(saved["tabular"]) == SPEC
    loaded = FusionModel.from_pretrained(tmp_path).eval()
    assert loaded.config.fusion == fusion
    assert loaded.config.tabular_spec() == SPEC
    with torch.no_grad():
        assert torch.equal(model(**batch()).logits, loaded(**batch()).logits)


def test_encode_tabular_normalises_and_maps_unknowns_to_zero() -> None:
    encoded = encode_tabular(ROWS, SPEC)
    numeric, categorical = encoded["numeric"], encoded["categorical"]
    assert numeric.dtype == torch.float32 and categorical.dtype == torch.int64
    expected = [
        [-1.0, 1.0, 0.0, 0.0],
        [0.55, 0.0, 0.0, 1.0],  # NaN year -> 0 and its indicator
        [0.0, -2.0, 1.0, 0.0],  # None age -> 0 and its indicator
        [2.0, 0.0, 0.0, 0.0],
    ]
    assert torch.allclose(numeric, torch.tensor(expected))
    # M=1, F=2; unseen X and missing None -> 0. Drama=1, Comedy=2, Action=3; Western -> 0.
    assert categorical.tolist() == [[1, 2], [2, 1], [0, 3], [0, 0]]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            {**ROWS, "age": [20, "twenty", None, 1]},
            "tabular column 'age': non-numeric value 'twenty'",
        ),
        ({k: v for k, v in ROWS.items() if k != "genre"}, "tabular column 'genre' not among"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_the_column(rows: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        encode_tabular(rows, SPEC)
    assert "\n" not in str(info.value)


def test_missing_features_at_forward_are_an_error() -> None:
    inputs = {k: v for k, v in batch().items() if k != "categorical"}
    with pytest.raises(ValueError, match="categorical features needed"):
        tiny_fusion()(**inputs)


def test_spec_and_config_validate() -> None:
    assert TabularSpec.model_validate_json(SPEC.model_dump_json()) == SPEC
    with pytest.raises(ValueError, match="fusion 'sum'"):
        FusionConfig(fusion="sum")
    with pytest.raises(ValueError, match="repeated"):
        CategoricalColumn(name="g", vocabulary=("a", "a"))
    with pytest.raises(ValueError, match="greater than 0"):
        NumericColumn(name="x", mean=0.0, std=0.0)


def client_rows(seed: int, n: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    ages = rng.normal(35, 12, n).round(3).tolist()
    ages[0] = None
    return {
        "age": ages,
        "genre": rng.choice(
            ["Drama", "Comedy", "Action", "Noir"], n, p=[0.4, 0.3, 0.2, 0.1]
        ).tolist(),
    }


def test_merged_statistics_match_numpy_on_the_pooled_rows() -> None:
    clients = [client_rows(seed, n) for seed, n in ((0, 40), (1, 7), (2, 120))]
    sent = []
    for rows in clients:
        stats = local_statistics(rows, numeric=["age"], categorical=["genre"])
        record = MetricRecord(flatten_statistics(stats))  # what travels to the server
        sent.append(unflatten_statistics(dict(record)))
    spec = merge_statistics(sent)
    pooled = np.array([a for rows in clients for a in rows["age"] if a is not None])
    (age,) = spec.numeric
    assert age.name == "age"
    assert age.mean == pytest.approx(pooled.mean(), rel=1e-12)
    assert age.std == pytest.approx(pooled.std(), rel=1e-9)
    genres = [g for rows in clients for g in rows["genre"]]
    by_count = sorted(set(genres), key=lambda g: (-genres.count(g), g))
    assert spec.categorical[0].vocabulary == tuple(by_count)
    capped = merge_statistics(sent, max_categories=2).categorical[0].vocabulary
    assert capped == tuple(by_count[:2])
    assert (
        "Noir"
        not in merge_statistics(sent, min_count=genres.count("Noir") + 1).categorical[0].vocabulary
    )


def test_vocabulary_ties_sort_by_name_and_constant_columns_get_std_one() -> None:
    a = local_statistics({"x": [2.0, 2.0], "c": ["b", "a"]}, ["x"], ["c"])
    b = local_statistics({"x": [2.0], "c": ["c"]}, ["x"], ["c"])
    spec = merge_statistics([a, b])
    assert spec.categorical[0].vocabulary == ("a", "b", "c")
    assert (spec.numeric[0].mean, spec.numeric[0].std) == (2.0, 1.0)
    with pytest.raises(DataError, match="'x': no client holds a numeric value"):
        merge_statistics([local_statistics({"x": [None]}, ["x"], [])])


def test_client_statistics_hold_no_row_level_values() -> None:
    small, large = client_rows(3, 30), client_rows(4, 3000)
    flat_small = flatten_statistics(local_statistics(small, ["age"], ["genre"]))
    flat_large = flatten_statistics(local_statistics(large, ["age"], ["genre"]))
    assert len(flat_small) == len(flat_large) == 3 + 1 + 4  # count/sum/sum_sq, 4 genres
    stats = local_statistics(large, ["age"], ["genre"])
    assert set(stats["numeric"]["age"]) == {"count", "sum", "sum_sq"}
    assert set(stats["categorical"]["genre"]) == {"Drama", "Comedy", "Action", "Noir"}
    raw = {a for a in large["age"] if a is not None}
    assert not raw & set(flat_large.values())
    assert all(isinstance(v, int | float) for v in flat_large.values())


def test_lora_trains_exactly_adapters_tower_and_head() -> None:
    model = tiny_fusion()
    tower_and_head = {
        name
        for name, _ in model.named_parameters()
        if name.split(".")[0] in ("tabular", "classifier")
    }
    wrapped = peft.get_peft_model(model, fusion_lora_config(rank=4))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    assert len(adapters) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    assert all(".attention.self.query." in n or ".attention.self.value." in n for n in adapters)
    copies = {
        n.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        for n in trainable - adapters
    }
    assert copies == tower_and_head
    assert fusion_trainable_modules() == ["tabular", "classifier"]
    out = wrapped(**batch(), labels=torch.tensor([0, 1, 1, 0]))
    out.loss.backward()
    assert all(p.grad is not None for n, p in wrapped.named_parameters() if n in trainable)
    assert isinstance(wrapped.merge_and_unload(), FusionModel)


def test_tabular_columns_batch_with_the_tokens() -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film"]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    ds = datasets.Dataset.from_dict({"text": ["good film", "film", "good", "film film"], **ROWS})
    ds = with_tabular(ds, SPEC)
    ds = ds.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=list(ROWS) + ["text"])
    collated = DataCollatorWithPadding(tokenizer)([ds[i] for i in range(4)])
    assert collated["numeric"].dtype == torch.float32
    assert collated["categorical"].tolist() == encode_tabular(ROWS, SPEC)["categorical"].tolist()
    out = tiny_fusion()(**collated)
    assert out.logits.shape == (4, 2)
