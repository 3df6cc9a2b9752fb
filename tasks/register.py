"""Register stage: the encoder becomes a new version of its modality's registered model in MLflow.

The model is an MLflow model (tasks/registry/models.py: a models-from-code pyfunc over the
plain files the pipeline writes, linked to the encoder's run, with a signature and a real
input example) that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load without
pickle. What is registered is checked first: the scores must be those of this encoder (its
weights' sha256 and run id, recorded by evaluate). Weights registered before get no new
version (their version is re-tagged and gated again). Every new version gets ``register.alias``
(``@challenger``) and then goes through the promotion gate (tasks/registry/promotion.py),
which may make it ``@champion``; the gate compares only encoders of one modality (each has
its registered model). The decision and both numbers are tags of the version and of the
run, and are in ``reports/registered.json``.

The shell does that once for every modality; the part (``ctx.part``, tasks/<modality>/register.py) says:

    model_name(cfg) -> str                                      where its encoders register
    log_model(ctx, prepared, pretrained, name, tags) -> model id  the pyfunc with its input example
    extra_tags(pretrained) -> dict                              lineage beyond the shared tags
    champion_rescorer(ctx, labeled_dir) -> (model_version -> probe accuracy on today's labeled set)
"""

from __future__ import annotations

from tasks.core.context import StageContext
from tasks.core.results import Evaluation, Prepared, Pretrained, Registered
from tasks.registry.registration import check_scores_belong, lineage_tags, record_registration, register_version_and_gate
from tasks.registry.tracking import use_store


def register(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, evaluation: Evaluation) -> Registered:
    """Log the encoder to its run, register it with ``register.alias``, run the promotion gate."""
    cfg, part = ctx.cfg, ctx.part
    check_scores_belong(pretrained, evaluation)
    name = part.model_name(cfg)
    tags = lineage_tags(ctx, prepared, pretrained, evaluation, ctx.modality) | part.extra_tags(pretrained)
    use_store(ctx.layout.root, cfg.register.experiment)
    version, decision = register_version_and_gate(
        ctx.layout.root,
        cfg,
        name,
        lambda: part.log_model(ctx, prepared, pretrained, name, tags),
        tags,
        part.champion_rescorer(ctx, prepared.labeled),
    )
    return record_registration(ctx, name, version, decision, prepared, pretrained, evaluation)
