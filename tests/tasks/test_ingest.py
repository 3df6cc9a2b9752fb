import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from tasks.core.atomic import staged_dir
from tasks.core.config import ValidateConfig
from tasks.image.checks import ImageChecks
from tasks.image.prepared import accepted_rows, load_rgb
from tasks.image.prepared import write_unlabeled as ingest_unlabeled
from tasks.image.shards import ShardReader
from tasks.image.sources import SourceError, export_dataset, list_images, open_source
from tasks.validation.source_check import run_checks


def _validated(source, out_dir, name="unlabeled"):
    run_checks(ImageChecks(ValidateConfig(min_images=1), labeled=name == "labeled"), source, name, out_dir)
    return out_dir / f"{name}_table.csv"


def ingest_labeled(source, out, size, test_fraction=0.2):
    """Validate, then decode the accepted files, staged whole as ingest does."""
    from tasks.image.prepared import write_labeled

    table = _validated(source, out.parent / f".validation-{out.name}", "labeled")
    with staged_dir(out) as staging:
        return write_labeled(source, table, staging, size, test_fraction)


def test_folder_is_walked_recursively_skipping_hidden_and_other_files(tmp_path, tiny_data):
    root = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], root / "a" / "b")
    (root / ".hidden").mkdir()
    shutil.copy(next((root / "a" / "b").glob("*.jpg")), root / ".hidden" / "x.jpg")
    (root / "notes.txt").write_text("not an image")
    Image.new("RGB", (40, 30), "red").save(root / "wide.PNG")
    files = list_images(root)
    assert len(files) == 129
    assert all(".hidden" not in str(p) for p in files)


def test_unlabeled_folder_and_tar_give_the_same_arrays(tmp_path, tiny_data):
    archive = tmp_path / "pool.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_data["unlabeled"], arcname="pool")
    out_folder, out_tar = tmp_path / "from_folder", tmp_path / "from_tar"
    n = ingest_unlabeled(tiny_data["unlabeled"], _validated(tiny_data["unlabeled"], tmp_path / "v1"), out_folder, 32)
    m = ingest_unlabeled(archive, _validated(archive, tmp_path / "v2"), out_tar, 32)
    assert n == m == 128
    a, b = ShardReader(out_folder).read(range(128)).numpy(), ShardReader(out_tar).read(range(128)).numpy()
    assert a.shape == (128, 3, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    manifest = (out_folder / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,sha256" and len(manifest) == 129


def test_images_are_cropped_and_resized_to_the_training_size(tmp_path):
    Image.new("RGBA", (100, 60), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (16, 16), 200).save(tmp_path / "b.png")
    assert load_rgb(tmp_path / "a.png", 32).shape == (32, 32, 3)
    gray = load_rgb(tmp_path / "b.png", 32)
    assert gray.shape == (32, 32, 3) and (gray == 200).all()


def test_labeled_with_split(tmp_path, tiny_data):
    counts = ingest_labeled(tiny_data["labeled"], tmp_path / "out", 32)
    assert counts == {"train": 48, "test": 24}
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["airplane", "cat", "ship"]
    labels = np.load(tmp_path / "out" / "train_labels.npy")
    assert np.bincount(labels).tolist() == [16, 16, 16]


def test_labeled_without_split_is_split_per_class(tmp_path, tiny_data):
    flat = tmp_path / "flat"
    shutil.copytree(tiny_data["labeled"] / "train", flat)
    counts = ingest_labeled(flat, tmp_path / "out", 32, test_fraction=0.25)
    assert counts == {"train": 36, "test": 12}


def test_failed_ingest_leaves_previous_output_untouched(tmp_path, tiny_data):
    out = tmp_path / "out"
    ingest_labeled(tiny_data["labeled"], out, 32)
    before = (out / "train_images.npy").read_bytes()
    changed = tmp_path / "changed"
    shutil.copytree(tiny_data["labeled"], changed)
    table = _validated(changed, tmp_path / "v", "labeled")
    next((changed / "test" / "ship").glob("*.jpg")).write_bytes(b"now broken")  # changed since validation
    with pytest.raises(SourceError, match="changed since validation"), staged_dir(out) as staging:
        from tasks.image.prepared import write_labeled

        write_labeled(changed, table, staging, 32)
    assert (out / "train_images.npy").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []  # no staging left behind


def test_a_labeled_set_with_one_class_fails_validation(tmp_path, tiny_data):
    one_class = tmp_path / "one"
    shutil.copytree(tiny_data["labeled"] / "train" / "cat", one_class / "cat")
    report, _ = run_checks(ImageChecks(ValidateConfig(min_images=1), labeled=True), one_class, "labeled", tmp_path / "v")
    assert not report.success and "at least two class folders, found ['cat']" in report.decision
    empty_test = tmp_path / "split"
    shutil.copytree(tiny_data["labeled"] / "train", empty_test / "train")
    (empty_test / "test").mkdir()
    report, _ = run_checks(ImageChecks(ValidateConfig(min_images=1), labeled=True), empty_test, "labeled", tmp_path / "v2")
    assert not report.success and "the test split has no images" in report.decision


def test_ingest_fails_closed_without_a_usable_table(tmp_path):
    with pytest.raises(SourceError, match="no validation table"):
        accepted_rows(tmp_path / "missing.csv")
    (tmp_path / "old.csv").write_text("path,fault\na.jpg,\n")
    with pytest.raises(SourceError, match="no 'accepted' column"):
        accepted_rows(tmp_path / "old.csv")


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"), open_source(tmp_path / "nope"):
        pass


def test_torchvision_dataset_export_on_local_files(tmp_path, tiny_data):
    # The download itself needs the internet; the export path runs on a real
    # torchvision dataset built from local files.
    from torchvision.datasets import ImageFolder

    target = export_dataset(ImageFolder(str(tiny_data["labeled"] / "train")), tmp_path / "export")
    assert sorted(p.name for p in target.iterdir() if p.is_dir()) == ["airplane", "cat", "ship"]
    assert len(list_images(target)) == 48


def _write_labeled(source, table, out):
    from tasks.image.prepared import write_labeled

    with staged_dir(out) as staging:
        return write_labeled(source, table, staging, 32)


def test_a_file_that_grew_after_validation_is_refused_by_name(tmp_path, tiny_data):
    pool = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], pool)
    table = _validated(pool, tmp_path / "v")
    grown = sorted(pool.glob("*.jpg"))[3]
    with Image.open(grown) as image:
        image.resize((160, 160)).save(grown, quality=100)  # still a good JPEG: decoding alone would not notice
    with pytest.raises(
        SourceError, match=rf"1 file\(s\) changed since validation: {grown.name} \(\d+ (bytes|KB) -> \d+ KB\); run `sslpipe validate`"
    ):
        ingest_unlabeled(pool, table, tmp_path / "out", 32)


def test_a_touched_file_with_the_same_bytes_is_accepted(tmp_path, tiny_data):
    import os

    pool = tmp_path / "pool"
    shutil.copytree(tiny_data["unlabeled"], pool)
    table = _validated(pool, tmp_path / "v")
    touched = sorted(pool.glob("*.jpg"))[0]
    os.utime(touched, ns=(1, 1))  # mtime differs, content does not: the hash decides
    assert ingest_unlabeled(pool, table, tmp_path / "out", 32) == 128


def test_a_folder_that_vanished_after_validation_is_named_as_the_folder(tmp_path, tiny_data):
    labeled = tmp_path / "labeled"
    shutil.copytree(tiny_data["labeled"], labeled)
    table = _validated(labeled, tmp_path / "v", "labeled")
    shutil.rmtree(labeled / "test" / "cat")
    with pytest.raises(SourceError, match=rf"^{labeled / 'test' / 'cat'}: the folder is gone since validation \(it held test/cat/"):
        _write_labeled(labeled, table, tmp_path / "out")
    shutil.rmtree(labeled)
    with pytest.raises(SourceError, match=rf"^{labeled}: no such file or folder"):
        _write_labeled(labeled, table, tmp_path / "out")


def _noise_jpeg(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def test_an_empty_class_folder_and_a_class_of_one_image_fail_validation(tmp_path, tiny_data):
    flat = tmp_path / "flat"
    shutil.copytree(tiny_data["labeled"] / "train", flat)
    (flat / "dog").mkdir()  # dropped without a word before
    checks = ImageChecks(ValidateConfig(min_images=1), labeled=True)
    report, _ = run_checks(checks, flat, "labeled", tmp_path / "v")
    assert not report.success and "class folder(s) with no accepted images: dog; add images or remove the folder" in report.decision
    _noise_jpeg(flat / "dog" / "only.jpg", 0)  # before: accepted, and its one image landed in test only
    report, _ = run_checks(checks, flat, "labeled", tmp_path / "v")
    assert not report.success and "fewer than 2 accepted images: dog (1); ingest splits each class into train and test" in report.decision
    _noise_jpeg(flat / "dog" / "second.jpg", 1)
    report, _ = run_checks(checks, flat, "labeled", tmp_path / "v")
    assert report.success, report.decision  # two are enough: one for train, one for test


def test_a_class_missing_from_one_half_of_a_given_split_fails_validation(tmp_path, tiny_data):
    split = tmp_path / "split"
    shutil.copytree(tiny_data["labeled"], split)
    shutil.move(split / "test" / "ship", tmp_path / "elsewhere")
    report, _ = run_checks(ImageChecks(ValidateConfig(min_images=1), labeled=True), split, "labeled", tmp_path / "v")
    assert not report.success and "without accepted images in one half of the split: test/ship" in report.decision
