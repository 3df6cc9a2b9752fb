"""The pretraining loop shared by every method.

The whole uint8 dataset is moved to the device once; each step takes a random batch,
converts it to float and hands it to ``method.training_step``, which draws its own
views on the device. No DataLoader workers: on a small CPU they compete with the model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ssl_models.methods.base import SSLMethod

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to change."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 15
    batch_size: int = 256
    lr: float = 0.3  # for batch 256; scaled linearly with the batch size
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    optimizer: str = "sgd"  # sgd | adamw
    channels_last: bool = True
    seed: int = 0


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


def pretrain(
    method: SSLMethod,
    images: torch.Tensor,
    settings: TrainSettings,
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
) -> list[EpochStats]:
    """Train ``method`` on ``images`` (N, 3, H, W) uint8; returns per-epoch stats.

    A method with a ``prepare_batch(batch)`` method turns its own rows into its
    ``training_step`` input instead (text: token ids (N, L) int32 -> int64).

    A checkpoint (model + optimiser + epoch) is written after every epoch when
    ``checkpoint_path`` is given.
    """
    torch.manual_seed(settings.seed)
    device = torch.device(device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)  # type: ignore[assignment]
    data = images.to(device)
    prepare_batch = getattr(method, "prepare_batch", None)  # optional: methods whose data is not uint8 images
    batch_size = min(settings.batch_size, len(data))
    steps_per_epoch = max(1, len(data) // batch_size)  # drop the ragged last batch: BN needs full ones
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    base_lr = settings.lr * batch_size / 256
    optimizer = _make_optimizer(method, settings, base_lr)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history: list[EpochStats] = []
    step = 0
    for epoch in range(1, settings.epochs + 1):
        method.train()
        order = torch.randperm(len(data), device=device)
        losses, monitored = [], []
        started = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{settings.epochs}", disable=not progress, leave=False)
        for i in bar:
            batch = data[order[i * batch_size : (i + 1) * batch_size]]
            if prepare_batch is not None:  # e.g. token ids for text methods
                batch = prepare_batch(batch)
            else:  # uint8 images -> float in [0, 1]
                batch = batch.float().div_(255).contiguous(memory_format=memory_format)
            out = method.training_step(batch)
            if not torch.isfinite(out.loss):
                raise TrainingDiverged(
                    f"the loss became {out.loss.item()} at epoch {epoch}, step {i + 1}: lower the learning rate "
                    f"(now {optimizer.param_groups[0]['lr']:.4g}) or raise warmup_epochs"
                )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            method.after_step(step / total_steps)
            losses.append(out.loss.detach())
            if len(monitored) * batch_size < 2048:
                monitored.append(out.embeddings.detach())
            bar.set_postfix(loss=f"{out.loss.item():.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        embeddings = torch.cat(monitored)
        stats = EpochStats(
            epoch=epoch,
            loss=torch.stack(losses).mean().item(),
            lr=optimizer.param_groups[0]["lr"],
            images_per_s=steps_per_epoch * batch_size / elapsed,
            embedding_std=embedding_std(embeddings),
            effective_rank=effective_rank(embeddings),
        )
        history.append(stats)
        warning = collapse_warning(stats, embeddings.shape[1])
        if warning:
            log.warning("epoch %d: %s", epoch, warning)
        if checkpoint_path is not None:
            _save_checkpoint(checkpoint_path, method, optimizer, epoch)
        if on_epoch_end is not None:
            on_epoch_end(stats)
        if progress:
            tqdm.write(
                f"epoch {epoch}/{settings.epochs}  loss {stats.loss:.4f}  lr {stats.lr:.4f}  "
                f"{stats.images_per_s:.0f} img/s  emb-std {stats.embedding_std:.3f}  rank {stats.effective_rank:.1f}"
            )
    return history


def _save_checkpoint(path: str | Path, method: SSLMethod, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"epoch": epoch, "method": method.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a broken checkpoint
