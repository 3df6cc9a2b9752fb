"""A full disk as one line: which file system, which file, and about how much more it needs.

    check_free(layout.prepared, needed_bytes)    # before writing what has a known size
    no_space_message(err)                        # an OSError with errno ENOSPC -> the CLI's line

``OSError`` (errno 28) from a write names neither the file system nor, often, the file; the
writers that know their size check first (ingest, the checkpoints), and every ENOSPC that still
happens is described by :func:`no_space_message` from the path it carries (``filename``), or the
one :func:`writing` wrapped it with.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

MB = 2**20
MARGIN_BYTES = 8 * MB  # metadata, manifests, the DVC cache's bookkeeping: a little beyond the data itself


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system that holds (or would hold) ``path``."""
    current = Path(os.path.abspath(path))
    while not current.exists():
        current = current.parent
    while not os.path.ismount(current):
        current = current.parent
    return current


def file_system(path: str | Path) -> str:
    """``/mnt/data (tmpfs)``: the mount point and its type, as /proc/mounts says (the mount point alone elsewhere)."""
    mount = mount_point(path)
    kind = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            # /proc/mounts escapes spaces in mount points as \040; the last matching line is the mount in force
            if len(fields) > 2 and fields[1].replace("\\040", " ") == str(mount):
                kind = fields[2]
    return f"{mount} ({kind})" if kind else str(mount)


def no_space(path: str | Path, needed_more: int | None = None) -> OSError:
    err = OSError(errno.ENOSPC, "No space left on device", str(path))
    err.needed_bytes = needed_more  # type: ignore[attr-defined]
    return err


def check_free(path: str | Path, needed: int) -> None:
    """Raise ENOSPC for ``path`` now when its file system has less than ``needed`` (+ a margin) free."""
    existing = Path(os.path.abspath(path))
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed + MARGIN_BYTES:
        raise no_space(path, needed + MARGIN_BYTES - free)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Give an ENOSPC raised in the body ``path`` as its file name when it has none."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC or err.filename:
            raise
        raise no_space(path, getattr(err, "needed_bytes", None)) from err


def is_no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno == errno.ENOSPC


def no_space_message(err: OSError) -> str:
    """``no space left on / (overlay) while writing /p/data/prepared (needs about 12 MB more)``."""
    path = err.filename or "?"
    where = file_system(path) if err.filename else "a file system"
    needed = getattr(err, "needed_bytes", None)
    more = f" (needs about {max(1, round(needed / MB))} MB more)" if needed else ""
    return f"no space left on {where} while writing {path}{more}; free some space and run the same command again"
