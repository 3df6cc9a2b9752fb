"""Lineage facts recorded with every run: the data version and the code version."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def dvc_hash(path: Path) -> str:
    """The hash DVC records for ``path`` (``<md5>.dir`` for folders): the data version.

    Computed with DVC's own hashing library, so it equals the value in ``dvc.lock``.
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(LocalHashFileDB(fs, tmp), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


def git_commit(root: Path) -> str:
    """HEAD's commit, with ``-dirty`` when the work tree has changes; ``unknown`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
