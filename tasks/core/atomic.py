"""All-or-nothing writes: a file or folder is either the old one or the whole new one.

Everything is first written under a staging name in the same folder (same file system,
so the final ``os.rename`` is atomic), flushed to disk, then renamed into place. A run
killed half-way leaves only staging names behind; :func:`clean_staging` removes them at
the next start.

    write_json(reports / "metrics.json", metrics)
    save_with(models / "weights.pt", lambda tmp: torch.save(state, tmp))
    with staged_dir(prepared / "unlabeled") as staging:
        np.save(staging / "images.npy", images)        # target replaced whole on success
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Staging names: ".staging-<token>-<name>" for new content, ".staging-old-<token>-<name>"
# for the previous folder between its two renames. The token keeps concurrent writers apart.
STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".staging-old-"
STAGING_ROOTS = ("data", "models", "reports")  # where a run writes; see clean_staging


def _token() -> str:
    return uuid.uuid4().hex[:8]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` (e.g. ``torch.save``, ``fig.savefig``) and rename ``tmp`` to ``path``.

    ``tmp`` keeps ``path``'s suffix, so writers that pick a format from it still work.
    If ``write`` raises, ``path`` is untouched and ``tmp`` is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{STAGING_PREFIX}{_token()}-{path.name}"
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return save_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return save_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    text = json.dumps(obj, indent=indent, default=str)  # serialised first: an unserialisable object writes nothing
    return write_text(path, text)


def write_rows(path: str | Path, rows: list[dict]) -> Path:
    """A CSV with a header from the first row's keys (history.csv, label_efficiency.csv)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, out.getvalue())


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target`` whole.

    The old folder is renamed aside, the new one renamed in, then the old one deleted. If
    the body raises, the staging folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = _token()
    staging = target.parent / f"{STAGING_PREFIX}{token}-{target.name}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = target.parent / f"{OLD_PREFIX}{token}-{target.name}"
    if target.exists():
        os.rename(target, aside)
    os.rename(staging, target)
    _fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _target_of(name: str) -> str:
    """ ".staging-old-1a2b3c4d-unlabeled" -> "unlabeled" (the name the staging entry stands for)."""
    return name.removeprefix(OLD_PREFIX).removeprefix(STAGING_PREFIX).split("-", 1)[-1]


def clean_staging(root: str | Path, folders: tuple[str, ...] = STAGING_ROOTS) -> list[Path]:
    """Remove what a killed run left under staging names below ``root``'s ``folders``.

    An old folder set aside whose replacement never arrived (killed between the two
    renames) is put back instead. Call it only while holding the root's lock: a running
    writer's staging entries look the same. Returns the paths removed or restored.
    """
    root = Path(root)
    found: list[Path] = []
    for top in folders:
        for folder, subfolders, files in os.walk(root / top):
            here = Path(folder)
            for name in [*subfolders, *files]:
                if not name.startswith(STAGING_PREFIX):
                    continue
                path = here / name
                original = here / _target_of(name)
                if name.startswith(OLD_PREFIX) and not original.exists():
                    os.rename(path, original)
                elif path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                found.append(path)
            # Do not walk into what was just removed, nor into other hidden folders.
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]
    return found
