"""A real `mlflow server` killed (kill -9) while pretraining runs: training stops within
seconds with a checkpoint and a line naming the server; after the server is back on the same
store, the same job resumes in the same MLflow run and logs every epoch once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from flows.preflight import CLIENT_RETRY_ENV
from ssl_models.augment import ViewPolicy
from ssl_models.training import TrainingStopped
from tasks.core.config import PipelineConfig
from tasks.image.pretrain import TrainJob, _train
from tasks.image.shards import write_shards
from tasks.registry import heartbeat
from tasks.registry.tracking import Tracker
from tests.conftest import use_mlflow_store
from tests.mlflow_server import free_port, start_server, stop_server

EPOCHS = 3


@pytest.mark.slow
def test_a_server_killed_mid_epoch_stops_training_with_a_checkpoint_and_the_rerun_resumes(tmp_path, monkeypatch):
    # A shorter heartbeat than the default 5 s x 2 (about 15 s), so that the kill lands mid-epoch
    # and is noticed by the heartbeat, not at the epoch's end.
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 1.0)
    for key, value in CLIENT_RETRY_ENV.items():  # what `sslpipe` sets: MLflow's own retries take minutes
        monkeypatch.setenv(key, value)
    store, port = tmp_path / "server", free_port()
    store.mkdir()
    servers = [start_server(store, port, workers=1)]  # every one started is stopped at the end, whatever fails
    url = f"http://127.0.0.1:{port}"
    try:
        use_mlflow_store(monkeypatch, url)
        rng = np.random.default_rng(0)
        write_shards(tmp_path / "shards", iter(rng.integers(0, 256, (192, 32, 32, 3), dtype=np.uint8)), image_size=32, count=192)
        run_id = Tracker(tmp_path, "server-lost").run_id
        cfg = PipelineConfig.model_validate(
            {"pretrain": {"epochs": EPOCHS, "width": 4, "batch_size": 32, "warmup_epochs": 0, "device": "cpu"}}
        ).resolved()
        job = TrainJob(
            cfg.pretrain, 32, ViewPolicy(), str(tmp_path / "shards"), tmp_path / "ckpt.pt", False, tmp_path, "server-lost", run_id
        )

        killed = {}

        def kill_during_epoch_2() -> None:
            while not MlflowClient(url).get_metric_history(run_id, "pretrain/loss"):  # epoch 1 is over and logged
                time.sleep(0.2)
            stop_server(servers[0], 9)
            killed["at"] = time.monotonic()

        killer = threading.Thread(target=kill_during_epoch_2, daemon=True)
        killer.start()
        with pytest.raises(TrainingStopped) as stopped:
            _train(0, 1, job)
        took = time.monotonic() - killed["at"]
        message = str(stopped.value)
        assert took < 30, f"noticed {took:.0f} s after the kill"
        assert message.startswith(f"MLflow tracking server {url} stopped answering (")
        assert "checkpoint saved: run the same command again to resume" in message
        assert job.checkpoint.exists()
        print(f"stopped {took:.1f} s after the kill: {message}")

        servers.append(start_server(store, port, workers=1))  # the same store, back
        history, _ = _train(0, 1, job)
        assert [s.epoch for s in history] == list(range(1, EPOCHS + 1))
        logged = MlflowClient(url).get_metric_history(run_id, "pretrain/loss")
        assert sorted(m.step for m in logged) == list(range(1, EPOCHS + 1))  # every epoch once, in the same run
    finally:
        for server in servers:
            stop_server(server)
