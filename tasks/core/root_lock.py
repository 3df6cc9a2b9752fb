"""One run per project root: an exclusive lock on ``<root>/.sslpipe/lock``.

Two runs sharing a root share its data, models, reports and registry, so they must not
overlap. The lock is an ``flock`` on an open file: the kernel drops it when the holder
exits in any way (kill -9 included), so a stale lock of a dead process is simply taken
over. The file also records who holds it (host, pid, start time, command) so that a
second run can say what it is waiting for.

Re-entrant within a process: the CLI takes it for ``sslpipe run`` and the flow takes it
again (for scheduled runs that do not go through the CLI); the inner one is a no-op.

    with hold_root(root, wait=False):   # RootBusy at once if another process holds it
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = Path(".sslpipe") / "lock"

# root -> (open lock file descriptor, nesting depth) for the locks this process holds.
_held: dict[Path, list[int]] = {}
_guard = threading.Lock()


class RootBusy(RuntimeError):
    """Another process holds the root; the message names it."""

    def __init__(self, root: Path, holder: dict):
        self.root, self.holder = root, holder
        super().__init__(f"{root} is in use by {describe_holder(holder)}")


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process (no details recorded yet)"
    command = f"`{holder['command']}` " if holder.get("command") else ""
    return f"{command}(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')})"


def lock_path(root: str | Path) -> Path:
    return Path(root).resolve() / LOCK_NAME


def read_holder(root: str | Path) -> dict:
    """What the lock file says about its holder ({} when empty or unreadable)."""
    try:
        return json.loads(lock_path(root).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def holds_root(root: str | Path) -> bool:
    """True if this process holds the lock on ``root``."""
    return Path(root).resolve() in _held


@contextlib.contextmanager
def hold_root(
    root: str | Path, wait: bool = True, on_wait: Callable[[str], None] | None = None, command: str | None = None
) -> Iterator[Path]:
    """Hold the root's lock for the body; yields the lock file's path.

    ``wait=False``: raise :class:`RootBusy` at once when another process holds it.
    ``wait=True``: call ``on_wait`` once with a line naming the holder, then block.
    ``command``: recorded for others to read (default: this process's command line).
    """
    root = Path(root).resolve()
    with _guard:
        if root in _held:  # re-entrant: the outer holder keeps it
            _held[root][1] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield lock_path(root)
        finally:
            with _guard:
                _held[root][1] -= 1
        return

    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(root)
            if not wait:
                raise RootBusy(root, holder) from None
            if on_wait:
                on_wait(f"waiting for {root}: in use by {describe_holder(holder)}")
            fcntl.flock(fd, fcntl.LOCK_EX)  # a signal handler that raises ends the wait
        _write_holder(fd, command)
        with _guard:
            _held[root] = [fd, 1]
        try:
            yield path
        finally:
            with _guard:
                del _held[root]
            os.ftruncate(fd, 0)  # nobody holds it now
    finally:
        os.close(fd)  # releases the flock


def _write_holder(fd: int, command: str | None) -> None:
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    os.ftruncate(fd, 0)  # a dead holder's details are overwritten, never appended to
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
