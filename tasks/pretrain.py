"""Pretrain stage: train the chosen SSL method on the prepared images.

Logs per-epoch metrics and the training curves into the run and writes the encoder
(weights.pt + config.json, with the run id in its config) at the end.

**Resume.** A checkpoint (model, optimiser, scheduler, RNG states, data order, epoch, the
MLflow run id) is written every epoch (and on Ctrl-C) to ``.sslpipe/checkpoints/``, under a
key made of what the result depends on (code, params, data: the stage's fingerprint). The
same command after a crash finds it, continues from it in the same MLflow run, and ends with
the encoder an uninterrupted run would have given. A changed config gets a fresh start.
The checkpoint is deleted once the encoder is written.

**Several processes.** With ``pretrain.processes`` > 1 the stage starts that many training
processes itself (``ssl_models.launch.launch``: like torchrun, gloo on the CPU, NCCL on
GPUs), so ``sslpipe run``, the Prefect flow and ``dvc repro`` all get it; under torchrun it
joins torchrun's processes instead. Every process runs :func:`_train` on its share of each
global batch; rank 0 alone logs the epochs (into this stage's MLflow run, reopened by id in
its process), writes the checkpoints, and hands the encoder's weights back to the stage,
which writes the encoder as with one process. One process runs :func:`_train` right here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_models.augment import ViewPolicy
from ssl_models.backbones import describe
from ssl_models.distributed import is_main
from ssl_models.encoder import Encoder, save_encoder
from ssl_models.launch import launch
from ssl_models.methods import build_method, check_image_size
from ssl_models.training import EpochStats, TrainingDiverged, checkpoint_extra, pretrain as train
from tasks.atomic import staged_dir, write_rows
from tasks.config import PretrainConfig
from tasks.context import StageContext
from tasks.lineage import git_commit
from tasks.mlflow_model import log_training_dataset
from tasks.plots import training_curves
from tasks.prepared import open_unlabeled
from tasks.results import Prepared, Pretrained, Preview, file_sha256
from tasks.tracking import Tracker

log = logging.getLogger(__name__)


def pretrain(ctx: StageContext, prepared: Prepared, preview: Preview) -> Pretrained:
    """Train, save the encoder, and return it with the run that records its training."""
    layout, cfg, tracker = ctx.layout, ctx.cfg, ctx.tracker
    p, size = cfg.pretrain, cfg.data.image_size  # resolved: no "auto" left
    check_image_size(p.method, size, p.backbone, **p.method_params)  # before anything is trained
    checkpoint = layout.state / "checkpoints" / f"pretrain-{ctx.key[:16] or 'any'}.pt"
    # False only on the ranks other than 0 of a torchrun job: they train and write nothing.
    main = is_main()
    if main:
        resumed = (checkpoint_extra(checkpoint) or {}).get("run_id")
        if resumed:
            tracker.adopt(resumed)  # the killed run's metrics continue in the same MLflow run
            log.info("resuming pretraining from %s (MLflow run %s)", checkpoint, resumed)
        with contextlib.closing(open_unlabeled(prepared.unlabeled)) as reader:  # each process opens its own
            images = len(reader)
        tags = {"git_commit": git_commit(layout.root), "data_version": prepared.data_version, "method": p.method, "backbone": p.backbone}
        tracker.set_tags({**tags, "backbone_at_size": describe(p.backbone, size), "device": p.device, "images": images})
        log_training_dataset("unlabeled", prepared.data_version, cfg.data.unlabeled, images, tracker.run_id)
        log.info("pretraining %s on %d images of %d px, %s, %s, %d process(es)", p.method, images, size, p.device, describe(p.backbone, size), p.processes)
    run_id = tracker.run_id if main else ""  # only rank 0 touches the run
    job = TrainJob(p, size, cfg.augment.policy(size), prepared.unlabeled, checkpoint, ctx.progress, tracker.root, tracker.experiment, run_id)
    # rank 0's result (this rank's under torchrun); a diverged loss stays the clear message it is
    trained = launch(_train, p.processes, job, expected=(TrainingDiverged,), device=p.device)[0]
    if not main:
        return Pretrained(str(layout.encoder), "", "", p.method)
    history, weights = trained
    rows = [{"epoch": s.epoch, **s.as_metrics()} for s in history]
    write_rows(layout.pretrain_reports / "history.csv", rows)
    title = f"{p.method} pretraining ({describe(p.backbone, size)}, {images} images), per epoch"
    tracker.log_artifact(training_curves(rows, layout.pretrain_reports / "curves.png", title), "plots")
    encoder = _encoder(p, size)
    encoder.load_state_dict(weights)
    with staged_dir(layout.encoder) as staging:
        save_encoder(encoder, staging, extra={"method": p.method, "data_version": prepared.data_version, "run_id": tracker.run_id})
    checkpoint.unlink(missing_ok=True)
    return Pretrained(str(layout.encoder), tracker.run_id, file_sha256(layout.encoder / "weights.pt"), p.method, tuple(rows))


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


def _encoder(p: PretrainConfig, size: int) -> Encoder:
    return Encoder(p.backbone, {"width": p.width, "image_size": size}, size)


def _train(rank: int, world_size: int, job: TrainJob) -> tuple[list[EpochStats], dict[str, torch.Tensor]] | None:
    """One training process: rank 0 returns the history and the encoder's weights, the others None."""
    p = job.pretrain
    torch.manual_seed(p.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    method = build_method(p.method, _encoder(p, job.image_size), job.views, **p.method_params)
    device = torch.device(p.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # launch gave each process its own GPU
    on_epoch_end = None
    if rank == 0:
        # A Tracker on the stage's run by id: it works from a spawned process as from this one.
        tracker = Tracker(job.root, job.experiment, run_id=job.run_id)

        def on_epoch_end(stats: EpochStats) -> None:
            tracker.log_metrics({f"pretrain/{k}": v for k, v in stats.as_metrics().items()}, step=stats.epoch)
            log.info("epoch %d/%d: loss %.4f, %.0f img/s", stats.epoch, p.epochs, stats.loss, stats.images_per_s)

    images = open_unlabeled(job.unlabeled)
    progress = job.progress and rank == 0
    extra = {"run_id": job.run_id}
    history = train(method, images, p.settings(), device, on_epoch_end, job.checkpoint, progress, extra, rank=rank, world_size=world_size)
    if rank != 0:
        return None
    return history, {k: v.detach().cpu() for k, v in method.encoder.state_dict().items()}
