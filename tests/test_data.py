"""Data loading and partitioning through flwr-datasets."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedtune.config import DataConfig
from fedtune.data.corpus import (
    LABEL,
    DataError,
    _json_depth,
    build_federated_data,
    client_splits,
    label_table,
    load_examples,
    load_tweets,
)


def _label_skew(scenario) -> float:
    """Mean total-variation distance between each client's label mix and the pool's."""
    fed = build_federated_data(scenario)
    n_labels = len(fed.label_names)
    pool = np.bincount(fed.pool[LABEL], minlength=n_labels) / len(fed.pool)
    dists = []
    for pid in range(scenario.partition.num_clients):
        labels = fed.partition(pid)[LABEL]
        mix = np.bincount(labels, minlength=n_labels) / max(len(labels), 1)
        dists.append(0.5 * np.abs(mix - pool).sum())
    return float(np.mean(dists))


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shard", "pathological"])
def test_partitions_cover_the_pool_without_overlap(make_scenario, kind: str) -> None:
    scenario = make_scenario(partition={"kind": kind, "num_clients": 4, "labels_per_client": 2})
    fed = build_federated_data(scenario)
    texts = [t for pid in range(4) for t in fed.partition(pid)["text"]]
    assert len(texts) == len(set(texts)), "no example is in two partitions"
    assert set(texts) <= set(fed.pool["text"])
    assert not set(texts) & set(fed.test["text"]), "the server's test split stays out"
    table = label_table(fed)
    assert sum(c["num_examples"] for c in table["clients"]) == len(texts)
    if kind in ("iid", "dirichlet"):
        assert len(texts) == len(fed.pool)
    if kind == "pathological":
        for client in table["clients"]:
            assert sum(1 for n in client["label_counts"].values() if n) <= 2


def test_dirichlet_skew_grows_as_alpha_shrinks(make_scenario) -> None:
    skews = [
        _label_skew(make_scenario(partition={"kind": "dirichlet", "num_clients": 4, "alpha": a}))
        for a in (100.0, 1.0, 0.1)
    ]
    assert skews[0] < skews[1] < skews[2], skews
    iid = _label_skew(make_scenario(partition={"kind": "iid", "num_clients": 4}))
    assert iid < skews[1]


def test_natural_split_by_column(make_scenario) -> None:
    scenario = make_scenario(partition={"kind": "natural", "num_clients": 3, "column": "company"})
    fed = build_federated_data(scenario)
    names = set()
    for pid in range(3):
        companies = set(fed.partition(pid)["company"])
        assert len(companies) == 1
        assert fed.client_name(pid) in companies
        names |= companies
    assert names == {"co0", "co1", "co2"}


def test_natural_split_needs_matching_client_count(make_scenario) -> None:
    scenario = make_scenario(partition={"kind": "natural", "num_clients": 2, "column": "company"})
    with pytest.raises(DataError, match="num_clients=2 but column 'company' has 3 distinct"):
        build_federated_data(scenario)


def test_same_seed_same_partitions(make_scenario) -> None:
    a = build_federated_data(make_scenario(partition={"kind": "dirichlet", "num_clients": 3}))
    b = build_federated_data(make_scenario(partition={"kind": "dirichlet", "num_clients": 3}))
    for pid in range(3):
        assert a.partition(pid)["text"] == b.partition(pid)["text"]


def test_client_splits_are_disjoint(make_scenario) -> None:
    scenario = make_scenario()
    fed = build_federated_data(scenario)
    train, val = client_splits(fed, 0, 0.2, scenario.seed)
    assert len(train) + len(val) == len(fed.partition(0))
    assert len(val) > 0
    assert not set(train["text"]) & set(val["text"])


def test_file_source_missing_column(toy_csv: Path) -> None:
    cfg = DataConfig(source=str(toy_csv), text_column="body", label_column="sentiment")
    with pytest.raises(DataError, match="data.text_column 'body' not among the columns"):
        load_examples(cfg, seed=0)


def test_file_source_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n' * 5)
    ds = load_examples(DataConfig(source=str(path)), seed=0)
    assert len(ds) == 2, "exact duplicate texts are dropped"
    assert ds.features[LABEL].names == ["0", "1"]


def _parquet(columns: dict[str, pa.Array], names: list[str] | None = None) -> bytes:
    """A parquet file of `columns` (under `names` when given: repeats allowed)."""
    table = pa.Table.from_arrays(list(columns.values()), names=names or list(columns))
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


TWO_ROWS = {
    "text": pa.array(["good", "awful"]),
    "label": pa.array([1, 0]),
    "x": pa.array(["a", "b"]),
}
STRADDLING_CHANGE = (
    b'{"text": "a", "label": 1, "k": ""}\n{"text": "%s", "label": 0, "k": true}\n'
    % (b"a" * 330_000)
)
"""Column `k` changes kind in a row longer than pyarrow's 320 KB blocks."""


def _wide(columns: int) -> bytes:
    """A CSV file of `columns` columns and a label, no text, two rows."""
    header = "".join(f"c{i}," for i in range(columns)) + "label\n"
    return (header + ("0," * columns + "1\n") * 2).encode()


BAD_DATA_FILES = [
    ("d.csv", b"text,label,text\ngood,1,bad\nawful,0,fine\n", "column 'text' appears more"),
    ("d.jsonl", b'{"text": "good", "label": 1, "text": "bad"}\n', "column 'text' appears more"),
    ("d.json", b'[{"text": "good", "label": 1, "label": 0}]', "column 'label' appears more"),
    ("d.parquet", _parquet(TWO_ROWS, ["text", "label", "text"]), "column 'text' appears more"),
    ("d.parquet", _parquet({"text": pa.array([], pa.string())}), "no examples"),
    ("d.jsonl", b'{"text": "good", "label": 1}\n{"text": \n', "cannot read as json: JSON parse"),
    (
        "d.parquet",
        _parquet({"text": pa.array([b"\xff", b"ok"]), "label": pa.array([1, 0])}),
        "data.text_column 'text': needs all strings, found binary values",
    ),
    # pyarrow's JSON reader crashed the process (SIGSEGV) on these two
    ("d.jsonl", b'{"text": ' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", "nested more than 100"),
    ("d.jsonl", STRADDLING_CHANGE, "column 'k' mixes boolean, string values"),
    ("d.csv", _wide(200), "data.text_column 'text' not among the columns ['c0', 'c1', "),
    ("d.csv", _wide(3000), "3001 columns, more than 256"),  # took minutes to load
]


@pytest.mark.parametrize(
    ("name", "content", "message"), BAD_DATA_FILES, ids=[f"{n}: {m}" for n, _, m in BAD_DATA_FILES]
)
def test_bad_data_files_give_one_line_errors(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_examples(DataConfig(source=str(path)), seed=0)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and text.splitlines() == [text]
    assert len(text) < len(str(path)) + 300, "an error never repeats a huge input"


def test_blank_csv_header_cells_are_unnamed_columns_not_repeats(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label,,\ngood,1,,\nawful,0,,\n")
    assert len(load_examples(DataConfig(source=str(path)), seed=0)) == 2


def test_nan_labels_and_texts_are_missing(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    rows = [("a", "1.5"), ("b", "NaN"), ("c", "0.5")]
    labels.write_text("".join(f'{{"text": "{t}", "label": {y}}}\n' for t, y in rows))
    ds = load_examples(DataConfig(source=str(labels)), seed=0)
    assert sorted(ds["text"]) == ["a", "c"] and ds.features[LABEL].names == ["0.5", "1.5"]
    texts = tmp_path / "texts.parquet"
    texts.write_bytes(
        _parquet({"text": pa.array([1.0, np.nan, 2.0]), "label": pa.array([0, 1, 1])})
    )
    assert sorted(load_examples(DataConfig(source=str(texts)), seed=0)["text"]) == ["1", "2"]


def test_builtin_airline_tweets() -> None:
    ds = load_tweets("airline-tweets")
    assert 14_000 < len(ds) < 15_000
    assert set(ds[LABEL]) == {"negative", "neutral", "positive"}
    counts = Counter(ds["airline"])
    assert set(counts) == {
        "united",
        "usairways",
        "americanair",
        "southwestair",
        "jetblue",
        "virginamerica",
    }
    assert all("@" + ds["airline"][i] in ds["text"][i].lower() for i in range(0, len(ds), 97))


def test_builtin_aapl_tweets() -> None:
    ds = load_tweets("aapl-tweets")
    assert 900 < len(ds) < 1_100
    assert all("$aapl" in t.lower() or "#aapl" in t.lower() for t in ds["text"])


def test_json_depth_counts_brackets_outside_strings_in_one_pass() -> None:
    """Brackets inside strings do not count; a string that never closes runs to the end
    (found in review: the pattern rescanned it from every later quote, quadratic: 1 MB of
    `\\"` would have taken hours)."""
    assert _json_depth('[[{"a": "]}]"}]]') == 3
    assert _json_depth('{"a": [1, {"b": "x\\"y"}]}') == 3
    assert _json_depth('[["]]') == 2
    assert _json_depth('"' + '\\"' * 500_000) == 0  # 1 MB, one pass
