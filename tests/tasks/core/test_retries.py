"""Which faults a scheduled run retries: a tracking server that does not answer, yes; a bad
value or a missing file, no. The faults are real ones, raised by MLflow's own client."""

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.core.config import ConfigError, load_config
from tasks.core.retries import transient_fault


def test_an_unreachable_tracking_server_is_transient(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(MlflowException) as caught:
        MlflowClient("http://127.0.0.1:9").search_experiments()  # nothing listens on port 9
    assert transient_fault(caught.value)


def test_faults_of_the_input_are_not_transient(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["pretrain.epochs=many"])
    assert not transient_fault(caught.value)
    assert not transient_fault(FileNotFoundError(tmp_path / "nope"))
    assert not transient_fault(ValueError("pretrain.method: unknown method 'nope'"))
    assert transient_fault(RuntimeError("wrapped")) is False
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("register failed") from inner
    except RuntimeError as outer:
        assert transient_fault(outer)  # the cause chain is followed
