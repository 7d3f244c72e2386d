"""The text + tabular fusion classifier on a tiny random BERT (no downloads) and its tabular
encoding."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast, DataCollatorWithPadding

from fedtune.data.corpus import DataError
from fedtune.data.tabular import (
    CategoricalColumn,
    NumericColumn,
    TabularSpec,
    encode_tabular,
    with_tabular,
)
from fedtune.modeling.fusion import FusionConfig, FusionModel

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


def test_onnx_export_refuses_a_fusion_model_in_one_line(tmp_path: Path) -> None:
    from fedtune.serve.quantize import ExportError, save_quantized

    with pytest.raises(ExportError, match="^onnx-int8 exports text-only models; use --quantize"):
        save_quantized(tiny_fusion(), tmp_path, "onnx-int8")
    assert not list(tmp_path.iterdir())  # nothing written
