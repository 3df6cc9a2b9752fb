"""Several machines, on loopback: the pretrain stage as 2 torchrun nodes (``--nnodes 2``, one
process each, c10d rendezvous on 127.0.0.1, the same command on both, as the README's
several-machines section says) ends with the encoder that 2 processes on one node
(``pretrain.processes=2``) give, bit for bit; one MLflow run records it, with 2 processes.

Both projects train on the same prepared data (the first stages run once, then the root is
copied), one thread per process (the kernels then sum in the same order in both set-ups).
"""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import code_env, run_sslpipe

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "encoder" / "weights.pt", weights_only=True)


@pytest.mark.slow  # two pretrainings of 2 epochs on 128 images, and the first stages once: about a minute idle
def test_two_torchrun_nodes_on_loopback_train_what_two_local_processes_train(project, mlflow_store, monkeypatch):
    for stage in ("validate", "ingest", "augment"):
        run_sslpipe(stage, "-q", cwd=project)
    one_node = project.parent / "one_node"
    shutil.copytree(project, one_node)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # code_env() passes it on
    run_sslpipe("pretrain", "-q", "--set", "pretrain.processes=2", cwd=one_node)

    # Two "machines": the same command twice, each node one process; the rendezvous picks the ranks.
    node = [
        TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=sslpipe-test", "-m", "flows.cli", "pretrain", "-q",
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(node, cwd=project, env=code_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    for process in nodes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]

    two_nodes, local = weights(project), weights(one_node)
    assert two_nodes.keys() == local.keys()
    different = [key for key in local if not torch.equal(two_nodes[key], local[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("ssl-pipeline").experiment_id
    runs = client.search_runs([experiment], f"tags.`sslpipe.stage` = 'pretrain' and tags.`sslpipe.root` = '{project.resolve()}'")
    assert len(runs) == 1  # global rank 0 alone opened a run, whichever node it was on
    assert runs[0].data.params["pretrain.processes"] == "2"
    assert json.loads((project / "models" / "encoder" / "config.json").read_text())["run_id"] == runs[0].info.run_id
