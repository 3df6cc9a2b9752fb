"""Data-parallel training on the CPU: 2 gloo processes against 1 process.

Two real worker processes (``launch``, torch.distributed with gloo) each get their half
of a fixed global batch of fixed views (no random augmentation) and must compute what
one process computes on the whole batch: the loss (averaged over the ranks) and the
gradients (averaged by DDP). The workers run every check in one launch, to pay the
process start-up once; the tests compare their results with a single-process run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.distributed import (
    SyncBatchNorm,
    convert_sync_batchnorm,
    gather_with_grad,
    is_main,
    world,
    wrap_for_training,
)
from ssl_models.encoder import Encoder
from ssl_models.launch import WorkerFailed, already_launched, launch, resolve_processes
from ssl_models.losses import dino_loss, info_nce_loss, koleo_loss, mocov3_loss, nnclr_loss, nt_xent_loss, swav_loss, update_center
from ssl_models.methods.moco import MoCo
from ssl_models.methods.mocov3 import MoCoV3
from ssl_models.methods.nnclr import NNCLR
from ssl_models.methods.simclr import SimCLR
from ssl_models.methods.swav import SwAV
from ssl_models.sinkhorn import sinkhorn

WORLD_SIZE = 2
BATCH = 8  # global; 4 per rank
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """rtol 1e-5, and an atol of 1e-5 of the largest entry: float32 sums in another order
    (over ranks, through BN layers) move the small entries of a gradient by more than
    1e-5 of themselves. In float64 these gradients agree to 1e-13."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def fixed_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(BATCH, 5, generator=g),
        "w": torch.randn(BATCH, 5, generator=g),
        "z_a": torch.randn(BATCH, 16, generator=g),
        "z_b": torch.randn(BATCH, 16, generator=g),
        "queue": torch.randn(12, 16, generator=g),
        "z_local": torch.randn(BATCH, 16, generator=g),
        "prototypes": torch.randn(5, 16, generator=g),
        "images": torch.rand(BATCH, 3, 32, 32, generator=g),
        "view_a": torch.rand(BATCH, 3, 32, 32, generator=g),
        "view_b": torch.rand(BATCH, 3, 32, 32, generator=g),
        # DINO: 2 global + 2 local student views, 2 teacher views, K = 16 prototypes
        "dino_student": torch.randn(4, BATCH, 16, generator=g),
        "dino_teacher": torch.randn(2, BATCH, 16, generator=g),
        "dino_center": torch.randn(1, 16, generator=g),
    }


class FixedViews:
    """Stands in for ViewPolicy: the first call returns view a, the next view b, and so on."""

    def __init__(self, view_a: torch.Tensor, view_b: torch.Tensor) -> None:
        self.views, self.calls = (view_a, view_b), 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        view = self.views[self.calls % 2]
        self.calls += 1
        assert view.shape[0] == images.shape[0]
        return view

    def local_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        return []  # multi-crop off


def tiny_simclr(view_a: torch.Tensor, view_b: torch.Tensor) -> SimCLR:
    torch.manual_seed(0)  # the same initial weights in every process
    method = SimCLR(Encoder("resnet18_cifar", {"width": 4}), ViewPolicy(), projection_dim=8, hidden_dim=16)
    method.views = FixedViews(view_a, view_b)
    return method


def tiny_moco(view_a: torch.Tensor, view_b: torch.Tensor, bn_groups: int) -> MoCo:
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": 4})
    method = MoCo(encoder, ViewPolicy(), projection_dim=8, hidden_dim=16, queue_size=12, bn_groups=bn_groups)
    method.views = FixedViews(view_a, view_b)
    return method


def first_conv(method: nn.Module) -> nn.Conv2d:
    return next(m for m in method.encoder.modules() if isinstance(m, nn.Conv2d))


def moco_two_steps(method: MoCo, step, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Step 1: the queue is empty (in-batch negatives); step 2: it holds step 1's keys."""
    results = []
    for seed in (100, 101):
        torch.manual_seed(seed)  # the key shuffle's permutation, drawn on rank 0
        method.zero_grad(set_to_none=True)
        out = step(images)
        out.loss.backward()
        results.append({"loss": out.loss.detach(), "conv_grad": first_conv(method).weight.grad.clone(), "queue": method.queue.clone()})
    return results


def numeric_worker(rank: int, world_size: int, data: dict[str, torch.Tensor]) -> dict:
    """Every distributed computation of the tests, on this rank's half of the batch."""
    mine = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    result: dict = {"world": world(), "is_main": is_main(), "launched": already_launched()}

    # gather_with_grad: each rank weighs the gathered rows differently.
    x = data["x"][mine].clone().requires_grad_()
    gathered = gather_with_grad(x)
    ((rank + 1) * (gathered * data["w"]).sum()).backward()
    result["gathered"], result["x_grad"] = gathered.detach(), x.grad

    # The losses on raw embeddings.
    z_a, z_b = data["z_a"][mine].clone().requires_grad_(), data["z_b"][mine].clone().requires_grad_()
    loss = nt_xent_loss(z_a, z_b, temperature=0.2)
    loss.backward()
    result["nt_xent"] = (loss.detach(), z_a.grad, z_b.grad)
    for name, queue in (("info_nce", None), ("info_nce_queue", data["queue"])):
        q, k = data["z_a"][mine].clone().requires_grad_(), data["z_b"][mine].clone().requires_grad_()
        loss = info_nce_loss(q, k, queue, temperature=0.2)
        loss.backward()
        result[name] = (loss.detach(), q.grad, k.grad)

    # SimCLR with SyncBN under DDP, one step.
    simclr = tiny_simclr(data["view_a"][mine], data["view_b"][mine])
    step = wrap_for_training(simclr, "cpu")
    out = step(data["images"][mine])
    out.loss.backward()
    result["simclr"] = {
        "loss": out.loss.detach(),
        "conv_grad": first_conv(simclr).weight.grad,
        "sync_bn": isinstance(simclr.encoder.backbone.stem[1], SyncBatchNorm),
        "running_mean": simclr.encoder.backbone.stem[1].running_mean.clone(),
    }

    # MoCo: 2 BN groups per rank, shuffle-BN across the ranks, gathered keys in the queue.
    moco = tiny_moco(data["view_a"][mine], data["view_b"][mine], bn_groups=2)
    result["moco"] = moco_two_steps(moco, wrap_for_training(moco, "cpu"), data["images"][mine])

    # DINO: the loss of this rank's rows; the centre from every rank's teacher rows. KoLeo: neighbours in the global batch.
    student = [view[mine].clone().requires_grad_() for view in data["dino_student"]]
    teacher = [view[mine] for view in data["dino_teacher"]]
    loss = dino_loss(student, teacher, data["dino_center"], 0.1, 0.04)
    loss.backward()
    result["dino"] = (loss.detach(), [s.grad for s in student], update_center(data["dino_center"], torch.cat(teacher), 0.9))
    features = data["z_a"][mine].clone().requires_grad_()
    loss = koleo_loss(features)
    loss.backward()
    result["koleo"] = (loss.detach(), features.grad)
    # SwAV, NNCLR, MoCo v3: Sinkhorn, the losses, and the methods (queue / support set) under DDP.
    result["sinkhorn"] = sinkhorn(swav_scores(data, mine)[0][0].detach())
    result.update(new_losses(data, mine))
    for name in NEW_METHODS:
        method = tiny_new_method(name, data["view_a"][mine], data["view_b"][mine])
        result[name] = two_steps(method, wrap_for_training(method, "cpu"), data["images"][mine].double(), NEW_METHODS[name])
    return result


# The buffer each method fills across processes (compared with one process), or None.
NEW_METHODS = {"swav": "queue.queue", "nnclr": "support.queue", "mocov3": None}


def swav_scores(data: dict[str, torch.Tensor], rows: slice) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Scores of 3 views (2 global, 1 local) against the prototypes, with gradients, and the leaves."""
    leaves = [data[k][rows].clone().requires_grad_() for k in ("z_a", "z_b", "z_local")]
    c = torch.nn.functional.normalize(data["prototypes"], dim=1)
    return [torch.nn.functional.normalize(z, dim=1) @ c.T for z in leaves], leaves


def new_losses(data: dict[str, torch.Tensor], rows: slice) -> dict[str, tuple]:
    """SwAV (with Sinkhorn codes), NNCLR and MoCo v3 losses on raw embeddings: (loss, grads)."""
    out = {}
    scores, leaves = swav_scores(data, rows)
    loss = swav_loss(scores, [sinkhorn(s.detach()) for s in scores[:2]], temperature=0.1)
    loss.backward()
    out["swav_loss"] = (loss.detach(), *(z.grad for z in leaves))
    neighbours, p = data["z_a"][rows].clone(), data["z_b"][rows].clone().requires_grad_()
    loss = nnclr_loss(neighbours, p, temperature=0.1)
    loss.backward()
    out["nnclr_loss"] = (loss.detach(), p.grad)
    q_1, q_2 = data["z_a"][rows].clone().requires_grad_(), data["z_b"][rows].clone().requires_grad_()
    k_1, k_2 = data["z_local"][rows], data["z_local"].flip(0)[rows]  # keys: no gradient
    loss = mocov3_loss(q_1, q_2, k_1, k_2, temperature=0.2)
    loss.backward()
    out["mocov3_loss"] = (loss.detach(), q_1.grad, q_2.grad)
    return out


def tiny_new_method(name: str, view_a: torch.Tensor, view_b: torch.Tensor) -> nn.Module:
    """In float64: BN over 4-8 rows in MoCo v3's 3 BN layers deep heads turns float32 rounding
    (sums in another order across ranks) into gradient differences of 1e-3; in float64 they
    agree to 1e-12, so the comparison can be exact to CLOSE."""
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": 4})
    if name == "swav":  # the queue on from the start; the prototypes learn from the first step
        method = SwAV(encoder, ViewPolicy(), 8, 16, prototypes=5, queue_size=12, queue_start=0.0, freeze_prototypes=0.0)
    elif name == "nnclr":
        method = NNCLR(encoder, ViewPolicy(), 8, 16, support_size=12)
    else:
        method = MoCoV3(encoder, ViewPolicy(), 8, 16)
    method.views = FixedViews(view_a.double(), view_b.double())
    return method.double()


def two_steps(method: nn.Module, step, images: torch.Tensor, buffer: str | None) -> list[dict[str, torch.Tensor]]:
    """Step 1: empty queue / support set; step 2: it holds step 1's rows (from every rank)."""
    results = []
    for _ in range(2):
        method.zero_grad(set_to_none=True)
        out = step(images)
        out.loss.backward()
        result = {"loss": out.loss.detach(), "conv_grad": first_conv(method).weight.grad.clone()}
        if buffer:
            result["buffer"] = method.get_buffer(buffer).clone()
        results.append(result)
    return results


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return fixed_inputs()


@pytest.fixture(scope="module")
def ranks(data) -> list[dict]:
    return launch(numeric_worker, WORLD_SIZE, data)


def mean_over_ranks(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean(0)


def halves(t: torch.Tensor) -> list[torch.Tensor]:
    return list(t.chunk(WORLD_SIZE))


def test_workers_know_their_rank(ranks):
    assert [r["world"] for r in ranks] == [(0, 2), (1, 2)]
    assert [r["is_main"] for r in ranks] == [True, False]
    assert all(r["launched"] for r in ranks)


def test_gather_with_grad_gathers_rows_and_sums_the_ranks_gradients(ranks, data):
    x = data["x"].clone().requires_grad_()
    # The sum of the ranks' losses, computed in one process: rank r weighs by (r + 1).
    sum(((r + 1) * (x * data["w"]).sum()) for r in range(WORLD_SIZE)).backward()
    for rank, r in enumerate(ranks):
        torch.testing.assert_close(r["gathered"], data["x"])
        torch.testing.assert_close(r["x_grad"], halves(x.grad)[rank])


@pytest.mark.parametrize(("name", "queue"), [("nt_xent", False), ("info_nce", False), ("info_nce_queue", True)])
def test_losses_on_two_ranks_equal_the_loss_of_the_global_batch(ranks, data, name, queue):
    a, b = data["z_a"].clone().requires_grad_(), data["z_b"].clone().requires_grad_()
    if name == "nt_xent":
        loss = nt_xent_loss(a, b, temperature=0.2)
    else:
        loss = info_nce_loss(a, b, data["queue"] if queue else None, temperature=0.2)
    loss.backward()
    torch.testing.assert_close(mean_over_ranks([r[name][0] for r in ranks]), loss.detach(), **CLOSE)
    for rank, r in enumerate(ranks):
        # Each rank's gradient is that of the sum of the ranks' losses; DDP divides by 2.
        assert_grad_close(r[name][1] / WORLD_SIZE, halves(a.grad)[rank])
        assert_grad_close(r[name][2] / WORLD_SIZE, halves(b.grad)[rank])


def test_simclr_with_syncbn_on_two_ranks_equals_one_process(ranks, data):
    simclr = tiny_simclr(data["view_a"], data["view_b"])
    out = simclr.training_step(data["images"])
    out.loss.backward()
    assert all(r["simclr"]["sync_bn"] for r in ranks)
    torch.testing.assert_close(mean_over_ranks([r["simclr"]["loss"] for r in ranks]), out.loss.detach(), **CLOSE)
    for r in ranks:  # DDP leaves the averaged gradient on every rank
        assert_grad_close(r["simclr"]["conv_grad"], first_conv(simclr).weight.grad)
        torch.testing.assert_close(r["simclr"]["running_mean"], simclr.encoder.backbone.stem[1].running_mean, **CLOSE)


def test_moco_with_shuffle_bn_on_two_ranks_equals_one_process_with_twice_the_groups(ranks, data):
    moco = tiny_moco(data["view_a"], data["view_b"], bn_groups=2 * WORLD_SIZE)
    expected = moco_two_steps(moco, moco.training_step, data["images"])
    for step, reference in enumerate(expected):
        torch.testing.assert_close(mean_over_ranks([r["moco"][step]["loss"] for r in ranks]), reference["loss"], **CLOSE)
        for r in ranks:
            assert_grad_close(r["moco"][step]["conv_grad"], reference["conv_grad"])
            torch.testing.assert_close(r["moco"][step]["queue"], reference["queue"], **CLOSE)
    assert int(moco.queue_filled) == 12  # step 1 queued 8 keys, so step 2 had queued negatives


def test_dino_loss_and_centre_on_two_ranks_equal_the_global_batch(ranks, data):
    student = [view.clone().requires_grad_() for view in data["dino_student"]]
    teacher = list(data["dino_teacher"])
    loss = dino_loss(student, teacher, data["dino_center"], 0.1, 0.04)
    loss.backward()
    torch.testing.assert_close(mean_over_ranks([r["dino"][0] for r in ranks]), loss.detach(), **CLOSE)
    center = update_center(data["dino_center"], torch.cat(teacher), 0.9)
    for rank, r in enumerate(ranks):
        for got, view in zip(r["dino"][1], student, strict=True):
            assert_grad_close(got / WORLD_SIZE, halves(view.grad)[rank])
        torch.testing.assert_close(r["dino"][2], center, **CLOSE)  # the same centre on every rank


def test_koleo_on_two_ranks_equals_the_global_batch(ranks, data):
    features = data["z_a"].clone().requires_grad_()
    loss = koleo_loss(features)
    loss.backward()
    torch.testing.assert_close(mean_over_ranks([r["koleo"][0] for r in ranks]), loss.detach(), **CLOSE)
    for rank, r in enumerate(ranks):
        assert_grad_close(r["koleo"][1] / WORLD_SIZE, halves(features.grad)[rank])


def test_sinkhorn_on_two_ranks_equals_sinkhorn_on_the_global_batch(ranks, data):
    scores, _ = swav_scores(data, slice(None))
    expected = sinkhorn(scores[0].detach())
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in ranks]), expected, **CLOSE)


@pytest.mark.parametrize("name", ["swav_loss", "nnclr_loss", "mocov3_loss"])
def test_new_losses_on_two_ranks_equal_the_loss_of_the_global_batch(ranks, data, name):
    expected = new_losses(data, slice(None))[name]
    torch.testing.assert_close(mean_over_ranks([r[name][0] for r in ranks]), expected[0], **CLOSE)
    for grad in range(1, len(expected)):
        for rank, r in enumerate(ranks):
            assert_grad_close(r[name][grad] / WORLD_SIZE, halves(expected[grad])[rank])


@pytest.mark.parametrize("name", list(NEW_METHODS))
def test_new_methods_on_two_ranks_equal_one_process(ranks, data, name):
    method = tiny_new_method(name, data["view_a"], data["view_b"])
    expected = two_steps(method, method.training_step, data["images"].double(), NEW_METHODS[name])
    for step, reference in enumerate(expected):
        torch.testing.assert_close(mean_over_ranks([r[name][step]["loss"] for r in ranks]), reference["loss"], **CLOSE)
        for r in ranks:
            assert_grad_close(r[name][step]["conv_grad"], reference["conv_grad"])
            if NEW_METHODS[name]:  # filled with both ranks' rows: the same as one process's
                torch.testing.assert_close(r[name][step]["buffer"], reference["buffer"], **CLOSE)
    if NEW_METHODS[name]:  # step 1 stored 8 rows, so step 2 used them
        assert int(method.get_buffer(NEW_METHODS[name].rsplit(".", 1)[0] + ".filled")) == 12


def fail_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("rank one refuses")
    torch.distributed.barrier()  # rank 0 waits for ever: launch must stop it


def _worker_children() -> list[int]:
    """Child processes of this one that run a multiprocessing worker."""
    children = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (ValueError, OSError, IndexError):
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            children.append(int(proc.name))
    return children


def test_launch_raises_a_workers_failure_and_leaves_no_worker_running():
    with pytest.raises(WorkerFailed, match=r"(?s)rank 1 of 2.*ValueError: rank one refuses"):
        launch(fail_on_rank_one, 2)
    assert _worker_children() == []
    with pytest.raises(ValueError, match=r"^rank one refuses$"):  # an expected fault: raised as it is
        launch(fail_on_rank_one, 2, expected=(ValueError,))
    assert _worker_children() == []


def wait_forever(rank: int, world_size: int, pid_dir: str) -> None:
    # As the training loop does, which finishes its step on the first SIGINT: torch's own
    # parent-death signal (SIGINT) would leave it training on after the stage died.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    (Path(pid_dir) / str(os.getpid())).touch()
    time.sleep(600)


def test_workers_die_with_a_killed_launcher(tmp_path):
    """kill -9 of the stage must not leave its workers training (and writing its checkpoint)."""
    imports = "from ssl_models.launch import launch; from tests.ssl_models.test_distributed import wait_forever"
    script = f"{imports}; launch(wait_forever, 2, {str(tmp_path)!r})"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    launcher = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.1)
    workers = [int(path.name) for path in tmp_path.iterdir()]
    assert len(workers) == 2
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_one_process_runs_in_this_process_without_a_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not already_launched() and resolve_processes(1) == 1
    assert launch(lambda rank, world_size, x: (rank, world_size, x, os.getpid()), 1, "x") == [(0, 1, "x", os.getpid())]
    method = tiny_simclr(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    assert wrap_for_training(method) == method.training_step  # no DDP, no SyncBN with one process


def test_under_torchrun_the_stage_joins_the_group_instead_of_spawning(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    assert already_launched()
    seen = launch(lambda rank, world_size: (world(), torch.distributed.is_initialized(), os.getpid()), 4)
    assert seen == [((0, 1), True, os.getpid())]  # processes=4 ignored: torchrun decides
    assert not torch.distributed.is_initialized()


def test_sync_batchnorm_is_plain_batchnorm_with_one_process():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 6), nn.BatchNorm1d(6))
    x = torch.randn(5, 3, 32, 32)
    expected, plain_bn = net(x), net[1]
    synced = convert_sync_batchnorm(net)
    assert isinstance(synced[1], SyncBatchNorm) and isinstance(synced[4], SyncBatchNorm)
    assert synced[1].weight is plain_bn.weight and synced[1].running_mean is plain_bn.running_mean
    torch.testing.assert_close(synced(x), expected)
    with pytest.raises(ValueError, match="processes"):
        resolve_processes(0)


def every_method_trains_two_steps(rank: int, world_size: int) -> dict[str, float]:
    from ssl_models.methods import METHODS, build_method, default_backbone

    tiny = {"resnet18_cifar": {"width": 4}, "vit_tiny": {"dim": 32, "depth": 1, "heads": 2}}
    losses = {}
    for name in METHODS:
        torch.manual_seed(0)
        backbone = default_backbone(name)
        method = build_method(name, Encoder(backbone, tiny[backbone]), ViewPolicy())
        step = wrap_for_training(method, "cpu")
        optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01)
        torch.manual_seed(rank)
        for i in range(2):  # DDP reports parameters left without a gradient at the second step
            out = step(torch.rand(4, 3, 32, 32))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            if hasattr(method, "after_step"):
                method.after_step((i + 1) / 2)
        losses[name] = out.loss.item()
    return losses


@pytest.mark.slow
def test_every_method_trains_under_ddp_on_two_processes():
    ranks = launch(every_method_trains_two_steps, WORLD_SIZE)
    assert all(torch.isfinite(torch.tensor(loss)) for r in ranks for loss in r.values())
