"""The pretraining loop shared by every method.

Each step takes one uint8 batch from an :class:`~ssl_models.data.ImageSource` (an
in-memory tensor or shards on disk), read ahead by a background thread and copied to the
device, converts it to float and hands it to ``method.training_step``, which draws its
own views on the device. No DataLoader worker processes: on a small CPU they compete
with the model, and the views are batched tensor ops anyway.

Fast paths (``TrainSettings``): bf16 autocast (``precision``; "auto" = bf16 on CUDA,
fp32 on the CPU, where it was measured slower), TF32 matmuls and channels_last on CUDA,
non-blocking copies from pinned memory, and ``compile`` (``torch.compile`` of the
method's modules, in place, so state_dict keys do not change).

Resume: with ``checkpoint_path`` a checkpoint is written after every epoch (and every
``checkpoint_every_steps`` steps, and on Ctrl-C), holding the model, optimiser,
scheduler, every RNG state, the sampler's (epoch, position), the step, the history so
far and the caller's ``extra`` dict. Calling :func:`pretrain` again with the same
settings continues from it; on the CPU the result is bit-identical to an uninterrupted
run. A checkpoint from different settings is refused (:class:`CheckpointMismatch`).

A checkpoint that cannot be read at all (truncated by a full disk or a cut copy, another
format) is not fatal: it is renamed beside itself to ``<name>.corrupt`` with a warning that
says so, and training starts afresh. A checkpoint is written under a temporary name, flushed
to disk and then renamed over the old one, so a crash while writing leaves the previous one.
Before writing, the free space is checked against the size of the last checkpoint: a disk
that cannot hold it is an ``OSError`` (ENOSPC) naming the file, raised before anything is written.

``should_stop``: a callable the loop asks between steps (e.g. "is the tracking server still
there?"); when it returns a reason, a checkpoint is saved and :class:`TrainingStopped` raised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from tqdm.auto import tqdm

from ssl_models.compile_plan import AutoCompile
from ssl_models.data import EpochSampler, ImageSource, PrefetchLoader, as_source
from ssl_models.distributed import gather_objects, world, wrap_for_training
from ssl_models.memory_format import training_memory_format
from ssl_models.methods.base import SSLMethod

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to change."""


class CheckpointMismatch(ValueError):
    """The checkpoint to resume from was written by a run with other settings."""


class TrainingStopped(RuntimeError):
    """``should_stop`` gave a reason to stop; a checkpoint was saved, the message says where."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 12  # sized for `make run` on 2 CPU cores
    batch_size: int = 256
    lr: float = 0.3  # for batch 256; scaled linearly with the batch size
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    optimizer: str = "sgd"  # sgd | adamw
    channels_last: bool = True  # used on CUDA only (ssl_models/memory_format.py)
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 (autocast); auto = bf16 on CUDA, fp32 on the CPU
    compile: bool | str = "auto"  # torch.compile the method's modules; auto: when the run is long enough to pay (compile_plan)
    prefetch_batches: int = 2  # batches read ahead by the loader thread; 0 = read in the loop
    checkpoint_every_steps: int = 0  # 0: a checkpoint after every epoch only


# Settings that change neither the result nor the data order: a run may resume with others.
_RESUMABLE_ACROSS = ("prefetch_batches", "checkpoint_every_steps")

# What the loop calls with a batch: ``method.training_step``, or the DDP module that runs it.
_StepFn = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    lr: float
    images_per_s: float
    embedding_std: float  # std of l2-normalised embeddings; ~1/sqrt(D) healthy, 0 collapsed
    effective_rank: float  # exp(entropy of singular values); 1 when collapsed to a line

    def as_metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


def embedding_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the std over the batch of l2-normalised embeddings."""
    z = torch.nn.functional.normalize(embeddings.float(), dim=1)
    return z.std(dim=0).mean().item()


def effective_rank(embeddings: torch.Tensor) -> float:
    """RankMe (Garrido et al., 2023): exp of the entropy of the normalised singular values."""
    s = torch.linalg.svdvals(embeddings.float() - embeddings.float().mean(0))
    p = s / s.sum().clamp_min(1e-12) + 1e-12
    return math.exp(-(p * p.log()).sum().item())


def collapse_warning(stats: EpochStats, dim: int) -> str | None:
    """A message when the embeddings have (nearly) collapsed, else None."""
    healthy_std = 1 / math.sqrt(dim)
    if stats.embedding_std < 0.1 * healthy_std:
        return f"embedding std {stats.embedding_std:.4f} << {healthy_std:.4f}: the embeddings are collapsing to a point"
    if stats.effective_rank < 2:
        return f"effective rank {stats.effective_rank:.2f}: the embeddings are collapsing to a line"
    return None


def _make_optimizer(method: SSLMethod, settings: TrainSettings, lr: float) -> torch.optim.Optimizer:
    # A method may scale the learning rate of some of its submodules (``lr_scales``,
    # e.g. SimSiam's predictor); every group follows the same warm-up and cosine.
    scale_of = {id(p): scale for name, scale in getattr(method, "lr_scales", {}).items() for p in getattr(method, name).parameters()}
    groups = []
    for scale in [1.0, *sorted(set(scale_of.values()) - {1.0})]:  # the unscaled group first: it is the one logged
        params = [p for p in method.parameters() if p.requires_grad and scale_of.get(id(p), 1.0) == scale]
        # No weight decay on biases and norm parameters, as is standard for SSL recipes.
        groups += [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": settings.weight_decay, "lr": lr * scale},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": lr * scale},
        ]
    groups = [group for group in groups if group["params"]]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=settings.momentum)
    if settings.optimizer == "adamw":
        # beta2 0.95 as in MAE / ViT pretraining: steadier with large, noisy gradients.
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; choose sgd or adamw")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, None for plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ValueError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")


def enable_fast_math(device: torch.device) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and later): ~8x the
    fp32 throughput of the tensor cores for a 10-bit mantissa, which SSL does not notice."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def compile_method(method: SSLMethod) -> None:
    """``torch.compile`` every direct submodule of ``method`` that has parameters, in place.

    The steps between them (views, losses) stay eager: the random views draw from the
    same RNG stream as without compilation, and no graph breaks on data-dependent code.
    """
    for module in method.children():  # type: ignore[attr-defined]
        if any(True for _ in module.parameters()):
            module.compile()


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_torch(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_torch(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_torch(state: tuple) -> dict:
    # A tensor instead of an ndarray, so checkpoints load with weights_only=True (no pickle).
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}


def _numpy_state_from_torch(state: dict) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _fingerprint(settings: TrainSettings, method: SSLMethod, num_images: int, world_size: int) -> dict:
    fields = {k: v for k, v in asdict(settings).items() if k not in _RESUMABLE_ACROSS}
    return {**fields, "method": type(method).__name__, "images": num_images, "world_size": world_size}


CORRUPT_SUFFIX = ".corrupt"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A training checkpoint as written by :func:`pretrain` (no pickle: ``weights_only``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path: str | Path | None, map_location: str | torch.device = "cpu") -> dict | None:
    """The checkpoint at ``path``, or None when there is none to resume from.

    One that cannot be read (truncated, not a checkpoint, a format this version cannot load)
    is renamed to ``<path>.corrupt`` (an earlier one of that name is replaced) with a warning,
    and None is returned: the caller starts afresh, and the next run is not blocked by it.
    """
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    try:
        state = load_checkpoint(path, map_location)
        if not isinstance(state, dict) or "format" not in state:
            raise ValueError("not a training checkpoint of this pipeline")
        return state
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, it cannot be resumed from
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        os.replace(path, aside)
        problem = " ".join(f"{type(err).__name__}: {err}".split())[:100]
        log.warning("checkpoint %s cannot be read (%s); set aside as %s, training starts afresh", path, problem, aside)
        return None


def checkpoint_extra(path: str | Path) -> dict | None:
    """The caller's ``extra`` dict of the checkpoint at ``path`` (e.g. the MLflow run id to
    continue), or None when there is no checkpoint to resume from (an unreadable one is set
    aside: :func:`read_checkpoint`)."""
    state = read_checkpoint(path)
    return None if state is None else state.get("extra", {})


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[dict]:
    """Turn the first Ctrl-C into a flag the loop checks between steps, so the checkpoint
    it then writes is of a whole step; a second Ctrl-C interrupts at once. Only the main
    thread receives signals: elsewhere a KeyboardInterrupt is raised where it lands."""
    flag = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame) -> None:
        if flag["requested"]:
            raise KeyboardInterrupt
        flag["requested"] = True
        log.warning("interrupt: finishing this step and saving a checkpoint (press Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def pretrain(
    method: SSLMethod,
    images: torch.Tensor | ImageSource,
    settings: TrainSettings,
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    should_stop: Callable[[], str | None] | None = None,
) -> list[EpochStats]:
    """Train ``method`` on ``images`` and return per-epoch stats (all epochs, resumed ones too).

    ``images``: an (N, 3, H, W) uint8 tensor or an :class:`ImageSource` (e.g. shards on disk).
    ``checkpoint_path``: written after every epoch; when it already exists, training resumes
    from it (same settings required) and ``on_epoch_end`` is called for the remaining
    epochs only. ``extra``: caller data stored in the checkpoint (read it back with
    :func:`checkpoint_extra`). ``rank`` / ``world_size``: this process's share of each
    global batch (see :class:`~ssl_models.data.EpochSampler`); they must be those of the
    process group this process is in (:func:`ssl_models.launch.launch` sets it up).
    ``should_stop``: asked between steps; a reason it returns saves a checkpoint and raises
    :class:`TrainingStopped` (one process: with several, the ranks would not stop together).
    ``settings.batch_size`` is the global batch: each rank takes ``batch_size // world_size``
    images a step, and the learning rate follows the global batch, so a recipe means the
    same on any number of processes. Every rank draws its own views (seed + rank); only
    rank 0 writes the checkpoint, with every rank's RNG state in it.
    A method with a ``prepare_batch(batch)`` method turns its own rows into its
    ``training_step`` input instead of images (text: token ids (N, L) int32 -> int64).
    """
    _check_world(rank, world_size)
    # Rank 0 draws what a single process draws; the other ranks draw views of their own.
    torch.manual_seed(settings.seed + rank)
    run = _start_run(method, images, settings, torch.device(device), rank, world_size, checkpoint_path, extra)
    partial = _resume(run)
    # DDP (and SyncBN where the method asks) with several processes; after the checkpoint is
    # loaded, so that DDP's initial broadcast sends the resumed weights. One process: the
    # method's own training_step.
    training_step = wrap_for_training(run.method, run.device)
    if settings.compile is True:
        compile_method(run.method)
    elif settings.compile == "auto":
        run.auto_compile = AutoCompile(run.total_steps, run.device.type)
    loader = PrefetchLoader(run.source, run.sampler, run.device, settings.prefetch_batches)
    with _deferred_interrupt() as interrupt:
        while run.sampler.epoch <= settings.epochs:
            stats = _train_epoch(run, training_step, loader, partial, interrupt, progress, should_stop)
            partial = None  # only the first epoch continues from a checkpoint's running sums
            _end_epoch(run, stats, on_epoch_end)
    return run.history


@dataclass
class _Run:
    """What one call of :func:`pretrain` trains with, and where it stands (``step``, ``history``)."""

    method: SSLMethod
    settings: TrainSettings
    source: ImageSource
    sampler: EpochSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    prepare_batch: Callable[[torch.Tensor], Any] | None  # optional: methods whose data is not uint8 images
    batch_size: int  # this rank's share of the global batch
    rank: int
    world_size: int
    fingerprint: dict
    checkpoint_path: Path | None
    extra: dict[str, Any] | None
    step: int = 0
    history: list[EpochStats] = field(default_factory=list)
    auto_compile: AutoCompile | None = None  # compile: auto, until it has decided

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)  # the ragged end is dropped: BN needs full batches

    @property
    def total_steps(self) -> int:
        return self.settings.epochs * self.steps_per_epoch


@dataclass
class _EpochSums:
    """The running sums of an epoch; a mid-epoch checkpoint holds them, so that the resumed
    epoch's stats are those of the whole epoch."""

    losses: list[torch.Tensor]
    monitored: list[torch.Tensor]  # embeddings of the first ~2048 images, for the collapse statistics
    elapsed_before: float  # seconds spent on this epoch before the checkpoint it resumed from
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def resume(cls, partial: dict | None) -> _EpochSums:
        if partial is None:
            return cls([], [], 0.0)
        return cls(list(partial["losses"]), list(partial["monitored"]), partial["elapsed"])

    def add(self, loss: torch.Tensor, embeddings: torch.Tensor, batch_size: int) -> None:
        self.losses.append(loss.detach())
        if len(self.monitored) * batch_size < 2048:
            self.monitored.append(embeddings.detach().float())

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def state(self) -> dict:
        """What a mid-epoch checkpoint stores as ``partial``."""
        return {"losses": [x.cpu() for x in self.losses], "monitored": [x.cpu() for x in self.monitored], "elapsed": self.elapsed()}


def _check_world(rank: int, world_size: int) -> None:
    if (rank, world_size) != world():
        here = "rank {} of {}".format(*world())
        raise ValueError(f"rank {rank} of {world_size} given, but this process is {here}: start it with launch()")


def _start_run(
    method: SSLMethod,
    images: torch.Tensor | ImageSource,
    settings: TrainSettings,
    device: torch.device,
    rank: int,
    world_size: int,
    checkpoint_path: str | Path | None,
    extra: dict[str, Any] | None,
) -> _Run:
    """The run before its first step: the method on the device, this rank's sampler at
    epoch 1, the optimiser and its schedule (linear warm-up, then cosine decay to zero)."""
    enable_fast_math(device)
    amp_dtype = autocast_dtype(settings.precision, device)
    memory_format = training_memory_format(method, device, settings.channels_last)
    method = method.to(device, memory_format=memory_format)  # type: ignore[assignment]
    source = as_source(images)
    batch_size = min(settings.batch_size, len(source)) // world_size
    if batch_size < 1:
        raise ValueError(f"a global batch of {settings.batch_size} cannot be split over {world_size} processes")
    sampler = EpochSampler(len(source), batch_size, settings.seed, rank, world_size)
    base_lr = settings.lr * batch_size * world_size / 256  # the lr follows the global batch
    optimizer = _make_optimizer(method, settings, base_lr)
    steps_per_epoch = len(sampler)
    warmup_steps, total_steps = settings.warmup_epochs * steps_per_epoch, settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup_steps, total_steps))
    sampler.set_epoch(1)
    return _Run(
        method=method,
        settings=settings,
        source=source,
        sampler=sampler,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        amp_dtype=amp_dtype,
        memory_format=memory_format,
        prepare_batch=getattr(method, "prepare_batch", None),
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        fingerprint=_fingerprint(settings, method, len(source), world_size),
        checkpoint_path=Path(checkpoint_path) if checkpoint_path is not None else None,
        extra=extra,
    )


def _warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    # A plain function, not a callable object: LambdaLR's state_dict then stores nothing of it.
    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return lr_factor


def _resume(run: _Run) -> dict | None:
    """Load ``run``'s checkpoint, if there is one, into it: weights, optimiser, schedule, data
    position, step, history and this rank's RNG state. Returns the running sums of the epoch
    to continue (None: no checkpoint, or one written at the end of an epoch)."""
    path = run.checkpoint_path
    state = read_checkpoint(path, run.device)
    if state is None:
        return None
    _check_fingerprint(path, state.get("fingerprint"), run.fingerprint)
    run.method.load_state_dict(state["method"])  # type: ignore[attr-defined]
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["sampler"])
    run.step = state["step"]
    run.history = [EpochStats(**row) for row in state["history"]]
    _set_rng_state(state["rng_by_rank"][run.rank] if run.world_size > 1 else state["rng"])
    log.info("resuming from %s: epoch %d, step %d of %d", path, run.sampler.epoch, run.sampler.position, run.steps_per_epoch)
    return state["partial"]


def _train_epoch(
    run: _Run,
    training_step: _StepFn,
    loader: PrefetchLoader,
    partial: dict | None,
    interrupt: dict,
    progress: bool,
    should_stop: Callable[[], str | None] | None = None,
) -> EpochStats:
    """The rest of the current epoch (all of it unless resumed mid-epoch) and its stats;
    the checkpoints every ``checkpoint_every_steps`` steps, and on Ctrl-C, included."""
    epoch = run.sampler.epoch
    run.method.train()
    sums = _EpochSums.resume(partial)
    desc = f"epoch {epoch}/{run.settings.epochs}"
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, initial=run.sampler.position, total=run.steps_per_epoch)
    for batch in bar:
        loss, embeddings = _train_step(run, training_step, batch, epoch)
        sums.add(loss, embeddings, run.batch_size)
        _maybe_compile(run)
        if progress:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        every = run.settings.checkpoint_every_steps
        if every and run.step % every == 0 and run.sampler.position < run.steps_per_epoch:
            _save(run, sums.state())
        if interrupt["requested"]:
            _stop_on_interrupt(run, sums, epoch)
        reason = should_stop() if should_stop is not None else None
        if reason:
            _stop_for(run, sums, epoch, reason)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return _epoch_stats(run, epoch, sums)


def _maybe_compile(run: _Run) -> None:
    """``compile: auto``: once the first steps are timed, compile if the rest of the run pays for it."""
    plan = run.auto_compile
    if plan is None or not plan.step_done(run.step):
        return
    run.auto_compile = None
    pays = gather_objects(plan.pays)[0]  # rank 0's decision, so that every rank does the same
    if run.rank == 0:
        log.info(plan.reason)
    if pays:
        compile_method(run.method)


def _train_step(run: _Run, training_step: _StepFn, batch: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on ``batch``; returns its loss (float32) and embeddings."""
    if run.prepare_batch is not None:  # e.g. token ids for text methods
        x = run.prepare_batch(batch)
    else:  # uint8 images -> float in [0, 1]
        x = batch.float().div_(255).contiguous(memory_format=run.memory_format)
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        out = training_step(x)
    loss = out.loss.float()
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"the loss became {loss.item()} at epoch {epoch}, step {run.sampler.position}: lower the learning rate "
            f"(now {run.optimizer.param_groups[0]['lr']:.4g}) or raise warmup_epochs"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    if hasattr(run.method, "after_step"):  # momentum encoders (BYOL, MoCo); most methods have none
        run.method.after_step(run.step / run.total_steps)
    return loss, out.embeddings


def _stop_on_interrupt(run: _Run, sums: _EpochSums, epoch: int) -> NoReturn:
    """After the step under way when Ctrl-C came: save a checkpoint (one process) and stop."""
    where = f"epoch {epoch}, step {run.sampler.position} of {run.steps_per_epoch}"
    if run.checkpoint_path is None:
        raise KeyboardInterrupt(f"interrupted at {where}; no checkpoint path, nothing saved")
    if run.world_size > 1:
        # Each rank sees the signal at its own step, so they cannot meet in a
        # collective to save together: the last checkpoint is the one to resume.
        last = run.checkpoint_path.parent
        raise KeyboardInterrupt(f"interrupted at {where}; run the same command again to resume from the last checkpoint in {last}")
    _save(run, sums.state())
    raise KeyboardInterrupt(f"interrupted at {where}; checkpoint saved to {run.checkpoint_path}: run the same command again to resume")


def _stop_for(run: _Run, sums: _EpochSums, epoch: int, reason: str) -> NoReturn:
    """``should_stop`` said ``reason``: save a checkpoint of the finished steps and stop."""
    where = f"epoch {epoch}, step {run.sampler.position} of {run.steps_per_epoch}"
    if run.checkpoint_path is None:
        raise TrainingStopped(f"{reason}; stopped training at {where} (no checkpoint path, nothing saved)")
    _save(run, sums.state())
    raise TrainingStopped(f"{reason}; stopped training at {where}, checkpoint saved: run the same command again to resume")


def _epoch_stats(run: _Run, epoch: int, sums: _EpochSums) -> EpochStats:
    """The epoch's :class:`EpochStats` from its running sums; logs a warning when the embeddings collapse."""
    elapsed = sums.elapsed()
    embeddings = torch.cat(sums.monitored)
    stats = EpochStats(
        epoch=epoch,
        loss=torch.stack(sums.losses).mean().item(),
        lr=run.optimizer.param_groups[0]["lr"],
        images_per_s=run.steps_per_epoch * run.batch_size * run.world_size / elapsed,  # all ranks together
        embedding_std=embedding_std(embeddings),
        effective_rank=effective_rank(embeddings),
    )
    warning = collapse_warning(stats, embeddings.shape[1])
    if warning:
        log.warning("epoch %d: %s", epoch, warning)
    return stats


def _end_epoch(run: _Run, stats: EpochStats, on_epoch_end: Callable[[EpochStats], None] | None) -> None:
    """Record the epoch, move the sampler to the next one, write the checkpoint, report."""
    run.history.append(stats)
    run.sampler.set_epoch(stats.epoch + 1)
    _save(run, None)
    if on_epoch_end is not None:
        on_epoch_end(stats)
    if run.rank == 0:  # the one line per epoch: the terminal (unless -q) and the Prefect run's logs
        log.info(
            "epoch %d/%d: loss %.4f, lr %.4f, %.0f %s/s, embedding std %.3f, effective rank %.1f",
            *(stats.epoch, run.settings.epochs, stats.loss, stats.lr, stats.images_per_s, "img" if run.prepare_batch is None else "items"),
            *(stats.embedding_std, stats.effective_rank),
        )


def _save(run: _Run, partial: dict | None) -> None:
    """Write ``run``'s checkpoint (rank 0 only; nothing without a checkpoint path).
    ``partial``: the running sums of an unfinished epoch (None at an epoch's end).
    Every rank calls this at the same step: gathering the RNG states is a collective."""
    if run.checkpoint_path is None:
        return
    rng_by_rank = gather_objects(_rng_state())
    if run.rank != 0:
        return
    _save_checkpoint(run.checkpoint_path, {
        "format": 2, "fingerprint": run.fingerprint, "epoch": len(run.history),
        "method": run.method.state_dict(), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(), "step": run.step, "rng": rng_by_rank[0], "rng_by_rank": rng_by_rank,
        "history": [asdict(s) for s in run.history], "partial": partial, "extra": dict(run.extra or {}),
    })  # fmt: skip


def _check_fingerprint(path: Path, saved: dict | None, current: dict) -> None:
    if saved is None:
        raise CheckpointMismatch(f"{path}: an old-format checkpoint without settings; delete it to start over")
    differences = [
        f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if differences:
        raise CheckpointMismatch(
            f"{path}: the checkpoint was written by a run with other settings ({'; '.join(differences)}); "
            "run with its settings to resume, or delete the checkpoint to start over"
        )


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` beside ``path``, flush it to disk, then rename it over ``path`` (atomic:
    a crash mid-write leaves the previous checkpoint, never a broken one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if path.exists():  # the new one is about as large as the last one, and is written beside it
        check_free_space(path, path.stat().st_size)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException as err:
        # torch.save reports a full disk as "RuntimeError: ... file write failed", without the path
        full = _is_disk_full(err) or (isinstance(err, RuntimeError) and shutil.disk_usage(path.parent).free < 2**20)
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        raise
    tmp.replace(path)


def check_free_space(path: Path, needed: int) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` (and ``needed_bytes``, how much more it needs)
    when the file system that would hold ``path`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        err = OSError(errno.ENOSPC, "No space left on device", str(path))
        err.needed_bytes = needed - free  # type: ignore[attr-defined]
        raise err


def _is_disk_full(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
