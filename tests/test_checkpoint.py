"""Checkpoints hold data only (safetensors + JSON), refuse what they did not write, and an
interrupted run resumes to the same weights for every kind of server and node state."""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, LocalGrid
from fuzzing import FAST, SLOW
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from fedtune.cli import main
from fedtune.federation.server import checkpoint as checkpoint_module
from fedtune.federation.server.app import run_server
from fedtune.federation.server.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_rng,
    rng_state,
    strategy_state,
)
from fedtune.federation.strategies.factory import build_strategy
from fedtune.launch import simulation

PACKAGE = ROOT / "fedtune"


class InterruptedGrid(LocalGrid):
    """Stops the server (as a kill would) right after the clients trained round `at`: they
    have saved their state for it, the server has not checkpointed it."""

    def __init__(self, scenario, at: int) -> None:
        super().__init__(scenario)
        self.at = at

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        config = messages[0].content.config_records.get("config", {}) if messages else {}
        if messages[0].metadata.message_type == "train" and config.get("server-round") == self.at:
            raise KeyboardInterrupt
        return ids


def _in(scenario, run_dir: Path):
    """The scenario writing to `run_dir` (nodes keep their state under it)."""
    return scenario.model_copy(
        update={"output": scenario.output.model_copy(update={"dir": str(run_dir)})}
    )


def interrupted_and_clean_runs(base, tmp_path: Path) -> None:
    """`base` run uninterrupted into `tmp_path/clean`, and into `tmp_path/killed` stopped
    after round 3's training, then resumed by a fresh server and fresh nodes."""
    clean = _in(base, tmp_path / "clean")
    run_server(LocalGrid(clean), clean, tmp_path / "clean", quiet=True)
    killed = _in(base, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_server(InterruptedGrid(killed, at=3), killed, tmp_path / "killed", quiet=True)
    assert load_checkpoint(tmp_path / "killed").server_round == 2
    run_server(LocalGrid(killed), killed, tmp_path / "killed", quiet=True, resume=True)


CASES = {
    "fedavg": {},
    "fedadam": {"federation": {"strategy": "fedadam", "strategy_params": {"eta": 0.01}}},
    "client-level DP": {"privacy": {"dp": {"enabled": True, "noise_multiplier": 0.5}}},
    "client-level DP, Poisson sampling": {
        "federation": {"sampling": "poisson"},
        "privacy": {"dp": {"enabled": True, "noise_multiplier": 0.5}},
    },
    "top-k codec with error feedback": {"codec": {"kind": "topk", "topk_fraction": 0.1}},
    "scaffold": {"federation": {"strategy": "scaffold"}},
    "fedavgm (server momentum by default)": {"federation": {"strategy": "fedavgm"}},
}


@pytest.mark.parametrize("sections", CASES.values(), ids=CASES.keys())
def test_interrupted_run_resumes_to_the_same_weights(
    make_scenario, task_identity, tmp_path: Path, sections: dict
) -> None:
    """Half of 4 clients train each round; the run is stopped after round 3's training and
    resumed by a fresh server and fresh nodes (as a new process would be)."""
    base = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"rounds": 4, "fraction_train": 0.5, **sections.get("federation", {})},
        data={"val_size": 0.0},
        output={"save_model": False, "tensorboard": False},
        **{k: v for k, v in sections.items() if k != "federation"},
    )
    interrupted_and_clean_runs(base, tmp_path)

    expected = load_checkpoint(tmp_path / "clean")
    resumed = load_checkpoint(tmp_path / "killed")
    assert resumed.server_round == expected.server_round == 4
    for name, weights in expected.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], weights, err_msg=name)
    summaries = [
        json.loads((tmp_path / d / "summary.json").read_text()) for d in ("clean", "killed")
    ]
    assert summaries[0]["history"][-1]["loss"] == summaries[1]["history"][-1]["loss"]
    assert summaries[0]["privacy"] == summaries[1]["privacy"]


FINISHED = {"federation": {"rounds": 1}, "output": {"save_model": False}}
"""The one-round tiny run `finished_run` makes."""


@pytest.fixture
def finished_run(make_scenario, task_identity, tmp_path: Path) -> Path:
    """A one-round tiny run whose checkpoint the tests below tamper with."""
    scenario = make_scenario(**FINISHED)
    run_server(LocalGrid(scenario), scenario, Path(scenario.output.dir), quiet=True)
    return Path(scenario.output.dir)


class _WritesMarker:
    """Unpickled, it creates a file: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("keep_new_files", [False, True])
def test_a_pickled_state_file_is_refused_and_never_unpickled(
    finished_run: Path, tmp_path: Path, capsys, keep_new_files: bool
) -> None:
    marker = tmp_path / "unpickled"
    checkpoint = finished_run / "checkpoint"
    if not keep_new_files:
        for path in checkpoint.iterdir():
            path.unlink()
    (checkpoint / "state.pkl").write_bytes(pickle.dumps(_WritesMarker(marker)))
    assert main(["run", "--resume", str(finished_run), "--set", "federation.rounds=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "state.pkl" in err and "pickle" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["weights.safetensors", "state.safetensors", "state.json"])
def test_a_truncated_checkpoint_file_is_one_line(finished_run: Path, name: str) -> None:
    path = finished_run / "checkpoint" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)}: damaged checkpoint"):
        load_checkpoint(finished_run)


def test_resume_refuses_a_changed_federation(finished_run: Path, make_scenario) -> None:
    checkpoint = load_checkpoint(finished_run)
    checkpoint.check_scenario(make_scenario())  # the same federation: accepted
    for sections, named in (
        ({"partition": {"kind": "iid", "num_clients": 3}}, "partition.num_clients 2 -> 3"),
        ({"seed": 8}, "seed 7 -> 8"),
        ({"federation": {"strategy": "fedmedian"}}, "strategy.name 'fedavg' -> 'fedmedian'"),
        ({"model": {"max_length": 16}}, "model.max_length 32 -> 16"),
    ):
        with pytest.raises(CheckpointError, match=re.escape(named)):
            checkpoint.check_scenario(make_scenario(**sections))


def test_nothing_in_the_package_unpickles() -> None:
    """No module imports pickle or loads arrays/tensors in a way that could unpickle."""
    unsafe = re.compile(r"import pickle|from pickle|allow_pickle=True|torch\.load\(|dill|joblib")
    found = [
        f"{path.relative_to(PACKAGE)}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if unsafe.search(line)
    ]
    assert not found, found


# ------------------------------------------------------------------ crafted checkpoints


def _edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A tamper that changes state.json's parsed content."""

    def tamper(checkpoint: Path) -> None:
        meta = json.loads((checkpoint / "state.json").read_text())
        change(meta)
        (checkpoint / "state.json").write_text(json.dumps(meta))

    return tamper


def _edit_text(change: Callable[[str], str]) -> Callable[[Path], None]:
    """A tamper that changes state.json's text."""

    def tamper(checkpoint: Path) -> None:
        path = checkpoint / "state.json"
        path.write_text(change(path.read_text()))

    return tamper


def _edit_arrays(
    name: str, change: Callable[[dict], object], listed: bool = True
) -> Callable[[Path], None]:
    """A tamper that changes the arrays of `name` (and, with `listed`, state.json's list of
    weights with them)."""

    def tamper(checkpoint: Path) -> None:
        arrays = load_file(str(checkpoint / name))
        change(arrays)
        save_file(arrays, str(checkpoint / name))
        if listed and name == "weights.safetensors":
            _edit_json(lambda meta: meta.update(weights=list(arrays)))(checkpoint)

    return tamper


def write_header(path: Path, header: dict, size: int | None = None) -> None:
    """A safetensors file of `header` (name -> dtype, shape) whose data (zeros) is a hole:
    sparse, however much it declares; or the file cut or extended to `size` bytes."""
    entries, offset = {}, 0
    for name, (dtype, shape) in header.items():
        end = offset + math.prod(shape) * {"F32": 4, "F64": 8, "U8": 1, "U32": 4, "U64": 8}[dtype]
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(entries).encode()
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        handle.truncate(8 + len(text) + offset if size is None else size)


def header_of(path: Path) -> dict:
    """A safetensors file's header: name -> (dtype, shape)."""
    with safe_open(str(path), "numpy") as handle:
        return {
            k: (handle.get_slice(k).get_dtype(), handle.get_slice(k).get_shape())
            for k in handle.keys()  # noqa: SIM118
        }


def _huge_classifier(checkpoint: Path) -> None:
    """The weights file, sparse, with a classifier weight of 1 GiB (2**28 float32)."""
    path = checkpoint / "weights.safetensors"
    header = header_of(path)
    write_header(path, {**header, "classifier.weight": ("F32", [2**28])})


def _set(*keys: str | int, value: object) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        node = meta
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def _nested_deep(text: str) -> str:
    return text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"


def _grow_sparse(checkpoint: Path) -> None:
    with (checkpoint / "state.json").open("r+b") as handle:
        handle.truncate(257 << 20)


ACCOUNTANT = {"accountant": {"schema_version": 1, "backend": "rdp"}}

ADAPTIVE_DP = {"dp": {"enabled": True, "noise_multiplier": 0.1, "adaptive": True}}
"""Client-level DP with adaptive clipping: an accountant and a number in the strategy state."""

CRAFTED = {
    "weights of shape (1,) float64": (
        _edit_arrays("weights.safetensors", lambda a: a.update(dict.fromkeys(a, np.zeros(1)))),
        "weights.safetensors: damaged checkpoint: 'bert.embeddings.LayerNorm.bias': has shape "
        "(1,), not (32,)",
    ),
    "a weight of another dtype": (
        _edit_arrays(
            "weights.safetensors",
            lambda a: a.update({"classifier.bias": a["classifier.bias"].astype(np.float16)}),
        ),
        "'classifier.bias': is float16 (3,), not float32 or float64",
    ),
    "a 1 GiB weight in an 8 KB sparse file": (
        _huge_classifier,
        "'classifier.weight': has shape (268435456,), not (3, 32)",
    ),
    "a weight missing": (
        _edit_arrays("weights.safetensors", lambda a: a.pop("classifier.bias")),
        "'classifier.bias': is missing (one of the model's weights)",
    ),
    "an extra weight": (
        _edit_arrays("weights.safetensors", lambda a: a.update(extra=np.zeros(3, np.float32))),
        "'extra': is not one of the model's weights",
    ),
    "a weight state.json does not list": (
        _edit_arrays("weights.safetensors", lambda a: a.pop("classifier.bias"), listed=False),
        "'classifier.bias': is missing (one of state.json's weights)",
    ),
    "a strategy entry of any JSON, naming a method": (
        _edit_json(_set("strategy", ".inner.configure_train", value={"json": 0})),
        "strategy entry '.inner.configure_train': must be an object with one key of",
    ),
    "a strategy entry naming __class__": (
        _edit_json(_set("strategy", ".inner.__class__", value={"positive": 1.0})),
        "strategy entry '.inner.__class__': is not a state field of this strategy",
    ),
    "a strategy entry setting configuration": (
        _edit_json(_set("strategy", ".inner.fraction_train", value={"positive": 0.5})),
        "strategy entry '.inner.fraction_train': is not a state field of this strategy",
    ),
    "an accountant where the strategy keeps none": (
        _edit_json(_set("strategy", ".inner.accountant", value=ACCOUNTANT)),
        "strategy entry '.inner.accountant': is not a state field of this strategy",
    ),
    "strategy arrays for some of the weights": (  # Flower's FedOpt reads one per weight
        _edit_json(_set("strategy", ".inner.m_t", value={"arrays": ["classifier.bias"]})),
        "state.json: damaged checkpoint: strategy entry '.inner.m_t': must name every weight",
    ),
    "a non-numeric round": (
        _edit_json(_set("round", value="two")),
        "state.json: damaged checkpoint: round: must be a whole number from 0 to",
    ),
    "an overflowing round": (
        _edit_text(lambda text: text.replace('"round": 1', '"round": 1e400', 1)),
        "round: must be a whole number from 0 to 1000000, not inf",
    ),
    "a round beyond any run": (
        _edit_json(_set("round", value=10**30)),
        "round: must be a whole number from 0 to 1000000, not 1000000000000000000000000000000",
    ),
    "deeply nested JSON": (_edit_text(_nested_deep), "state.json: damaged checkpoint: nested"),
    "a state.json of 257 MiB": (_grow_sparse, "state.json: damaged checkpoint: larger than"),
    "a key state.json lacks": (
        _edit_json(lambda meta: meta.pop("rng")),
        "state.json: damaged checkpoint: rng: is missing",
    ),
    "a key state.json should not have": (
        _edit_json(_set("evil", value=1)),
        "state.json: damaged checkpoint: 'evil': is not a checkpoint field",
    ),
    "a Python RNG state out of range": (
        _edit_arrays("state.safetensors", lambda a: a["rng/python"].__setitem__(-1, 10**6)),
        "state.safetensors: damaged checkpoint: rng: not a generator state",
    ),
    "a numpy RNG position out of range": (
        _edit_json(lambda meta: meta["rng"]["numpy"].__setitem__(1, 5000)),
        "rng.numpy pos: must be a whole number from 0 to 624, not 5000",
    ),
    "a torch RNG state of another size": (
        _edit_arrays("state.safetensors", lambda a: a.update({"rng/torch": np.zeros(8, np.uint8)})),
        "'rng/torch': has shape (8,), not (5056,)",
    ),
    "a torch RNG state torch refuses": (
        _edit_arrays("state.safetensors", lambda a: a["rng/torch"].fill(0)),
        "state.safetensors: damaged checkpoint: rng: not a generator state",
    ),
    "a record shorter than the rounds": (
        _edit_json(_set("recorder", "history", value=[])),
        "recorder.history: must have 2 entries (round 0 on)",
    ),
    "a record total of another type": (
        _edit_json(_set("recorder", "totals", "bytes_up_total", value="lots")),
        "recorder.totals.bytes_up_total: must be a whole number",
    ),
    "a record line that is not JSON": (
        _edit_json(_set("recorder", "lines", 1, value="{")),
        "recorder.lines[1]: not JSON",
    ),
    "a record line with a line break (two lines of metrics.jsonl)": (
        _edit_json(_set("recorder", "lines", 1, value='{"round":\n1}')),
        "recorder.lines[1]: holds a line break",
    ),
}


class Started(Exception):
    """The run got as far as starting the simulation (Ray)."""


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


@pytest.fixture
def starts(monkeypatch) -> list[Path]:
    """`fedtune run` stops where the simulation (Ray) would start; the run directories of
    the runs that got there."""
    started: list[Path] = []

    def simulate(run_dir: Path, **kwargs) -> None:
        started.append(run_dir)
        raise Started

    monkeypatch.setattr(simulation, "simulate", simulate)
    return started


@pytest.mark.parametrize("tamper, message", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_checkpoint_is_refused_before_anything_starts(
    finished_run: Path, starts: list[Path], monkeypatch, capsys, tamper, message: str
) -> None:
    """One line naming the file and the field, exit 2, before Ray starts and before the run
    directory is touched, and no array read before its name, shape and dtype fit."""
    tamper(finished_run / "checkpoint")
    before = _tree(finished_run)
    read = []
    monkeypatch.setattr(checkpoint_module, "load_file", lambda p: read.append(p) or load_file(p))
    assert main(["run", "--resume", str(finished_run)]) == 2
    assert not starts
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedtune: error: "), err
    assert message in err, err
    assert _tree(finished_run) == before
    if "not a generator state" not in message:  # the one check of array values
        assert not read, "an array was read before its header was checked"


def test_an_intact_checkpoint_gets_to_the_start(finished_run: Path, starts: list[Path]) -> None:
    """The control for the table above: the untampered checkpoint is accepted."""
    main(["run", "--resume", str(finished_run), "--set", "federation.rounds=2"])
    assert starts == [finished_run]


def test_strategy_state_holds_only_declared_fields(make_scenario) -> None:
    """No configuration travels in a checkpoint: DP's accountant and clipping norm only."""
    arrays, meta = strategy_state(build_strategy(make_scenario(privacy=ADAPTIVE_DP)))
    assert not arrays
    assert set(meta) == {".inner.clipping_norm", ".inner.privacy_accountant"}


# ------------------------------------------------------------------ fuzzing the loader


@pytest.fixture
def dp_run(make_scenario, task_identity) -> tuple[Path, object]:
    """A one-round run with adaptive client-level DP (an accountant and a number in its
    strategy state), and its scenario."""
    scenario = make_scenario(privacy=ADAPTIVE_DP, **FINISHED)
    run_server(LocalGrid(scenario), scenario, Path(scenario.output.dir), quiet=True)
    return Path(scenario.output.dir), scenario


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([0, 1, 2, 624, 625, 5056, "MT19937", "rdp", ".inner.clipping_norm"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def json_mutations(draw: st.DrawFn) -> Callable[[Path], None]:
    """Replace, drop or add one value somewhere in state.json."""
    seeds = draw(st.lists(st.integers(0, 2**16), min_size=1, max_size=8))
    action = draw(st.sampled_from(["replace", "drop", "add"]))
    value = draw(JSON_VALUES)

    def change(meta: dict) -> None:
        node, key = meta, None  # the value changed is node[key]; None: one is added to node
        for seed in seeds:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = keys[seed % len(keys)]
            if not isinstance(node[key], dict | list) or seed % 5 == 0:
                break
            node, key = node[key], None
        if key is None or action == "add":
            node.append(value) if isinstance(node, list) else node.__setitem__("extra", value)
        elif action == "drop":
            del node[key]
        else:
            node[key] = value

    return _edit_json(change)


@st.composite
def byte_mutations(draw: st.DrawFn) -> Callable[[Path], None]:
    """Overwrite, cut or insert bytes of one file."""
    name = draw(st.sampled_from(["state.json", "weights.safetensors", "state.safetensors"]))
    at = draw(st.floats(0, 1))
    data = draw(st.binary(max_size=8))
    cut = draw(st.booleans())

    def tamper(checkpoint: Path) -> None:
        path = checkpoint / name
        raw = path.read_bytes()
        i = int(at * len(raw))
        path.write_bytes(raw[:i] + data + (b"" if cut else raw[i + len(data) :]))

    return tamper


@st.composite
def header_mutations(draw: st.DrawFn) -> Callable[[Path], None]:
    """Change one array's name, dtype or shape in a safetensors header (the data a sparse
    hole of the size it then declares, or the file's old size)."""
    name = draw(st.sampled_from(["weights.safetensors", "state.safetensors"]))
    seed = draw(st.integers(0, 2**16))
    field = draw(st.sampled_from(["name", "dtype", "shape", "drop"]))
    dtype = draw(st.sampled_from(["F32", "F64", "U8", "U32", "U64"]))
    shape = draw(
        st.lists(st.integers(0, 2**12) | st.sampled_from([1, 3, 32, 625, 2**28]), max_size=3)
    )
    new_name = draw(st.text(max_size=12) | st.sampled_from(["rng/torch", "classifier.bias"]))
    keep_size = draw(st.booleans())

    def tamper(checkpoint: Path) -> None:
        path = checkpoint / name
        header, size = header_of(path), path.stat().st_size
        key = sorted(header)[seed % len(header)]
        if field == "name":
            header[new_name] = header.pop(key)
        elif field == "dtype":
            header[key] = (dtype, header[key][1])
        elif field == "shape":
            header[key] = (header[key][0], shape)
        else:
            del header[key]
        too_big = field == "shape" and math.prod(shape) > 2**30  # holes of a few GiB at most
        write_header(path, header, size if keep_size or too_big else None)

    return tamper


MUTATIONS = json_mutations() | byte_mutations() | header_mutations()


def loaded_or_refused(run: Path, scenario, tamper: Callable[[Path], None]) -> None:
    """A tampered copy of `run`'s checkpoint is loaded (and then restores into a fresh
    strategy) or refused with one CheckpointError line; nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(run / "checkpoint", Path(tmp) / "checkpoint")
        tamper(Path(tmp) / "checkpoint")
        try:
            checkpoint = load_checkpoint(Path(tmp), scenario)
        except CheckpointError as exc:
            assert len(str(exc).splitlines()) == 1
            return
        saved = rng_state()
        try:
            checkpoint.restore(build_strategy(scenario))
        finally:
            restore_rng(*saved)


@FAST
@given(tamper=MUTATIONS)
def test_checkpoint_loader_fuzz_fast(dp_run, tamper) -> None:
    loaded_or_refused(*dp_run, tamper)


@pytest.mark.slow
@SLOW
@given(tamper=MUTATIONS)
def test_checkpoint_loader_fuzz(dp_run, tamper) -> None:
    loaded_or_refused(*dp_run, tamper)
