"""All-or-nothing writes: a failure in the middle leaves the old content and no debris."""

import json
import os

import pytest

from tasks.core.atomic import OLD_PREFIX, STAGING_PREFIX, clean_staging, save_with, staged_dir, write_bytes, write_json, write_text


class Boom(Exception):
    pass


def debris(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_write_text_json_bytes_replace_whole(tmp_path):
    write_text(tmp_path / "a" / "x.txt", "old")
    write_text(tmp_path / "a" / "x.txt", "new")
    write_json(tmp_path / "a" / "m.json", {"acc": 0.5})
    write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert (tmp_path / "a" / "x.txt").read_text() == "new"
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == {"acc": 0.5}
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert debris(tmp_path / "a") == []


def test_unserialisable_json_leaves_the_old_file(tmp_path):
    write_json(tmp_path / "m.json", {"acc": 0.5})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", circular)
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 0.5}
    assert debris(tmp_path) == []


def test_save_with_failure_half_way_keeps_the_old_file(tmp_path):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old weights")

    def half_write(tmp):
        assert tmp.suffix == ".pt" and tmp.parent == tmp_path  # same folder, same suffix
        tmp.write_bytes(b"half")
        raise Boom

    with pytest.raises(Boom):
        save_with(target, half_write)
    assert target.read_bytes() == b"old weights"
    assert debris(tmp_path) == []


def test_save_with_a_real_writer_that_picks_the_format_from_the_suffix(tmp_path):
    from PIL import Image

    save_with(tmp_path / "p.png", lambda tmp: Image.new("RGB", (4, 4)).save(tmp))
    assert Image.open(tmp_path / "p.png").format == "PNG"


def test_staged_dir_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "prepared" / "unlabeled"
    target.mkdir(parents=True)
    (target / "old.npy").write_text("old")
    with staged_dir(target) as staging:
        assert staging.parent == target.parent and staging.name.startswith(STAGING_PREFIX)
        (staging / "images.npy").write_text("new")
        assert (target / "old.npy").exists()  # untouched until the body succeeds
    assert sorted(p.name for p in target.iterdir()) == ["images.npy"]
    assert debris(target.parent) == []


def test_staged_dir_failure_half_way_keeps_the_old_folder(tmp_path):
    target = tmp_path / "unlabeled"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with pytest.raises(Boom), staged_dir(target) as staging:
        (staging / "images.npy").write_text("half")
        raise Boom
    assert sorted(p.name for p in target.iterdir()) == ["old.npy"]
    assert debris(tmp_path) == []


def test_staged_dir_creates_a_missing_target(tmp_path):
    with staged_dir(tmp_path / "models" / "encoder") as staging:
        (staging / "weights.pt").write_bytes(b"w")
    assert (tmp_path / "models" / "encoder" / "weights.pt").read_bytes() == b"w"


def test_clean_staging_removes_leftovers_and_restores_a_folder_set_aside(tmp_path):
    reports, prepared = tmp_path / "reports", tmp_path / "data" / "prepared"
    (reports / "pretrain").mkdir(parents=True)
    prepared.mkdir(parents=True)
    (reports / "metrics.json").write_text("{}")
    (reports / "pretrain" / f"{STAGING_PREFIX}1a2b3c4d-history.csv").write_text("half")  # killed mid-write
    half = prepared / f"{STAGING_PREFIX}5e6f7a8b-unlabeled"
    (half / "sub").mkdir(parents=True)
    (half / "sub" / "images.npy").write_text("half")
    # Killed between the two renames of staged_dir: the old folder is aside, the target gone.
    aside = prepared / f"{OLD_PREFIX}9c0d1e2f-labeled"
    aside.mkdir()
    (aside / "train_images.npy").write_text("old")
    elsewhere = tmp_path / "input" / f"{STAGING_PREFIX}keep"  # outside data/, models/, reports/
    elsewhere.mkdir(parents=True)

    cleaned = clean_staging(tmp_path)

    assert len(cleaned) == 3
    assert debris(reports / "pretrain") == [] and debris(prepared) == []
    assert (prepared / "labeled" / "train_images.npy").read_text() == "old"
    assert (reports / "metrics.json").exists() and elsewhere.exists()
    assert clean_staging(tmp_path) == []


def test_clean_staging_on_an_empty_root(tmp_path):
    assert clean_staging(tmp_path) == []
    assert not os.path.exists(tmp_path / "data")
