"""MovieLens click examples on tiny hand-written atomic files, ranking metrics by hand, and one
check of the real MovieLens-100K (skipped without the `recbole` wheel)."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pytest

from fedtune.data import movielens
from fedtune.data.corpus import DataError
from fedtune.data.movielens import click_examples, click_frame, read_atomic
from fedtune.modeling.metrics import hit_rate_at_k, ndcg_at_k

ITEMS = [
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "1\tAlpha\t1990\tComedy Drama",
    "2\tBeta\t1995\tAction",
    "3\tGamma\tunknown\tDrama",
    "4\tDelta\t2000\tDrama",
]
USERS = [
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "u1\t20\tM\tstudent\t11111",
    "u2\t30\tF\tother\t22222",
    "u3\t40\tM\twriter\t33333",
]
# Out of time order on purpose; u2 rates items 1 and 3 at the same time (1 first in the file).
INTERACTIONS = [
    "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "u1\t4\t5\t40",
    "u2\t1\t4\t6",
    "u1\t1\t5\t10",
    "u3\t4\t3\t3",
    "u2\t3\t1\t6",
    "u1\t3\t4\t30",
    "u2\t2\t4\t5",
    "u1\t2\t2\t20",
    "u2\t4\t3\t9",
]


def write_atomic(directory: Path, users: list[str] = USERS) -> Path:
    directory.mkdir(exist_ok=True)
    for kind, lines in (("inter", INTERACTIONS), ("item", ITEMS), ("user", users)):
        (directory / f"{directory.name}.{kind}").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_atomic(tmp_path / "ml-tiny")


def rows(frame, user: str) -> dict[str, dict]:
    """The user's rows keyed by item id."""
    return {row["item_id"]: row for row in frame[frame["user_id"] == user].to_dict("records")}


def test_read_atomic_strips_types(tiny: Path) -> None:
    frame = read_atomic(tiny / "ml-tiny.item", ("item_id", "class"))
    assert list(frame.columns) == ["item_id", "movie_title", "release_year", "class"]
    assert frame["class"].tolist()[0] == "Comedy Drama"


def test_rows_sorted_per_user_by_time_and_labels_follow_rating(tiny: Path) -> None:
    frame = click_frame(tiny)
    assert len(frame) == 9
    assert frame[frame["user_id"] == "u1"]["item_id"].tolist() == ["1", "2", "3", "4"]
    assert frame[frame["user_id"] == "u2"]["item_id"].tolist() == ["2", "1", "3", "4"]
    ratings = {("u1", "1"): 5, ("u1", "2"): 2, ("u2", "2"): 4, ("u2", "3"): 1, ("u3", "4"): 3}
    for (user, item), rating in ratings.items():
        assert rows(frame, user)[item]["label"] == ("like" if rating >= 4 else "skip")


def test_split_marks_each_users_last_interactions(tiny: Path) -> None:
    frame = click_frame(tiny, test_last=2)
    test = frame[frame["split"] == "test"]
    assert sorted(zip(test["user_id"], test["item_id"], strict=True)) == [
        ("u1", "3"),
        ("u1", "4"),
        ("u2", "3"),
        ("u2", "4"),
        ("u3", "4"),  # u3's only rating
    ]
    assert set(click_frame(tiny, test_last=0)["split"]) == {"train"}


def test_history_holds_only_earlier_liked_training_items(tiny: Path) -> None:
    frame = click_frame(tiny, history=5, test_last=2)
    u1, u2 = rows(frame, "u1"), rows(frame, "u2")
    assert u1["1"]["text"] == "Alpha (1990). Genres: Comedy Drama. Liked before: none"
    assert u1["2"]["text"].endswith("Liked before: Alpha")
    # Gamma (held out, liked) never shows in Delta's history, nor does Beta (skipped).
    assert u1["3"]["text"] == "Gamma. Genres: Drama. Liked before: Alpha"
    assert u1["4"]["text"].endswith("Liked before: Alpha")
    # Alpha and Gamma share a timestamp: neither is before the other.
    assert u2["1"]["text"].endswith("Liked before: Beta")
    assert u2["3"]["text"].endswith("Liked before: Beta")
    assert u2["4"]["text"].endswith("Liked before: Alpha; Beta")  # most recent first
    assert rows(click_frame(tiny, history=1), "u2")["4"]["text"].endswith("Liked before: Alpha")
    assert rows(frame, "u3")["4"]["text"].endswith("Liked before: none")


def test_tabular_columns(tiny: Path) -> None:
    frame = click_frame(tiny)
    u1, u2 = rows(frame, "u1"), rows(frame, "u2")
    assert [u1[i]["user_prior_count"] for i in "1234"] == [0, 1, 2, 2]
    assert math.isnan(u1["1"]["user_prior_like_rate"])
    assert [u1[i]["user_prior_like_rate"] for i in "234"] == [1.0, 0.5, 0.5]
    assert [u2[i]["user_prior_count"] for i in "2134"] == [0, 1, 1, 2]
    assert math.isnan(u1["3"]["release_year"])
    assert u1["1"]["release_year"] == 1990.0
    assert (u1["1"]["age"], u1["1"]["gender"], u1["1"]["occupation"]) == (20.0, "M", "student")
    assert (u1["1"]["genre"], u1["2"]["genre"]) == ("Comedy", "Action")
    assert list(frame.columns) == [
        "user_id",
        "item_id",
        "timestamp",
        "text",
        "label",
        *movielens.NUMERIC,
        *movielens.CATEGORICAL,
        "split",
    ]


def test_dataset_labels_are_skip_then_like(tiny: Path) -> None:
    ds = click_examples(tiny)
    assert ds.features["label"].names == ["skip", "like"]
    assert ds.num_rows == 9
    labels = dict(zip(zip(ds["user_id"], ds["item_id"], strict=True), ds["label"], strict=True))
    assert labels[("u1", "1")] == 1
    assert labels[("u1", "2")] == 0


def test_missing_column_is_a_one_line_error(tmp_path: Path) -> None:
    users = [line.rsplit("\t", 2)[0] + "\t" + line.rsplit("\t", 1)[1] for line in USERS]
    directory = write_atomic(tmp_path / "ml-bad", users=users)  # no occupation column
    with pytest.raises(DataError, match="ml-bad.user: no column 'occupation'") as info:
        click_frame(directory)
    assert "\n" not in str(info.value)


def test_missing_file_and_missing_item_are_one_line_errors(tiny: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_atomic(tiny / "nothing.inter")
    (tiny / "ml-tiny.item").write_text("\n".join(ITEMS[:-1]) + "\n")  # no item 4
    with pytest.raises(DataError, match="item_id absent from it") as info:
        click_frame(tiny)
    assert "\n" not in str(info.value)


def test_ml100k_dir_without_recbole_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(movielens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps recbole==1\.2\.1"):
        movielens.ml100k_dir()


# Groups A (2 positives), B (1), C (none: left out), D (a single, positive item).
LABELS = [1, 0, 0, 1, 0, 1, 0, 1]
SCORES = [0.9, 0.7, 0.8, 0.2, 0.5, 0.1, 0.4, 0.3]
GROUPS = ["A", "B", "A", "B", "C", "A", "C", "D"]


def test_ndcg_at_k_by_hand() -> None:
    # A ranks (1, 0, 1): DCG 1 + 1/log2(4), ideal 1 + 1/log2(3); B ranks (0, 1); D is ideal.
    a = 1.5 / (1 + 1 / math.log2(3))
    b = 1 / math.log2(3)
    assert ndcg_at_k(LABELS, SCORES, GROUPS, k=10) == pytest.approx((a + b + 1) / 3, abs=1e-12)
    assert ndcg_at_k(LABELS, SCORES, GROUPS, k=1) == pytest.approx(2 / 3, abs=1e-12)
    assert math.isnan(ndcg_at_k([0, 0], [0.1, 0.2], ["x", "x"]))


def test_hit_rate_at_k_by_hand() -> None:
    assert hit_rate_at_k(LABELS, SCORES, GROUPS, k=1) == pytest.approx(2 / 3)  # A and D
    assert hit_rate_at_k(LABELS, SCORES, GROUPS, k=2) == 1.0
    with pytest.raises(ValueError, match="groups"):
        hit_rate_at_k([1, 0], [0.1, 0.2], ["x"])


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole not installed")
def test_real_movielens_100k() -> None:
    start = time.perf_counter()
    frame = click_frame(movielens.ml100k_dir())
    seconds = time.perf_counter() - start
    assert len(frame) == 100_000
    assert frame["user_id"].nunique() == 943
    assert (frame["label"] == "like").mean() == pytest.approx(0.55375)
    assert (frame["split"] == "test").sum() == 2 * 943
    assert frame["text"].str.contains(". Liked before: ", regex=False).all()
    assert seconds < 60, f"built in {seconds:.1f} s"
