"""Which MLflow runs belong together: the stage runs of one real `dvc repro` share a tag and a
name prefix that full pipeline runs and stages run by hand do not have; the next repro gets
another value. Real dvc, real MLflow (sqlite); the stage commands make the runs as
`sslpipe <stage>` does (flows.stage_runner.stage_tracker), without the stages' work."""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient

from flows.stage_runner import DVC_REPRO, LAUNCHED_BY, dvc_repro_id, stage_tracker
from tasks.core.config import load_config
from tasks.core.layout import Layout
from tests.conftest import REPO

BIN = Path(sys.executable).parent
# What a stage command does first, as run_alone: open the stage's own run (named, tagged), end it.
COMMAND = (
    f'{sys.executable} -c "import sys; from flows.stage_runner import stage_tracker; from tasks.core.config import load_config; '
    "from tasks.core.layout import Layout; t = stage_tracker(sys.argv[1], Layout.at('.'), load_config(None)); t.run_id; t.end()\" "
)


def _dvc(*args: str, cwd: Path, uri: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    env.pop("DVC_STAGE", None)
    out = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


def test_the_stage_runs_of_one_dvc_repro_share_a_tag_and_a_prefix(tmp_path, mlflow_store, monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    stages = {name: {"cmd": COMMAND + name, "always_changed": True} for name in ("validate", "pretrain")}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    _dvc("init", "--no-scm", "-q", cwd=root, uri=mlflow_store)
    _dvc("repro", "-q", cwd=root, uri=mlflow_store)
    _dvc("repro", "-q", "validate", cwd=root, uri=mlflow_store)

    # By hand, outside DVC: no dvc prefix, no repro tag.
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert dvc_repro_id() is None
    by_hand = stage_tracker("validate", Layout.at(root), load_config(None))
    assert by_hand.run_id
    by_hand.end()

    client = MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("ssl-pipeline").experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 4
    hand = runs[-1]  # dvc chooses the order of two independent stages; the runs by hand come last
    assert hand.info.run_name.startswith("validate-")
    assert hand.data.tags[LAUNCHED_BY] == "sslpipe validate" and DVC_REPRO not in hand.data.tags
    by_dvc = runs[:3]
    assert {r.data.tags[LAUNCHED_BY] for r in by_dvc} == {"dvc repro"}
    # One value per repro: the two stages of the first share it, the second repro has its own.
    repros: dict[str, list[str]] = {}
    for run in by_dvc:
        repros.setdefault(run.data.tags[DVC_REPRO], []).append(run.info.run_name.rsplit("-", 3)[0])
    assert sorted(sorted(names) for names in repros.values()) == [["dvc-simclr-pretrain", "dvc-validate"], ["dvc-validate"]]
    assert all("-pid" in repro for repro in repros)
    assert sorted(r.data.tags["sslpipe.stage"] for r in by_dvc) == ["pretrain", "validate", "validate"]
