"""The pipeline flow: the declared stages (tasks/stages.py) in order, results passed along.

validate -> ingest -> augment -> pretrain -> evaluate -> register -> embed

The modality follows ``data.unlabeled``: each stage runs its shell with the image or the text
part (tasks/stages.py), with the same inputs, results and outputs.

A stage that DVC says is up to date (``dvc.lock``: code, params, inputs and outputs
unchanged) is skipped (its result is read back from its outputs), and every stage that ran is
recorded in ``dvc.lock`` as ``dvc repro`` would (tasks/core/freshness.py); ``force`` reruns
everything. The flow
owns one MLflow run, created when a stage first logs: a run where nothing changed creates
none and registers nothing. Bad data ends the validate task run and the flow run Failed with
the validation report as the message (nothing trained or registered), and the MLflow run
FAILED with a description saying so (flows/stage_runner.py).
"""

from __future__ import annotations

import logging

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.fault_log import note_stage
from flows.run_logs import run_logs_to_prefect
from flows.stage_runner import (
    LAUNCHED_BY,
    StageFailed,
    end_failed,
    end_on_fault,
    failed_validation,
    failing_task_fn,
    pipeline_tracker,
    stage_context,
    tracker_for,
)
from tasks.core.config import PipelineConfig, load_config
from tasks.core.freshness import Book
from tasks.core.layout import Layout
from tasks.core.results import MissingInput
from tasks.core.root_lock import hold_root
from tasks.evaluation.scoring import scored_rows, summary_table
from tasks.registry.tracking import model_version_url, tracking_uri, ui_base, ui_hint, ui_url
from tasks.stages import PIPELINE, STAGES, Stage

log = logging.getLogger("sslpipe")


def flow_run_name() -> str:
    """What a pipeline run trains, for the Prefect UI's list of runs: ``simclr on unlabeled.tar.gz, 12 epochs``."""
    from pathlib import Path

    parameters = flow_run.parameters or {}
    try:
        config = parameters.get("config")
        cfg = config if isinstance(config, PipelineConfig) else load_config(Layout.at(parameters.get("root", ".")).root / "params.yaml")
    except ValueError:  # a broken params.yaml: the flow run says so itself
        return "ssl-pipeline"
    from ssl_models.methods import is_text_method

    epochs = cfg.text.epochs if is_text_method(cfg.pretrain.method) else cfg.pretrain.epochs
    return f"{cfg.pretrain.method} on {Path(cfg.data.unlabeled).name}, {epochs} epochs"


@flow(name="ssl-pipeline", flow_run_name=flow_run_name, log_prints=True)
def ssl_pipeline(config: PipelineConfig | None = None, root: str = ".", force: bool = False, progress: bool = True):
    """Pretrain, evaluate and register an SSL encoder. ``config`` defaults to params.yaml;
    ``progress=False`` (``sslpipe run -q``) draws no progress bars."""
    layout = Layout.at(root)
    given = config or load_config(layout.root / "params.yaml")
    cfg = given.resolved()
    # One run per project root at a time. The CLI already holds the lock (re-entrant: a no-op
    # then); a scheduled run that starts the flow directly takes it here.
    # Our own log lines (image counts, per-epoch loss, the gate's decision) go to this run's logs.
    with run_logs_to_prefect(), hold_root(layout.root, on_wait=log.info, command="ssl-pipeline flow"):
        return _run_stages(layout, cfg, Book(layout.root, given), force, progress)


def task_run_name(stage: Stage, cfg: PipelineConfig) -> str:
    """What a stage's task run did, for the Prefect UI: ``pretrain: simclr, resnet18_cifar, 2 epochs``."""
    p = cfg.pretrain
    what = {
        "validate": f"{cfg.data.unlabeled} + {cfg.data.labeled}",
        "ingest": f"{cfg.data.image_size}px",
        "augment": f"{cfg.augment.preview_images} preview images",
        "pretrain": f"{p.method}, {p.backbone}, {p.epochs} epochs",
        "evaluate": "linear probe, kNN, label efficiency",
        "register": f"{cfg.register.model_name} @{cfg.register.alias}, promotion gate",
        "embed": f"pool index, near-duplicates, outliers, {cfg.select.budget} to label ({cfg.select.strategy})",
    }.get(stage.name)
    return f"{stage.name}: {what}" if what else stage.name


def _run_stages(layout: Layout, cfg: PipelineConfig, book: Book, force: bool, progress: bool):
    STAGES["pretrain"].part(cfg.modality(layout.root)).check(cfg)  # e.g. a method that cannot work at this size says so first
    own = pipeline_tracker(
        layout, cfg, cfg.pretrain.method, {"prefect_flow_run_id": str(flow_run.id or ""), LAUNCHED_BY: "ssl-pipeline flow"}
    )
    results: dict[str, object] = {}
    ran: dict[str, str] = {}
    skipped: dict[str, str] = {}
    stage = None
    try:
        for stage in PIPELINE:
            reason = "--force" if force else book.stale_reason(stage)
            if reason is None:
                try:
                    results[stage.name] = stage.result_type().load(layout)
                    skipped[stage.name] = "up to date in dvc.lock: code, params, inputs and outputs unchanged"
                    log.info("%s: skipped (up to date in dvc.lock)", stage.name)
                    continue
                except MissingInput as err:
                    reason = str(err)
            inputs = {name: results[name] for name in stage.inputs}
            ctx = stage_context(stage, layout, cfg, tracker_for(stage, layout, cfg, inputs, own), progress)
            log.info("%s: running (%s)", stage.name, reason)
            # Bad data is a result, not an exception; in its task it raises, so the task run is Failed too.
            fn = failing_task_fn(stage.load(), failed_validation)
            run = task(fn, name=stage.name, task_run_name=task_run_name(stage, cfg), cache_policy=NO_CACHE)
            try:
                result = run(ctx, *inputs.values())
            except StageFailed as failed:
                result = failed.result
            results[stage.name], ran[stage.name] = result, reason
            if stage.name == "validate":
                create_markdown_artifact(key="data-validation", markdown=result.markdown, description="Both sources through the checks")
            why = failed_validation(result)
            if why is not None:
                end_failed(own, stage.name, why)
                return Failed(message="\n".join(result.summaries))
            if stage.name == "embed":
                create_markdown_artifact(key="pool-curation", markdown=result.markdown, description="Near-duplicates, outliers, shortlist")
            book.record(stage)
    except BaseException as err:
        if stage is not None:
            note_stage(err, stage.name)  # the CLI's line names it
        end_on_fault(own, None if stage is None else stage.name, err)
        raise
    own.end()
    registered, evaluation = results["register"], results["evaluate"]
    if "register" in ran:
        _publish(layout, cfg, registered, evaluation.metrics)
    return {"ran": ran, "skipped": skipped, "registered": registered, "metrics": evaluation.metrics, "images": results["ingest"].counts}


def _publish(layout: Layout, cfg: PipelineConfig, registered, metrics: dict) -> None:
    """What the flow run's Artifacts tab shows: links to the MLflow run and model version,
    the evaluation as a table, and a summary with the gate's decision."""
    from mlflow import MlflowClient

    uri = tracking_uri(layout.root)
    base = ui_base(uri)
    experiment_id = MlflowClient(uri).get_run(registered.run_id).info.experiment_id
    hint = ui_hint(uri)
    create_link_artifact(
        key="mlflow-run",
        link=ui_url(base, experiment_id, registered.run_id),
        link_text=f"MLflow run {registered.run_id}",
        description=f"This pipeline run in MLflow: params, metrics, plots.{hint}",
    )
    create_link_artifact(
        key="mlflow-model-version",
        link=model_version_url(base, registered.model_name, registered.version),
        link_text=f"{registered.model_name} version {registered.version}",
        description=f"The registered encoder and the gate's decision.{hint}",
    )
    rows = [
        {"encoder": name, "linear probe acc": round(metrics[name]["linear_probe_acc"], 4), "kNN acc": round(metrics[name]["knn_acc"], 4)}
        for name in scored_rows(metrics)
    ]
    create_table_artifact(key="evaluation", table=rows, description="Linear probe and kNN accuracy on the labeled test split")
    create_markdown_artifact(
        key="ssl-pipeline-summary",
        description="The gate's decision and the evaluation",
        markdown=f"## {cfg.pretrain.method} encoder, {registered.model_name} v{registered.version}\n\n{registered.decision}\n\n"
        f"```\n{summary_table(metrics)}\n```\n\nMLflow run [{registered.run_id}]({ui_url(base, experiment_id, registered.run_id)})",
    )
