"""Scheduled pipeline runs: the pipeline as a Prefect deployment.

Schedules need a real Prefect server (``prefect server start``, or Prefect Cloud): the
temporary server that ``sslpipe run`` starts lives only as long as one run.

    sslpipe serve --root /srv/ssl --cron "0 3 * * *" --timezone Europe/Berlin --set pretrain.epochs=50
        registers the deployment and executes its runs in this process until stopped;
    sslpipe serve --root /srv/ssl --cron "0 3 * * *" --pool ssl-pool
        registers it on a process work pool and returns; ``prefect worker start --pool ssl-pool``
        executes the runs (on any machine that sees the project root).

Each scheduled run is :func:`scheduled_pipeline`: it reads ``params.yaml`` (or ``--params``)
of the project root at run time, applies the ``--set`` overrides stored in the deployment's
parameters, resolves relative data paths against the root (not the worker's working
directory), and runs the pipeline flow. The deployment admits one run at a time; a run due
while one is active is cancelled, not queued (a slow run must not pile up a backlog). A
transient fault (tracking server or database briefly unreachable) is retried with backoff.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

DEPLOYMENT_NAME = "scheduled"
RETRY_DELAYS_S = (30, 120)  # backoff before the 2nd and 3rd attempt of a run hit by a transient fault
DATA_KEYS = (("data", "unlabeled"), ("data", "labeled"), ("finetune", "data"))


def anchored(cfg, root: Path):
    """``cfg`` with relative local data paths made absolute against ``root``."""
    from tasks.image.sources import TORCHVISION_PREFIX

    sections = {}
    for section, key in DATA_KEYS:
        value = getattr(getattr(cfg, section), key)
        if value and not value.startswith(TORCHVISION_PREFIX) and not Path(value).is_absolute():
            part = sections.get(section, getattr(cfg, section))
            sections[section] = part.model_copy(update={key: str(root / value)})
    return cfg.model_copy(update=sections)


def load_scheduled_config(root: str | Path, params: str = "params.yaml", overrides: list[str] | None = None):
    root = Path(root)
    path = Path(params) if Path(params).is_absolute() else root / params
    from tasks.core.config import load_config

    return anchored(load_config(path, list(overrides or [])), root)


@flow(name="ssl-pipeline-scheduled", log_prints=True)
def scheduled_pipeline(root: str, params: str = "params.yaml", overrides: list[str] | None = None):
    """One scheduled run: read the project's parameters now, run the pipeline, retry it on a transient fault."""
    from flows.pipeline import ssl_pipeline
    from tasks.core.retries import transient_fault

    logger = get_run_logger()
    cfg = load_scheduled_config(root, params, overrides)
    for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
        state = ssl_pipeline(config=cfg, root=root, return_state=True)
        if not state.is_failed():
            return state.result()
        error = state.result(raise_on_failure=False)
        if delay is None or not transient_fault(error if isinstance(error, BaseException) else None):
            return state  # the run ends Failed with the pipeline's message
        logger.warning("attempt %d hit a transient fault (%s); retrying in %d s", attempt, error, delay)
        time.sleep(delay)


def schedule(cron: str | None = None, interval: float | None = None, timezone: str | None = None):
    """A Prefect schedule; ValueError saying what is wrong with a cron string, interval or timezone."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron, Interval

    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of a cron string and an interval")
    if interval is not None and interval <= 0:
        raise ValueError(f"interval must be positive, got {interval:g} s")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {timezone!r} (an IANA name such as Europe/Berlin or UTC)") from None
    return Cron(cron, timezone=timezone) if cron is not None else Interval(interval, timezone=timezone)  # Cron checks the syntax


def pipeline_deployment(
    root: Path,
    cron: str | None = None,
    interval: float | None = None,
    timezone: str | None = None,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    name: str = DEPLOYMENT_NAME,
):
    """A deployment of :func:`scheduled_pipeline` on ``root``: one run at a time, a run due
    while one is active is cancelled (not queued)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    root = Path(root).resolve()
    return scheduled_pipeline.to_deployment(
        name=name,
        schedules=[schedule(cron, interval, timezone)],
        parameters={"root": str(root), "params": params, "overrides": list(overrides or [])},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description=f"SSL pretraining pipeline on {root} (params read at each run)",
        tags=["ssl"],
    )


def serve_pipeline(
    root: Path,
    cron: str | None = None,
    interval: float | None = None,
    timezone: str | None = None,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    name: str = DEPLOYMENT_NAME,
) -> None:
    """Register the deployment and execute its runs in this process until stopped."""
    from prefect import serve

    serve(pipeline_deployment(root, cron, interval, timezone, params, overrides, name))


def deploy_to_pool(
    pool: str,
    root: Path,
    cron: str | None = None,
    interval: float | None = None,
    timezone: str | None = None,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    name: str = DEPLOYMENT_NAME,
):
    """Register the deployment on a process work pool; its workers run the flow from this
    repository's code, in ``root``. Returns the deployment id."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    root = Path(root).resolve()
    code = Path(__file__).resolve().parents[1]
    flow_from_code = scheduled_pipeline.from_source(source=str(code), entrypoint="flows/deploy.py:scheduled_pipeline")
    return flow_from_code.deploy(
        name=name,
        work_pool_name=pool,
        schedules=[schedule(cron, interval, timezone)],
        parameters={"root": str(root), "params": params, "overrides": list(overrides or [])},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        job_variables={"working_dir": str(root)},
        description=f"SSL pretraining pipeline on {root} (params read at each run)",
        tags=["ssl"],
        print_next_steps=False,
        build=False,
        push=False,
    )
