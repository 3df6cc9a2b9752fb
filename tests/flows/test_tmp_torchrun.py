import json, subprocess, sys, time
from pathlib import Path
from mlflow import MlflowClient
from tests.conftest import code_env, run_sslpipe


def test_torchrun(project, mlflow_store):
    for stage in ("validate", "ingest", "augment"):
        run_sslpipe(stage, "-q", cwd=project)
    t0 = time.monotonic()
    out = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node=2", "-m", "flows.cli", "pretrain", "-q"],
                         cwd=project, env=code_env(), capture_output=True, text=True, timeout=600)
    print("RC", out.returncode, time.monotonic() - t0)
    print(out.stdout[-2000:], out.stderr[-4000:])
    cfg = json.loads((project / "models" / "encoder" / "config.json").read_text())
    client = MlflowClient(mlflow_store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    print([(r.info.run_name, r.info.status, r.data.params.get("pretrain.processes")) for r in runs])
    print("metrics", [m.step for m in client.get_metric_history(cfg["run_id"], "pretrain/loss")])
    print(list((project / ".sslpipe" / "stages").iterdir()))
