"""The plug-in registries: each one's names are exactly what the config accepts, and a new
entry (the class or builder a plug-in file would hold, plus its registry entry) is accepted
by the config and works end to end."""

from __future__ import annotations

import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
from conftest import tiny_bert
from flwr_datasets.partitioner import LinearPartitioner
from pydantic import Field

from fedtune.config import (
    AttackConfig,
    CodecConfig,
    PartitionConfig,
    PeftSettings,
    Scenario,
    ScenarioError,
    apply_overrides,
    scenario_from_dict,
)
from fedtune.config.base import takes
from fedtune.data import corpus as fedtune_data
from fedtune.data.corpus import build_federated_data, make_partitioner
from fedtune.data.partitioners import PARTITIONERS
from fedtune.data.partitioners.base import LABEL
from fedtune.federation.attacks import ATTACKS, Attack, malicious_clients, poison
from fedtune.federation.codecs import CODECS, decode, encode, encode_with_feedback
from fedtune.federation.codecs.base import Codec
from fedtune.modeling.adapters import ADAPTERS
from fedtune.modeling.adapters.base import AdapterParams, common
from fedtune.modeling.label_skew import LABEL_SKEW_METHODS
from fedtune.modeling.model import load_model, trainable_weights

REGISTRIES = {
    "codec.kind": (CODECS, ()),
    "attack.kind": (ATTACKS, ()),
    "partition.kind": (PARTITIONERS, ()),
    "model.peft.method": (ADAPTERS, ("none",)),
    "training.label_skew.method": (LABEL_SKEW_METHODS, ("none",)),
}
"""Scenario key -> its registry, and the names it accepts besides the registered ones."""


def _scenario(key: str, name: str) -> Scenario:
    column = {"partition.column": "airline"} if name == "natural" else {}  # its one parameter
    return scenario_from_dict(apply_overrides({}, {key: name, **column}))


def _accepted(key: str) -> list[str]:
    """The names the config lists for `key`, read from its error on an unknown one."""
    with pytest.raises(ScenarioError, match=rf"{re.escape(key)}: Input should be") as err:
        _scenario(key, "no-such-name")
    return re.findall(r"'([^']+)'", str(err.value).split("Input should be ")[1].split(" (got")[0])


@pytest.mark.parametrize("key", REGISTRIES)
def test_config_accepts_exactly_the_registered_names(key) -> None:
    registry, extra = REGISTRIES[key]
    assert _accepted(key) == [*extra, *registry]
    for name in _accepted(key):
        _scenario(key, name)


class Sign(Codec):
    """A toy plug-in codec: each entry's sign, times the tensor's mean magnitude (signSGD)."""

    parts = {"::sign": np.int8, "::scale": np.float32}

    def encode(self, tensor: np.ndarray, cfg: CodecConfig) -> dict[str, np.ndarray]:
        scale = np.abs(tensor).mean(dtype=np.float32).reshape(1)
        return {"::sign": np.sign(tensor).astype(np.int8).ravel(), "::scale": scale}

    def decode(self, parts: dict, ref: np.ndarray, cfg: CodecConfig) -> np.ndarray:
        return parts["::sign"].astype(np.float32) * parts["::scale"][0]


def test_a_registered_codec_is_configurable_and_round_trips(monkeypatch) -> None:
    update = {"w": np.array([[0.5, -1.5], [0.0, 2.0]], np.float32), "b": np.ones(3, np.float32)}
    with monkeypatch.context() as patch:
        patch.setitem(CODECS, "sign", Sign())
        cfg = _scenario("codec.kind", "sign").codec
        packed = encode(cfg, update)
        assert set(packed) == {"w::sign", "w::scale", "b::sign", "b::scale"}
        back = decode(cfg, packed, update)
        np.testing.assert_array_equal(back["w"], [[1.0, -1.0], [0.0, 1.0]])
        np.testing.assert_array_equal(back["b"], np.ones(3))
        with pytest.raises(ValueError, match="'w::scale' is float64, sign sends float32"):
            decode(cfg, {**packed, "w::scale": packed["w::scale"].astype(np.float64)}, update)
        _, residual = encode_with_feedback(cfg, update, None)  # lossy: feedback keeps the rest
        np.testing.assert_array_equal(residual["w"], update["w"] - back["w"])
    with pytest.raises(ValueError, match="Input should be"):
        CodecConfig(kind="sign")  # gone with its registry entry


class Zero(Attack):
    """A toy plug-in attack on the update: send nothing but zeros."""

    def poison_update(self, update: dict, attack: AttackConfig, rng: np.random.Generator) -> dict:
        return {name: np.zeros_like(u) for name, u in update.items()}


class DropAll(Attack):
    """A toy plug-in attack on the data: train on none of it."""

    def poison_data(self, train: datasets.Dataset, num_labels: int) -> datasets.Dataset:
        return train.select([])


def test_registered_attacks_poison_the_update_or_the_data(monkeypatch) -> None:
    train = datasets.Dataset.from_dict({"labels": [0, 1, 2]})
    update, rng = {"w": np.ones(3, np.float32)}, np.random.default_rng(0)
    monkeypatch.setitem(ATTACKS, "zero", Zero())
    monkeypatch.setitem(ATTACKS, "drop_all", DropAll())
    scenario = scenario_from_dict(
        {"partition": {"num_clients": 10}, "attack": {"kind": "zero", "fraction": 0.3}}
    )
    assert len(malicious_clients(scenario)) == 3
    assert poison(update, scenario.attack, rng)["w"].tolist() == [0, 0, 0]
    assert ATTACKS["zero"].poison_data(train, 3) is train  # the data stays honest
    dropping = _scenario("attack.kind", "drop_all").attack
    assert poison(update, dropping, rng) is update  # the update stays honest
    assert len(ATTACKS[dropping.kind].poison_data(train, 3)) == 0
    assert ATTACKS["label_flip"].poison_data(train, 3)["labels"] == [1, 2, 0]


def test_a_registered_partitioner_splits_the_pool(monkeypatch, make_scenario) -> None:
    assert LABEL == fedtune_data.LABEL

    def linear(cfg: PartitionConfig, seed: int) -> LinearPartitioner:
        return LinearPartitioner(num_partitions=cfg.num_clients)

    monkeypatch.setitem(PARTITIONERS, "linear", linear)
    assert isinstance(make_partitioner(PartitionConfig(kind="linear"), 0), LinearPartitioner)
    fed = build_federated_data(make_scenario(partition={"kind": "linear", "num_clients": 3}))
    sizes = [len(fed.partition(i)) for i in range(3)]
    assert sizes[0] < sizes[1] < sizes[2] and sum(sizes) == len(fed.pool)


class VeraParams(AdapterParams):
    """A plug-in method's own parameters, declared next to it."""

    rank: int = Field(256, ge=1)


def test_a_registered_peft_method_wraps_the_model(monkeypatch, make_scenario) -> None:
    @takes(VeraParams)
    def vera(settings):
        import peft

        return peft.VeraConfig(r=settings.rank, **common(settings))

    monkeypatch.setitem(ADAPTERS, "vera", vera)
    with pytest.raises(ScenarioError, match="model.peft.rank: Input should be greater than"):
        make_scenario(model={"peft": {"method": "vera", "rank": 0}})
    assert make_scenario(model={"peft": {"method": "vera"}}).model.peft.rank == 256
    scenario = make_scenario(model={"peft": {"method": "vera", "rank": 4}})
    model = load_model(scenario.model.name, ("a", "b", "c"), scenario.seed, scenario.model.peft)
    names = set(trainable_weights(model))
    heads = {n for n in names if ".classifier.modules_to_save." in n}
    assert len(heads) == 2 and names - heads and all("vera_" in n for n in names - heads)


def test_registries_are_light_to_import() -> None:
    """The config reads the registries only when validating; adapters, label-skew methods
    and attacks import neither torch nor peft (peft loads when a model is wrapped)."""
    code = (
        "import sys, fedtune.config, fedtune.modeling.adapters, fedtune.federation.attacks\n"
        "fedtune.config.PeftSettings(method='lora')\n"
        "fedtune.config.LabelSkewSettings(method='fedlc')\n"
        "fedtune.config.AttackConfig(kind='sign_flip')\n"
        "print(sorted({'torch', 'peft', 'flwr_datasets'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rslora_scales_lora_by_the_square_root_of_its_rank() -> None:
    import peft

    settings = PeftSettings(method="lora", rank=16, alpha=8, use_rslora=True)
    config = ADAPTERS["lora"](settings)
    model = peft.get_peft_model(tiny_bert(["late"], ["a", "b"])[0], config)
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert query.scaling["default"] == pytest.approx(8 / 16**0.5)  # plain LoRA: 8 / 16
