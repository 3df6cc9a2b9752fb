"""Team mode: a real `mlflow server` on loopback (sqlite database backend, an artifact store
served by the server). Register, gate, promote and roll back over HTTP; two processes that
share nothing but the server (no file lock, as on two machines) gate at once and leave
exactly one champion and both versions."""

import multiprocessing
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from ssl_models.encoder import Encoder, save_encoder
from tasks.registry.models import log_encoder_model
from tasks.registry.promotion import LOCK_SUFFIX, champion_lock, gate, promote, rollback
from tests.conftest import use_mlflow_store
from tests.mlflow_server import mlflow_server as run_mlflow_server

NAME = "ssl-encoder"
SAME_DATA = {"eval_data_version": "labeled-v1", "eval_protocol": "probe-v1"}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a database backend and its own artifact store; yields its URL."""
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def server_store(mlflow_server, monkeypatch, request) -> str:
    """The server as the tracking and registry store, with an experiment of this test's own."""
    use_mlflow_store(monkeypatch, mlflow_server)
    mlflow.set_experiment(request.node.name[:60])
    return mlflow_server


def _log_and_register(work: Path, name: str, probe_acc: float, seed: int):
    """A tiny encoder, logged through the server's artifact store and registered."""
    torch.manual_seed(seed)
    directory = save_encoder(Encoder("resnet18_cifar", {"width": 4}), work / f"encoder{seed}")
    with mlflow.start_run() as run:
        pass
    tags = {"probe_acc": repr(probe_acc), **SAME_DATA}
    model_id = log_encoder_model(directory, name, run.info.run_id, tags)
    return mlflow.register_model(f"models:/{model_id}", name, tags=tags)


def _no_rescore(version) -> float:
    raise AssertionError("the same evaluation data: the champion's score is comparable")


@pytest.mark.slow
def test_register_gate_promote_and_rollback_over_http(tmp_path, server_store):
    name = "team-encoder"
    client = MlflowClient()
    decisions = []
    for seed, acc in enumerate((0.5, 0.6, 0.4)):  # v1 first, v2 better, v3 worse
        version = _log_and_register(tmp_path, name, acc, seed)
        decisions.append(gate(client, name, version, acc, "champion", 0.0, _no_rescore))
    assert [(d.promoted, d.reason) for d in decisions] == [(True, "first"), (True, "better"), (False, "not_better")]
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    # The served model came through the server's artifact store and loads back.
    assert mlflow.pyfunc.load_model(f"models:/{name}@champion").metadata.metadata["feature_dim"] == 32

    assert promote(client, name, "3", "champion") == "2"
    assert rollback(client, name, "champion") == ("2", "3")
    assert rollback(client, name, "champion") == ("1", "2")
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    names = {m.name for m in client.search_registered_models()}
    assert name + LOCK_SUFFIX not in names  # every lock was released


def _gate_in_process(url: str, work: str, seed: int, barrier, results) -> None:
    """One machine's register + gate: only the server is shared, no file lock is taken."""
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    mlflow.set_experiment("concurrent-gates")
    version = _log_and_register(Path(work), NAME, 0.6, seed)
    barrier.wait(timeout=300)
    results.put("ready")
    decision = gate(MlflowClient(), NAME, version, 0.6, "champion", 0.0, _no_rescore)
    results.put({"version": int(version.version), "promoted": decision.promoted, "against": decision.champion_version})


@pytest.mark.slow
def test_two_machines_gating_at_once_leave_one_champion_and_both_versions(tmp_path, server_store):
    client = MlflowClient()
    first = _log_and_register(tmp_path, NAME, 0.5, 0)
    assert gate(client, NAME, first, 0.5, "champion", 0.0, _no_rescore).promoted
    # Two equal challengers, both better than v1: one wins, the other is compared with it (a tie: rejected).
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_gate_in_process, args=(server_store, str(tmp_path), seed, barrier, results)) for seed in (1, 2)]
    # Hold the registry lock while both arrive: nothing may change the champion until it is released.
    with champion_lock(client, NAME):
        for process in processes:
            process.start()
        assert [results.get(timeout=600) for _ in processes] == ["ready", "ready"]
        time.sleep(3)  # ample time to gate, were they not waiting for the registry lock
        assert client.get_model_version_by_alias(NAME, "champion").version == "1"
    outcomes = sorted((results.get(timeout=300) for _ in processes), key=lambda r: r["version"])
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]

    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'")) == [1, 2, 3]
    winners = [r for r in outcomes if r["promoted"]]
    losers = [r for r in outcomes if not r["promoted"]]
    assert len(winners) == 1 and len(losers) == 1
    assert winners[0]["against"] == 1 and losers[0]["against"] == winners[0]["version"]
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == winners[0]["version"]


def test_a_lock_left_by_a_dead_holder_is_taken_over(server_store):
    client = MlflowClient()
    # What a process killed inside the gate leaves behind: the lock, its lease run out.
    client.create_registered_model("dead" + LOCK_SUFFIX, tags={"token": "x", "holder": "gone", "expires": repr(time.time() - 1)})
    started = time.monotonic()
    with champion_lock(client, "dead", timeout=30):
        assert client.get_registered_model("dead" + LOCK_SUFFIX).tags["holder"] != "gone"
    assert time.monotonic() - started < 10
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_registered_model("dead" + LOCK_SUFFIX)


@pytest.mark.slow
def test_the_lock_holds_under_contention_even_when_a_holder_releases_mid_attempt(server_store):
    """Eight threads take the lock 8 times each with no work in between. A waiter whose create
    fails because the lock exists, while its holder deletes it, gets "not found" from the server
    (MLflow looks the existing model up to word its error): that is a free lock, not a fault."""
    import threading

    client, inside, entries, errors = MlflowClient(), [], [], []

    def worker() -> None:
        try:
            for _ in range(8):
                with champion_lock(client, "contended", timeout=120):
                    inside.append(1)
                    assert len(inside) == 1, "two holders at once"
                    entries.append(1)
                    inside.pop()
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(err))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(entries) == 64
