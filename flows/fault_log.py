"""An expected fault is one line in the terminal; its traceback goes to a log file under the root.

Prefect logs every failed task and flow run with the exception's traceback (``ERROR
prefect.task_runs: Task run failed with exception ...``, ``ERROR prefect.flow_runs:
Encountered exception during execution ...``, then ``Finished in state Failed(...)``), so a
full disk or a changed file printed four tracebacks above the CLI's own line. During a CLI
command:

    path = open_log_file(root, "run")           # <root>/.sslpipe/logs/run-<UTC time>.log: everything, with tracebacks
    quiet_terminal(is_expected)                 # the terminal's handlers skip Prefect's run-failure records
                                                # of an expected fault; an unexpected one keeps its traceback
    write_traceback(err)                        # the CLI's own fault, with traceback, into the file

The filter sits on the terminal's handlers, not on Prefect's loggers: the records still reach
every other handler (the file, Prefect's API handler and so the run's logs in the UI).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")
FILE_LOGGER = "sslpipe.log_file"  # writes to the log file only: the CLI's own traceback of a fault
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_log_file: Path | None = None


class ExpectedFaultFilter(logging.Filter):
    """Drop, for a terminal handler, Prefect's failure records of a run that failed with an
    expected fault: the record with the traceback (``is_expected(exception)``) and, after it,
    the ``Finished in state Failed(...)`` lines of the same failure on its way up (task, flow)."""

    def __init__(self, is_expected: Callable[[BaseException], bool]):
        super().__init__()
        self.is_expected = is_expected
        self.expected_seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(RUN_LOGGERS) or record.levelno < logging.ERROR:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return not self.expected_seen
        if self.is_expected(error):
            self.expected_seen = True
            return False
        return True


class _QuietFileHandler(logging.FileHandler):
    """A log file that cannot be written (the disk that is full is often the fault) does not
    print Python's "--- Logging error ---" and a traceback into the terminal."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _terminal_handlers() -> list[logging.Handler]:
    handlers = []
    for name in ("", "prefect", *RUN_LOGGERS):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handlers.append(handler)
    return handlers


def quiet_terminal(is_expected: Callable[[BaseException], bool]) -> None:
    """Put an :class:`ExpectedFaultFilter` on the terminal's handlers (once each) for the rest of the command."""
    for handler in _terminal_handlers():
        if not any(isinstance(f, ExpectedFaultFilter) for f in handler.filters):
            handler.addFilter(ExpectedFaultFilter(is_expected))


def open_log_file(root: Path, command: str) -> Path:
    """Log INFO and above of everything (tracebacks included) to a new file under ``root``;
    the terminal keeps its own level. Returns the file's path."""
    global _log_file
    folder = Path(root) / ".sslpipe" / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}.log"
    handler = _QuietFileHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    for console in _terminal_handlers():  # opening the root to INFO must not open the terminal
        if console.level == logging.NOTSET:
            console.setLevel(root_logger.level)
    root_logger.setLevel(min(root_logger.level, logging.INFO))
    file_only = logging.getLogger(FILE_LOGGER)
    file_only.propagate = False
    file_only.handlers = [handler]
    _log_file = path
    return path


def log_file() -> Path | None:
    """The file :func:`open_log_file` opened in this process, if any."""
    return _log_file


def write_traceback(err: BaseException, what: str) -> None:
    """``err`` with its traceback into the log file (nothing when none is open)."""
    if _log_file is not None:
        logging.getLogger(FILE_LOGGER).error("%s", what, exc_info=(type(err), err, err.__traceback__))
        for handler in logging.getLogger(FILE_LOGGER).handlers:
            handler.flush()


STAGE_NOTE = "sslpipe stage: "  # an exception's note (PEP 678) naming the stage it came from


def note_stage(err: BaseException, stage: str) -> None:
    """Note on ``err`` the stage that raised it (once: the innermost stage is the one)."""
    if stage_of(err) is None:
        err.add_note(f"{STAGE_NOTE}{stage}")


def stage_of(err: BaseException) -> str | None:
    for note in getattr(err, "__notes__", ()):
        if note.startswith(STAGE_NOTE):
            return note.removeprefix(STAGE_NOTE)
    return None


def where_logged(root: Path | None = None) -> str:
    """`` (traceback in .sslpipe/logs/run-...log)``, relative to ``root`` when inside it; '' without a file."""
    if _log_file is None or not _log_file.exists():
        return ""
    shown = _log_file
    if root is not None and _log_file.is_relative_to(root):
        shown = _log_file.relative_to(root)
    return f" (traceback in {shown})"
