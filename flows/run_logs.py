"""The pipeline's own log lines in the Prefect run's logs (the UI's Logs tab).

Prefect sends only its run loggers (``get_run_logger``) to the API; our packages log with
plain ``logging.getLogger(__name__)`` (``ssl_models`` must not import Prefect), so image
counts, per-epoch loss and the promotion gate's decision stayed in the terminal.
``PREFECT_LOGGING_EXTRA_LOGGERS`` would attach them, but only if set before ``import
prefect`` configures logging, and its handler warns on every line logged outside a run
(``sslpipe validate`` alone). Instead the flow body attaches one handler for its duration:

    with run_logs_to_prefect():
        ...   # logs of tasks.*, ssl_models.*, flows.* go to this flow (or task) run

Records logged outside a run context are ignored by the handler (the console still shows
them), so the same stage code runs quietly from a DVC stage command.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

# Logger name prefixes whose records reach the run: our packages (and "sslpipe", the flow's).
PROJECT_LOGGERS = ("tasks", "ssl_models", "flows", "sslpipe")


class RunLogHandler(APILogHandler):
    """Prefect's API log handler, silent outside a flow or task run instead of warning."""

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


@contextlib.contextmanager
def run_logs_to_prefect(names: tuple[str, ...] = PROJECT_LOGGERS, level: int = logging.INFO) -> Iterator[None]:
    """Send INFO and above of ``names`` to the current Prefect run while the body runs.

    A logger quieter than ``level`` (the default root is WARNING) is opened to ``level`` for
    the duration: the run's log should hold the progress lines even when the terminal does
    not. The CLI's console handler has its own level, so ``-q`` stays quiet there.
    """
    handler = RunLogHandler(level=level)
    saved: list[tuple[logging.Logger, int]] = []
    for name in names:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > level:
            saved.append((logger, logger.level))
            logger.setLevel(level)
    try:
        yield
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)
        for logger, previous in saved:
            logger.setLevel(previous)
