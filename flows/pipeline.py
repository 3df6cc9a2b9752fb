"""The pipeline flow: the stages in order, nothing else.

validate -> ingest -> augment -> pretrain -> evaluate -> register

Bad data ends the flow run in a Failed state with the validation report as its
message (no traceback, nothing trained or registered).
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from tasks.augment import augment_task
from tasks.config import PipelineConfig, load_config
from tasks.evaluate import evaluate_task, summary_table
from tasks.ingest import ingest_task
from tasks.layout import Layout
from tasks.pretrain import pretrain_task
from tasks.register import register_task
from tasks.validate import validate_task


@flow(name="ssl-pipeline", log_prints=True)
def ssl_pipeline(config: PipelineConfig | None = None, root: str = "."):
    """Pretrain, evaluate and register an SSL encoder. ``config`` defaults to params.yaml."""
    layout = Layout.at(root)
    cfg = config or load_config(layout.root / "params.yaml")
    reports = validate_task(layout, cfg)
    create_markdown_artifact(key="data-validation", markdown="## Data validation\n\n" + "\n\n".join(r.markdown() for r in reports))
    failed = [r for r in reports if not r.success]
    if failed:
        return Failed(message="\n".join(r.summary() for r in failed))
    counts = ingest_task(layout, cfg)
    augment_task(layout, cfg)
    run_id = pretrain_task(layout, cfg, flow_run_id=flow_run.id)
    metrics = evaluate_task(layout, cfg)
    registered = register_task(layout, cfg)
    version = registered["version"]
    table = summary_table(metrics)
    create_markdown_artifact(
        key="ssl-pipeline-summary",
        markdown=f"## {cfg.pretrain.method} encoder, {cfg.register.model_name} v{version}\n\n{registered['decision']}\n\n```\n{table}\n```\n\nMLflow run `{run_id}`",
    )
    return {"run_id": run_id, "version": version, "champion": registered["champion"], "decision": registered["decision"], "images": counts, "metrics": metrics}
