"""All-or-nothing writes: a reader (or the next run after a crash) never sees half a file.

Everything is written under a temporary name in the same folder and renamed into place;
a rename within one file system is atomic. Staging names start with ``.staging-`` so that
:func:`clean_staging` can remove what a killed run left behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STAGING_PREFIX = ".staging-"


def save_with(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` (e.g. ``lambda p: torch.save(state, p)``), then rename ``tmp`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{path.name}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return save_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    return save_with(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_rows(path: Path, rows: list[dict]) -> Path:
    """A CSV with a header from the first row's keys (history.csv, label_efficiency.csv)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, out.getvalue())


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target`` whole
    (old renamed aside, new renamed in, old deleted); on failure it is removed and ``target``
    is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=target.parent))
    try:
        yield staging
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-old-", dir=target.parent))
            old.rmdir()
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clean_staging(*folders: Path) -> list[Path]:
    """Remove staging leftovers (of a killed run) directly inside ``folders``; returns them."""
    removed = []
    for folder in folders:
        for leftover in Path(folder).glob(f"{STAGING_PREFIX}*") if Path(folder).is_dir() else []:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
