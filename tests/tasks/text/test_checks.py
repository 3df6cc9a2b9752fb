"""Text validation on a real GX checkpoint: every fault named by file and line/row, stop vs quarantine, drift."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pytest

from tasks.core.config import ValidateConfig
from tasks.text.checks import DOCUMENTS, DocumentChecks
from tasks.text.sources import read_documents
from tasks.validation.html import render
from tasks.validation.source_check import quarantine_rows, run_checks
from tests.conftest import SAMPLE


def sample_texts(count: int, start: int = 0) -> list[str]:
    """Real AG News documents from the bundled sample, one line each (the AG News line joins are spaces already)."""
    return [" ".join(d.text.split()) for d in read_documents(SAMPLE / "news.csv.gz")[start : start + count]]


def write_txt(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture
def dirty_txt(tmp_path):
    """40 good documents and one of every fault, at known lines."""
    good = [t.encode() for t in sample_texts(40)]
    faults = {
        "binary": b"\x00\x01\x02PK\x03\x04 binary blob",
        "not_utf8": "caf\u00e9 au lait, a latin-1 line that is long enough".encode("latin-1"),
        "empty": b"   \t ",
        "too_short": b"ok",
        "too_long": b"x" * 600,
        "duplicate": good[3],
    }
    lines = good[:10] + list(faults.values()) + good[10:]
    path = tmp_path / "dump.txt"
    write_txt(path, lines)
    where = {fault: f"dump.txt:line {11 + i}" for i, fault in enumerate(faults)}
    return path, where


def test_clean_sample_passes_and_writes_the_report(tmp_path):
    report, table = run_checks(
        DocumentChecks(ValidateConfig()), SAMPLE / "news.csv.gz", "unlabeled", tmp_path, reference=tmp_path / "ref.json"
    )
    assert report.success and report.images == 1500 and report.accepted == 1500, report.summary()
    assert report.unit == "documents" and report.decision.startswith(f"all 1500 documents from {SAMPLE / 'news.csv.gz'} passed")
    assert set(table.columns) >= {"location", "bytes", "chars", "words", "sha256", "utf8_ok", "control_share", "fault", "accepted"}
    saved = json.loads((tmp_path / "unlabeled.json").read_text())
    assert saved["success"] and saved["statistics"]["mean_words"] > 10
    assert "documents checked" in render(saved, unit=DOCUMENTS) and "images checked" not in render(saved, unit=DOCUMENTS)
    assert "_words" not in table.columns and "_words" not in (tmp_path / "unlabeled_table.csv").read_text().splitlines()[0]
    assert (tmp_path / "data_docs" / "unlabeled" / "index.html").exists()
    reference = json.loads((tmp_path / "ref.json").read_text())["unlabeled"][str(SAMPLE / "news.csv.gz")]
    assert reference["documents"] == 1500 and len(reference["vocabulary"]) == 2000


def test_every_fault_stops_the_run_naming_the_document(tmp_path, dirty_txt):
    path, where = dirty_txt
    report, table = run_checks(DocumentChecks(ValidateConfig(max_chars=500)), path, "unlabeled", tmp_path / "out")
    assert not report.success and report.accepted == 0
    faults = dict(zip(table["location"], table["fault"], strict=True))
    for fault, location in where.items():
        assert faults[location] == fault, (fault, location)
    assert report.faults == {fault: 1 for fault in DOCUMENTS.faults if fault in where}
    message = report.summary()
    for location in where.values():
        assert location in message
    assert "same bytes as dump.txt:line 4" in message
    html = render(json.loads((tmp_path / "out" / "unlabeled.json").read_text()), table, unit=DOCUMENTS)
    assert "Offending documents" in html and where["binary"] in html and "good files" not in html
    assert "fewer than validate.min_chars characters" in html  # each text fault explained
    assert "dump.txt:line 11: binary" in message and "6 of 46 documents bad" in report.decision
    # GX itself found them: each failed expectation names its documents
    failed = {(f.expectation, f.column): f for f in report.failures}
    assert failed[("expect_column_values_to_be_unique", "sha256")].unexpected_count == 2
    assert any(e.startswith(where["too_long"]) for e in failed[("expect_column_values_to_be_between", "chars")].examples)


def test_quarantine_leaves_bad_documents_out(tmp_path, dirty_txt):
    path, where = dirty_txt
    quarantine = {"max_chars": 500, "on_fail": "quarantine"}
    too_strict, _ = run_checks(DocumentChecks(ValidateConfig(**quarantine, max_bad_fraction=0.05)), path, "unlabeled", tmp_path / "a")
    assert not too_strict.success and "max_bad_fraction" in too_strict.decision  # 6 of 46 bad is 13%
    report, table = run_checks(DocumentChecks(ValidateConfig(**quarantine, max_bad_fraction=0.2)), path, "unlabeled", tmp_path / "b")
    assert report.success and report.accepted == 40, report.summary()
    assert not table.loc[table["location"].isin(where.values()), "accepted"].any()
    rows = quarantine_rows(table, "unlabeled", DOCUMENTS)
    assert list(rows.columns) == ["path", "fault", "detail", "dataset"] and set(rows["path"]) == set(where.values())
    saved = (tmp_path / "b" / "unlabeled_table.csv").read_text()
    assert "accepted" in saved.splitlines()[0]


def test_labeled_csv_rows_and_missing_labels(tmp_path):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "title", "description"])
    for i, text in enumerate(sample_texts(30)):
        writer.writerow([str(1 + i % 2), f"title {i}", text])
    writer.writerow(["", "no label here", "a document without its label, long enough"])
    path = tmp_path / "labeled.csv.gz"
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))
    report, _ = run_checks(DocumentChecks(ValidateConfig(), labeled=True), path, "labeled", tmp_path / "out")
    assert not report.success
    assert report.bad_files == ["labeled.csv.gz:row 32: no_label (empty label)"]


def test_drift_of_length_and_vocabulary_against_the_last_version(tmp_path):
    path, reference = tmp_path / "pool.txt", tmp_path / "ref.json"
    write_txt(path, [t.encode() for t in sample_texts(300)])
    first, _ = run_checks(DocumentChecks(ValidateConfig()), path, "unlabeled", tmp_path / "out", reference=reference)
    assert first.success and "becomes it" in first.decision
    # Next version, same distribution (other news): passes against the reference.
    write_txt(path, [t.encode() for t in sample_texts(300, start=600)])
    same, _ = run_checks(DocumentChecks(ValidateConfig()), path, "unlabeled", tmp_path / "out", reference=reference)
    assert same.success, same.summary()
    # Next version: each document is its first 5 words (length drift) ...
    write_txt(path, [" ".join(t.split()[:5]).encode() for t in sample_texts(300, start=900)])
    short, _ = run_checks(DocumentChecks(ValidateConfig()), path, "unlabeled", tmp_path / "out", reference=reference)
    assert not short.success
    assert any(f.column == "words" and f.observed for f in short.failures), short.summary()
    # ... or other words entirely (vocabulary drift), at the same length.
    pseudo = [" ".join(f"zq{abs(hash(w)) % 9973}x" for w in t.split()).encode() for t in sample_texts(300, start=600)]
    write_txt(path, pseudo)
    foreign, _ = run_checks(DocumentChecks(ValidateConfig()), path, "unlabeled", tmp_path / "out", reference=reference)
    assert not foreign.success
    assert [f.column for f in foreign.failures] == ["oov_share"], foreign.summary()
    # A broken reference file fails the run instead of skipping the check.
    reference.write_text("{not json")
    broken, _ = run_checks(DocumentChecks(ValidateConfig()), path, "unlabeled", tmp_path / "out", reference=reference)
    assert not broken.success and "not a valid drift reference" in broken.decision
