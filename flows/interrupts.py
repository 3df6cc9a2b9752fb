"""Ctrl-C and SIGTERM end a run within seconds, whatever the main thread is doing.

Python runs signal handlers in the main thread between bytecodes only. The normal path:
the handler raises :class:`Interrupted` (a KeyboardInterrupt), Prefect reports the flow
run crashed as it passes through, the CLI ends the MLflow run KILLED, stops the temporary
Prefect server and exits 130/143. But a main thread inside one long C++ call (a backward
pass on an overloaded CPU can take a minute) would delay all of that.

So a watchdog thread also hears the signal (through ``signal.set_wakeup_fd``, written by
the C-level handler at once). If the main thread has not finished its clean-up within
``GRACE_S``, the watchdog does it itself: marks this process's RUNNING MLflow runs KILLED
(found by their owner tags), marks the temporary server's running flow runs crashed,
prints the line and exits; the server dies with us (parent-death signal) and the kernel
drops the root lock.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
GRACE_S = 5.0  # for the main thread to reach its handler and start cleaning up
CLEANUP_S = 15.0  # for the clean-up once started
HARD_EXIT_S = 8.0  # for the watchdog's own clean-up before it exits anyway

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so that Prefect reports the flow run
    crashed and MLflow ends its run, as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class InterruptGuard:
    """Install with :meth:`install`; the CLI calls :meth:`cleaning_up` when it has caught the
    interrupt and :meth:`done` when it has cleaned up (then the watchdog stands down)."""

    def __init__(self, command: str):
        self.command = command
        self.signum: int | None = None
        self.root: Path | None = None  # set once the root is locked: whose runs to end
        self.temporary_api: str | None = None  # set while our own Prefect server runs
        self._cleanup_started = threading.Event()
        self._done = threading.Event()
        self._previous: dict = {}
        self._wakeup: tuple[int, int] | None = None
        self._old_wakeup_fd = -1

    # -- the main thread's side ---------------------------------------------------------
    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in EXIT_CODES}
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._wakeup = (read_fd, write_fd)
        self._old_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="sslpipe-interrupt-watchdog", daemon=True).start()

    def restore(self) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_wakeup_fd)
        if self._wakeup:
            os.close(self._wakeup[1])  # the watchdog's read returns: it ends
            self._wakeup = None

    def _on_signal(self, signum: int, frame) -> None:
        """The first SIGINT/SIGTERM stops the run; later ones (a second Ctrl-C, Prefect passing
        SIGTERM on) must not interrupt the clean-up."""
        if self.signum is not None:
            return
        self.signum = signum
        logging.disable(logging.CRITICAL)  # no crash reports or tracebacks from the libraries: one line is printed
        raise Interrupted(signum)

    def cleaning_up(self) -> None:
        self._cleanup_started.set()

    def done(self) -> None:
        self._done.set()

    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum or signal.SIGINT, 130)

    def line(self, ended_runs: list[str]) -> str:
        runs = f"; MLflow run {', '.join(ended_runs)} marked KILLED" if ended_runs else ""
        return f"sslpipe {self.command}: interrupted by {signal.Signals(self.signum or signal.SIGINT).name}{runs}"

    # -- the watchdog thread ------------------------------------------------------------
    def _watch(self) -> None:
        read_fd = self._wakeup[0]
        numbers: list[int] = []
        while not numbers:
            data = os.read(read_fd, 64)
            if not data:  # restore() closed the pipe
                os.close(read_fd)
                return
            numbers = [b for b in data if b in EXIT_CODES]
        signum = numbers[0]
        if self._done.wait(GRACE_S) or (self._cleanup_started.is_set() and self._done.wait(CLEANUP_S)):
            return
        self.signum = self.signum or signum
        self._hard_exit()

    def _hard_exit(self) -> None:
        """The main thread is stuck in a long call: clean up from here and exit. The clean-up
        itself may block (on a lock the stuck thread holds: an import, the sqlite store), so
        it runs in a thread of its own that gets ``HARD_EXIT_S``; then we exit regardless."""
        logging.disable(logging.CRITICAL)
        ended: list[str] = []

        def clean_up() -> None:
            for step in (self._end_mlflow_runs, self._crash_flow_runs):
                try:
                    result = step()
                    ended.extend(result if isinstance(result, list) else [])
                except Exception:  # noqa: BLE001 - best effort: exiting matters more
                    pass

        worker = threading.Thread(target=clean_up, name="sslpipe-interrupt-cleanup", daemon=True)
        worker.start()
        worker.join(HARD_EXIT_S)
        print(self.line(list(ended)), file=sys.stderr, flush=True)
        os._exit(self.exit_code())  # the server gets its parent-death signal; the kernel drops the lock

    def _end_mlflow_runs(self) -> list[str]:
        if self.root is None or "mlflow" not in sys.modules:
            return []
        from tasks.registry.tracking import end_runs_of_this_process

        return end_runs_of_this_process(self.root)

    def _crash_flow_runs(self) -> None:
        """On our own temporary server every running flow run is ours: mark them crashed."""
        if not self.temporary_api or "prefect" not in sys.modules:
            return
        import httpx

        state = {
            "state": {"type": "CRASHED", "name": "Crashed", "message": f"sslpipe interrupted by {signal.Signals(self.signum).name}"},
            "force": True,
        }
        with httpx.Client(base_url=self.temporary_api, timeout=3) as client:
            runs = client.post("/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}}).json()
            for run in runs:
                client.post(f"/flow_runs/{run['id']}/set_state", json=state)


def run_guarded(command: str, body: Callable[[InterruptGuard], int]) -> int:
    """Call ``body(guard)`` with the guard installed; restores the previous handlers after."""
    guard = InterruptGuard(command)
    guard.install()
    try:
        return body(guard)
    finally:
        guard.restore()
        logging.disable(logging.NOTSET)
