"""The interrupt watchdog: a main thread stuck in one long C call still exits within seconds."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]

STUCK = """
import hashlib, sys
from pathlib import Path
import mlflow
from flows.interrupts import run_guarded
from tasks.registry.tracking import tag_new_runs, use_store

def body(guard):
    root = Path(sys.argv[1])
    guard.root = root
    tag_new_runs(root)
    use_store(root, "ssl-pipeline")
    run = mlflow.start_run()
    print(run.info.run_id, flush=True)
    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)  # one C call for minutes: no Python handler runs
    return 0

sys.exit(run_guarded("run", body))
"""


def test_a_main_thread_stuck_in_c_code_still_exits_with_the_run_killed(tmp_path, mlflow_store):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    run_id = proc.stdout.readline().strip()
    time.sleep(1)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 130
    assert took < 20  # GRACE_S, then the watchdog's clean-up
    assert stderr.strip().splitlines()[-1] == f"sslpipe run: interrupted by SIGINT; MLflow run {run_id} marked KILLED"
    assert "Traceback" not in stderr
    assert MlflowClient(mlflow_store).get_run(run_id).info.status == "KILLED"
