import json
import shutil

import pytest

from tasks.core.config import ValidateConfig
from tasks.validation.source_check import validate_source
from tasks.validation.report import DataValidationError, raise_for_failures


def test_clean_folder_passes(tmp_path, tiny_data):
    report = validate_source(tiny_data["unlabeled"], "unlabeled", ValidateConfig(), tmp_path)
    assert report.success and report.images == 128
    saved = json.loads((tmp_path / "unlabeled.json").read_text())
    assert saved["success"] is True


def test_corrupt_truncated_fake_and_duplicate_files_are_named(tmp_path, tiny_data):
    pool = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], pool)
    first, second = sorted(pool.glob("*.jpg"))[:2]
    (pool / "truncated.jpg").write_bytes(first.read_bytes()[:200])
    (pool / "page.jpg").write_text("<html>not an image</html>")
    shutil.copy(second, pool / "copy.jpg")
    report = validate_source(pool, "unlabeled", ValidateConfig(), tmp_path / "out")
    assert not report.success
    by_expectation = {f.expectation: f for f in report.failures}
    decode = by_expectation["expect_column_values_to_be_null"]
    assert decode.unexpected_count == 2
    assert any(e.startswith("truncated.jpg") for e in decode.examples)
    assert any(e.startswith("page.jpg") for e in decode.examples)
    duplicates = by_expectation["expect_column_values_to_be_unique"]
    assert {e.split(":")[0] for e in duplicates.examples} == {second.name, "copy.jpg"}
    with pytest.raises(DataValidationError, match="truncated.jpg"):
        raise_for_failures([report])


def test_too_few_and_too_small_images_fail(tmp_path, tiny_data):
    from PIL import Image

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(pool / f"{i}.png")
    report = validate_source(pool, "unlabeled", ValidateConfig(min_images=5, min_side=8), tmp_path / "out")
    failed = {(f.expectation, f.column) for f in report.failures}
    assert ("expect_table_row_count_to_be_between", None) in failed
    assert ("expect_column_values_to_be_between", "width") in failed
