"""Pretrain stage: train the chosen SSL method on the prepared data.

Logs per-epoch metrics and the training curves into the run and writes the encoder
(weights.pt + config.json, with the run id in its config) at the end.

**Resume.** A checkpoint (model, optimiser, scheduler, RNG states, data order, epoch, the
MLflow run id) is written every epoch (and on Ctrl-C) to ``.sslpipe/checkpoints/``, under a
key made of what the result depends on (code, params, data: ``ctx.key``). The same command
after a crash finds it, continues from it in the same MLflow run, and ends with the encoder
an uninterrupted run would have given. A changed config gets a fresh start. The checkpoint
is deleted once the encoder is written.

The shell does that, the lineage tags, the training dataset, the history and its curves and
the staged encoder once for every modality. The part (``ctx.part``, tasks/<modality>/pretrain.py) trains:

    check(cfg)                                      fails before anything is trained (e.g. a method at a size)
    describe(ctx, prepared) -> (items, tags, what)   items it trains on, its own tags (the count among them),
                                                    and what trains, in words (``resnet18_cifar, 3000 images``)
    train(ctx, prepared, checkpoint, run_id) -> (history, save) on the main process, None on the others
        save(folder, extra) writes the encoder's plain files into ``folder``
"""

from __future__ import annotations

import logging

from ssl_models.distributed import is_main
from ssl_models.training import checkpoint_extra
from tasks.core.atomic import staged_dir, write_rows
from tasks.core.context import StageContext
from tasks.core.lineage import git_commit
from tasks.core.plots import training_curves
from tasks.core.results import Prepared, Pretrained, Preview, file_sha256
from tasks.registry.tracking import log_training_dataset

log = logging.getLogger(__name__)


def pretrain(ctx: StageContext, prepared: Prepared, preview: Preview) -> Pretrained:
    """Train, save the encoder, and return it with the run that records its training."""
    layout, cfg, tracker, part = ctx.layout, ctx.cfg, ctx.tracker, ctx.part
    p = cfg.pretrain
    part.check(cfg)
    checkpoint = layout.state / "checkpoints" / f"pretrain-{ctx.key[:16] or 'any'}.pt"
    # False only on the ranks other than 0 of a torchrun job: they train and write nothing.
    main = is_main()
    if main:
        resumed = (checkpoint_extra(checkpoint) or {}).get("run_id")
        if resumed:
            tracker.adopt(resumed)  # the killed run's metrics continue in the same MLflow run
            log.info("resuming pretraining from %s (MLflow run %s)", checkpoint, resumed)
        items, tags, what = part.describe(ctx, prepared)
        lineage = {
            "git_commit": git_commit(layout.root),
            "data_version": prepared.data_version,
            "method": p.method,
            "modality": ctx.modality,
        }
        tracker.set_tags({**lineage, "device": p.device, **tags})
        log_training_dataset("unlabeled", prepared.data_version, cfg.data.unlabeled, items, tracker.run_id)
        log.info("pretraining %s on %s, %s", p.method, what, p.device)
    trained = part.train(ctx, prepared, checkpoint, tracker.run_id if main else "")  # only rank 0 touches the run
    if trained is None:
        return Pretrained(str(layout.encoder), "", "", p.method)
    history, save = trained
    rows = [{"epoch": s.epoch, **s.as_metrics()} for s in history]
    write_rows(layout.pretrain_reports / "history.csv", rows)
    title = f"{p.method} pretraining ({what}), per epoch"
    tracker.log_artifact(training_curves(rows, layout.pretrain_reports / "curves.png", title), "plots")
    with staged_dir(layout.encoder) as staging:
        save(staging, {"method": p.method, "data_version": prepared.data_version, "run_id": tracker.run_id})
    checkpoint.unlink(missing_ok=True)
    return Pretrained(str(layout.encoder), tracker.run_id, file_sha256(layout.encoder / "weights.pt"), p.method, tuple(rows))
