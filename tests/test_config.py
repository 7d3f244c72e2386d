"""Scenario files: shipped ones validate, overrides apply, bad files give one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtune.config import (
    SCENARIO_DIR,
    ScenarioError,
    load_scenario,
    parse_override,
)
from fedtune.runs.directory import check_output_dir

REQUIRED_OVERRIDES = {
    "seed": ("3", 3),
    "model.name": ("/some/model", "/some/model"),
    "data.source": ("aapl-tweets", "aapl-tweets"),
    "data.max_samples": ("500", 500),
    "partition.kind": ("dirichlet", "dirichlet"),
    "partition.num_clients": ("8", 8),
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


def test_a_plugins_parameters_come_with_its_kind() -> None:
    """Each plugin declares its own parameters: set with its kind, they read as attributes of
    the section, and defaults fill the ones not set."""
    overrides = {"partition.kind": "dirichlet", "partition.alpha": 0.1, "codec.kind": "topk"}
    scenario = load_scenario("quickstart", overrides)
    assert scenario.partition.alpha == 0.1
    assert (scenario.codec.topk_fraction, scenario.codec.dense_below) == (0.01, 4096)
    assert "alpha" not in load_scenario("quickstart").partition.model_dump()
    switched = load_scenario("label_skew", {"partition.kind": "iid"})  # the file sets alpha
    assert "alpha" not in switched.partition.model_dump(), "another kind's keys are dropped"


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
    ("partition: {kind: natural}\n", "partition.column: Field required"),
    ("partition: {alpha_typo: 0.1}\n", "partition.alpha_typo: not a parameter of kind 'iid'"),
    ("codec: {kind: int8, block: 8}\n", "parameters: block_size)"),
    ("codec: {kind: topk, topk_fraction: 2}\n", "codec.topk_fraction: Input should be less than"),
    ("model: {peft: {method: ia3, ranks: 4}}\n", "model.peft.ranks: not a parameter of method"),
    ("attack: {kind: bogus}\n", "attack.kind: Input should be 'none'"),
    ("partition: {num_clients: 2}\nfederation: {min_available_nodes: 3}\n", "exceeds"),
    ("federation: [1, 2\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a mapping of sections"),
    ("model: 5\n", "model: Input should be a valid dictionary"),
    ('"bo\\ngus": 1\n', "'bo\\ngus': unknown key"),  # a key never breaks the line
    ('model: {"": 1}\n', "model.'': unknown key"),
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


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("bo\ngus=1", "'bo\\ngus': unknown key"),
        ("model.x\u2028y=1", "model.'x\\u2028y': unknown key"),
        ("seed.x\ny=1", "--set 'seed.x\\ny': 'seed' is not a section"),
    ],
)
def test_override_errors_quote_keys_that_break_lines(item: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("quickstart", dict([parse_override(item)]))
    text = str(err.value)
    assert message in text and text.splitlines() == [text], text


def test_override_type_error_names_key() -> None:
    with pytest.raises(ScenarioError, match=r"training\.batch_size: .*got 'big'"):
        load_scenario("quickstart", {"training.batch_size": "big"})


def test_missing_scenario_file() -> None:
    with pytest.raises(ScenarioError, match="nope.yaml: scenario file not found"):
        load_scenario("nope.yaml")


# ------------------------------------------------------------------ min_*_nodes defaults

SHIPPED = sorted(SCENARIO_DIR.glob("*.yaml"))


@pytest.mark.parametrize("clients", [2, 10])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_validate_with_any_number_of_clients(path: Path, clients: int) -> None:
    """Changing partition.num_clients alone is enough: nothing hard-codes node counts."""
    overrides = {"partition.num_clients": clients}
    if path.stem == "secagg" and clients == 2:  # SecAgg+ needs 3 clients per round
        with pytest.raises(ScenarioError, match="num_shares=3 exceeds the 2 clients sampled"):
            load_scenario(path, overrides)
        return
    scenario = load_scenario(path, overrides)
    assert scenario.min_available_nodes == clients
    assert 1 <= scenario.min_train_nodes <= scenario.clients_per_round <= clients
    assert scenario.min_evaluate_nodes <= clients


def test_shipped_scenarios_keep_their_node_counts() -> None:
    """As shipped, every scenario waits for all its clients and samples all of them (the
    cross-device ones: their fraction); with no failures (none of them injects any) the
    minimums do not change a result."""
    cross_device = {"recommendation_cross_device", "dp_cross_device", "dp"}
    for path in SHIPPED:
        scenario = load_scenario(path)
        fed = scenario.federation
        n, fraction = scenario.partition.num_clients, fed.fraction_train
        assert scenario.min_available_nodes == n, path.stem
        assert scenario.clients_per_round == int(fraction * n), path.stem
        assert (fraction == 1.0) == (path.stem not in cross_device), path.stem
        evaluating = 2 if fed.fraction_evaluate > 0 else 0  # 0: no federated evaluation
        assert (scenario.min_train_nodes, scenario.min_evaluate_nodes) == (2, evaluating)


@pytest.mark.parametrize(
    ("federation", "clients", "expected"),
    [
        ({}, 4, (2, 2, 4)),
        ({}, 1, (1, 1, 1)),
        ({"fraction_train": 0.25, "fraction_evaluate": 0.5}, 4, (1, 2, 4)),
        ({"fraction_train": 0.1}, 4, (1, 2, 4)),  # int(0.4) = 0 sampled: Flower takes 1
        ({"fraction_evaluate": 0.0}, 4, (2, 0, 4)),  # no federated evaluation
        ({"min_train_nodes": 3, "min_evaluate_nodes": 1, "min_available_nodes": 2}, 4, (3, 1, 2)),
    ],
)
def test_min_nodes_resolve_from_the_federation(
    federation: dict, clients: int, expected: tuple
) -> None:
    overrides = {f"federation.{k}": v for k, v in federation.items()}
    scenario = load_scenario("quickstart", {"partition.num_clients": clients, **overrides})
    resolved = (
        scenario.min_train_nodes,
        scenario.min_evaluate_nodes,
        scenario.min_available_nodes,
    )
    assert resolved == expected
    assert tuple(scenario.nodes) == expected
    assert scenario.federation.min_train_nodes == federation.get("min_train_nodes")


@pytest.mark.parametrize("key", ["min_train_nodes", "min_evaluate_nodes", "min_available_nodes"])
def test_an_explicit_impossible_node_count_is_one_line(key: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("quickstart", {"partition.num_clients": 2, f"federation.{key}": 3})
    text = str(err.value)
    assert f"federation.{key}=3 exceeds partition.num_clients=2" in text and "\n" not in text


# ------------------------------------------------------------------ strategy parameters


@pytest.mark.parametrize(
    ("strategy", "params", "message"),
    [
        (
            "fedprox",
            {"proximal_mu": "abc"},
            "federation.strategy_params: proximal_mu: Input should be a valid number",
        ),
        ("fedprox", {"mu": 0.1}, "mu: not a parameter of fedprox (its parameters: proximal_mu)"),
        ("fedavg", {"proximal_mu": 0.1}, "proximal_mu: not a parameter of fedavg"),
        ("krum", {"num_malicious_nodes": 1.5}, "num_malicious_nodes: Input should be a valid int"),
        ("fedavg", {"fraction_train": 0.5}, "set by fedtune itself"),
        ("fedavg", {"min_train_nodes": 1}, "set federation.min_train_nodes instead"),
        ("fedavg", {"weighted_by_key": "x"}, "weighted_by_key: set by fedtune itself"),
        ("fedavg", {"train_metrics_aggr_fn": "x"}, "set by fedtune itself"),
        ("bulyan", {"selection_rule": "krum"}, "selection_rule: not a parameter of bulyan"),
        ("qfedavg", {"train_loss_key": "loss"}, "set by fedtune itself"),
    ],
)
def test_strategy_params_are_checked_against_the_strategy(
    strategy: str, params: dict, message: str
) -> None:
    overrides = {"federation.strategy": strategy, "federation.strategy_params": params}
    with pytest.raises(ScenarioError) as err:
        load_scenario("quickstart", overrides)
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_strategy_params_of_the_right_type_are_kept_converted() -> None:
    scenario = load_scenario(
        "quickstart",
        dict(
            [
                parse_override("federation.strategy=fedprox"),
                parse_override("federation.strategy_params={proximal_mu: 1}"),
            ]
        ),
    )
    assert scenario.federation.strategy_params == {"proximal_mu": 1.0}
    assert isinstance(scenario.federation.strategy_params["proximal_mu"], float)
    trimmed = load_scenario(
        "quickstart",
        {"federation.strategy": "fedtrimmedavg", "federation.strategy_params": {"beta": 0.1}},
    )
    assert trimmed.federation.strategy_params == {"beta": 0.1}


# ------------------------------------------------------------------ hostile values and files


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "seed: Input should be greater than or equal to 0"), (2**40, "less than or equal")],
)
def test_seed_must_fit_numpy(value: int, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario("quickstart", {"seed": value})


def billion_laughs(levels: int = 9) -> str:
    """Under 1 KB of YAML that stands for 10**levels strings."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + f"\ndescription: *a{levels - 1}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (billion_laughs(), "expands to more than 10000 values"),
        ("description: &a [x, *a]\n", "an alias refers to the node that contains it"),
        ("description: " + "[" * 3000 + "]" * 3000 + "\n", "malformed YAML: nested too deeply"),
        ("description: " + "x" * 300_000 + "\n", "larger than 256 KiB"),
    ],
    ids=["billion-laughs", "recursive-alias", "deep-nesting", "huge-file"],
)
def test_hostile_yaml_is_refused_before_it_is_built(
    tmp_path: Path, text: str, message: str
) -> None:
    assert len(billion_laughs()) < 1024
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_hostile_override_is_refused() -> None:
    flow = "{" + billion_laughs().replace("\n", ", ").rstrip(", ") + "}"
    with pytest.raises(ScenarioError, match="expands to more than 10000 values"):
        parse_override(f"description={flow}")


def test_error_messages_do_not_repeat_huge_inputs() -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("quickstart", {"name": ["x" * 100_000]})
    text = str(err.value)
    assert "name: Input should be a valid string (got ['xxx" in text
    assert len(text) < 300 and text.endswith("...)")
    with pytest.raises(ScenarioError) as err:
        load_scenario("quickstart", {"y" * 10_000: 1})
    assert len(str(err.value)) < 300


def test_a_directory_is_not_a_scenario(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="a directory, not a scenario file"):
        load_scenario(tmp_path)


# ------------------------------------------------------------------ output directories


def test_check_output_dir(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new" / "run")  # created later
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    refused = {
        "file": "is a file, not a directory",
        "user": "is not empty and not a fedtune run directory",
        "finished": "already holds a run (continue it with fedtune run --resume",
        "interrupted": "already holds a run",
        "file/below": "cannot be created",
    }
    (tmp_path / "file").write_text("mine")
    (tmp_path / "user" / "model").mkdir(parents=True)
    (tmp_path / "user" / "model" / "my_weights.bin").write_text("mine")
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "summary.json").write_text("{}")
    (tmp_path / "interrupted" / "checkpoint").mkdir(parents=True)
    (tmp_path / "interrupted" / "scenario.json").write_text("{}")
    for name, message in refused.items():
        with pytest.raises(ScenarioError) as err:
            check_output_dir(tmp_path / name, key="--output")
        text = str(err.value)
        assert text.startswith("--output ") and message in text and "\n" not in text, text
    check_output_dir(tmp_path / "interrupted", resume=True)
    assert (tmp_path / "user" / "model" / "my_weights.bin").read_text() == "mine"
