"""Faults as a user meets them through `sslpipe run`: one line, exit 2, no traceback in the
terminal (it is in the log file the line names, and in the Prefect run), nothing half-written."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import write_params
from tests.flows.test_reliability import sslpipe


@pytest.mark.slow
def test_a_full_disk_at_ingest_is_one_line_naming_the_file_system_and_leaves_nothing(small_fs, tiny_data):
    root = small_fs(40) / "project"  # the 40 MB tmpfs as the root
    root.mkdir()
    for name, src in tiny_data.items():
        shutil.copytree(src, root / "input" / name)
    write_params(root, root / "input" / "unlabeled", root / "input" / "labeled")
    # 200 images at 224 px are ~30 MB of pixels: more than the tmpfs has left once the stores are made
    out = sslpipe(root, "run", "-q", "--set", "data.image_size=224", timeout=600, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    line = lines[0]
    prepared = root / "data" / "prepared"
    assert line.startswith(f"sslpipe run: error: ingest: no space left on {root.parent} (tmpfs) while writing {prepared} (needs about ")
    assert " MB more); free some space and run the same command again (traceback in .sslpipe/logs/run-" in line
    log = root / line.split("(traceback in ")[1].rstrip(")")
    assert "ERROR prefect.task_runs: Task run failed with exception: OSError(28" in log.read_text()
    assert "Traceback (most recent call last)" in log.read_text()
    assert not prepared.exists()  # nothing half-written
    assert list((root / "data").rglob(".staging-*")) == []
