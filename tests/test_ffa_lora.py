"""FFA-LoRA: A stays at its seeded initialisation on every client and on the server; only B
and the classification head train and travel, at half of LoRA's adapter bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LocalGrid
from flwr.app import MessageType

from fedtune.data.corpus import build_federated_data
from fedtune.federation.client.node import _loaded_model
from fedtune.federation.codecs import encode
from fedtune.federation.server.app import FederatedRun
from fedtune.modeling.model import load_model, trainable_weights
from fedtune.records import to_record

HEAD = ".classifier.modules_to_save."

COMBINATIONS = {
    "fedavg": {},
    "int8 codec, client-level DP": {
        "codec": {"kind": "int8"},
        "privacy": {"dp": {"enabled": True, "noise_multiplier": 0.1}},
    },
    "fedmedian, DP-SGD": {
        "federation": {"strategy": "fedmedian"},
        "privacy": {"dp_sgd": {"enabled": True}},
    },
}


def _lora_a(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}


def _model(scenario):  # noqa: ANN001, ANN202
    labels = build_federated_data(scenario).label_names
    return load_model(scenario.model.name, labels, scenario.seed, scenario.model.peft)


@pytest.mark.parametrize("sections", COMBINATIONS.values(), ids=COMBINATIONS)
def test_a_never_changes_and_only_b_and_the_head_travel(
    make_scenario, task_identity, tmp_path: Path, sections: dict
) -> None:
    scenario = make_scenario(model={"peft": {"method": "ffa_lora", "rank": 4}}, **sections)
    fresh = _model(scenario)
    initial_a, travelling = _lora_a(fresh), trainable_weights(fresh)
    assert initial_a and not any(".lora_A." in n for n in travelling)
    assert all(".lora_B." in n or HEAD in n for n in travelling)
    grid = LocalGrid(scenario)
    run = FederatedRun(grid, scenario, tmp_path / "run", quiet=True, resume=False)
    summary = run.run()
    assert summary["rounds_aggregated"] == 2
    labels = build_federated_data(scenario).label_names
    client_model = _loaded_model(scenario.model, labels, scenario.seed, None).model
    for where, model in (("server", run.server.model), ("client", client_model)):
        for name, value in _lora_a(model).items():
            assert torch.equal(value, initial_a[name]), f"{where}: {name} changed"
    moved = [n for n in travelling if ".lora_B." in n and np.abs(run.weights[n]).max() > 0]
    assert moved, "B trained (it starts at zero)"
    replies = [m for m in grid.received if m.metadata.message_type == MessageType.TRAIN]
    assert len(replies) == 2 * 2
    for reply in replies:
        sent = {k.rsplit("::", 1)[0] for k in reply.content.array_records["arrays"]}
        assert sent == set(travelling)
    up = to_record(encode(scenario.codec, travelling)).count_bytes()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    for line in map(json.loads, lines[1:]):
        assert [c["bytes_up"] for c in line["clients"]["train"]] == [up, up]


def test_ffa_lora_sends_half_of_loras_adapter_bytes(make_scenario) -> None:
    adapter_bytes = {}
    for method in ("lora", "ffa_lora"):
        weights = trainable_weights(_model(make_scenario(model={"peft": {"method": method}})))
        adapters = {n: a for n, a in weights.items() if HEAD not in n}
        adapter_bytes[method] = to_record(adapters).count_bytes()
    assert adapter_bytes["ffa_lora"] == pytest.approx(adapter_bytes["lora"] / 2, rel=1e-3)
