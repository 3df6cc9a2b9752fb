"""The tracking server's heartbeat while pretraining runs, and the per-epoch logging that uses it.

    watch = ServerWatch(tracking_uri(root))
    with watch:
        pretrain(..., on_epoch_end=lambda stats: log_epoch(tracker, watch, stats), should_stop=watch.lost)

A server that goes away mid-epoch stops training within seconds (the loop asks ``watch.lost``
between steps, saves a checkpoint and raises ``TrainingStopped``), not at the end of the epoch
after minutes of training that could not be logged; the rerun resumes from that checkpoint.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

from ssl_models.training import EpochStats, TrainingStopped
from tasks.registry.tracking import Tracker

# The tracking server's heartbeat during training: asked every HEARTBEAT_S, it is lost after
# HEARTBEAT_MISSES failed answers in a row (each waits at most HEARTBEAT_TIMEOUT_S): within
# about 15-25 s of the server going away, not at the end of the epoch.
HEARTBEAT_S, HEARTBEAT_MISSES, HEARTBEAT_TIMEOUT_S = 5.0, 2, 4.0


class ServerWatch:
    """A background thread asking an MLflow tracking server's ``/health``.

    ``lost()`` is None while it answers, then a line naming the server and what went wrong;
    a training loop asks it between steps (``pretrain(..., should_stop=watch.lost)``), saves a
    checkpoint and stops. A store that is not a server (sqlite, a database URI) is not watched.
    """

    def __init__(self, uri: str):
        import threading

        self.uri, self.interval_s, self.misses, self.timeout_s = uri, HEARTBEAT_S, HEARTBEAT_MISSES, HEARTBEAT_TIMEOUT_S
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mlflow-heartbeat", daemon=True)

    @property
    def watched(self) -> bool:
        return urlparse(self.uri).scheme in ("http", "https")

    def lost(self) -> str | None:
        return self._lost

    def confirm(self, err: Exception) -> str | None:
        """After a failed call to the server: a line naming it if it does not answer now either
        (the call failed because the server is gone), else None (some other fault)."""
        if not self.watched:
            return None
        problem = self._lost or self._problem()
        if problem is None:
            return None
        return problem if self._lost else f"MLflow tracking server {self.uri} stopped answering ({problem})"

    def _problem(self) -> str | None:
        import httpx

        try:
            response = httpx.get(self.uri.rstrip("/") + "/health", timeout=self.timeout_s)
            return None if response.status_code == 200 else f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__

    def _watch(self) -> None:
        failed, first = 0, 0.0
        while not self._stop.wait(self.interval_s):
            problem = self._problem()
            if problem is None:
                failed = 0
                continue
            failed, first = failed + 1, first if failed else time.monotonic()
            if failed >= self.misses:
                took = time.monotonic() - first + self.interval_s
                self._lost = f"MLflow tracking server {self.uri} stopped answering ({problem}; no answer for about {took:.0f} s)"
                return

    def __enter__(self) -> ServerWatch:
        if self.watched:
            self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 1)


def log_epoch(tracker: Tracker, watch: ServerWatch, stats: EpochStats) -> None:
    """An epoch's ``EpochStats`` as ``pretrain/*`` metrics into the run. A server that went away before the heartbeat noticed
    stops training here instead, in the same words (the epoch's checkpoint is already written)."""
    try:
        tracker.log_metrics({f"pretrain/{k}": v for k, v in stats.as_metrics().items()}, step=stats.epoch)
    except Exception as err:
        lost = watch.confirm(err)
        if lost is None:
            raise
        raise TrainingStopped(
            f"{lost}; stopped training after epoch {stats.epoch}, checkpoint saved: run the same command again to resume"
        ) from err


def log_missed_epochs(tracker: Tracker, history: list[EpochStats]) -> None:
    """After a resumed run: the epochs whose metrics never reached the server, logged now, once.
    A server that died between an epoch's checkpoint and its metrics leaves that epoch
    finished on disk but missing in MLflow, and the resumed run starts after it."""
    logged = {m.step for m in tracker.client.get_metric_history(tracker.run_id, "pretrain/loss")}
    for stats in history:
        if stats.epoch not in logged:
            tracker.log_metrics({f"pretrain/{k}": v for k, v in stats.as_metrics().items()}, step=stats.epoch)
