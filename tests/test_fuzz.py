"""The fuzz tier (see tests/fuzzing.py): the scenario loader, `--set` overrides and the data-file
loader answer every input with a result or a one-line FedtuneError (exit 2 through the CLI),
never another exception, a hang or unbounded memory."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import json
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fuzzing import FAST, SLOW
from hypothesis import example, given
from hypothesis import strategies as st

from fedtune.config import (
    SCENARIO_DIR,
    DataConfig,
    load_scenario,
    parse_override,
    scenario_from_run_config,
)
from fedtune.data.corpus import load_examples
from fedtune.errors import FedtuneError

SECONDS = 60
"""Longest answer to one input (generous: the machine is shared)."""
MEGABYTES = 512
"""Most one input may raise the process's peak memory (inputs are a few MB at most)."""
MESSAGE_CHARS = 1000
"""Longest error line: messages never repeat a huge input."""


class Hang(BaseException):
    """An input got no answer within SECONDS (a BaseException: no `except Exception` hides it)."""


@contextlib.contextmanager
def _bounded() -> Iterator[None]:
    """Fail the input when it runs past SECONDS or raises the peak RSS by MEGABYTES."""

    def hang(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {SECONDS} s")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown < MEGABYTES, f"peak memory grew by {grown:.0f} MB"


def answers(call: Callable[[], Any]) -> Any:
    """`call()`'s result or the FedtuneError it raised, checked to be one short line; any other
    exception propagates and fails the property."""
    with _bounded():
        try:
            return call()
        except FedtuneError as exc:
            text = str(exc)
            assert text.splitlines() == [text] and len(text) <= MESSAGE_CHARS, repr(text)
            assert exc.exit_code == 2, "the command line exits 2 on a bad input"
            return exc


# ------------------------------------------------------------------ scenario files and --set

SHIPPED = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(SCENARIO_DIR.glob("*.yaml"))}


def _dotted(node: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a nested dict (sections and leaves)."""
    keys = []
    for key, value in node.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _dotted(value, f"{prefix}{key}.")
    return keys


DOTTED = sorted({key for raw in SHIPPED.values() for key in _dotted(raw)})
NAMES = st.sampled_from(
    sorted({key.rsplit(".", 1)[-1] for key in DOTTED} | {"rank_per_client", "numeric"})
)
PLUGINS = st.sampled_from(
    ["none", "iid", "dirichlet", "natural", "lora", "ia3", "topk", "int8", "fedprox", "krum"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-2, 12)
    | st.floats()
    | st.text(max_size=20)
    | PLUGINS
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(NAMES | st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = NAMES | st.text(max_size=10)


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> str:
    """A shipped scenario with a few keys replaced, dropped or added, as YAML."""
    raw = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 3))):
        node = raw
        while node and draw(st.booleans()):  # descend into a random section
            key = draw(st.sampled_from(sorted(node, key=str)))
            if not isinstance(node[key], dict):
                break
            node = node[key]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "add" or not node:
            node[draw(KEYS)] = draw(VALUES)
        else:
            key = draw(st.sampled_from(sorted(node, key=str)))
            if action == "drop":
                del node[key]
            else:
                node[key] = draw(VALUES)
    return yaml.safe_dump(raw, allow_unicode=draw(st.booleans()))


YAML_BITS = st.sampled_from(
    ["\n", "  ", "- ", ": ", "{", "}", "[", "]", ", ", "&a ", "*a", "? ", "|\n", ">\n", "'", '"']
    + ["#", "!!binary ", "!!python/object/apply:os.system ", "!!str ", "%YAML 1.1\n", "---\n"]
    + ["...\n", "<<: ", "~", ".nan", ".inf", "1e400", "0x1F", "2001-12-14", "\t", "\\u0000"]
    + ["model", "data", "federation", "partition", "kind", "num_clients", "seed", "name"]
)
DEEP_YAML = st.builds(
    lambda where, depth: f"{where}: {'[' * depth}{']' * depth}\n",
    st.sampled_from(["description", "partition:\n  alpha", "federation:\n  strategy_params"]),
    st.integers(1, 1000),
)
"""Nesting up to past the parser's recursion."""
RANDOM_YAML = st.lists(YAML_BITS | st.text(max_size=5), max_size=40).map("".join) | DEEP_YAML


def _scenario_file(path: Path, data: bytes) -> Any:
    path.write_bytes(data)
    return answers(lambda: load_scenario(path))


@FAST
@given(text=mutated_scenarios())
def test_mutated_scenario_fuzz_fast(tmp_path: Path, text: str) -> None:
    _scenario_file(tmp_path / "fuzz.yaml", text.encode())


@pytest.mark.slow
@SLOW
@given(text=mutated_scenarios())
def test_mutated_scenario_fuzz(tmp_path: Path, text: str) -> None:
    _scenario_file(tmp_path / "fuzz.yaml", text.encode())


@FAST
@given(text=RANDOM_YAML)
def test_random_yaml_scenario_fuzz_fast(tmp_path: Path, text: str) -> None:
    _scenario_file(tmp_path / "fuzz.yaml", text.encode())


@pytest.mark.slow
@SLOW
@given(text=RANDOM_YAML)
def test_random_yaml_scenario_fuzz(tmp_path: Path, text: str) -> None:
    _scenario_file(tmp_path / "fuzz.yaml", text.encode())


@FAST
@given(data=st.binary(max_size=2000))
def test_random_bytes_scenario_fuzz_fast(tmp_path: Path, data: bytes) -> None:
    _scenario_file(tmp_path / "fuzz.yaml", data)


@pytest.mark.slow
@SLOW
@given(data=st.binary(max_size=2000))
def test_random_bytes_scenario_fuzz(tmp_path: Path, data: bytes) -> None:
    _scenario_file(tmp_path / "fuzz.yaml", data)


OVERRIDE_KEYS = st.sampled_from(DOTTED) | st.tuples(st.sampled_from(DOTTED), KEYS).map(".".join)
OVERRIDE_VALUES = (
    st.sampled_from(["", "1", "-1", "0.5", "null", "[1, 2]", "{a: 1}", "x", "&a [*a]"])
    | VALUES.map(json.dumps)
    | st.text()
)
OVERRIDE_ITEM = st.tuples(OVERRIDE_KEYS | st.text(max_size=30), OVERRIDE_VALUES).map("=".join)
OVERRIDE_ITEMS = (
    st.integers(0, 4)
    .flatmap(  # at times an item with no '=', an empty key, ...
        lambda n: st.lists(OVERRIDE_ITEM if n else st.text(max_size=40), min_size=1, max_size=3)
    )
    .filter(lambda items: not any("\x00" in item for item in items))  # argv holds no NUL
)


def _overrides(items: list[str]) -> None:
    """`fedtune run quickstart --set ITEM ...`, and a Flower run config's `set`."""
    answers(lambda: load_scenario("quickstart", dict(parse_override(i) for i in items)))
    answers(lambda: scenario_from_run_config({"scenario": "quickstart", "set": " ".join(items)}))


BROKEN_KEY = example(items=["bo\ngus=1"])
"""Found: the key went into the error unquoted, on two lines."""


@FAST
@BROKEN_KEY
@given(items=OVERRIDE_ITEMS)
def test_set_overrides_fuzz_fast(items: list[str]) -> None:
    _overrides(items)


@pytest.mark.slow
@SLOW
@BROKEN_KEY
@given(items=OVERRIDE_ITEMS)
def test_set_overrides_fuzz(items: list[str]) -> None:
    _overrides(items)


# ------------------------------------------------------------------ data files

COLUMN_NAMES = st.sampled_from(["text", "label", "id", "", " text", "Text", "label.1"])
CELL_KINDS = [
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 3),
    st.floats(),
    st.sampled_from(["good", "bad", "ok", "", " ", "NaN", "null", "1", "a,b", 'q"uote', "x\ny"]),
    st.text(max_size=20),
    st.integers(10_000, 300_000).map(lambda n: "long " * n),  # a huge field, within a bound
    st.binary(max_size=4),  # parquet: a binary column
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
]
CELLS = st.one_of(CELL_KINDS)
PLAUSIBLE = {
    "text": [st.text(min_size=1, max_size=20)],
    "label": [st.integers(0, 2), st.sampled_from(["pos", "neg", "neutral"])],
}
"""The kinds of cells of a column that loads, by its name."""
ENCODINGS = st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1", "cp1252"])


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    """Column names (text and label or not, odd ones, at times one repeated) and rows of
    cells: a column's cells share one kind or mix them; some rows are short or long."""
    names = ["text", "label"] if draw(st.integers(0, 3)) else []
    names += draw(
        st.lists(
            (COLUMN_NAMES | st.text(max_size=6)).filter(lambda n: n not in names),
            max_size=4,
            unique=True,
        )
    )
    if names and not draw(st.integers(0, 4)):
        names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(names)))
    kinds = [
        draw(st.sampled_from(PLAUSIBLE.get(name, [CELLS]) * 3 + [*CELL_KINDS, CELLS]))
        for name in [*names, "extra"]  # a long row's extra cell
    ]
    n_rows = draw(st.integers(0, 12))
    columns = [draw(st.lists(kind, min_size=n_rows, max_size=n_rows)) for kind in kinds]
    ragged = [0, 0, -1, 1] if not draw(st.integers(0, 3)) else [0]  # short or long rows
    widths = st.sampled_from(ragged).map(lambda d: max(len(names) + d, 0))
    rows = [[column[i] for column in columns][: draw(widths)] for i in range(n_rows)]
    wide = [f"c{i}" for i in range(draw(st.sampled_from([0] * 18 + [200, 2000])))]  # many
    return [*wide, *names], [[0] * len(wide) + row for row in rows]


def _csv(names: list[str], rows: list[list[Any]]) -> str:
    """A header and rows (None as an empty cell)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(names)
    writer.writerows([["" if cell is None else cell for cell in row] for row in rows])
    return out.getvalue()


def _latin1(value: bytes) -> str:
    """Bytes in JSON: as latin-1 text."""
    return value.decode("latin-1")


def _json_objects(names: list[str], rows: list[list[Any]]) -> list[str]:
    """One object a row, written by hand so that a repeated name stays repeated."""
    pairs = [zip(names, row, strict=False) for row in rows]  # a short row: fewer keys
    return [
        "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v, default=_latin1)}" for k, v in p) + "}"
        for p in pairs
    ]


def _parquet_column(cells: list[Any]) -> pa.Array:
    """The cells as one column of the type pyarrow infers, else (mixed types, a struct with no
    field, ...) as strings."""
    try:
        array = pa.array(cells)
        pq.write_table(pa.table({"c": array}), io.BytesIO())  # parquet can hold it
        return array
    except (pa.ArrowException, OverflowError):
        return pa.array([None if c is None else str(c) for c in cells])


def _parquet(names: list[str], rows: list[list[Any]]) -> bytes:
    columns = [[row[i] if i < len(row) else None for row in rows] for i in range(len(names))]
    arrays = [_parquet_column(cells) for cells in columns]
    out = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, names=names), out)
    return out.getvalue()


def _repeats(names: list[str]) -> bool:
    """Whether a name other than '' (an unnamed CSV column) is there twice."""
    named = [name for name in names if name]
    return len(set(named)) < len(named)


class DataFile(NamedTuple):
    """A generated data file."""

    suffix: str
    data: bytes
    repeated: bool
    """Whether a column name repeats: the file must be refused."""


@st.composite
def data_files(draw: st.DrawFn) -> DataFile:
    """A table in a format (JSON: lines or an array) and an encoding, an empty file or random
    bytes."""
    suffix = draw(st.sampled_from([".csv", ".jsonl", ".json", ".parquet"]))
    shape = draw(st.sampled_from(["table"] * 6 + ["empty", "bytes", "deep"]))
    if shape == "deep":  # nested lists in a cell, up to past pyarrow's crash (20,000 levels)
        depth = draw(st.integers(1, 40_000))
        return DataFile(
            suffix, b'{"text": %s, "label": 1}\n' % (b"[" * depth + b"]" * depth), False
        )
    if shape != "table":
        return DataFile(suffix, draw(st.binary(max_size=0 if shape == "empty" else 2000)), False)
    names, rows = draw(tables())
    if suffix == ".parquet":
        return DataFile(suffix, _parquet(names, rows), _repeats(names))
    if suffix == ".csv":
        text, repeated = _csv(names, rows), _repeats(names)
    else:
        objects = _json_objects(names, rows)
        array = suffix == ".json" and draw(st.booleans())
        text = f"[{', '.join(objects)}]" if array else "".join(f"{o}\n" for o in objects)
        repeated = any(_repeats(names[: len(row)]) for row in rows)
    return DataFile(suffix, text.encode(draw(ENCODINGS), errors="replace"), repeated)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory for the generated files, HF datasets' cache inside it."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


_serial = itertools.count()


def _data_file(directory: Path, file: DataFile, columns: tuple[str, str]) -> None:
    """Load one generated file (a new name each time: datasets caches by path and mtime)."""
    path = directory / f"fuzz-{next(_serial)}{file.suffix}"
    path.write_bytes(file.data)
    cfg = DataConfig(source=str(path), text_column=columns[0], label_column=columns[1])
    result = answers(lambda: load_examples(cfg, seed=0))
    assert isinstance(result, FedtuneError) or not file.repeated, "a repeated column is refused"


DATA_COLUMNS = st.sampled_from([("text", "label")] * 3 + [("label", "text"), ("id", "label")])


REPEATED_TEXT = example(
    file=DataFile(".csv", b"text,label,text\ngood,1,bad\nawful,0,fine\n", repeated=True),
    columns=("text", "label"),
)
"""Known: trained on one of the two `text` columns, silently."""
BINARY_TEXT = example(
    file=DataFile(".parquet", _parquet(["text", "label"], [[b"\xff", 1], [b"ok", 0]]), False),
    columns=("text", "label"),
)
"""Found: a traceback (ArrowInvalid) casting bytes that are not UTF-8 to text."""
WIDE = example(
    file=DataFile(".csv", _csv([f"c{i}" for i in range(2000)], [[0] * 2000] * 2).encode(), False),
    columns=("text", "label"),
)
"""Found: minutes to load (`datasets` is quadratic in the columns); the error listed them all."""


@FAST
@REPEATED_TEXT
@BINARY_TEXT
@WIDE
@given(file=data_files(), columns=DATA_COLUMNS)
def test_data_file_fuzz_fast(data_dir: Path, file: DataFile, columns: tuple) -> None:
    _data_file(data_dir, file, columns)


@pytest.mark.slow
@SLOW
@REPEATED_TEXT
@BINARY_TEXT
@WIDE
@given(file=data_files(), columns=DATA_COLUMNS)
def test_data_file_fuzz(data_dir: Path, file: DataFile, columns: tuple) -> None:
    _data_file(data_dir, file, columns)
