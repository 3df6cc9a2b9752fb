"""The fine-tuning flow: the stages in order, nothing else.

resolve the champion encoder -> prepare (validate, ingest) -> finetune (+ from-scratch comparison) -> register

No champion, or bad data, ends the task run that found it (resolve-encoder, prepare) and the
flow run Failed with a message saying so; nothing is trained or registered. A fault while
fine-tuning or registering ends the MLflow run FAILED with a description and ``error/*`` tags
saying which stage failed and why (flows/stage_runner.py).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.run_logs import run_logs_to_prefect
from flows.stage_runner import LAUNCHED_BY, StageFailed, end_on_fault
from tasks.core.config import PipelineConfig, load_config
from tasks.core.layout import Layout
from tasks.finetune import (
    finetune_modality,
    finetune_prepare_stage,
    finetune_stage,
    no_encoder_message,
    register_classifier_stage,
    resolve_encoder_stage,
)
from tasks.registry.tracking import Tracker, model_version_url, run_name, tracking_uri, ui_base, ui_hint, ui_url


def _resolve_encoder(layout: Layout, cfg: PipelineConfig):
    """The champion encoder; no champion fails the task run (StageFailed: one line in the CLI)."""
    encoder = resolve_encoder_stage(layout, cfg)
    if encoder is None:
        raise StageFailed(no_encoder_message(cfg, finetune_modality(layout, cfg)))
    return encoder


def _prepare(layout: Layout, cfg: PipelineConfig, encoder):
    """The validated, decoded labeled data; bad data fails the task run with the report."""
    prepared = finetune_prepare_stage(layout, cfg, encoder)
    if not prepared.ok:
        raise StageFailed(prepared.message, prepared)
    return prepared


# The Prefect tasks are the stage functions (no caching: a fine-tuning is asked for on purpose);
# a missing champion or bad data raises in its task, so that task run is Failed, not Completed.
resolve_encoder_task = task(_resolve_encoder, name="resolve-encoder", cache_policy=NO_CACHE)
finetune_prepare_task = task(_prepare, name="prepare", cache_policy=NO_CACHE)
finetune_task = task(finetune_stage, name="finetune", cache_policy=NO_CACHE)
register_classifier_task = task(register_classifier_stage, name="register-classifier", cache_policy=NO_CACHE)


def summary(result: dict) -> str:
    lines = [f"fine-tuned {result['encoder_uri']} on {result['train_labels']} labels: test accuracy {result['test_acc']:.3f}"]
    if "compare" in result:
        c = result["compare"]
        lines.append(
            f"at {c['fraction'] * 100:g}% of the labels ({c['train_labels']}): fine-tuned {c['ssl_finetune_acc']:.3f} "
            f"vs from scratch {c['scratch_acc']:.3f}"
        )
    return "\n".join(lines)


def flow_run_name() -> str:
    """For the Prefect UI: ``fine-tune @champion on labeled.tar.gz, 10% of the labels``."""
    parameters = flow_run.parameters or {}
    try:
        config = parameters.get("config")
        cfg = config if isinstance(config, PipelineConfig) else load_config(Layout.at(parameters.get("root", ".")).root / "params.yaml")
    except ValueError:  # a broken params.yaml: the flow run says so itself
        return "ssl-finetune"
    f = cfg.finetune
    return f"fine-tune @{f.encoder_alias} on {Path(f.data).name}, {f.label_fraction:.0%} of the labels"


def task_run_names(cfg: PipelineConfig, modality: str) -> dict[str, str]:
    """What each task run does, for the Prefect UI (as the pipeline's ``pretrain: simclr, resnet18_cifar, 2 epochs``)."""
    f = cfg.finetune
    compare = f", vs from scratch at {f.compare_fraction:.0%}" if f.compare_fraction is not None else ""
    classifier = f.text_model_name if modality == "text" else f.model_name
    return {
        "resolve-encoder": f"resolve-encoder: {cfg.model_name(modality)}@{f.encoder_alias}",
        "prepare": f"prepare: validate and decode {Path(f.data).name}",
        "finetune": f"finetune: {f.label_fraction:.0%} of the labels, {f.steps} steps{compare}",
        "register-classifier": f"register-classifier: {classifier} @{f.alias}",
    }


def _mlflow_links(layout: Layout, run_id: str, model_name: str, version) -> str:
    """Markdown links to the fine-tuning run and the classifier version, in the MLflow UI of
    the store in use (a tracking server's own address, else $MLFLOW_UI_URL)."""
    from mlflow import MlflowClient

    uri = tracking_uri(layout.root)
    base = ui_base(uri)
    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    return (
        f"MLflow run [{run_id}]({ui_url(base, experiment_id, run_id)}), "
        f"model [{model_name} version {version}]({model_version_url(base, model_name, version)}).{ui_hint(uri)}"
    )


@flow(name="ssl-finetune", flow_run_name=flow_run_name, log_prints=True)
def finetune_flow(config: PipelineConfig | None = None, root: str = "."):
    """Fine-tune the champion encoder on ``finetune.data`` and register the classifier."""
    layout = Layout.at(root)
    cfg = (config or load_config(layout.root / "params.yaml")).resolved()
    # Our own log lines (the encoder pinned, validation, accuracies, the version) go to this run's logs.
    with run_logs_to_prefect():
        return _finetune(layout, cfg)


def _finetune(layout: Layout, cfg: PipelineConfig):
    names = task_run_names(cfg, finetune_modality(layout, cfg))
    try:
        encoder = resolve_encoder_task.with_options(task_run_name=names["resolve-encoder"])(layout, cfg)
        prepared = finetune_prepare_task.with_options(task_run_name=names["prepare"])(layout, cfg, encoder)
    except StageFailed as failed:
        return Failed(message=str(failed))
    tracker = Tracker(
        layout.root, cfg.finetune.experiment, run_name=run_name(f"finetune-{encoder.name}-v{encoder.version}"),
        tags={"prefect_flow_run_id": str(flow_run.id or ""), LAUNCHED_BY: "ssl-finetune flow"},
    )  # fmt: skip
    stage = "finetune"
    try:
        result = finetune_task.with_options(task_run_name=names["finetune"])(layout, cfg, encoder, tracker)
        stage = "register-classifier"
        version = register_classifier_task.with_options(task_run_name=names["register-classifier"])(layout, cfg, result)
    except BaseException as err:
        end_on_fault(tracker, stage, err)
        raise
    tracker.end()
    result.pop("tags")
    model_name = cfg.finetune.text_model_name if encoder.modality == "text" else cfg.finetune.model_name
    links = _mlflow_links(layout, result["run_id"], model_name, version)
    create_markdown_artifact(
        key="ssl-finetune-summary",
        markdown=f"## {model_name} v{version} (@{cfg.finetune.alias})\n\n```\n{summary(result)}\n```\n\n{links}",
        description="The fine-tuned classifier: test accuracy, the from-scratch comparison, its MLflow run and version",
    )
    return result | {"version": version, "model_name": model_name, "images": prepared.counts}  # images: documents for text
