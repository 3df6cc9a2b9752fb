"""The terminal filter: Prefect's failure records of an expected fault are dropped from the
terminal's handler only; an unexpected fault keeps its traceback; the file gets everything."""

from __future__ import annotations

import io
import logging

from flows import fault_log
from flows.fault_log import ExpectedFaultFilter, note_stage, stage_of


class Expected(ValueError):
    pass


def _failure(logger: logging.Logger, err: BaseException) -> None:
    try:
        raise err
    except BaseException:
        logger.error("Task run failed with exception: %r", err, exc_info=True)
    logger.error("Finished in state Failed('Task run encountered an exception')")


def test_expected_faults_leave_the_terminal_and_reach_the_other_handlers():
    terminal, other = io.StringIO(), io.StringIO()
    shown, kept = logging.StreamHandler(terminal), logging.StreamHandler(other)
    shown.addFilter(ExpectedFaultFilter(lambda err: isinstance(err, Expected)))
    logger = logging.getLogger("prefect.task_runs.test_fault_log")
    logger.addHandler(shown)
    logger.addHandler(kept)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("Beginning task run")
        _failure(logger, Expected("a changed file"))
        assert terminal.getvalue() == "Beginning task run\n"
        assert "Traceback" in other.getvalue() and "Finished in state Failed" in other.getvalue()

        unexpected = ExpectedFaultFilter(lambda err: isinstance(err, Expected))
        shown.filters = [unexpected]
        _failure(logger, KeyError("a bug"))
        assert "Traceback" in terminal.getvalue() and "KeyError" in terminal.getvalue()
        assert "Finished in state Failed" in terminal.getvalue()
    finally:
        logger.handlers = []


def test_the_stage_is_noted_once_the_innermost_wins_and_the_log_file_gets_the_traceback(tmp_path):
    err = OSError(28, "No space left on device")
    note_stage(err, "ingest")
    note_stage(err, "pretrain")
    assert stage_of(err) == "ingest" and stage_of(ValueError()) is None
    path = fault_log.open_log_file(tmp_path, "run")
    try:
        try:
            raise err
        except OSError as raised:
            fault_log.write_traceback(raised, "sslpipe run: no space left")
        text = path.read_text()
        assert "ERROR sslpipe.log_file: sslpipe run: no space left" in text and "Traceback (most recent call last)" in text
        assert fault_log.where_logged(tmp_path) == f" (traceback in {path.relative_to(tmp_path)})"
    finally:
        for handler in list(logging.getLogger().handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == str(path):
                logging.getLogger().removeHandler(handler)
                handler.close()
        fault_log._log_file = None
