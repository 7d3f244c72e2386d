"""`fedtune local`: each client trained alone on its own data with the budget the federation
gives it, evaluated on its own validation split and the server's test split, and set next to
the federated model in `fedtune report` and `fedtune compare`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import fedtune, write_scenario

from fedtune.cli import main
from fedtune.data.corpus import build_federated_data, client_splits
from fedtune.launch import baselines


def _weighted(pairs: list[tuple[float, int]]) -> float:
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)


@pytest.mark.slow("a Ray simulation process and a fedtune local process")
def test_local_only_gets_the_federated_budget_and_shows_next_to_the_federation(
    make_scenario, run_local, tmp_path: Path, capsys
) -> None:
    scenario = make_scenario(data={"val_size": 0.2}, training={"local_epochs": 2})
    run_local(scenario, "fed")
    fed_dir, local_dir = tmp_path / "fed", tmp_path / "local"
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    result = fedtune("local", str(path), "--output", str(local_dir), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "local run of 'tiny': 2 clients each trained alone, mean test accuracy" in result.stdout

    summary = json.loads((local_dir / "summary.json").read_text())
    lines = [json.loads(x) for x in (local_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["mode"] == "local" and summary["model_dir"] is None
    assert (local_dir / "scenario.json").is_file() and not (local_dir / "model").exists()
    fed_lines = [json.loads(x) for x in (fed_dir / "metrics.jsonl").read_text().splitlines()]
    data = build_federated_data(scenario)
    clients = summary["clients"]
    assert (
        [c["partition_id"] for c in clients] == [line["partition_id"] for line in lines] == [0, 1]
    )
    for client in clients:
        pid = client["partition_id"]
        train, val = client_splits(data, pid, scenario.data.val_size, scenario.seed)
        assert client["num_examples"] == len(train) and client["val"]["num_examples"] == len(val)
        federated = sum(
            scenario.training.local_epochs * c["num-examples"]
            for line in fed_lines
            for c in line["clients"]["train"]
            if c["partition-id"] == pid
        )
        assert client["examples_trained"] == federated == 2 * 2 * len(train)
        assert set(client["val"]) >= {"accuracy", "macro_f1"}
        assert set(client["test"]) >= {"accuracy", "macro_f1"}
    final = summary["final"]
    assert final["accuracy"] == pytest.approx(
        _weighted([(c["test"]["accuracy"], c["num_examples"]) for c in clients])
    )
    assert final["val_accuracy"] == pytest.approx(
        _weighted([(c["val"]["accuracy"], c["val"]["num_examples"]) for c in clients])
    )

    assert main(["report", str(local_dir)]) == 0
    report = (local_dir / "report.md").read_text()
    assert "## Each client trained alone" in report and "client-1" in report
    assert (local_dir / "figures" / "clients.png").is_file()

    assert main(["compare", str(fed_dir), str(local_dir), "--output", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "(local)" in text and f"{final['accuracy']:.4f}" in text
    assert "## Is federating worth it?" in text
    last_eval = {
        c["partition-id"]: c["eval_accuracy"] for c in fed_lines[-1]["clients"]["evaluate"]
    }
    for client in clients:
        alone, together = client["val"]["accuracy"], last_eval[client["partition_id"]]
        row = f"| client-{client['partition_id']} | {alone:.4f} | {together:.4f} |"
        assert row in text, text


def test_local_budget_follows_the_share_of_rounds_a_client_is_sampled(
    make_scenario, tmp_path: Path
) -> None:
    """Half of 4 clients train each round: over 2 rounds a client trains one epoch's worth."""
    scenario = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"rounds": 2, "fraction_train": 0.5, "min_available_nodes": 4},
    )
    summary = baselines.run_local_only(scenario, quiet=True)
    data = build_federated_data(scenario)
    for client in summary["clients"]:
        train, _ = client_splits(data, client["partition_id"], scenario.data.val_size, 7)
        assert client["examples_trained"] == math.ceil(0.5 * 2 * len(train)) == len(train)


def test_local_refuses_bad_input_in_one_line(make_scenario, tmp_path: Path, capsys) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    held = tmp_path / "held"
    held.mkdir()
    (held / "summary.json").write_text("{}")
    (tmp_path / "file.txt").write_text("mine")
    for args, message in (
        (["--set", "seed=-1"], "seed: Input should be greater than or equal to 0"),
        (["--set", "data.label_column=stars"], "data.label_column 'stars' not among the columns"),
        (["--output", str(held)], "already holds a run"),
        (["--output", str(tmp_path / "file.txt")], "is a file, not a directory"),
    ):
        assert main(["local", str(path), "--quiet", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedtune: error: ") and message in err[0], err
    assert not Path(make_scenario().output.dir).exists(), "nothing written"
    assert sorted(p.name for p in held.iterdir()) == ["summary.json"]
