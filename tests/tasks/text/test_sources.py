"""Text sources: every format, the document's location, labels, and AG News' escapes."""

from __future__ import annotations

import gzip
import json

import pytest

from tasks.image.sources import SourceError
from tasks.text.sources import clean_text, is_text_source, read_documents
from tests.conftest import SAMPLE


def test_txt_one_document_per_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first doc\r\nsecond doc\n\nfourth\n")
    docs = read_documents(path)
    assert [d.location for d in docs] == ["notes.txt:line 1", "notes.txt:line 2", "notes.txt:line 3", "notes.txt:line 4"]
    assert [d.text for d in docs] == ["first doc", "second doc", "", "fourth"]  # a blank line is an (empty) document


def test_jsonl_text_field_and_bad_lines(tmp_path):
    path = tmp_path / "dump.jsonl.gz"
    lines = [
        json.dumps({"text": "hello world", "label": "a"}),
        "{not json",
        json.dumps({"body": "x"}),
        json.dumps({"text": "ok", "label": 2}),
    ]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    docs = read_documents(path)
    assert docs[0].text == "hello world" and docs[0].problem is None and docs[0].location == "dump.jsonl.gz:line 1"
    assert "not a JSON object" in docs[1].problem
    assert 'no string field "text"' in docs[2].problem
    assert read_documents(path, labeled=True)[3].label == "2"


def test_csv_text_columns_label_and_rows(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text('label,title,description\n1,Title one,"Body, with a comma"\n2,Title two,Body two\n3,short row\n')
    unlabeled = read_documents(path)
    assert [d.location for d in unlabeled] == ["news.csv:row 2", "news.csv:row 3", "news.csv:row 4"]
    assert unlabeled[0].text == "Title one\nBody, with a comma"  # every column but the label
    assert "1" not in unlabeled[0].text and unlabeled[0].label is None
    assert "2 fields, the header has 3" in unlabeled[2].problem
    labeled = read_documents(path, labeled=True)
    assert [d.label for d in labeled[:2]] == ["1", "2"]
    assert read_documents(path, text_columns=["description"])[1].text == "Body two"
    with pytest.raises(SourceError, match="no column 'topic'"):
        read_documents(path, labeled=True, label_column="topic")


def test_csv_keeps_undecodable_bytes_per_row(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"text\ngood row\ncaf\xe9 latin-1\n")
    good, bad = read_documents(path)
    assert good.raw == b"good row" and bad.raw == b"caf\xe9 latin-1"  # judged per document by validation


def test_folders_unlabeled_and_per_class(tmp_path):
    (tmp_path / "pool" / "sub").mkdir(parents=True)
    (tmp_path / "pool" / "a.txt").write_text("one")
    (tmp_path / "pool" / "sub" / "b.txt").write_text("two")
    (tmp_path / "pool" / ".hidden.txt").write_text("never")
    assert [d.location for d in read_documents(tmp_path / "pool")] == ["a.txt", "sub/b.txt"]
    for split in ("train", "test"):
        for cls in ("sports", "world"):
            (tmp_path / "lab" / split / cls).mkdir(parents=True)
            (tmp_path / "lab" / split / cls / "x.txt").write_text(f"{split} {cls}")
    docs = read_documents(tmp_path / "lab", labeled=True)
    assert {(d.split, d.label, d.text) for d in docs} == {(s, c, f"{s} {c}") for s in ("train", "test") for c in ("sports", "world")}


def test_is_text_source(tmp_path):
    assert is_text_source(SAMPLE / "news.csv.gz") and is_text_source("x.jsonl") and is_text_source("x.txt")
    assert not is_text_source(SAMPLE / "unlabeled.tar.gz") and not is_text_source("torchvision:CIFAR10")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    assert is_text_source(tmp_path / "texts")
    (tmp_path / "texts" / "b.jpg").write_bytes(b"\xff\xd8")
    assert not is_text_source(tmp_path / "texts"), "a folder with images is an image source"


def test_missing_or_wrong_sources(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        read_documents(tmp_path / "nope.csv")
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(SourceError, match="not a text source"):
        read_documents(tmp_path / "x.parquet")
    (tmp_path / "broken.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(SourceError, match=r"broken\.csv\.gz: cannot be read"):
        read_documents(tmp_path / "broken.csv.gz")


def test_clean_text_undoes_ag_news_escapes():
    assert clean_text("A second\\team of  rocketeers, the  #36;10 million prize") == "A second team of rocketeers, the $10 million prize"
    assert clean_text("the world #39;s  quot;helping quot; &lt;b&gt;") == 'the world \'s "helping " <b>'
    assert clean_text("issue#39; stays") == "issue#39; stays", "an entity glued to a word is not an AG News escape"
    assert clean_text("  \t  ") == ""


def test_the_bundled_sample_is_disjoint_and_label_free():
    pool, labeled = read_documents(SAMPLE / "news.csv.gz"), read_documents(SAMPLE / "news_labeled.csv.gz", labeled=True)
    assert len(pool) == 1500 and len(labeled) == 1000
    assert not {d.raw for d in pool} & {d.raw for d in labeled}
    with gzip.open(SAMPLE / "news.csv.gz", "rt") as handle:
        assert handle.readline().strip() == "title,description", "pretraining must not see labels"
