"""A real `mlflow server` on loopback for tests: started, waited for, stopped (and restartable
on the same store and port, as after a crash)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, workers: int = 2, timeout: float = 180) -> subprocess.Popen:
    """`mlflow server` with a sqlite backend and its own artifact store under ``root``, answering /health."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    log = root / "server.log"
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return server
            except OSError:
                assert time.monotonic() < deadline, f"mlflow server did not answer /health in {timeout:.0f} s"
                time.sleep(0.5)
    except BaseException:
        stop_server(server)  # never left running behind a failed start
        raise


def stop_server(server: subprocess.Popen, signum: int = 15) -> None:
    """Signal the server and its workers (its process group); kill -9 if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signum)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
        server.wait()


@contextlib.contextmanager
def mlflow_server(root: Path, workers: int = 2) -> Iterator[str]:
    port = free_port()
    server = start_server(root, port, workers)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(server)
