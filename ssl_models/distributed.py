"""Data-parallel pretraining with torch.distributed: launching, gathering, SyncBN.

Pure PyTorch. With one process every function here is a no-op (or runs the work in
this process), so single-process code paths stay exactly as they were.

Launching. ``launch(fn, processes, *args)`` runs ``fn(rank, world_size, *args)`` in
``processes`` local processes the way torchrun does (MASTER_ADDR/MASTER_PORT on a free
port, RANK, WORLD_SIZE, LOCAL_RANK), one process group each (nccl on CUDA, else gloo).
When the process is already under torchrun (``already_launched()``), it joins that
process group and runs ``fn`` in this process instead of spawning again; so one stage
works both from ``sslpipe run`` and from ``torchrun --nnodes=2 ... -m flows.cli pretrain``.
A worker that fails stops the others and is raised here as ``WorkerFailed``.

Conventions, as in DDP: each rank computes the loss of its own shard of the global
batch; DDP averages the gradients over the ranks. Functions that exchange tensors
with gradients (``gather_with_grad``, the all-reduce in ``SyncBatchNorm``) send back
in the backward pass the sum of every rank's gradient, so the averaged gradient is
exactly the gradient of the global-batch loss, the one a single process would get.

How the training loop uses this (the recipe the pretrain stage follows):

    def worker(rank, world_size, cfg):           # what launch() runs in every process
        torch.manual_seed(cfg.seed)              # the same initial weights everywhere
        method = build_method(...).to(device, memory_format=...)
        step = wrap_for_training(method, device) # SyncBN if the method asks, then DDP
        optimizer = make_optimizer(method, lr=cfg.lr * global_batch / 256)
        torch.manual_seed(cfg.seed + rank)       # different views and order per rank
        sampler = Sampler(..., rank=rank, world_size=world_size)  # this rank's shard
        for batch in loader:                     # local batch = global batch / world_size
            out = step(batch)                    # instead of method.training_step(batch)
            optimizer.zero_grad(); out.loss.backward(); optimizer.step()
            if hasattr(method, "after_step"):    # the plain method: EMA updates (BYOL, MoCo)
                method.after_step(progress)
        if is_main(): log metrics, write checkpoints and the encoder (``method``, no
            "module." prefix); other ranks write nothing.

    launch(worker, cfg.processes, cfg)           # "auto": one process per visible GPU

Every rank must see the same number of steps with the same local batch size (the
sampler pads or drops to equal shards; drop the ragged last batch), because every
all_gather needs equal shapes and every rank must join every collective.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A worker process raised or died; the message names the rank and its error."""


# ---------------------------------------------------------------------------- who am I


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that logs and writes: rank 0 (also under torchrun, before init)."""
    return world()[0] == 0 and int(os.environ.get("RANK", "0")) == 0


def already_launched() -> bool:
    """True under torchrun (or a worker of ``launch``): RANK and WORLD_SIZE are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_processes(processes: int | str) -> int:
    """``auto`` -> one process per visible GPU (1 without GPUs); an int is checked."""
    if processes == "auto":
        return max(1, torch.cuda.device_count())
    count = int(processes)
    if count < 1:
        raise ValueError(f"processes must be >= 1 or 'auto', got {processes!r}")
    return count


# --------------------------------------------------------------- gathering with gradients


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: sum every rank's gradient, keep this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world_size = world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss used all rows, so the gradient of the sum of the ranks'
        # losses w.r.t. this rank's rows is the sum of the gradients all ranks hold.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class _AllReduceWithGrad(torch.autograd.Function):
    """all_reduce (sum) forward; backward: the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world_size * n, ...), rank-major, gradients flow back.

    Every rank must pass the same shape. Rank r's rows are ``[r * n, (r + 1) * n)``.
    With one process it returns ``x`` itself.
    """
    if world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the ranks, differentiable; ``x`` itself with one process."""
    if world()[1] == 1:
        return x
    return _AllReduceWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather without gradients (keys, images): (n, ...) -> (world_size * n, ...)."""
    world_size = world()[1]
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, by rank (e.g. RNG states for a checkpoint); ``[obj]``
    with one process. A collective: every rank must call it at the same point."""
    world_size = world()[1]
    if world_size == 1:
        return [obj]
    objects: list[Any] = [None] * world_size
    dist.all_gather_object(objects, obj)
    return objects


@torch.no_grad()
def broadcast_from_main(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``x`` on every rank (e.g. a shared random permutation)."""
    if world()[1] > 1:
        dist.broadcast(x, src=0)
    return x


# ---------------------------------------------------------------------------- SyncBN


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch.

    torch.nn.SyncBatchNorm runs only on GPUs; this one runs on any device and any
    backend (gloo on the CPU included), with two differentiable all-reduces per layer:
    the mean first, then the variance around it (two passes: no cancellation).
    With one process, or in eval mode, it is the plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]  # every dim but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        x_in, x = x, x.float()  # statistics in float32, also under autocast
        count = all_reduce_with_grad(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = all_reduce_with_grad(x.sum(dims)) / count  # (C,)
        var = all_reduce_with_grad(((x - mean.view(shape)) ** 2).sum(dims)) / count  # biased, as BN
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)  # unbiased, as BN
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x_in.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d in ``module`` by ``SyncBatchNorm``, in place.

    Parameters and running statistics are kept (the same tensors). Returns the module
    (a new one only when ``module`` itself is a BatchNorm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        if module.track_running_stats:
            synced.running_mean, synced.running_var = module.running_mean, module.running_var
            synced.num_batches_tracked = module.num_batches_tracked
        return synced.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module


# ------------------------------------------------------------------ data-parallel step


class _TrainingStep(nn.Module):
    """DDP wraps ``forward``; the methods' entry point is ``training_step``."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor):
        return self.method.training_step(images)


def wrap_for_training(method: nn.Module, device: torch.device | str | None = None) -> Callable[[torch.Tensor], Any]:
    """The function the loop calls instead of ``method.training_step``.

    Call it after ``method.to(device, memory_format=...)`` and before building the
    optimiser. With one process it returns ``method.training_step`` itself (no cost).
    With more, it converts BatchNorm to ``SyncBatchNorm`` when the method says
    ``sync_batchnorm = True``, and returns a DistributedDataParallel module whose call
    runs ``training_step`` and whose backward averages the gradients over the ranks.
    ``find_unused_parameters`` is turned on only for a method that sets
    ``find_unused_parameters = True``. Keep using ``method`` for everything else
    (optimiser, ``after_step``, ``state_dict``, the encoder).
    """
    if world()[1] == 1:
        return method.training_step
    if getattr(method, "sync_batchnorm", False):
        convert_sync_batchnorm(method)
    device = torch.device(device) if device is not None else next(method.parameters()).device
    return nn.parallel.DistributedDataParallel(
        _TrainingStep(method),
        device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None,
        find_unused_parameters=getattr(method, "find_unused_parameters", False),
    )


# ---------------------------------------------------------------------------- launch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(device: str | torch.device | None = None) -> str:
    """NCCL when training on GPUs, gloo on the CPU (also on a GPU machine told device=cpu)."""
    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return "nccl" if on_gpu else "gloo"


def _init_from_env(backend: str) -> None:
    """Join the process group described by the environment (torchrun's variables)."""
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the process that launched it dies (Linux). A worker that
    outlived a killed stage would go on training and writing the checkpoint while the same
    command, started again, resumes from it with workers of its own."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl: nobody would signal us
        os._exit(1)


def _worker(local_rank: int, world_size: int, port: int, result_dir: str, parent: int, backend: str, fn: Callable, args: tuple) -> None:
    _die_with_parent(parent)
    # What torchrun would have set for this process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank)
    )
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # the ranks share the cores
    _init_from_env(backend)
    try:
        result = fn(local_rank, world_size, *args)
        torch.save(result, Path(result_dir) / f"rank{local_rank}.pt")
    except BaseException as error:
        # When one rank fails, its peers fail too, inside their next collective; the
        # time tells launch() which error came first, the cause rather than an echo.
        (Path(result_dir) / f"rank{local_rank}.error").write_text(f"{time.time()!r}\n{traceback.format_exc()}")
        with contextlib.suppress(Exception):  # the exception itself, for launch(expected=...)
            (Path(result_dir) / f"rank{local_rank}.exception").write_bytes(pickle.dumps(error))
        raise
    finally:
        dist.destroy_process_group()


def _raised(result_dir: str, rank: int) -> BaseException | None:
    """The exception worker ``rank`` raised, if it could be pickled."""
    path = Path(result_dir) / f"rank{rank}.exception"
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - absent, or it cannot be unpickled: the traceback text remains
        return None


def _first_error(result_dir: str) -> tuple[int, str] | None:
    """(rank, traceback) of the worker that failed first, if any wrote one."""
    errors = []
    for path in Path(result_dir).glob("rank*.error"):
        when, text = path.read_text().split("\n", 1)
        errors.append((float(when), int(path.stem.removeprefix("rank")), text))
    return min(errors)[1:] if errors else None


def launch(
    fn: Callable[..., Any],
    processes: int | str,
    *args: Any,
    expected: tuple[type[BaseException], ...] = (),
    device: str | torch.device | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` data-parallel; return the results by rank.

    - Under torchrun (``already_launched()``): join its process group, run ``fn`` here
      and return ``[this rank's result]``; ``processes`` is torchrun's business.
    - With one process: run ``fn(0, 1, *args)`` here, no process group.
    - Else spawn ``processes`` local workers (``fn`` and ``args`` must pickle: a
      module-level function), wait for all, and return their results.

    A worker's exception stops the other workers (none is left running) and is raised
    as ``WorkerFailed`` with the worker's rank and traceback; one of the ``expected``
    types (a fault whose message says it all, e.g. a diverged loss) is raised as it is.
    ``device`` (where ``fn`` trains) picks the backend: NCCL for CUDA, gloo otherwise;
    None: CUDA when there is a GPU.
    """
    backend = _backend(device)
    if already_launched():
        joined = not dist.is_initialized()
        if joined:
            _init_from_env(backend)
        try:
            return [fn(dist.get_rank(), dist.get_world_size(), *args)]
        finally:
            if joined:
                dist.destroy_process_group()
    count = resolve_processes(processes)
    if count == 1:
        return [fn(0, 1, *args)]
    if backend == "nccl" and count > torch.cuda.device_count():
        raise ValueError(f"processes={count} but only {torch.cuda.device_count()} GPU(s) are visible")
    with tempfile.TemporaryDirectory(prefix="sslpipe-launch-") as result_dir:
        try:
            # join=True: on the first failure the other workers are terminated and joined.
            mp.spawn(_worker, args=(count, _free_port(), result_dir, os.getpid(), backend, fn, args), nprocs=count, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            first = _first_error(result_dir)
            if first is not None:
                raised = _raised(result_dir, first[0])
                if isinstance(raised, expected):
                    raise raised from None
                raise WorkerFailed(f"worker rank {first[0]} of {count} failed (the others were stopped):\n{first[1].strip()}") from None
            reason = error.msg.strip() if isinstance(error, mp.ProcessRaisedException) else f"died with exit code {error.exit_code}"
            raise WorkerFailed(f"worker rank {error.error_index} of {count} failed (the others were stopped): {reason}") from None
        return [torch.load(Path(result_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(count)]


__all__ = [
    "SyncBatchNorm",
    "WorkerFailed",
    "already_launched",
    "all_reduce_with_grad",
    "broadcast_from_main",
    "convert_sync_batchnorm",
    "gather",
    "gather_objects",
    "gather_with_grad",
    "is_main",
    "launch",
    "resolve_processes",
    "world",
    "wrap_for_training",
]
