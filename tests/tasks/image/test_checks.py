"""Image sources through the one validation path (real files, real GX checkpoint): every
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

from tasks.core.config import ValidateConfig
from tasks.image import table as image_table
from tasks.image.checks import IMAGES, ImageChecks
from tasks.image.prepared import write_labeled as ingest_labeled
from tasks.image.prepared import write_unlabeled as ingest_unlabeled
from tasks.image.shards import ShardReader
from tasks.validation.source_check import run_checks
from tests import dirty_dump
from tests.dirty_dump import EXPECTED, EXPECTED_WITHOUT_CONVERT, SKIPPED

QUARANTINE = {"on_fail": "quarantine", "max_bad_fraction": 0.5}


@pytest.fixture
def dump(tmp_path, tiny_data):
    return dirty_dump.build(tmp_path / "dump", sorted(tiny_data["unlabeled"].glob("*.jpg")), tmp_path / "outside")


def _check(source, out, **settings):
    return run_checks(ImageChecks(ValidateConfig(**settings), 32), source, "unlabeled", out)


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
    first = run_checks(ImageChecks(ValidateConfig()), pool, "unlabeled", tmp_path / "v1", reference=reference)[0]
    assert first.success and "becomes it" in first.decision
    saved = json.loads(reference.read_text())["unlabeled"][str(pool)]
    assert saved["images"] == 128 and set(saved["statistics"]) == {"mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"}

    # A new version of the same dataset: every image much darker.
    for path in sorted(pool.glob("*.jpg")):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        Image.fromarray((pixels * 0.4).astype(np.uint8)).save(pool / f"{path.stem}.png")
        path.unlink()
    report = run_checks(ImageChecks(ValidateConfig()), pool, "unlabeled", tmp_path / "v2", reference=reference)[0]
    assert not report.success and report.faults == {}
    drifted = {f.column for f in report.failures if f.expectation == "expect_column_mean_to_be_between"}
    assert {"mean_r", "mean_g", "mean_b"} <= drifted
    assert "observed" in report.summary()
    assert json.loads(reference.read_text())["unlabeled"][str(pool)] == saved  # a failure never moves the reference

    assert run_checks(ImageChecks(ValidateConfig(drift_tolerance=None)), pool, "unlabeled", tmp_path / "v3", reference=reference)[0].success
    # A folder never seen before has no previous version to drift from.
    other = run_checks(ImageChecks(ValidateConfig()), tiny_data["unlabeled"], "unlabeled", tmp_path / "v4", reference=reference)[0]
    assert other.success and "becomes it" in other.decision


def test_a_damaged_reference_file_fails_validation_clearly(tmp_path, tiny_data):
    reference = tmp_path / "reference_stats.json"
    reference.write_text(json.dumps({"unlabeled": {str(tiny_data["unlabeled"]): {"statistics": {"mean_r": "x"}}}}))
    report = run_checks(ImageChecks(ValidateConfig()), tiny_data["unlabeled"], "unlabeled", tmp_path / "out", reference=reference)[0]
    assert not report.success and "not a valid drift reference" in report.decision


def test_rerun_reads_nothing_and_a_copy_decodes_nothing(tmp_path, dump, caplog):
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="tasks.image.table")
    _, first = run_checks(ImageChecks(ValidateConfig(), 32, cache_dir=cache), dump, "unlabeled", tmp_path / "a")
    _, second = run_checks(ImageChecks(ValidateConfig(), 32, cache_dir=cache), dump, "unlabeled", tmp_path / "b")
    readings = [r.getMessage() for r in caplog.records if "known from the cache" in r.getMessage()]
    assert readings[0].startswith("0 files known") and readings[1].endswith("reading 1")  # only the empty file has no cache entry
    pd.testing.assert_frame_equal(first.drop(columns=["accepted", "mtime_ns"]), second.drop(columns=["accepted", "mtime_ns"]))

    (dump / "good" / "00002.jpg").write_bytes((dump / "tiny.png").read_bytes())  # new content, known from tiny.png
    copy = tmp_path / "copy"
    shutil.copytree(dump / "good", copy)  # new mtimes, same content: found by hash
    caplog.clear()
    _, changed = run_checks(ImageChecks(ValidateConfig(), 32, cache_dir=cache), dump, "unlabeled", tmp_path / "c")
    assert _faults(changed)["good/00002.jpg"] == "too_small"
    run_checks(ImageChecks(ValidateConfig(), 32, cache_dir=cache), copy, "unlabeled", tmp_path / "d")
    readings = [r.getMessage() for r in caplog.records if "known from the cache" in r.getMessage()]
    assert readings[0].endswith("reading 1")  # the changed file is found by its hash; the empty one has none
    assert readings[1].endswith("reading 0")


def test_worker_processes_give_the_same_table(tmp_path, dump, monkeypatch):
    _, serial = run_checks(ImageChecks(ValidateConfig(workers=1), 32), dump, "unlabeled", tmp_path / "a")
    monkeypatch.setattr(image_table, "PARALLEL_MIN_SECONDS", 0.0)  # parallel even for a small dump
    monkeypatch.setattr(image_table, "PROBE_FILES", 2)
    _, parallel = run_checks(ImageChecks(ValidateConfig(workers=2), 32), dump, "unlabeled", tmp_path / "b")
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
    report, table = run_checks(ImageChecks(ValidateConfig(**QUARANTINE)), archive, "unlabeled", tmp_path / "out")
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
    report = run_checks(ImageChecks(ValidateConfig()), root, "unlabeled", tmp_path / "out")[0]
    assert report.success and report.skipped == {"special_file": 2}


def test_quarantined_labeled_files_are_left_out_of_the_evaluation_set(tmp_path, tiny_data):
    labeled = tmp_path / "labeled"
    shutil.copytree(tiny_data["labeled"], labeled)
    (labeled / "train" / "cat" / "broken.jpg").write_bytes(b"<html></html>")
    Image.new("RGB", (32, 32)).save(labeled / "test" / "ship" / "black.png")
    report, _ = run_checks(ImageChecks(ValidateConfig(min_images=8, **QUARANTINE), labeled=True), labeled, "labeled", tmp_path / "out")
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
    report, table = run_checks(ImageChecks(ValidateConfig(**QUARANTINE)), archive, "unlabeled", tmp_path / "out")
    assert _faults(table)[str(tmp_path / "abs" / "evil.jpg")] == "unsafe_path"
    assert report.accepted == 128
    assert not (tmp_path / "abs").exists()
    stop, _ = run_checks(ImageChecks(ValidateConfig()), archive, "unlabeled", tmp_path / "out2")
    assert not stop.success


def test_clean_folder_passes(tmp_path, tiny_data):
    report, _ = run_checks(ImageChecks(ValidateConfig()), tiny_data["unlabeled"], "unlabeled", tmp_path)
    assert report.success and report.images == 128 and report.unit == "images"
    assert report.decision == f"all 128 image files from {tiny_data['unlabeled']} passed"
    saved = json.loads((tmp_path / "unlabeled.json").read_text())
    assert saved["success"] is True


def test_corrupt_truncated_fake_and_duplicate_files_are_named(tmp_path, tiny_data):
    pool = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], pool)
    first, second = sorted(pool.glob("*.jpg"))[:2]
    (pool / "truncated.jpg").write_bytes(first.read_bytes()[:200])
    (pool / "page.jpg").write_text("<html>not an image</html>")
    shutil.copy(second, pool / "copy.jpg")
    report, _ = run_checks(ImageChecks(ValidateConfig()), pool, "unlabeled", tmp_path / "out")
    assert not report.success
    by_expectation = {f.expectation: f for f in report.failures}
    decode = by_expectation["expect_column_values_to_be_null"]
    assert decode.unexpected_count == 2
    assert any(e.startswith("truncated.jpg") for e in decode.examples)
    assert any(e.startswith("page.jpg") for e in decode.examples)
    duplicates = by_expectation["expect_column_values_to_be_unique"]
    assert {e.split(":")[0] for e in duplicates.examples} == {second.name, "copy.jpg"}
    assert "truncated.jpg: truncated" in report.summary() and "3 of 131 image files bad" in report.decision


def test_too_few_and_too_small_images_fail(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(pool / f"{i}.png")
    report, _ = run_checks(ImageChecks(ValidateConfig(min_images=5, min_side=8)), pool, "unlabeled", tmp_path / "out")
    failed = {(f.expectation, f.column) for f in report.failures}
    assert ("expect_table_row_count_to_be_between", None) in failed
    assert ("expect_column_values_to_be_between", "width") in failed


def test_every_fault_a_file_can_get_is_explained_in_check_order():
    from tasks.image.imaging import READ_FAULTS

    assert tuple(IMAGES.faults)[: len(READ_FAULTS)] == READ_FAULTS
    assert set(EXPECTED.values()) - {None} <= set(IMAGES.faults) and all(IMAGES.faults.values())
