"""Update codecs, PEFT adapters and length-grouped batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fedtune, node_context, write_scenario
from flwr.app import ConfigRecord, Message, RecordDict
from transformers import AutoModelForSequenceClassification

from fedtune.config import CodecConfig, ScenarioError
from fedtune.data.corpus import build_federated_data, client_splits, make_loader, tokenize
from fedtune.federation.client.app import build_client_app
from fedtune.federation.client.node import RESIDUAL, _loaded_model
from fedtune.federation.codecs import decode, encode, encode_with_feedback
from fedtune.federation.strategies.factory import build_strategy
from fedtune.modeling.model import export_model, load_model, load_tokenizer, trainable_weights
from fedtune.records import from_record, to_record

RNG = np.random.default_rng(0)
UPDATE = {
    "layer.w": RNG.normal(size=(64, 48)).astype(np.float32),
    "layer.b": (RNG.normal(size=(48,)) * 1e-3).astype(np.float32),
    "head": np.concatenate([RNG.normal(size=500), RNG.normal(size=500) * 100]).astype(np.float32),
}


KINDS = ("none", "int8")


def _round_trip(**codec) -> tuple[dict, dict]:
    cfg = CodecConfig(**codec)
    packed = encode(cfg, UPDATE)
    return packed, decode(cfg, packed, UPDATE)


def test_none_is_exact_and_half_precisions_are_within_their_rounding() -> None:
    _, none = _round_trip(kind="none")
    for name, value in UPDATE.items():
        np.testing.assert_array_equal(none[name], value)
    for kind, bits in (("fp16", 11), ("bf16", 8)):
        packed, back = _round_trip(kind=kind)
        assert all(a.itemsize == 2 for a in packed.values())
        for name, value in UPDATE.items():
            # relative rounding error of a float with `bits` significand bits
            assert np.all(np.abs(back[name] - value) <= np.abs(value) * 2.0**-bits + 1e-7), kind


def test_int8_error_is_half_a_step_and_blocks_help_mixed_scales() -> None:
    packed, per_tensor = _round_trip(kind="int8")
    assert packed["head::q"].dtype == np.int8 and packed["head::scale"].shape == (1,)
    for name, value in UPDATE.items():
        step = np.abs(value).max() / 127
        assert np.abs(per_tensor[name] - value).max() <= step / 2 + 1e-6
    packed, blockwise = _round_trip(kind="int8", block_size=100)
    assert packed["head::scale"].shape == (10,)
    small_half = slice(0, 500)  # values 100x smaller than the tensor's maximum
    tensor_err = np.abs(per_tensor["head"][small_half] - UPDATE["head"][small_half]).mean()
    block_err = np.abs(blockwise["head"][small_half] - UPDATE["head"][small_half]).mean()
    assert block_err < tensor_err / 20
    sizes = {
        k: sum(a.nbytes for a in encode(CodecConfig(kind=k), UPDATE).values())
        for k in ("none", "int8")
    }
    assert sizes["int8"] < sizes["none"] / 3.9


def test_topk_keeps_exactly_the_largest_entries() -> None:
    packed, back = _round_trip(kind="topk", topk_fraction=0.05, dense_below=0)
    for name, value in UPDATE.items():
        k = int(np.ceil(0.05 * value.size))
        assert packed[f"{name}::idx"].shape == (k,)
        kept = np.flatnonzero(back[name])
        largest = np.argsort(np.abs(value.ravel()))[-k:]
        assert set(kept) == set(largest)
        np.testing.assert_array_equal(back[name].ravel()[kept], value.ravel()[kept])


def test_error_feedback_accumulates_what_was_not_sent() -> None:
    cfg = CodecConfig(kind="topk", topk_fraction=0.1, dense_below=0)
    residual, sent_total = None, {k: np.zeros_like(v) for k, v in UPDATE.items()}
    for _ in range(8):
        packed, residual = encode_with_feedback(cfg, UPDATE, residual)
        for name, value in decode(cfg, packed, UPDATE).items():
            sent_total[name] += value
    for name, value in UPDATE.items():
        # everything produced so far was either sent or is still waiting in the residual
        np.testing.assert_allclose(
            sent_total[name] + residual[name], 8 * value, rtol=1e-5, atol=1e-4
        )
    without, _ = encode_with_feedback(
        cfg.model_copy(update={"error_feedback": False}), UPDATE, None
    )
    assert _ is None and set(without) == set(encode(cfg, UPDATE))


def test_decode_names_the_tensor_that_does_not_fit() -> None:
    cfg = CodecConfig(kind="int8")
    packed = encode(cfg, UPDATE)
    del packed["head::scale"]
    with pytest.raises(ValueError, match="head::scale"):
        decode(cfg, packed, UPDATE)


@pytest.mark.parametrize("method", ["lora", "ffa_lora", "loha", "lokr", "ia3"])
def test_peft_trains_only_adapters_and_head_and_exports_merged(make_scenario, method) -> None:
    scenario = make_scenario(model={"peft": {"method": method}})
    fed = build_federated_data(scenario)
    model = load_model(scenario.model.name, fed.label_names, scenario.seed, scenario.model.peft)
    full = trainable_weights(load_model(scenario.model.name, fed.label_names, scenario.seed))
    names = set(trainable_weights(model))
    markers = {
        "lora": "lora_",
        "ffa_lora": "lora_B",
        "loha": "hada_",
        "lokr": "lokr_",
        "ia3": "ia3_",
    }[method]
    heads = {n for n in names if ".classifier.modules_to_save." in n}
    assert len(heads) == 2 and all(markers in n for n in names - heads)
    assert sum(trainable_weights(model)[n].size for n in names) < 0.2 * sum(
        v.size for v in full.values()
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    tokenizer = load_tokenizer(scenario.model.name)
    batch = tokenizer(["late again", "great thanks"], return_tensors="pt", padding=True)
    expected = model.eval()(**batch).logits
    merged = export_model(model)
    assert type(merged).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(merged.eval()(**batch).logits, expected)


def test_lora_int8_reply_holds_only_packed_adapters_and_head(make_scenario, task_identity) -> None:
    scenario = make_scenario(
        model={"peft": {"method": "lora", "rank": 4}},
        codec={"kind": "int8", "block_size": 64},
        federation={"min_train_nodes": 1},  # the one reply below is enough
    )
    fed = build_federated_data(scenario)
    model = load_model(scenario.model.name, fed.label_names, scenario.seed, scenario.model.peft)
    glob = trainable_weights(model)
    app = build_client_app(scenario)
    context = node_context(2)
    content = RecordDict({"arrays": to_record(glob), "config": ConfigRecord({"server-round": 1})})
    msg = Message(content, dst_node_id=1, message_type="train")
    reply = app(msg, context)
    arrays = from_record(reply.content.array_records["arrays"])
    assert {k.rsplit("::", 1)[0] for k in arrays} == set(glob)
    assert all(a.dtype == np.int8 for k, a in arrays.items() if k.endswith("::q"))
    assert all(("lora_" in k) or (".classifier.modules_to_save." in k) for k in arrays)
    # the residual (what int8 rounding dropped) stays on the node
    residual = from_record(context.state.array_records[RESIDUAL])
    assert set(residual) == set(glob)
    # the server unpacks it: global + what was sent == the client's weights - the residual
    strategy = build_strategy(scenario)
    strategy._global = glob  # what configure_train records
    aggregated, _ = strategy.aggregate_train(1, [reply])
    rebuilt = from_record(aggregated)
    local = trainable_weights(
        _loaded_model(scenario.model, fed.label_names, scenario.seed, None).model
    )
    assert any(np.abs(residual[n]).max() > 0 for n in glob), "int8 rounding dropped something"
    for name in glob:
        np.testing.assert_allclose(rebuilt[name] + residual[name], local[name], atol=1e-6)


def test_length_grouped_batches_pad_less_and_cover_every_example(make_scenario) -> None:
    scenario = make_scenario()
    fed = build_federated_data(scenario)
    tokenizer = load_tokenizer(scenario.model.name)
    train, _ = client_splits(fed, 0, 0.0, scenario.seed)
    data = tokenize(train, tokenizer, 32)

    def padded_tokens(grouped: bool) -> tuple[int, list[int]]:
        batches = list(make_loader(data, tokenizer, 8, 3, group_by_length=grouped))
        seen = sorted(int(x) for b in batches for x in b["input_ids"][:, 1])
        return sum(b["input_ids"].numel() for b in batches), seen

    grouped, grouped_seen = padded_tokens(True)
    shuffled, shuffled_seen = padded_tokens(False)
    assert grouped_seen == shuffled_seen and len(grouped_seen) == len(data)
    assert grouped < shuffled


@pytest.mark.slow("a Ray simulation process")
def test_lora_int8_run_counts_bytes_per_client_and_saves_merged_model(
    make_scenario, tmp_path: Path
) -> None:
    scenario = make_scenario(
        model={"peft": {"method": "lora", "rank": 4}},
        codec={"kind": "int8"},
        data={"val_size": 0.0},
    )
    result = fedtune("run", str(write_scenario(scenario, tmp_path / "lora.yaml")), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(scenario.output.dir)
    fed = build_federated_data(scenario)
    adapters = trainable_weights(
        load_model(scenario.model.name, fed.label_names, scenario.seed, scenario.model.peft)
    )
    down = to_record(adapters).count_bytes()  # array bytes as serialized, plus the keys
    up = to_record(encode(scenario.codec, adapters)).count_bytes()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines[1:]:
        clients = line["clients"]["train"]
        assert [(c["bytes_down"], c["bytes_up"]) for c in clients] == [(down, up)] * 2
        assert line["bytes_up"] == 2 * up and line["bytes_down"] == 2 * down
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bytes_up_total"] == 2 * 2 * up
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_peft_settings_reject_unknown_methods(make_scenario) -> None:
    with pytest.raises(ScenarioError, match="model.peft.method"):
        make_scenario(model={"peft": {"method": "prefix"}})
    with pytest.raises(ScenarioError, match="model.peft.rank"):
        make_scenario(model={"peft": {"method": "lora", "rank": 0}})
