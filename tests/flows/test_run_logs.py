"""Our loggers in Prefect's run logs: attached only while the flow body runs, silent outside
a run (reaching the run's logs is checked on a real run in test_pipeline.py)."""

import logging
import warnings

from flows.run_logs import PROJECT_LOGGERS, RunLogHandler, run_logs_to_prefect


def test_handler_is_attached_for_the_body_only_and_levels_are_restored():
    logger = logging.getLogger("tasks")
    before = logger.level
    with run_logs_to_prefect():
        assert all(any(isinstance(h, RunLogHandler) for h in logging.getLogger(name).handlers) for name in PROJECT_LOGGERS)
        assert logger.isEnabledFor(logging.INFO)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Prefect's own handler warns outside a run; ours is silent
            logging.getLogger("tasks.pretrain").info("epoch 1/1: loss 1.0 (no run here)")
    assert not any(isinstance(h, RunLogHandler) for name in PROJECT_LOGGERS for h in logging.getLogger(name).handlers)
    assert logger.level == before
