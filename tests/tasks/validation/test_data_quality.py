"""Dirty dumps through the real validate stage (real files, real GX checkpoint): every
fault class is named, each policy gives the exact outcome, and nothing bad is trained on."""

import io
import json
import logging
import os
import shutil
import tarfile
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.image import table as image_table
from tasks.image.shards import ShardReader
from tasks.core.config import ValidateConfig
from tasks.image.prepared import write_labeled as ingest_labeled
from tasks.image.prepared import write_unlabeled as ingest_unlabeled
from tasks.validation.source_check import check_source, validate_source
from tests import dirty_dump
from tests.dirty_dump import EXPECTED, EXPECTED_WITHOUT_CONVERT, SKIPPED

QUARANTINE = {"on_fail": "quarantine", "max_bad_fraction": 0.5}


@pytest.fixture
def dump(tmp_path, tiny_data):
    return dirty_dump.build(tmp_path / "dump", sorted(tiny_data["unlabeled"].glob("*.jpg")), tmp_path / "outside")


def _check(source, out, **settings):
    return check_source(source, "unlabeled", ValidateConfig(**settings), out, image_size=32)


def _faults(table) -> dict:
    return {path: (None if pd.isna(fault) else fault) for path, fault in zip(table["path"], table["fault"], strict=True)}


def test_stop_names_every_fault_and_accepts_nothing(tmp_path, dump):
    report, table = _check(dump, tmp_path / "out")

    faults = _faults(table)
    assert {path: faults[path] for path in EXPECTED} == EXPECTED
    assert all(faults[path] is None for path in faults if path.startswith("good/") and path != "good/")
    assert set(faults) == set(EXPECTED) | {f"good/{p.name}" for p in (dump / "good").iterdir()}  # hidden, .txt and the FIFO are not rows
    assert report.faults == dict(Counter(f for f in EXPECTED.values() if f))
    assert report.skipped == SKIPPED
    assert not report.success and report.accepted == 0
    assert "validate.on_fail=stop" in report.decision
    summary = report.summary()
    for fault in set(EXPECTED.values()) - {None}:
        assert fault in summary
    assert "expect_column_values_to_be_null on decode_error" in summary
    assert report.bad_files[0].startswith("anim.gif: bad_format")  # each offending file with its fault

    saved = pd.read_csv(tmp_path / "out" / "unlabeled_table.csv")
    assert not saved["accepted"].any()
    assert json.loads((tmp_path / "out" / "unlabeled.json").read_text())["faults"] == report.faults
    assert (tmp_path / "out" / "data_docs" / "unlabeled" / "index.html").exists()


def test_quarantine_trains_on_exactly_the_good_files(tmp_path, dump):
    report, table = _check(dump, tmp_path / "out", **QUARANTINE)
    good = dirty_dump.good_paths(dump)
    assert report.success, report.summary()
    assert sorted(table.loc[table["accepted"], "path"]) == good
    assert report.accepted == len(good)
    assert report.converted == {"grayscale": 1, "alpha": 1, "palette": 1, "cmyk": 1, "high_bit_depth": 2, "resize": 1}

    out = tmp_path / "prepared"
    assert ingest_unlabeled(dump, tmp_path / "out" / "unlabeled_table.csv", out, 32) == len(good)
    assert sorted(pd.read_csv(out / "manifest.csv")["path"]) == good
    reader = ShardReader(out)
    assert len(reader) == len(good) and reader.read([0]).shape == (1, 3, 32, 32)
    images = reader.read(range(len(reader))).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3), as written
    by_path = dict(zip(pd.read_csv(out / "manifest.csv")["path"], images, strict=True))
    gray = by_path["gray.png"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # 16-bit samples are scaled to 8 bits, not clipped (clipping would leave almost all 255).
    deep = np.asarray(Image.open(dump / "deep16.png"), dtype=np.float64)
    assert np.array_equal(by_path["deep16.png"][..., 0], np.round(deep / 257).astype(np.uint8))


def test_quarantine_refuses_a_mostly_bad_dump(tmp_path, dump):
    report, table = _check(dump, tmp_path / "out", on_fail="quarantine", max_bad_fraction=0.05)
    assert not report.success and report.accepted == 0
    assert "above validate.max_bad_fraction" in report.decision
    assert not table["accepted"].any()


def test_without_conversions_odd_modes_and_sizes_fail(tmp_path, dump):
    report, table = _check(dump, tmp_path / "out", convert=[], **QUARANTINE)
    expected = EXPECTED | EXPECTED_WITHOUT_CONVERT | {"white.jpg": "wrong_size"}  # 48 px: the size rule comes before blank
    faults = _faults(table)
    assert {path: faults[path] for path in expected} == expected
    failed = {(f.expectation, f.column) for f in report.failures}
    assert {
        ("expect_column_values_to_be_in_set", "mode"),
        ("expect_column_values_to_be_in_set", "bit_depth"),
        ("expect_column_values_to_be_in_set", "width"),
    } <= failed


def test_quarantine_still_needs_enough_good_images(tmp_path, dump):
    report, _ = _check(dump, tmp_path / "out", min_images=100, **QUARANTINE)
    assert not report.success and report.accepted == 0
    assert "remaining" in report.decision
    assert [f.expectation for f in report.quarantine_failures] == ["expect_table_row_count_to_be_between"]


def test_drift_against_the_last_validated_version(tmp_path, tiny_data):
    reference = tmp_path / "reference_stats.json"
    pool = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], pool)
    first = validate_source(pool, "unlabeled", ValidateConfig(), tmp_path / "v1", reference=reference)
    assert first.success and "becomes it" in first.decision
    saved = json.loads(reference.read_text())["unlabeled"][str(pool)]
    assert saved["images"] == 128 and set(saved["statistics"]) == {"mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"}

    # A new version of the same dataset: every image much darker.
    for path in sorted(pool.glob("*.jpg")):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        Image.fromarray((pixels * 0.4).astype(np.uint8)).save(pool / f"{path.stem}.png")
        path.unlink()
    report = validate_source(pool, "unlabeled", ValidateConfig(), tmp_path / "v2", reference=reference)
    assert not report.success and report.faults == {}
    drifted = {f.column for f in report.failures if f.expectation == "expect_column_mean_to_be_between"}
    assert {"mean_r", "mean_g", "mean_b"} <= drifted
    assert "observed" in report.summary()
    assert json.loads(reference.read_text())["unlabeled"][str(pool)] == saved  # a failure never moves the reference

    assert validate_source(pool, "unlabeled", ValidateConfig(drift_tolerance=None), tmp_path / "v3", reference=reference).success
    # A folder never seen before has no previous version to drift from.
    other = validate_source(tiny_data["unlabeled"], "unlabeled", ValidateConfig(), tmp_path / "v4", reference=reference)
    assert other.success and "becomes it" in other.decision


def test_a_damaged_reference_file_fails_validation_clearly(tmp_path, tiny_data):
    reference = tmp_path / "reference_stats.json"
    reference.write_text(json.dumps({"unlabeled": {str(tiny_data["unlabeled"]): {"statistics": {"mean_r": "x"}}}}))
    report = validate_source(tiny_data["unlabeled"], "unlabeled", ValidateConfig(), tmp_path / "out", reference=reference)
    assert not report.success and "not a valid drift reference" in report.decision


def test_rerun_reads_nothing_and_a_copy_decodes_nothing(tmp_path, dump, caplog):
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="tasks.image.table")
    _, first = check_source(dump, "unlabeled", ValidateConfig(), tmp_path / "a", image_size=32, cache_dir=cache)
    _, second = check_source(dump, "unlabeled", ValidateConfig(), tmp_path / "b", image_size=32, cache_dir=cache)
    readings = [r.getMessage() for r in caplog.records if "known from the cache" in r.getMessage()]
    assert readings[0].startswith("0 files known") and readings[1].endswith("reading 1")  # only the empty file has no cache entry
    pd.testing.assert_frame_equal(first.drop(columns=["accepted", "mtime_ns"]), second.drop(columns=["accepted", "mtime_ns"]))

    (dump / "good" / "00002.jpg").write_bytes((dump / "tiny.png").read_bytes())  # new content, known from tiny.png
    copy = tmp_path / "copy"
    shutil.copytree(dump / "good", copy)  # new mtimes, same content: found by hash
    caplog.clear()
    _, changed = check_source(dump, "unlabeled", ValidateConfig(), tmp_path / "c", image_size=32, cache_dir=cache)
    assert _faults(changed)["good/00002.jpg"] == "too_small"
    check_source(copy, "unlabeled", ValidateConfig(), tmp_path / "d", image_size=32, cache_dir=cache)
    readings = [r.getMessage() for r in caplog.records if "known from the cache" in r.getMessage()]
    assert readings[0].endswith("reading 1")  # the changed file is found by its hash; the empty one has none
    assert readings[1].endswith("reading 0")


def test_worker_processes_give_the_same_table(tmp_path, dump, monkeypatch):
    _, serial = check_source(dump, "unlabeled", ValidateConfig(workers=1), tmp_path / "a", image_size=32)
    monkeypatch.setattr(image_table, "PARALLEL_MIN_SECONDS", 0.0)  # parallel even for a small dump
    monkeypatch.setattr(image_table, "PROBE_FILES", 2)
    _, parallel = check_source(dump, "unlabeled", ValidateConfig(workers=2), tmp_path / "b", image_size=32)
    pd.testing.assert_frame_equal(serial, parallel)


def test_a_tar_dump_with_a_link_out_is_validated_per_file(tmp_path, tiny_data):
    folder = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], folder)
    archive = tmp_path / "pool.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="pool")
        link = tarfile.TarInfo("pool/escape.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/hostname"
        tar.addfile(link)
        evil = tarfile.TarInfo("../evil.jpg")
        data = (folder / "00000.jpg").read_bytes()
        evil.size = len(data)
        tar.addfile(evil, io.BytesIO(data))
    report, table = check_source(archive, "unlabeled", ValidateConfig(**QUARANTINE), tmp_path / "out")
    assert _faults(table)["escape.jpg"] == "link_outside"
    assert _faults(table)["../evil.jpg"] == "unsafe_path"
    assert report.success and report.accepted == 128
    assert not (tmp_path / "evil.jpg").exists()


def test_folder_links_and_loops_never_hang_or_escape(tmp_path, tiny_data):
    root = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], root / "a")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a link back up: must not be walked again
    (root / "self.jpg").symlink_to(root / "self.jpg")  # a link to itself
    report, table = _check(root, tmp_path / "out")
    assert report.skipped == {"folder_link": 1}
    assert _faults(table)["self.jpg"] == "broken_link"
    assert len(table) == 129


def test_special_file_is_skipped_not_read(tmp_path, tiny_data):
    root = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], root)
    os.mkfifo(root / "stream.png")
    (root / "to_fifo.png").symlink_to(root / "stream.png")
    report = validate_source(root, "unlabeled", ValidateConfig(), tmp_path / "out")
    assert report.success and report.skipped == {"special_file": 2}


def test_quarantined_labeled_files_are_left_out_of_the_evaluation_set(tmp_path, tiny_data):
    labeled = tmp_path / "labeled"
    shutil.copytree(tiny_data["labeled"], labeled)
    (labeled / "train" / "cat" / "broken.jpg").write_bytes(b"<html></html>")
    Image.new("RGB", (32, 32)).save(labeled / "test" / "ship" / "black.png")
    report, _ = check_source(labeled, "labeled", ValidateConfig(min_images=8, **QUARANTINE), tmp_path / "out", labeled=True)
    assert report.success and report.faults == {"not_an_image": 1, "blank": 1}
    counts = ingest_labeled(labeled, tmp_path / "out" / "labeled_table.csv", tmp_path / "prepared", 32)
    assert counts == {"train": 48, "test": 24}  # the fixture's own files, nothing else


def test_a_tar_member_with_an_absolute_path_is_never_unpacked(tmp_path, tiny_data):
    archive = tmp_path / "pool.tar"
    data = (tiny_data["unlabeled"] / "00000.jpg").read_bytes()
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_data["unlabeled"], arcname="pool")
        evil = tarfile.TarInfo(str(tmp_path / "abs" / "evil.jpg"))  # an absolute member name
        evil.size = len(data)
        tar.addfile(evil, io.BytesIO(data))
    report, table = check_source(archive, "unlabeled", ValidateConfig(**QUARANTINE), tmp_path / "out")
    assert _faults(table)[str(tmp_path / "abs" / "evil.jpg")] == "unsafe_path"
    assert report.accepted == 128
    assert not (tmp_path / "abs").exists()
    stop, _ = check_source(archive, "unlabeled", ValidateConfig(), tmp_path / "out2")
    assert not stop.success
