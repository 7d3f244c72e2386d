"""Codecs for fine-tuning: top-k's small tensors sent dense and its density warm-up, the
one-bit scaled sign, and error feedback that loses nothing."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.config import CodecConfig, ScenarioError, scenario_from_dict
from fedtune.federation.codecs import ROUNDS, decode, encode, encode_with_feedback

RNG = np.random.default_rng(1)
UPDATE = {
    "encoder.w": RNG.normal(size=(200, 50)).astype(np.float32),  # 10,000 entries
    "encoder.b": RNG.normal(size=(50,)).astype(np.float32),
    "classifier.w": RNG.normal(size=(3, 50)).astype(np.float32),  # 150 entries
}


def test_small_tensors_travel_dense_and_exact_large_ones_sparse() -> None:
    cfg = CodecConfig(kind="topk", topk_fraction=0.01, dense_below=151)
    packed = encode(cfg, UPDATE)
    back = decode(cfg, packed, UPDATE)
    for name in ("encoder.b", "classifier.w"):
        assert packed[f"{name}::idx"].size == 0  # no indices: values only
        assert packed[f"{name}::val"].size == UPDATE[name].size
        np.testing.assert_array_equal(back[name], UPDATE[name])
    assert packed["encoder.w::idx"].size == 100  # 1% of 10,000
    assert np.count_nonzero(back["encoder.w"]) == 100
    # 150 entries is not below 150: the head goes sparse again (2 of its entries)
    packed = encode(cfg.model_copy(update={"dense_below": 150}), UPDATE)
    assert packed["classifier.w::idx"].size == 2 and packed["encoder.b::idx"].size == 0


def test_a_dense_part_of_the_wrong_size_is_refused() -> None:
    cfg = CodecConfig(kind="topk", dense_below=100)
    packed = encode(cfg, UPDATE)
    packed["encoder.b::val"] = packed["encoder.b::val"][:-1]
    with pytest.raises(ValueError, match="encoder.b"):
        decode(cfg, packed, UPDATE)


@pytest.mark.parametrize(
    ("fraction", "warmup", "shares"),
    [
        (0.01, 2, [0.01 ** (1 / 3), 0.01 ** (2 / 3), 0.01, 0.01, 0.01]),
        (0.05, 1, [0.05**0.5, 0.05, 0.05]),
        (0.01, 0, [0.01, 0.01]),
    ],
)
def test_density_warmup_follows_its_schedule(fraction, warmup, shares) -> None:
    cfg = CodecConfig(kind="topk", topk_fraction=fraction, topk_warmup_rounds=warmup)
    residual = None
    for n, share in enumerate(shares):
        packed, residual = encode_with_feedback(cfg, UPDATE, residual)
        assert packed["encoder.w::idx"].size == int(np.ceil(share * 10_000)), n
        assert (ROUNDS in residual) == (warmup > 0)
        if warmup:
            assert int(residual[ROUNDS][0]) == n + 1


@pytest.mark.parametrize(
    "codec",
    [
        {"kind": "topk", "topk_fraction": 0.01, "dense_below": 100, "topk_warmup_rounds": 2},
        {"kind": "topk", "topk_fraction": 0.05},
        {"kind": "int8"},
        {"kind": "onebit", "block_size": 64},
    ],
)
def test_error_feedback_conserves_the_sum(codec) -> None:
    """Every round, what is sent plus the new residual is the update plus the old residual."""
    cfg = CodecConfig(**codec)
    residual = None
    for n in range(4):
        update = {k: RNG.normal(size=v.shape).astype(np.float32) for k, v in UPDATE.items()}
        packed, new = encode_with_feedback(cfg, update, residual)
        sent = decode(cfg, packed, UPDATE)  # as the server decodes it
        for name, value in update.items():
            old = 0.0 if residual is None else residual[name]
            np.testing.assert_allclose(sent[name] + new[name], value + old, atol=1e-6)
            # nothing sent twice, nothing kept that was sent
            if codec["kind"] == "topk":
                assert np.all((sent[name] == 0) | (new[name] == 0))
        residual = new
        assert set(residual) - {ROUNDS} == set(UPDATE), n


def test_warmup_without_error_feedback_is_a_scenario_error() -> None:
    raw = {"codec": {"kind": "topk", "topk_warmup_rounds": 2, "error_feedback": False}}
    with pytest.raises(ScenarioError, match="topk_warmup_rounds"):
        scenario_from_dict(raw)


def test_onebit_sends_each_sign_and_each_blocks_mean_magnitude() -> None:
    cfg = CodecConfig(kind="onebit", block_size=64)
    packed = encode(cfg, UPDATE)
    back = decode(cfg, packed, UPDATE)
    for name, value in UPDATE.items():
        flat = value.ravel()
        assert packed[f"{name}::bits"].dtype == np.uint8
        assert packed[f"{name}::bits"].size == -(-flat.size // 8)  # 1 bit per entry
        blocks = [flat[i : i + 64] for i in range(0, flat.size, 64)]  # the last one short
        np.testing.assert_allclose(
            packed[f"{name}::scale"], [np.abs(b).mean() for b in blocks], rtol=1e-6
        )
        expected = np.concatenate([np.where(b >= 0, 1.0, -1.0) * np.abs(b).mean() for b in blocks])
        np.testing.assert_allclose(back[name].ravel(), expected, rtol=1e-6)
    full = sum(v.nbytes for v in UPDATE.values())
    assert sum(a.nbytes for a in packed.values()) < full / 32 + full / 64 + 16
    packed["encoder.w::scale"] = packed["encoder.w::scale"][:-1]
    with pytest.raises(ValueError, match="encoder.w"):
        decode(cfg, packed, UPDATE)
