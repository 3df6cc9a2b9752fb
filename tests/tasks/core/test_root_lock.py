"""The root lock with real processes: busy, waiting, taken over after kill -9, re-entrant."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.root_lock import RootBusy, hold_root, holds_root, read_holder

REPO = Path(__file__).resolve().parents[3]

HOLDER = """
import sys, time
from tasks.core.root_lock import hold_root
with hold_root(sys.argv[1], command="holder-process"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def start_holder(root: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_busy_root_names_the_holder(tmp_path):
    holder = start_holder(tmp_path, 60)
    try:
        with pytest.raises(RootBusy) as err, hold_root(tmp_path, wait=False):
            pass
        message = str(err.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message and "holder-process" in message
    finally:
        holder.kill()
        holder.wait()


def test_waits_until_the_holder_is_done(tmp_path):
    holder = start_holder(tmp_path, 2)
    lines = []
    start = time.monotonic()
    with hold_root(tmp_path, on_wait=lines.append):
        waited = time.monotonic() - start
        assert read_holder(tmp_path)["pid"] == os.getpid()
    holder.wait()
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0]
    assert waited > 0.5  # it really waited for the holder


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = start_holder(tmp_path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert read_holder(tmp_path)["pid"] == holder.pid  # the dead holder's record is still there
    with hold_root(tmp_path, wait=False):
        assert read_holder(tmp_path)["pid"] == os.getpid()
    assert read_holder(tmp_path) == {}  # released: nobody named


def test_reentrant_within_a_process(tmp_path):
    with hold_root(tmp_path, wait=False):
        with hold_root(tmp_path, wait=False):  # the flow inside the CLI: a no-op
            assert holds_root(tmp_path)
        assert holds_root(tmp_path)  # the inner exit did not release the outer hold
    assert not holds_root(tmp_path)
