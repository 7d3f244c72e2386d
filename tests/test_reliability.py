"""Reliability: bad input stops early with one line, injected faults never stop a run,
a killed run resumes to the same weights, and runs are deterministic on CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
import yaml
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import load_file

from fedtune.cli import main
from fedtune.config import Scenario
from fedtune.federation.server.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def csv_file(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)


def bad_input_cases(tmp: Path, base: dict, tiny_model_dir: Path) -> list[tuple]:
    """(name, scenario overrides or raw text, extra CLI args, expected message) rows."""
    rows = "\n".join(
        f"{w} {i},{lab}" for i in range(30) for w, lab in (("good", "pos"), ("bad", "neg"))
    )
    (tmp / "not-a-model").mkdir()
    (tmp / "held").mkdir()
    (tmp / "held" / "summary.json").write_text("{}")
    (tmp / "broken-run").mkdir()
    (tmp / "broken-run" / "scenario.json").write_text('{"seed": 1, "data": {')
    (tmp / "user" / "model").mkdir(parents=True)
    (tmp / "user" / "model" / "my_weights.bin").write_bytes(b"weights")
    (tmp / "user" / "notes.txt").write_text("notes")
    (tmp / "a-file.txt").write_text("mine")
    (tmp / "a-dir.csv").mkdir()
    mixed = tmp / "mixed.jsonl"
    mixed.write_text(
        "".join(
            json.dumps({"message": f"text {i}", "sentiment": i % 2 if i % 3 else "pos"}) + "\n"
            for i in range(20)
        )
    )
    laughs = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    data = base["data"]
    return [
        ("malformed yaml", "federation: [1, 2\n", [], "malformed YAML"),
        ("not a mapping", "- a\n- b\n", [], "expected a mapping of sections"),
        ("unknown key", {"federation": {"roundz": 3}}, [], "federation.roundz: unknown key"),
        (
            "wrong type",
            {"training": {"batch_size": "big"}},
            [],
            "training.batch_size: Input should be a valid integer",
        ),
        (
            "out of range",
            {"federation": {"fraction_train": 1.5}},
            [],
            "federation.fraction_train: Input should be less than or equal to 1",
        ),
        (
            "negative lr",
            {"training": {"lr": -0.1}},
            [],
            "training.lr: Input should be greater than 0",
        ),
        (
            "unknown partition",
            {"partition": {"kind": "spiral"}},
            [],
            "partition.kind: Input should be",
        ),
        (
            "min nodes > clients",
            {"federation": {"min_available_nodes": 9}},
            [],
            "exceeds partition.num_clients=2",
        ),
        ("bad --set", {}, ["--set", "rounds"], "expected dotted.key=value"),
        (
            "missing data file",
            {"data": {**data, "source": str(tmp / "none.csv")}},
            [],
            "file not found",
        ),
        (
            "unsupported format",
            {"data": {**data, "source": str(tmp / "d.txt")}},
            [],
            "not a built-in source",
        ),
        (
            "missing text column",
            {"data": {**data, "text_column": "body"}},
            [],
            "data.text_column 'body' not among the columns",
        ),
        (
            "missing label column",
            {"data": {**data, "label_column": "stars"}},
            [],
            "data.label_column 'stars' not among the columns",
        ),
        (
            "empty file",
            {"data": {**data, "source": csv_file(tmp / "empty.csv", "message,sentiment\n")}},
            [],
            "no examples",
        ),
        (
            "one label only",
            {
                "data": {
                    **data,
                    "source": csv_file(
                        tmp / "one.csv",
                        "message,sentiment\n" + "\n".join(f"a {i},x" for i in range(20)),
                    ),
                }
            },
            [],
            "need at least 2",
        ),
        (
            "label only in test",
            {
                "data": {
                    **data,
                    "source": csv_file(
                        tmp / "rare.csv", f"message,sentiment\n{rows}\nodd one,rare\n"
                    ),
                },
                "seed": 2,
            },
            [],
            "appear only in the test split",
        ),
        (
            "non-UTF-8 text",
            {
                "data": {
                    **data,
                    "source": csv_file(
                        tmp / "latin.csv", "message,sentiment\ncafé déjà vu,pos\n" * 4, "latin-1"
                    ),
                }
            },
            [],
            "cannot read as csv",
        ),
        (
            "more clients than examples",
            {
                "partition": {"kind": "iid", "num_clients": 200},
                "federation": {"min_available_nodes": 1},
            },
            [],
            "only 240 examples",
        ),
        (
            "unsatisfiable dirichlet split",
            {
                "partition": {"kind": "dirichlet", "num_clients": 60, "alpha": 0.01},
                "federation": {"min_available_nodes": 1},
            },
            [],
            "partition.kind 'dirichlet': The max number of attempts",
        ),
        (
            "natural column missing",
            {"partition": {"kind": "natural", "column": "airline", "num_clients": 3}},
            [],
            "partition.column 'airline' not among the columns",
        ),
        (
            "natural count mismatch",
            {"partition": {"kind": "natural", "column": "company", "num_clients": 2}},
            [],
            "has 3 distinct values",
        ),
        (
            "model dir not a model",
            {"model": {"name": str(tmp / "not-a-model")}},
            [],
            "directory has no config.json, not a model",
        ),
        ("output holds a run", {"output": {"dir": str(tmp / "held")}}, [], "already holds a run"),
        (
            "output holds the user's files",
            {"output": {"dir": str(tmp / "user")}},
            [],
            "is not empty and not a fedtune run directory",
        ),
        (
            "--output names the user's directory",
            {},
            ["--output", str(tmp / "user")],
            f"--output '{tmp / 'user'}' is not empty and not a fedtune run directory",
        ),
        (
            "--output names a file",
            {},
            ["--output", str(tmp / "a-file.txt")],
            "is a file, not a directory",
        ),
        (
            "--output below a file",
            {},
            ["--output", str(tmp / "a-file.txt" / "run")],
            "cannot be created",
        ),
        (
            "resume of a corrupted scenario.json",
            None,
            ["--resume", str(tmp / "broken-run")],
            "scenario.json: malformed YAML",
        ),
        (
            "negative seed",
            {"seed": -1},
            [],
            "seed: Input should be greater than or equal to 0 (got -1)",
        ),
        ("seed beyond numpy", {"seed": 2**33}, [], "seed: Input should be less than or equal to"),
        (
            "strategy parameter of the wrong type",
            {"federation": {"strategy": "fedprox", "strategy_params": {"proximal_mu": "abc"}}},
            [],
            "federation.strategy_params: proximal_mu: Input should be a valid number",
        ),
        (
            "unknown strategy parameter",
            {"federation": {"strategy_params": {"proximal_mu": 0.1}}},
            [],
            "proximal_mu: not a parameter of fedavg",
        ),
        (
            "strategy parameter fedtune sets",
            {"federation": {"strategy_params": {"min_available_nodes": 1}}},
            [],
            "set by fedtune itself",
        ),
        (
            "explicit min_train_nodes > clients",
            {"federation": {"min_train_nodes": 3}},
            [],
            "federation.min_train_nodes=3 exceeds partition.num_clients=2",
        ),
        (
            "billion laughs",
            "\n".join(laughs) + "\ndescription: *a8\n",
            [],
            "expands to more than 10000 values",
        ),
        ("huge scenario file", "description: " + "x" * 300_000 + "\n", [], "larger than 256 KiB"),
        ("--set into a value", {}, ["--set", "seed.x=1"], "'seed' is not a section"),
        (
            "mixed label types",
            {"data": {**data, "source": str(mixed)}},
            [],
            "data.label_column 'sentiment': needs all strings or all integers, found values of mixed types",
        ),
        (
            "text and label in one column",
            {"data": {**data, "label_column": data["text_column"]}},
            [],
            "data.text_column and data.label_column are both 'message'",
        ),
        (
            "name that is a path",
            {"name": "../../elsewhere"},
            [],
            "name: name '../../elsewhere' names run directories",
        ),
        (
            "infinite round timeout",
            {"federation": {"round_timeout": float("inf")}},
            [],
            "federation.round_timeout: Input should be a finite number",
        ),
        (
            "more CPUs per client than the machine has",
            {"federation": {"client_resources": {"num_cpus": 10_000}}},
            [],
            "federation.client_resources.num_cpus=10000: this machine has",
        ),
        (
            "more GPUs per client than the machine has",
            {"federation": {"client_resources": {"num_gpus": 1000}}},
            [],
            "federation.client_resources.num_gpus=1000: this machine has",
        ),
        (
            "data source is a directory",
            {"data": {**data, "source": str(tmp / "a-dir.csv")}},
            [],
            "a directory, not a data file",
        ),
        (
            "resume without checkpoint",
            None,
            ["--resume", str(tmp / "held")],
            "not a fedtune run (no scenario.json)",
        ),
    ]


def test_bad_input_table(make_scenario, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    base = make_scenario().model_dump(mode="json")
    out = tmp_path / "out"
    base["output"]["dir"] = str(out)
    cases = bad_input_cases(tmp_path, base, tiny_model_dir)
    assert len(cases) >= 20
    for name, change, args, message in cases:
        if isinstance(change, str):
            path = tmp_path / "bad.yaml"
            path.write_text(change)
        else:
            raw = json.loads(json.dumps(base))
            for key, value in (change or {}).items():
                raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
            path = write_yaml(tmp_path / "bad.yaml", raw)
        held_before = sorted(p.name for p in (tmp_path / "held").iterdir())
        code = main(["run", *([] if name.startswith("resume") else [str(path)]), "--quiet", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert len(err) == 1 and message in err[0], (name, err)
        assert err[0].startswith("fedtune: error: "), name
        assert len(err[0]) < 400, f"{name}: the message repeats too much of the input"
        assert not out.exists(), f"{name}: partial output left behind"
        assert sorted(p.name for p in (tmp_path / "held").iterdir()) == held_before, name
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "user").rglob("*")) == [
        "user/model",
        "user/model/my_weights.bin",
        "user/notes.txt",
    ]
    assert (tmp_path / "a-file.txt").read_text() == "mine"


def bad_command_cases(tmp: Path, model_dir: Path) -> list[tuple[str, list[str], str]]:
    """(name, fedtune arguments, expected message) rows for every command but run."""
    from transformers import BertConfig, BertModel

    encoder = tmp / "encoder"  # a BERT without a classification head
    BertModel(BertConfig.from_pretrained(model_dir)).save_pretrained(encoder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).exists():
            (encoder / name).write_bytes((model_dir / name).read_bytes())
    (tmp / "broken-model").mkdir()
    (tmp / "broken-model" / "config.json").write_text("{")
    (tmp / "file.txt").write_text("hello\n")
    (tmp / "latin.txt").write_bytes("café\n".encode("latin-1"))
    (tmp / "blank.txt").write_text("\n\n  \n")
    (tmp / "certs").mkdir()
    (tmp / "certs" / "ca.key").write_text("the user's own CA key")
    (tmp / "shards" / "node-0").mkdir(parents=True)
    (tmp / "shards" / "node-0" / "data.jsonl").write_text("{}\n")
    (tmp / "not-a-run").mkdir()
    (tmp / "mine").mkdir()
    (tmp / "mine" / "compare.md").write_text("my notes")
    (tmp / "damaged-run").mkdir()
    (tmp / "damaged-run" / "summary.json").write_text("{}")
    (tmp / "damaged-run" / "metrics.jsonl").write_text("{not json\n")
    (tmp / "cut-run").mkdir()
    (tmp / "cut-run" / "summary.json").write_text('{\n  "scenario": "tiny",\n  "final": {')
    (tmp / "cut-run" / "metrics.jsonl").write_text("{}\n")
    (tmp / "hollow-run").mkdir()
    (tmp / "hollow-run" / "summary.json").write_text("{}")
    (tmp / "hollow-run" / "metrics.jsonl").write_text("{}\n")
    model, f = str(model_dir), str(tmp / "file.txt")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    return [
        ("no command", [], "the following arguments are required: command"),
        ("unknown command", ["fly"], "invalid choice: 'fly'"),
        (
            "certs --nodes -1",
            ["certs", str(tmp / "c1"), "--nodes", "-1"],
            "--nodes: must be between 0",
        ),
        (
            "certs --nodes abc",
            ["certs", str(tmp / "c2"), "--nodes", "abc"],
            "--nodes: not an integer: 'abc'",
        ),
        (
            "certs --nodes huge",
            ["certs", str(tmp / "c3"), "--nodes", "10000000"],
            "must be between 0 and 10000",
        ),
        ("certs into a file", ["certs", f], "a file, not a directory"),
        (
            "certs over existing keys",
            ["certs", str(tmp / "certs")],
            "already holds ca.key; fedtune never overwrites keys",
        ),
        (
            "certs --name with a space",
            ["certs", str(tmp / "c4"), "--name", "a b"],
            "--name 'a b': not a host name or IP address",
        ),
        (
            "serve --port 99999",
            ["serve", model, "--port", "99999"],
            "--port: not a TCP port (1-65535): 99999",
        ),
        ("serve --port abc", ["serve", model, "--port", "abc"], "--port: not a port number: 'abc'"),
        (
            "serve --host unknown",
            ["serve", model, "--host", "no-such-host.invalid"],
            "--host 'no-such-host.invalid': cannot resolve",
        ),
        (
            "serve an encoder",
            ["serve", str(encoder), "--port", str(free_port)],
            "no trained classification head",
        ),
        ("predict nothing", ["predict", model], "give texts as arguments or --file FILE"),
        (
            "predict missing --file",
            ["predict", model, "--file", str(tmp / "none.txt")],
            "no such file",
        ),
        (
            "predict --file a directory",
            ["predict", model, "--file", str(tmp)],
            "a directory, not a file of texts",
        ),
        (
            "predict --file /dev/zero",
            ["predict", model, "--file", "/dev/zero"],
            "not a regular file",
        ),
        (
            "predict --file not UTF-8",
            ["predict", model, "--file", str(tmp / "latin.txt")],
            "not UTF-8 text (byte 3)",
        ),
        (
            "predict --file of blank lines",
            ["predict", model, "--file", str(tmp / "blank.txt")],
            "no texts (every line is empty)",
        ),
        (
            "predict with a non-model",
            ["predict", str(tmp / "not-a-run"), "hi"],
            "is not a model directory",
        ),
        (
            "predict with a broken model",
            ["predict", str(tmp / "broken-model"), "hi"],
            "cannot load the model",
        ),
        (
            "predict with an encoder",
            ["predict", str(encoder), "hi"],
            "has no trained classification head",
        ),
        ("report of a file", ["report", f], "a file, not a run directory"),
        ("report of a missing dir", ["report", str(tmp / "nowhere")], "no such directory"),
        (
            "report of a non-run",
            ["report", str(tmp / "not-a-run")],
            "not a fedtune run (no summary.json)",
        ),
        (
            "report of a damaged run",
            ["report", str(tmp / "damaged-run")],
            "metrics.jsonl is damaged",
        ),
        (
            "report of a cut summary.json",
            ["report", str(tmp / "cut-run")],
            "summary.json is damaged",
        ),
        (
            "report of a hollow run",
            ["report", str(tmp / "hollow-run")],
            "incomplete or damaged run files",
        ),
        ("compare a file", ["compare", f], "a file, not a run directory"),
        ("compare into a file", ["compare", str(tmp / "hollow-run"), "--output", f], "--output"),
        (
            "compare over the user's compare.md",
            ["compare", str(tmp / "hollow-run"), "--output", str(tmp / "mine")],
            "compare.md: already exists",
        ),
        ("shards into a file", ["shards", "quickstart", f], "a file, not a directory"),
        (
            "shards over a shard",
            ["shards", "quickstart", str(tmp / "shards")],
            "node-0/data.jsonl: already exists",
        ),
        (
            "shards of a bad scenario",
            ["shards", "quickstart", str(tmp / "s"), "--set", "seed=-1"],
            "seed: Input should be",
        ),
        ("centralized without scenario", ["centralized"], "give a SCENARIO"),
        ("local without scenario", ["local"], "give a SCENARIO"),
        (
            "local --output a file",
            ["local", "quickstart", "--output", f],
            "is a file, not a directory",
        ),
        (
            "deploy --output a file",
            ["deploy", "quickstart", "--output", f],
            "is a file, not a directory",
        ),
    ]


def test_bad_command_table(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    cases = bad_command_cases(tmp_path, tiny_model_dir)
    assert len(cases) >= 30
    for name, argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(err) == 1 and message in err[0], (name, err)
        assert err[0].startswith("fedtune: error: "), name
    assert (tmp_path / "certs" / "ca.key").read_text() == "the user's own CA key"
    assert (tmp_path / "shards" / "node-0" / "data.jsonl").read_text() == "{}\n"
    assert (tmp_path / "file.txt").read_text() == "hello\n"
    assert (tmp_path / "mine" / "compare.md").read_text() == "my notes"


def fedtune_run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedtune.cli", "run", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


@pytest.mark.slow("a Ray simulation with injected faults")
def test_faults_dropout_and_crashes_run_to_completion(make_scenario, tmp_path: Path) -> None:
    scenario = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"rounds": 3, "min_available_nodes": 4, "min_train_nodes": 1},
        faults={"dropout": 0.3, "crash": 0.4},
    )
    path = write_yaml(tmp_path / "faults.yaml", scenario.model_dump(mode="json"))
    result = fedtune_run(str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, "one line per failed client, not a traceback"
    run_dir = Path(scenario.output.dir)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    errors = []
    for line in lines[1:]:
        train = line["failures"]["train"]
        assert train["sampled"] == 4 == train["replied"] + train["errors"] + train["timed_out"]
        assert train["replied"] >= 1, "every round aggregates its survivors"
        assert sum("train_loss" in c for c in line["clients"]["train"]) == train["replied"]
        errors += [c["error"] for c in line["clients"]["train"] if "error" in c]
    assert errors, "with 30% dropout and 40% crashes over 12 client-rounds some fail"
    for error in errors:
        assert error.startswith("client ") and "InjectedFault" in error, error
        assert error.split(",")[0] in result.stderr, "reported on the console with its id"
    assert any("dropped out" in e for e in errors) and any("crashed after" in e for e in errors)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["failed_replies_total"] >= len(errors)


@pytest.mark.slow("a Ray simulation that waits out its stragglers")
def test_stragglers_past_the_deadline_do_not_hang_the_run(make_scenario, tmp_path: Path) -> None:
    scenario = make_scenario(
        federation={"rounds": 1, "min_available_nodes": 2, "round_timeout": 2.0},
        faults={"straggler": 1.0, "straggler_delay": [6.0, 6.0]},
        data={"val_size": 0.0},
    )
    path = write_yaml(tmp_path / "slow.yaml", scenario.model_dump(mode="json"))
    start = time.monotonic()
    result = fedtune_run(str(path))
    # Its only round aggregated nothing: the run completes, then says so and exits 1.
    assert result.returncode == 1, result.stderr[-3000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("fedtune: error: no round aggregated any update")
    )
    assert time.monotonic() - start < 120
    line = [
        json.loads(x) for x in Path(scenario.output.dir, "metrics.jsonl").read_text().splitlines()
    ][1]
    assert line["failures"]["train"]["timed_out"] == 2
    assert "missed the train deadline" in result.stderr
    summary = json.loads(Path(scenario.output.dir, "summary.json").read_text())
    history = summary["history"]
    assert history[1]["loss"] == history[0]["loss"], "no update arrived: the global model is kept"


def final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model" / "model.safetensors")


KILL_CASES = {
    "fedavg": {},
    "fedadam, top-k with error feedback": {
        "federation": {"strategy": "fedadam", "strategy_params": {"eta": 0.01}},
        "codec": {"kind": "topk", "topk_fraction": 0.1},
    },
}
"""Server state (FedAdam's moments) and node state (the codec's residuals, kept on each
node's disk) must both survive a SIGKILL of the whole process tree."""


@pytest.mark.slow("SIGKILLs a Ray simulation process and resumes it, twice per case")
@pytest.mark.parametrize("sections", KILL_CASES.values(), ids=KILL_CASES.keys())
def test_kill_and_resume_gives_the_same_weights_and_runs_are_deterministic(
    make_scenario, tmp_path: Path, sections: dict
) -> None:
    # Half of 4 clients train each round: the seed must also fix which ones.
    federation = {"rounds": 4, "fraction_train": 0.5, **sections.get("federation", {})}
    raw = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation=federation,
        **{key: value for key, value in sections.items() if key != "federation"},
    ).model_dump(mode="json")
    runs = {}
    for name in ("clean", "again") if not sections else ("clean",):  # determinism: once
        raw["output"]["dir"] = str(tmp_path / name)
        result = fedtune_run(str(write_yaml(tmp_path / f"{name}.yaml", raw)))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = final_weights(tmp_path / name)
    if "again" in runs:
        for key, value in runs["clean"].items():
            assert value.equal(runs["again"][key]), f"two runs differ in {key}"
        sampled = [
            [
                sorted(c["partition-id"] for c in json.loads(line)["clients"]["train"])
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()[1:]
            ]
            for name in ("clean", "again")
        ]
        assert sampled[0] == sampled[1] and all(len(s) == 2 for s in sampled[0])
        assert len({tuple(s) for s in sampled[0]}) > 1, "different clients across rounds"

    killed = tmp_path / "killed"
    raw["output"]["dir"] = str(killed)
    path = write_yaml(tmp_path / "killed.yaml", raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedtune.cli", "run", "--quiet", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until round 2 is checkpointed
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # summary.json follows metrics.jsonl, so it may still say round 1 when round 2 is logged.
    summary = json.loads((killed / "summary.json").read_text())
    assert 1 <= summary["rounds_completed"] < 4, "killed mid-run"
    assert not (killed / "model").exists()

    result = fedtune_run("--resume", str(killed))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert [h["round"] for h in summary["history"]] == [0, 1, 2, 3, 4]
    resumed = final_weights(killed)
    for key, value in runs["clean"].items():
        assert value.equal(resumed[key]), f"resumed run differs in {key}"
    if sections:  # the residuals the nodes resumed from lay on their own disks
        assert list(killed.glob("nodes/node-*/state/round-*.safetensors"))


def test_resume_survives_a_kill_between_the_checkpoint_renames(tmp_path: Path) -> None:
    """save_dir_atomic moves the old checkpoint aside, then renames the new one in; a kill
    between the two leaves only `.checkpoint.old`, which load_checkpoint then uses."""
    weights = {"w": np.arange(3, dtype=np.float32)}
    record = {"history": [], "lines": [], "totals": {}}
    save_checkpoint(tmp_path, 2, weights, FedAvg(), record, Scenario())
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.server_round == 2
    np.testing.assert_array_equal(checkpoint.weights["w"], weights["w"])
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "elsewhere")


@pytest.mark.slow("a Ray simulation")
def test_simulation_partition_ids_read_from_the_link_state_match_the_nodes_answers() -> None:
    """The server learns partition ids from the in-memory LinkState instead of asking 1,000
    nodes; this checks that what it reads is what every node says of itself."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedtune.federation.client.app import app as client_app
    from fedtune.federation.exchange import queried_partitions, simulated_partitions

    seen = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        seen["read"] = simulated_partitions(grid, num_nodes=6, timeout=60)
        seen["asked"] = queried_partitions(grid, timeout=60)

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=6,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    assert sorted(seen["asked"].values()) == list(range(6))
    assert seen["read"] == seen["asked"]
    assert simulated_partitions(Mock(spec=Grid), 6, 60) == {}  # not simulated: ask
