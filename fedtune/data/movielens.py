"""MovieLens-100K as like/skip prediction: one example per rating, text plus tabular features.

The data ship inside the PyPI wheel `recbole==1.2.1` as RecBole "atomic files" (tab-separated,
a header of `name:type` fields); fedtune locates them without importing `recbole` and never
copies them (their licence forbids redistribution). Each example's text describes the rated
movie and what its user liked strictly earlier in time, so no current or future rating leaks
into it; each user's last ratings form the test split, for ranking metrics per user.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from fedtune.errors import DataError, short

ML100K = "dataset_example/ml-100k"
LABEL_NAMES = ("skip", "like")
"""Label names in class-index order: `like` (rating >= LIKE_RATING) is class 1."""
LIKE_RATING = 4.0
NUMERIC = ("age", "release_year", "user_prior_count", "user_prior_like_rate")
"""Numeric feature columns of `click_examples` (NaN where unknown)."""
CATEGORICAL = ("gender", "occupation", "genre")
"""Categorical feature columns of `click_examples` (strings; `genre` is the first listed)."""
INTER_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ITEM_COLUMNS = ("item_id", "movie_title", "release_year", "class")
USER_COLUMNS = ("user_id", "age", "gender", "occupation")


def ml100k_dir() -> Path:
    """The directory of MovieLens-100K's atomic files inside the installed `recbole` wheel."""
    spec = importlib.util.find_spec("recbole")  # never imported: its __init__ imports torch
    hint = "MovieLens-100K needs the package 'recbole' (pip install --no-deps recbole==1.2.1)"
    if spec is None or not spec.submodule_search_locations:
        raise DataError(hint)
    directory = Path(next(iter(spec.submodule_search_locations))) / ML100K
    if not (directory / "ml-100k.inter").is_file():
        raise DataError(f"{directory}: no ml-100k.inter; {hint}")
    return directory


def read_atomic(path: Path | str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """One atomic file as strings, `:type` suffixes stripped from the column names; raise
    DataError if it is missing or lacks one of `columns`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        frame = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as an atomic file: {exc}".splitlines()[0]) from None
    frame.columns = [str(name).split(":", 1)[0] for name in frame.columns]
    for column in columns:
        if column not in frame.columns:
            raise DataError(f"{path}: no column {column!r} (found {list(frame.columns)})")
    return frame


def _numbers(frame: pd.DataFrame, column: str, path: Path, strict: bool) -> pd.Series:
    """`column` as floats; an unparsable value is NaN, or a DataError when `strict`."""
    values = pd.to_numeric(frame[column], errors="coerce").astype(float)
    if strict and values.isna().any():
        example = frame[column][values.isna()].iloc[0]
        raise DataError(f"{path}: column {column!r} holds a non-numeric value {short(example)}")
    return values


def _join(inter: pd.DataFrame, table: pd.DataFrame, key: str, path: Path) -> pd.DataFrame:
    """`inter` with `table`'s columns; every key of `inter` must appear in `table`."""
    table = table.drop_duplicates(key)
    missing = ~inter[key].isin(table[key])
    if missing.any():
        raise DataError(
            f"{path}: {int(missing.sum())} interaction(s) name a {key} absent from it "
            f"(e.g. {short(inter[key][missing].iloc[0])})"
        )
    return inter.merge(table, on=key, how="left", validate="many_to_one")


def _load(directory: Path) -> pd.DataFrame:
    """Interactions joined with their users and items, sorted per user by timestamp (ties
    keep the file's order)."""
    name = directory.name
    paths = {kind: directory / f"{name}.{kind}" for kind in ("inter", "item", "user")}
    inter = read_atomic(paths["inter"], INTER_COLUMNS)[list(INTER_COLUMNS)]
    items = read_atomic(paths["item"], ITEM_COLUMNS)[list(ITEM_COLUMNS)]
    users = read_atomic(paths["user"], USER_COLUMNS)[list(USER_COLUMNS)]
    inter["rating"] = _numbers(inter, "rating", paths["inter"], strict=True)
    inter["timestamp"] = _numbers(inter, "timestamp", paths["inter"], strict=True).astype("int64")
    items["release_year"] = _numbers(items, "release_year", paths["item"], strict=False)
    users["age"] = _numbers(users, "age", paths["user"], strict=False)
    frame = _join(_join(inter, items, "item_id", paths["item"]), users, "user_id", paths["user"])
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _histories(frame: pd.DataFrame, likes_before: np.ndarray, history: int) -> list[str]:
    """Per row, `history` titles (most recent first) of the user's `history_liked` rows, the
    last of the first `likes_before` of them."""
    texts: list[str] = []
    for _, group in frame.groupby("user_id", sort=False):
        liked = group["movie_title"][group["history_liked"]].tolist()
        for n in likes_before[group.index]:
            recent = liked[max(0, n - history) : n][::-1] if history else []
            texts.append("; ".join(recent) if recent else "none")
    return texts


def click_frame(directory: Path | str, history: int = 5, test_last: int = 2) -> pd.DataFrame:
    """One row per rating of the atomic files `<dir>/<dir name>.{inter,item,user}`, sorted per
    user by timestamp (ties keep the file's order). `split` is `test` for each user's last
    `test_last` ratings, else `train`; `label` is `like` (rating >= 4) or `skip`. `text` names
    the movie, its year and genres, and the user's last `history` liked titles (most recent
    first; `none` without any); they, `user_prior_count` and `user_prior_like_rate` (NaN
    without prior ratings) count only the user's training ratings strictly earlier in time
    (an equal timestamp is not earlier), so no rating leaks into its own or an earlier
    example, nor a held-out rating into another held-out example."""
    if history < 0 or test_last < 0:
        raise DataError(f"history={history}, test_last={test_last}: both must be >= 0")
    frame = _load(Path(directory))
    by_user = frame.groupby("user_id", sort=False)
    test = by_user.cumcount(ascending=False) < test_last
    frame["split"] = np.where(test, "test", "train")
    frame["liked"] = frame["rating"] >= LIKE_RATING
    # Only training ratings are history; ratings with the same timestamp are simultaneous.
    known = (~test).astype(int)
    known_likes = (frame["liked"] & ~test).astype(int)
    same_time = [frame["user_id"], frame["timestamp"]]
    prior = (known.groupby(frame["user_id"]).cumsum() - known).groupby(same_time).transform("min")
    prior_likes = known_likes.groupby(frame["user_id"]).cumsum() - known_likes
    prior_likes = prior_likes.groupby(same_time).transform("min")
    frame["user_prior_count"] = prior.astype("int64")
    frame["user_prior_like_rate"] = (prior_likes / prior.where(prior > 0)).astype(float)
    frame["history_liked"] = known_likes.astype(bool)
    year = frame["release_year"].map(lambda y: "" if np.isnan(y) else f" ({int(y)})")
    genres = frame["class"].str.strip()
    liked_before = _histories(frame, prior_likes.to_numpy(dtype=int), history)
    frame["text"] = (
        frame["movie_title"] + year + ". Genres: " + genres + ". Liked before: " + liked_before
    )
    frame["genre"] = genres.str.split().str[0].fillna("unknown")
    frame["label"] = np.where(frame["liked"], LABEL_NAMES[1], LABEL_NAMES[0])
    columns = ["user_id", "item_id", "timestamp", "text", "label", *NUMERIC, *CATEGORICAL, "split"]
    return frame[columns]


def click_examples(directory: Path | str, history: int = 5, test_last: int = 2) -> datasets.Dataset:
    """`click_frame` as an HF dataset, `label` a ClassLabel with names LABEL_NAMES (skip=0,
    like=1), so fedtune's `load_examples` keeps that order rather than sorting the names."""
    frame = click_frame(directory, history, test_last)
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in ("user_id", "item_id", "text", "split")},
            "timestamp": datasets.Value("int64"),
            "label": datasets.ClassLabel(names=list(LABEL_NAMES)),
            **{c: datasets.Value("float64") for c in ("age", "release_year")},
            "user_prior_count": datasets.Value("int64"),
            "user_prior_like_rate": datasets.Value("float64"),
            **{c: datasets.Value("string") for c in CATEGORICAL},
        }
    )
    frame = frame.assign(label=frame["label"].map(LABEL_NAMES.index))
    return datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
