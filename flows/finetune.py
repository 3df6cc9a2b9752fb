"""The fine-tuning flow: the stages in order, nothing else.

resolve the champion encoder -> prepare (validate, ingest) -> finetune (+ from-scratch comparison) -> register

No champion, or bad data, ends the flow run Failed with a message saying so; nothing is
trained or registered.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from tasks.config import PipelineConfig, load_config
from tasks.finetune import (
    finetune_prepare_task,
    finetune_task,
    no_encoder_message,
    register_classifier_task,
    resolve_encoder_task,
)
from tasks.layout import Layout


def summary(result: dict) -> str:
    lines = [f"fine-tuned {result['encoder_uri']} on {result['train_labels']} labels: test accuracy {result['test_acc']:.3f}"]
    if "compare" in result:
        c = result["compare"]
        lines.append(
            f"at {c['fraction'] * 100:g}% of the labels ({c['train_labels']}): fine-tuned {c['ssl_finetune_acc']:.3f} vs from scratch {c['scratch_acc']:.3f}"
        )
    return "\n".join(lines)


@flow(name="ssl-finetune", log_prints=True)
def finetune_flow(config: PipelineConfig | None = None, root: str = "."):
    """Fine-tune the champion encoder on ``finetune.data`` and register the classifier."""
    layout = Layout.at(root)
    cfg = config or load_config(layout.root / "params.yaml")
    encoder = resolve_encoder_task(layout, cfg)
    if encoder is None:
        return Failed(message=no_encoder_message(cfg))
    prepared = finetune_prepare_task(layout, cfg, encoder.image_size)
    if not prepared.ok:
        return Failed(message=prepared.message)
    result = finetune_task(layout, cfg, encoder, flow_run_id=flow_run.id)
    version = register_classifier_task(layout, cfg)
    create_markdown_artifact(
        key="ssl-finetune-summary",
        markdown=f"## {cfg.finetune.model_name} v{version}\n\n```\n{summary(result)}\n```\n\nMLflow run `{result['run_id']}`",
    )
    return result | {"version": version, "images": prepared.counts}
