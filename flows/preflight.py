"""Check MLflow and Prefect before any stage runs, and bound their retries for the run.

An unreachable server must fail the run in seconds with one line naming it, before
validation or ingest have touched ``data/prepared``, not after minutes of retries.

    bound_client_retries()               # before mlflow / prefect clients are created
    check_mlflow(tracking_uri(root))     # sqlite: creates or migrates the store (hold the root lock)
    check_prefect(os.environ.get("PREFECT_API_URL"))
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlparse

# Seconds per HTTP attempt and attempts of the preflight checks: 3 tries x 3 s + pauses < 15 s.
CHECK_TIMEOUT_S = 3.0
CHECK_TRIES = 3

# During the run: MLflow's client retries (defaults: 7 tries with backoff factor 2 and a
# 120 s timeout each, minutes in all) and Prefect's (5 tries) are cut so that a server
# going away mid-run fails the run in seconds. The user's own settings win.
CLIENT_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "PREFECT_CLIENT_MAX_RETRIES": "2",
}


class ServiceUnavailable(RuntimeError):
    """A tracking or orchestration server cannot be used; the message names its URI."""


def bound_client_retries() -> None:
    for key, value in CLIENT_RETRY_ENV.items():
        os.environ.setdefault(key, value)


def _get(url: str) -> str | None:
    """None if ``url`` answers 200 within the tries, else what went wrong the last time."""
    import httpx

    problem = None
    for attempt in range(CHECK_TRIES):
        try:
            response = httpx.get(url, timeout=CHECK_TIMEOUT_S, follow_redirects=True)
            if response.status_code == 200:
                return None
            problem = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if attempt + 1 < CHECK_TRIES:
            time.sleep(1.0)
    return problem


def check_mlflow(uri: str) -> None:
    """A tracking server answers its /health; a sqlite store exists (created or migrated now)."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        problem = _get(uri.rstrip("/") + "/health")
        if problem:
            raise ServiceUnavailable(f"MLflow tracking server {uri} is not reachable ({problem}); start it or set MLFLOW_TRACKING_URI")
        return
    if scheme.startswith("sqlite") or scheme in ("postgresql", "mysql", "mssql"):
        from mlflow import MlflowClient

        try:
            MlflowClient(uri).search_experiments(max_results=1)  # creates the schema or migrates it
        except Exception as err:  # noqa: BLE001 - any failure here is "this store cannot be used"
            raise ServiceUnavailable(f"MLflow store {uri} cannot be opened: {one_line(err)}") from None


def check_prefect(api_url: str | None) -> None:
    """A Prefect API (PREFECT_API_URL) answers its /health. None: nothing to check."""
    if not api_url:
        return
    problem = _get(api_url.rstrip("/") + "/health")
    if problem:
        raise ServiceUnavailable(f"Prefect API {api_url} is not reachable ({problem}); start the server or unset PREFECT_API_URL")


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line (MLflow and SQLAlchemy messages run to pages)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def infrastructure_message(err: BaseException) -> str | None:
    """A one-line message if ``err`` is a tracking/orchestration server or store fault, else None."""
    import sqlite3

    import httpx

    chain, seen = [], err
    while seen is not None and len(chain) < 10:  # the fault is often the cause of a wrapper
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for fault in chain:
        if isinstance(fault, ServiceUnavailable):
            return str(fault)
        if isinstance(fault, httpx.TransportError):
            url = getattr(getattr(fault, "request", None), "url", None) if _has_request(fault) else None
            where = f"Prefect API {os.environ.get('PREFECT_API_URL')}" if url is None else f"{url.scheme}://{url.host}:{url.port}"
            return f"lost the connection to {where} ({type(fault).__name__}: {one_line(fault)})"
        if isinstance(fault, sqlite3.OperationalError) or type(fault).__name__ == "OperationalError":
            return f"the MLflow store failed: {one_line(fault)}"
    from mlflow.exceptions import MlflowException

    for fault in chain:
        if isinstance(fault, MlflowException) and _is_connection_fault(fault):
            return f"MLflow tracking server {os.environ.get('MLFLOW_TRACKING_URI')} went away: {one_line(fault)}"
    return None


def _has_request(fault) -> bool:
    try:
        fault.request  # noqa: B018 - httpx raises RuntimeError when the error has no request
        return True
    except RuntimeError:
        return False


def _is_connection_fault(err: BaseException) -> bool:
    text = str(err)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "ConnectionError", "Read timed out", "API request to"))
