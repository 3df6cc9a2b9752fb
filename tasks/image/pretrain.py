"""The image part of pretrain: the SSL method on the image shards, in one process or several.

**Several processes.** With ``pretrain.processes`` > 1 the part starts that many training
processes itself (``ssl_models.launch.launch``: like torchrun, gloo on the CPU, NCCL on GPUs), so
``sslpipe run``, the Prefect flow and ``dvc repro`` all get it; under torchrun it joins
torchrun's processes instead. Every process runs :func:`_train` on its share of each global
batch; rank 0 alone logs the epochs (into this stage's MLflow run, reopened by id in its
process), writes the checkpoints, and hands the encoder's weights back to the stage, which
writes the encoder as with one process. One process runs :func:`_train` right here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_models.augment import ViewPolicy
from ssl_models.backbones import describe as describe_backbone
from ssl_models.distributed import is_main
from ssl_models.encoder import Encoder, save_encoder
from ssl_models.launch import launch
from ssl_models.methods import build_method, check_image_size
from ssl_models.training import EpochStats, TrainingDiverged, TrainingStopped
from ssl_models.training import pretrain as train_method
from tasks.core.config import PipelineConfig, PretrainConfig
from tasks.core.context import StageContext
from tasks.core.results import Prepared
from tasks.image.init import InitWeights, apply_init, resolve_init
from tasks.image.prepared import open_unlabeled
from tasks.registry.heartbeat import ServerWatch, log_epoch, log_missed_epochs
from tasks.registry.tracking import Tracker, tracking_uri

log = logging.getLogger(__name__)


def check(cfg: PipelineConfig) -> None:
    """A method that cannot train at this size says so before anything is trained."""
    p = cfg.pretrain
    check_image_size(p.method, cfg.data.image_size, p.backbone, **p.method_params)


def describe(ctx: StageContext, prepared: Prepared) -> tuple[int, dict, str]:
    p, size = ctx.cfg.pretrain, ctx.cfg.data.image_size
    with contextlib.closing(open_unlabeled(prepared.unlabeled)) as reader:  # each process opens its own
        images = len(reader)
    tags = {"backbone": p.backbone, "backbone_at_size": describe_backbone(p.backbone, size), "images": images}
    return images, tags, f"{images} images of {size} px, {describe_backbone(p.backbone, size)}, {p.processes} process(es)"


def train(ctx: StageContext, prepared: Prepared, checkpoint: Path, run_id: str):
    """Train in ``pretrain.processes`` processes; rank 0's history and a writer of its encoder, None on the other ranks."""
    p, size, tracker = ctx.cfg.pretrain, ctx.cfg.data.image_size, ctx.tracker
    init = _init(ctx) if p.init else None
    job = TrainJob(p, size, ctx.cfg.views(), prepared.unlabeled, checkpoint, ctx.progress, tracker.root, tracker.experiment, run_id, init)
    # rank 0's result (this rank's under torchrun); a diverged loss stays the clear message it is
    trained = launch(_train, p.processes, job, expected=(TrainingDiverged, TrainingStopped), device=p.device)[0]
    if not is_main():
        return None
    history, weights = trained
    encoder = _encoder(p, size)
    encoder.load_state_dict(weights)
    return history, lambda folder, extra: save_encoder(encoder, folder, extra=extra)


def _init(ctx: StageContext) -> InitWeights:
    """``pretrain.init`` as a local file, checked against the encoder before anything trains;
    rank 0 records its sha256 (the value as given is a param)."""
    p, size = ctx.cfg.pretrain, ctx.cfg.data.image_size
    init = resolve_init(p.init, ctx.layout, size)
    ignored = apply_init(_encoder(p, size), init)
    if is_main():
        ctx.tracker.set_tags({"init": p.init, "init_sha256": init.sha256})
        left_out = f"; left out: {len(ignored)} tensor(s) the encoder has no place for ({', '.join(ignored[:3])})" if ignored else ""
        log.info("starting from %s (%s, sha256 %s)%s", p.init, init.path, init.sha256[:12], left_out)
    return init


@dataclass(frozen=True)
class TrainJob:
    """What every training process gets: picklable, since spawned processes get a copy."""

    pretrain: PretrainConfig  # resolved
    image_size: int
    views: ViewPolicy
    unlabeled: str  # the shards' folder: each process opens its own reader
    checkpoint: Path
    progress: bool
    root: Path  # with experiment and run_id: rank 0 reopens the stage's MLflow run
    experiment: str
    run_id: str
    init: InitWeights | None = None  # pretrain.init, resolved to a local file


def _encoder(p: PretrainConfig, size: int) -> Encoder:
    return Encoder(p.backbone, {"width": p.width, "image_size": size}, size)


def _train(rank: int, world_size: int, job: TrainJob) -> tuple[list[EpochStats], dict[str, torch.Tensor]] | None:
    """One training process: rank 0 returns the history and the encoder's weights, the others None."""
    p = job.pretrain
    torch.manual_seed(p.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    encoder = _encoder(p, job.image_size)
    if job.init is not None:  # before the method is built: BYOL's and MoCo's target encoders copy it
        apply_init(encoder, job.init)
    method = build_method(p.method, encoder, job.views, **p.method_params)
    device = torch.device(p.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # launch gave each process its own GPU
    # A tracking server that goes away stops training within seconds, with a checkpoint to resume
    # from. One process only: with several, rank 0 could not save alone (the save is a collective).
    watch = ServerWatch(tracking_uri(job.root))
    on_epoch_end = None
    if rank == 0:
        # A Tracker on the stage's run by id: it works from a spawned process as from this one.
        tracker = Tracker(job.root, job.experiment, run_id=job.run_id)

        def on_epoch_end(stats: EpochStats) -> None:
            log_epoch(tracker, watch, stats)

    images = open_unlabeled(job.unlabeled)
    progress = job.progress and rank == 0
    extra = {"run_id": job.run_id}
    with watch:
        history = train_method(
            method, images, p.settings(), device, on_epoch_end, job.checkpoint, progress, extra, rank=rank, world_size=world_size,
            should_stop=watch.lost if world_size == 1 else None,
        )  # fmt: skip
    if rank != 0:
        return None
    log_missed_epochs(tracker, history)
    return history, {k: v.detach().cpu() for k, v in method.encoder.state_dict().items()}
