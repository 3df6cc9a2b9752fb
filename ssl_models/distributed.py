"""Data-parallel pretraining with torch.distributed: who am I, gathering, SyncBN, DDP.

Pure PyTorch. With one process every function here is a no-op (or runs the work in
this process), so single-process code paths stay exactly as they were. Starting the
processes (``launch``) is :mod:`ssl_models.launch`.

Conventions, as in DDP: each rank computes the loss of its own shard of the global
batch; DDP averages the gradients over the ranks. Functions that exchange tensors
with gradients (``gather_with_grad``, the all-reduce in ``SyncBatchNorm``) send back
in the backward pass the sum of every rank's gradient, so the averaged gradient is
exactly the gradient of the global-batch loss, the one a single process would get.

How the training loop uses this (the recipe :func:`ssl_models.training.pretrain` follows):

    def worker(rank, world_size, cfg):           # what launch() runs in every process
        torch.manual_seed(cfg.seed)              # the same initial weights everywhere
        method = build_method(...).to(device, memory_format=...)
        step = wrap_for_training(method, device) # SyncBN if the method asks, then DDP
        optimizer = torch.optim.SGD(method.parameters(), lr=cfg.lr * global_batch / 256)
        torch.manual_seed(cfg.seed + rank)       # different views and order per rank
        sampler = EpochSampler(..., rank=rank, world_size=world_size)  # this rank's shard
        for batch in loader:                     # local batch = global batch / world_size
            out = step(batch)                    # instead of method.training_step(batch)
            optimizer.zero_grad(); out.loss.backward(); optimizer.step()
            if hasattr(method, "after_step"):    # the plain method: EMA updates (BYOL, MoCo)
                method.after_step(progress)
        if is_main(): log metrics, write checkpoints and the encoder (``method``, no
            "module." prefix); other ranks write nothing.

    launch(worker, cfg.processes, cfg)           # ssl_models.launch; "auto": one process per visible GPU

Every rank must see the same number of steps with the same local batch size (the
sampler pads or drops to equal shards; drop the ragged last batch), because every
all_gather needs equal shapes and every rank must join every collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# ---------------------------------------------------------------------------- who am I


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that logs and writes: rank 0 (also under torchrun, before init)."""
    return world()[0] == 0 and int(os.environ.get("RANK", "0")) == 0


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


@torch.no_grad()
def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) of ``x`` over the ranks, in place and returned, no gradients (e.g. the
    Sinkhorn-Knopp sums); ``x`` itself with one process."""
    if world()[1] > 1:
        dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return x


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
        x_in, x = x, x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32, also under autocast
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


__all__ = [
    "SyncBatchNorm",
    "all_reduce",
    "all_reduce_with_grad",
    "broadcast_from_main",
    "convert_sync_batchnorm",
    "gather",
    "gather_objects",
    "gather_with_grad",
    "is_main",
    "world",
    "wrap_for_training",
]
