"""Preflight checks against real endpoints: a closed port, a real sqlite store, a live Prefect server."""

import time

import pytest

from flows.preflight import ServiceUnavailable, check_mlflow, check_prefect

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


def test_unreachable_mlflow_fails_fast_naming_the_uri():
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"127\.0\.0\.1:9"):
        check_mlflow(CLOSED)
    assert time.monotonic() - start < 30


def test_unreachable_prefect_fails_naming_the_url():
    with pytest.raises(ServiceUnavailable, match=r"Prefect API http://127.0.0.1:9/api"):
        check_prefect(f"{CLOSED}/api")


def test_sqlite_store_is_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check_mlflow(uri)
    assert (tmp_path / "mlflow.db").stat().st_size > 0
    check_mlflow(uri)  # and opened again


def test_sqlite_store_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("in the way of the store's folder")
    with pytest.raises(ServiceUnavailable, match="cannot be opened"):
        check_mlflow(f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
