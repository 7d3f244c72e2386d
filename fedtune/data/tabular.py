"""Tabular features beside the text: the columns a scenario declares (`TabularSpec`: their
normalisation and vocabularies, declared, never computed from the clients' rows) and the
encoding of rows into the numeric and categorical tensors a fusion model reads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedtune.errors import DataError, short

if TYPE_CHECKING:
    import datasets

    from fedtune.config import TabularConfig


Rows = Mapping[str, Sequence[Any]]
"""Columns of equal length: a dict of lists, an HF `datasets` batch or a pandas frame."""


# ---- spec -------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NumericColumn(_Frozen):
    """A numeric column, normalised as (value - mean) / std."""

    name: str
    mean: float = Field(allow_inf_nan=False)
    std: float = Field(gt=0.0, allow_inf_nan=False)


class CategoricalColumn(_Frozen):
    """A categorical column: value `vocabulary[i]` has index i + 1; index 0 is reserved
    for unknown (unseen or missing) values."""

    name: str
    vocabulary: tuple[str, ...]

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalColumn:
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError(f"categorical column {self.name!r}: repeated vocabulary values")
        return self


class TabularSpec(_Frozen):
    """The tabular features a fusion model reads, in this order; JSON-serialisable."""

    numeric: tuple[NumericColumn, ...] = ()
    categorical: tuple[CategoricalColumn, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> TabularSpec:
        names = [c.name for c in (*self.numeric, *self.categorical)]
        if len(set(names)) != len(names):
            raise ValueError(f"tabular columns {names}: each column may appear once")
        return self

    @property
    def numeric_width(self) -> int:
        """Width of `encode_tabular`'s `numeric`: a value and a missing-indicator per column."""
        return 2 * len(self.numeric)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularSpec:
        return cls.model_validate(data)


def spec_from_config(cfg: TabularConfig) -> TabularSpec:
    """The TabularSpec a scenario's `data.tabular` section declares."""
    return TabularSpec(
        numeric=tuple(
            NumericColumn(name=name, mean=f.mean, std=f.std) for name, f in cfg.numeric.items()
        ),
        categorical=tuple(
            CategoricalColumn(name=name, vocabulary=tuple(values))
            for name, values in cfg.categorical.items()
        ),
    )


# ---- encoding rows ----------------------------------------------------------------------


def _column(rows: Rows, name: str) -> list[Any]:
    if name not in rows:
        raise DataError(f"tabular column {name!r} not among the columns {list(rows)}")
    return list(rows[name])


def _numbers(values: list[Any], name: str) -> np.ndarray:
    """`values` as float64, NaN where missing (None, NaN, +-inf); DataError naming the column
    on a value that is not a number."""
    raw = pd.Series(values, dtype=object)
    parsed = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = parsed.isna() & raw.notna()
    if bad.any():
        raise DataError(
            f"tabular column {name!r}: non-numeric value {short(raw[bad].iloc[0])} "
            f"(row {int(np.flatnonzero(bad)[0])})"
        )
    array = np.array(parsed, dtype=np.float64)
    array[~np.isfinite(array)] = np.nan
    return array


def _category(value: Any) -> str | None:
    """A categorical value as its vocabulary string (None when missing); integral floats
    as integers, so 3 and 3.0 are one category."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _row_count(rows: Rows, spec: TabularSpec) -> int:
    names = [c.name for c in (*spec.numeric, *spec.categorical)]
    lengths = {name: len(_column(rows, name)) for name in names}
    if len(set(lengths.values())) > 1:
        raise DataError(f"tabular columns of different lengths: {lengths}")
    if lengths:
        return next(iter(lengths.values()))
    return len(next(iter(rows.values()))) if rows else 0


def encode_tabular(rows: Rows, spec: TabularSpec) -> dict[str, torch.Tensor]:
    """`numeric` float32 [n, 2 * numeric columns]: the normalised values (0 where missing),
    then one missing-indicator per column; `categorical` int64 [n, categorical columns]:
    vocabulary indices, 0 for unknown or missing values."""
    n = _row_count(rows, spec)
    values = np.zeros((n, len(spec.numeric)), dtype=np.float64)
    missing = np.zeros_like(values)
    for j, column in enumerate(spec.numeric):
        x = _numbers(_column(rows, column.name), column.name)
        missing[:, j] = np.isnan(x)
        values[:, j] = np.where(np.isnan(x), 0.0, (x - column.mean) / column.std)
    ids = np.zeros((n, len(spec.categorical)), dtype=np.int64)
    for j, column in enumerate(spec.categorical):
        index = {value: i + 1 for i, value in enumerate(column.vocabulary)}
        ids[:, j] = [index.get(_category(v), 0) for v in _column(rows, column.name)]
    numeric = np.concatenate([values, missing], axis=1).astype(np.float32)
    return {"numeric": torch.from_numpy(numeric), "categorical": torch.from_numpy(ids)}


def with_tabular(ds: datasets.Dataset, spec: TabularSpec) -> datasets.Dataset:
    """`ds` with `numeric` and `categorical` columns from `encode_tabular` (lists per row),
    which `DataCollatorWithPadding` batches beside the tokens."""

    def encode(batch: Rows) -> dict[str, list]:
        return {name: tensor.tolist() for name, tensor in encode_tabular(batch, spec).items()}

    return ds.map(encode, batched=True)
