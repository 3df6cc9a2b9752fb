"""Which faults are worth a retry: a tracking server or database briefly unreachable.

Everything else (bad data, a bad config, a diverged run, a bug) fails the same way the
second time, so retrying it only delays the message. Used by the scheduled flow
(flows/deploy.py) and by the tasks that talk to MLflow:

    task(register_stage, retries=3, retry_delay_seconds=exponential_backoff(10),
         retry_condition_fn=retry_on_transient)
"""

from __future__ import annotations

# Substrings of the messages MLflow's REST client and SQLAlchemy give for a server or
# database that did not answer (MLflow wraps the underlying exception into its own).
TRANSIENT_MESSAGES = (
    "max retries exceeded",
    "connection refused",
    "connection reset",
    "connection aborted",
    "temporarily unavailable",
    "timed out",
    "database is locked",
    "remote end closed connection",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
)


HTTPX_TRANSIENT = {"ConnectError", "ConnectTimeout", "ReadTimeout", "RemoteProtocolError"}  # Prefect's client


def transient_fault(error: BaseException | None) -> bool:
    """True if ``error`` (or anything in its cause/context chain) is a network or
    database-availability fault rather than a fault of the input or the code."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ConnectionError | TimeoutError) or type(error).__name__ in HTTPX_TRANSIENT:
            return True
        if any(message in str(error).lower() for message in TRANSIENT_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def retry_on_transient(task, task_run, state) -> bool:
    """A Prefect ``retry_condition_fn``: retry a failed task only on a transient fault."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - the task's own exception, whatever it is, re-raised by result()
        return transient_fault(error)
    return False
