"""Scenario files: shipped ones validate, overrides apply, bad files give one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtune.config import SCENARIO_DIR, ScenarioError, load_scenario, parse_override

REQUIRED_OVERRIDES = {
    "seed": ("3", 3),
    "model.name": ("/some/model", "/some/model"),
    "data.source": ("aapl-tweets", "aapl-tweets"),
    "data.max_samples": ("500", 500),
    "partition.kind": ("dirichlet", "dirichlet"),
    "partition.num_clients": ("8", 8),
    "partition.alpha": ("0.1", 0.1),
    "federation.rounds": ("7", 7),
    "federation.fraction_train": ("0.5", 0.5),
    "training.local_epochs": ("2", 2),
    "training.batch_size": ("8", 8),
    "training.lr": ("3e-4", 3e-4),
}


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.description, "every shipped scenario says what it demonstrates"


def test_shipped_scenario_by_name() -> None:
    assert load_scenario("quickstart").partition.num_clients == 4


@pytest.mark.parametrize("key", sorted(REQUIRED_OVERRIDES))
def test_set_overrides_each_required_key(key: str) -> None:
    raw, expected = REQUIRED_OVERRIDES[key]
    scenario = load_scenario("quickstart", dict([parse_override(f"{key}={raw}")]))
    value = scenario
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected


BAD_FILES = [
    ("federation: {rounds: 3}\nbogus: 1\n", "bogus: unknown key"),
    ("federation: {rounds: 3, extra_thing: 2}\n", "federation.extra_thing: unknown key"),
    ("federation: {rounds: three}\n", "federation.rounds: Input should be a valid integer"),
    ("federation: {rounds: 0}\n", "federation.rounds: Input should be greater than or equal to 1"),
    ("partition: {kind: spiral}\n", "partition.kind: Input should be 'iid'"),
    ("training: {lr: -1}\n", "training.lr: Input should be greater than 0"),
    ("data: {test_size: 1.5}\n", "data.test_size: Input should be less than 1"),
    ("partition: {kind: natural}\n", "partition: partition.kind 'natural' needs partition.column"),
    ("partition: {num_clients: 2}\nfederation: {min_available_nodes: 3}\n", "exceeds"),
    ("federation: [1, 2\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a mapping of sections"),
    ("model: 5\n", "model: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_scenario_files_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    text = str(err.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith(str(path))


@pytest.mark.parametrize(
    ("item", "message"),
    [("federation.rounds", "expected dotted.key=value"), ("=3", "expected dotted.key=value")],
)
def test_bad_override_syntax(item: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_override(item)


def test_override_type_error_names_key() -> None:
    with pytest.raises(ScenarioError, match=r"training\.batch_size: .*got 'big'"):
        load_scenario("quickstart", {"training.batch_size": "big"})


def test_missing_scenario_file() -> None:
    with pytest.raises(ScenarioError, match="nope.yaml: scenario file not found"):
        load_scenario("nope.yaml")
