"""A temporary Prefect server owned by one ``sslpipe`` process.

Prefect's own temporary server dies with the terminal's Ctrl-C before the client has
reported the interrupted flow run (two tracebacks and minutes of retries), survives a
kill -9 of its parent, and keeps every project's runs in ``~/.prefect/prefect.db``. This
one instead:

- runs in its own session, so SIGINT to the terminal's process group does not reach it;
  the CLI stops it itself once the client is done;
- gets a parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``), so it dies even when
  the CLI is killed with kill -9;
- keeps its database in ``<root>/.prefect`` (``PREFECT_HOME``), with analytics off.

    with temporary_server(root) as api_url:   # PREFECT_API_URL is set for this process
        ssl_pipeline(...)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STARTUP_TIMEOUT_S = 90.0  # first start (migrations) took 43 s on a busy 2-core machine
PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """The temporary server did not come up; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Run in the child before exec: a new session, and SIGTERM when the parent dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() == 1:
            os._exit(1)


def server_env(root: Path, port: int) -> dict[str, str]:
    home = root / ".prefect"
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        # As Prefect's own temporary server: no UI, only the services a local run needs.
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }


def start_server(root: Path, timeout: float = STARTUP_TIMEOUT_S) -> tuple[subprocess.Popen, str]:
    """Start the server for ``root`` and wait for /api/health; returns (process, API URL)."""
    import httpx

    root = Path(root).resolve()
    (root / ".prefect").mkdir(parents=True, exist_ok=True)
    log = open(root / ".prefect" / "server.log", "ab")  # noqa: SIM115 - the child owns it from here
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # uvicorn on Prefect's app factory, as `prefect server start` and Prefect's own temporary
    # server run it, but started directly: one process, so the parent-death signal covers it.
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=server_env(root, port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = _tail(root / ".prefect" / "server.log")
            raise ServerStartError(f"the temporary Prefect server exited with code {process.returncode} at start: {tail}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return process, api_url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise ServerStartError(
        f"the temporary Prefect server did not answer within {timeout:.0f} s (log: {root / '.prefect' / 'server.log'}); "
        "the machine may be overloaded, or start one yourself and set PREFECT_API_URL"
    )


def stop_server(process: subprocess.Popen, grace: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def temporary_server(root: Path, timeout: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """A server for the body, with ``PREFECT_API_URL`` (and ``PREFECT_HOME``) set for this process."""
    process, api_url = start_server(root, timeout)
    saved = {key: os.environ.get(key) for key in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ["PREFECT_API_URL"] = api_url
    os.environ.setdefault("PREFECT_HOME", str(Path(root).resolve() / ".prefect"))
    try:
        yield api_url
    finally:
        stop_server(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
