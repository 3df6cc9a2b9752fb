"""DVC's book, for real: a root becomes a DVC project, a stage is stale until it is recorded in
dvc.lock, and then exactly when its params, inputs or outputs change; a --set that changes a
stage's params runs it without recording it (dvc.lock would otherwise claim params.yaml made it)."""

import yaml

from tasks.core.config import load_config, params_yaml
from tasks.core.freshness import Book, describe_status
from tasks.stages import STAGES


def _root(tmp_path):
    (tmp_path / "params.yaml").write_text(params_yaml())
    unlabeled = tmp_path / "data" / "prepared" / "unlabeled"
    unlabeled.mkdir(parents=True)
    (unlabeled / "shard-00000.npy").write_bytes(b"one")
    preview = tmp_path / "reports" / "augment_preview.png"
    preview.parent.mkdir()
    preview.write_bytes(b"png")
    return tmp_path, unlabeled / "shard-00000.npy", preview


def test_a_stage_is_up_to_date_exactly_when_dvc_lock_says_so(tmp_path):
    root, shard, preview = _root(tmp_path)
    cfg = load_config(root / "params.yaml")
    stage = STAGES["augment"]
    book = Book(root, cfg)
    assert (root / ".dvc").is_dir() and yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["augment"]["cmd"] == "sslpipe augment -q"
    assert book.stale_reason(stage) == "first run on this root"  # never recorded
    assert book.record(stage)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["augment"]
    assert lock["params"]["params.yaml"]["augment"]["flip_p"] == 0.5
    assert book.stale_reason(stage) is None
    assert Book(root, load_config(root / "params.yaml", ["pretrain.epochs=3"])).stale_reason(stage) is None  # not one of its params

    overridden = Book(root, load_config(root / "params.yaml", ["augment.flip_p=0.1"]))
    assert overridden.stale_reason(stage) == "--set augment.flip_p differs from params.yaml (not recorded in dvc.lock)"
    assert overridden.record(stage) is False
    assert (root / "dvc.lock").read_text().count("flip_p: 0.5") == 1  # the record still says what params.yaml says

    shard.write_bytes(b"two")
    assert "data/prepared/unlabeled" in book.stale_reason(stage)
    assert book.record(stage) and book.stale_reason(stage) is None
    preview.unlink()
    assert "reports/augment_preview.png" in book.stale_reason(stage)


def test_a_root_without_params_yaml_says_so(tmp_path):
    book = Book(tmp_path, load_config(None))
    assert (
        book.stale_reason(STAGES["validate"])
        == f"no params.yaml in {tmp_path.resolve()} for DVC to compare with (not recorded in dvc.lock)"
    )
    assert book.record(STAGES["validate"]) is False


def test_status_reads_as_a_short_reason():
    changes = [
        {"changed deps": {"ssl_models/methods/mae.py": "modified"}},
        {"changed outs": {"models/encoder": "deleted"}},
        "changed command",
    ]
    assert describe_status(changes) == "changed deps: ssl_models/methods/mae.py; changed outs: models/encoder (deleted); changed command"
