"""Scheduled pipeline runs: the flow as a Prefect deployment.

Schedules need a real Prefect server (``prefect server start``, or Prefect Cloud):
the temporary server that ``sslpipe run`` starts lives only as long as one run.
``sslpipe serve --cron "0 3 * * *"`` registers the deployment and executes its runs
in this process until stopped; work pools and workers are the way to scale out.
"""

from __future__ import annotations

from pathlib import Path

from flows.pipeline import ssl_pipeline

DEPLOYMENT_NAME = "scheduled"


def pipeline_deployment(root: Path, cron: str | None = None, interval: float | None = None, name: str = DEPLOYMENT_NAME):
    """A deployment of the pipeline on ``root`` (its params.yaml is read at each run)."""
    return ssl_pipeline.to_deployment(
        name=name,
        cron=cron,
        interval=interval,
        parameters={"root": str(root.resolve())},
        description=f"SSL pretraining pipeline on {root.resolve()}",
        tags=["ssl"],
    )


def serve_pipeline(root: Path, cron: str | None = None, interval: float | None = None) -> None:
    from prefect import serve

    serve(pipeline_deployment(root, cron, interval))
