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
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssl_models.data import EpochSampler, ImageSource, PrefetchLoader, as_source
from ssl_models.distributed import gather_objects, world, wrap_for_training
from ssl_models.memory_format import training_memory_format
from ssl_models.methods.base import SSLMethod

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to change."""


class CheckpointMismatch(ValueError):
    """The checkpoint to resume from was written by a run with other settings."""


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
    compile: bool = False  # torch.compile the method's modules (first steps slower: compilation)
    prefetch_batches: int = 2  # batches read ahead by the loader thread; 0 = read in the loop
    checkpoint_every_steps: int = 0  # 0: a checkpoint after every epoch only


# Settings that change neither the result nor the data order: a run may resume with others.
_RESUMABLE_ACROSS = ("prefetch_batches", "checkpoint_every_steps")


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A training checkpoint as written by :func:`pretrain` (no pickle: ``weights_only``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_extra(path: str | Path) -> dict | None:
    """The caller's ``extra`` dict of the checkpoint at ``path`` (e.g. the MLflow run id to
    continue), or None when there is no checkpoint to resume from."""
    path = Path(path)
    return load_checkpoint(path).get("extra", {}) if path.exists() else None


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
) -> list[EpochStats]:
    """Train ``method`` on ``images`` and return per-epoch stats (all epochs, resumed ones too).

    ``images``: an (N, 3, H, W) uint8 tensor or an :class:`ImageSource` (e.g. shards on disk).
    ``checkpoint_path``: written after every epoch; when it already exists, training resumes
    from it (same settings required) and ``on_epoch_end`` is called for the remaining
    epochs only. ``extra``: caller data stored in the checkpoint (read it back with
    :func:`checkpoint_extra`). ``rank`` / ``world_size``: this process's share of each
    global batch (see :class:`~ssl_models.data.EpochSampler`); they must be those of the
    process group this process is in (:func:`ssl_models.distributed.launch` sets it up).
    ``settings.batch_size`` is the global batch: each rank takes ``batch_size // world_size``
    images a step, and the learning rate follows the global batch, so a recipe means the
    same on any number of processes. Every rank draws its own views (seed + rank); only
    rank 0 writes the checkpoint, with every rank's RNG state in it.
    A method with a ``prepare_batch(batch)`` method turns its own rows into its
    ``training_step`` input instead of images (text: token ids (N, L) int32 -> int64).
    """
    if (rank, world_size) != world():
        here = "rank {} of {}".format(*world())
        raise ValueError(f"rank {rank} of {world_size} given, but this process is {here}: start it with launch()")
    # Rank 0 draws what a single process draws; the other ranks draw views of their own.
    torch.manual_seed(settings.seed + rank)
    device = torch.device(device)
    enable_fast_math(device)
    amp_dtype = autocast_dtype(settings.precision, device)
    memory_format = training_memory_format(method, device, settings.channels_last)
    method = method.to(device, memory_format=memory_format)  # type: ignore[assignment]
    source = as_source(images)
    batch_size = min(settings.batch_size, len(source)) // world_size  # this rank's share of the global batch
    if batch_size < 1:
        raise ValueError(f"a global batch of {settings.batch_size} cannot be split over {world_size} processes")
    sampler = EpochSampler(len(source), batch_size, settings.seed, rank, world_size)
    steps_per_epoch = len(sampler)  # the ragged end is dropped: BN needs full batches
    prepare_batch = getattr(method, "prepare_batch", None)  # optional: methods whose data is not uint8 images
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    base_lr = settings.lr * batch_size * world_size / 256
    optimizer = _make_optimizer(method, settings, base_lr)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    fingerprint = _fingerprint(settings, method, len(source), world_size)
    history: list[EpochStats] = []
    step = 0
    sampler.set_epoch(1)
    partial: dict | None = None  # the running sums of an epoch interrupted by a checkpoint
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, device)
        _check_fingerprint(checkpoint_path, state.get("fingerprint"), fingerprint)
        method.load_state_dict(state["method"])  # type: ignore[attr-defined]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        step, partial = state["step"], state["partial"]
        history = [EpochStats(**row) for row in state["history"]]
        _set_rng_state(state["rng_by_rank"][rank] if world_size > 1 else state["rng"])
        log.info("resuming from %s: epoch %d, step %d of %d", checkpoint_path, sampler.epoch, sampler.position, steps_per_epoch)
    # DDP (and SyncBN where the method asks) with several processes; after the checkpoint is
    # loaded, so that DDP's initial broadcast sends the resumed weights. One process: the
    # method's own training_step.
    training_step = wrap_for_training(method, device)
    if settings.compile:
        compile_method(method)
    loader = PrefetchLoader(source, sampler, device, settings.prefetch_batches)

    def save(partial_state: dict | None) -> None:
        # Every rank calls this at the same step: gathering the RNG states is a collective.
        if checkpoint_path is None:
            return
        rng_by_rank = gather_objects(_rng_state())
        if rank != 0:
            return
        _save_checkpoint(checkpoint_path, {
            "format": 2, "fingerprint": fingerprint, "epoch": len(history),
            "method": method.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(), "step": step, "rng": rng_by_rank[0], "rng_by_rank": rng_by_rank,
            "history": [asdict(s) for s in history], "partial": partial_state, "extra": dict(extra or {}),
        })  # fmt: skip

    with _deferred_interrupt() as interrupt:
        while sampler.epoch <= settings.epochs:
            epoch = sampler.epoch
            method.train()
            losses: list[torch.Tensor] = list(partial["losses"]) if partial else []
            monitored: list[torch.Tensor] = list(partial["monitored"]) if partial else []
            elapsed_before = partial["elapsed"] if partial else 0.0
            partial = None
            started = time.perf_counter()

            def running() -> dict:
                return {"losses": [x.cpu() for x in losses], "monitored": [x.cpu() for x in monitored],
                        "elapsed": elapsed_before + time.perf_counter() - started}  # fmt: skip

            bar = tqdm(loader, desc=f"epoch {epoch}/{settings.epochs}", disable=not progress, leave=False, initial=sampler.position, total=steps_per_epoch)
            for batch in bar:
                if prepare_batch is not None:  # e.g. token ids for text methods
                    x = prepare_batch(batch)
                else:  # uint8 images -> float in [0, 1]
                    x = batch.float().div_(255).contiguous(memory_format=memory_format)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = training_step(x)
                loss = out.loss.float()
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss.item()} at epoch {epoch}, step {sampler.position}: lower the learning rate "
                        f"(now {optimizer.param_groups[0]['lr']:.4g}) or raise warmup_epochs"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                if hasattr(method, "after_step"):  # momentum encoders (BYOL, MoCo); most methods have none
                    method.after_step(step / total_steps)
                losses.append(loss.detach())
                if len(monitored) * batch_size < 2048:
                    monitored.append(out.embeddings.detach().float())
                if progress:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                every = settings.checkpoint_every_steps
                if every and step % every == 0 and sampler.position < steps_per_epoch:
                    save(running())
                if interrupt["requested"]:
                    where = f"epoch {epoch}, step {sampler.position} of {steps_per_epoch}"
                    if checkpoint_path is None:
                        raise KeyboardInterrupt(f"interrupted at {where}; no checkpoint path, nothing saved")
                    if world_size > 1:
                        # Each rank sees the signal at its own step, so they cannot meet in a
                        # collective to save together: the last checkpoint is the one to resume.
                        last = checkpoint_path.parent
                        raise KeyboardInterrupt(f"interrupted at {where}; run the same command again to resume from the last checkpoint in {last}")
                    save(running())
                    raise KeyboardInterrupt(f"interrupted at {where}; checkpoint saved to {checkpoint_path}: run the same command again to resume")
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = elapsed_before + time.perf_counter() - started
            embeddings = torch.cat(monitored)
            stats = EpochStats(
                epoch=epoch,
                loss=torch.stack(losses).mean().item(),
                lr=optimizer.param_groups[0]["lr"],
                images_per_s=steps_per_epoch * batch_size * world_size / elapsed,  # all ranks together
                embedding_std=embedding_std(embeddings),
                effective_rank=effective_rank(embeddings),
            )
            history.append(stats)
            warning = collapse_warning(stats, embeddings.shape[1])
            if warning:
                log.warning("epoch %d: %s", epoch, warning)
            sampler.set_epoch(epoch + 1)
            save(None)
            if on_epoch_end is not None:
                on_epoch_end(stats)
            if progress:
                tqdm.write(
                    f"epoch {epoch}/{settings.epochs}  loss {stats.loss:.4f}  lr {stats.lr:.4f}  "
                    f"{stats.images_per_s:.0f} img/s  emb-std {stats.embedding_std:.3f}  rank {stats.effective_rank:.1f}"
                )
    return history


def _check_fingerprint(path: Path, saved: dict | None, current: dict) -> None:
    if saved is None:
        raise CheckpointMismatch(f"{path}: an old-format checkpoint without settings; delete it to start over")
    differences = [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differences:
        raise CheckpointMismatch(
            f"{path}: the checkpoint was written by a run with other settings ({'; '.join(differences)}); "
            "run with its settings to resume, or delete the checkpoint to start over"
        )


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a broken checkpoint
