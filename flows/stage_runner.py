"""Running declared stages: which MLflow run each logs into, and one stage alone.

The flow (flows/pipeline.py) runs them in order and passes results; a single stage
command (``sslpipe ingest``, what ``dvc repro`` calls) rebuilds its inputs from the
earlier stages' outputs with ``Result.load`` and runs just that stage.

**Which runs belong together.** Every run says who made it (tag ``sslpipe.launched_by``:
``ssl-pipeline flow`` for ``sslpipe run`` and scheduled runs, ``dvc repro`` for a stage command
DVC ran, ``sslpipe <stage>`` for one run by hand). ``dvc repro`` runs each stage as its own
process, so its runs are named apart (``dvc-validate-...``, ``dvc-simclr-pretrain-...``) and
share the tag ``sslpipe.dvc_repro``: the dvc process they ran under (its start time and pid),
one value per ``dvc repro`` / ``dvc exp run``. In the MLflow UI: group the runs by that tag, or
filter ``tags.`sslpipe.launched_by` = 'dvc repro'``. A tag rather than a parent run: a parent
would need an owner to end it, and no process outlives the stages but dvc, which knows nothing of MLflow.

**A failure says why, in both UIs.** The MLflow run of a run that failed (a stage raised, or
validation found bad data) ends FAILED with a description (``mlflow.note.content``: one
sentence naming the stage and the cause) and the tags ``error/stage`` and ``error/reason``
(:func:`end_failed`). In Prefect, the task run of the stage that failed ends Failed: a stage
whose *result* says it failed (bad data is a result, not an exception, so that ``sslpipe
validate`` can print its report) is turned into :class:`StageFailed` inside its task
(:func:`failing_task_fn`); the flow catches it and ends Failed with the report.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from flows.fault_log import note_stage
from ssl_models.distributed import is_main
from tasks.core.config import PipelineConfig
from tasks.core.context import StageContext
from tasks.core.freshness import Book, input_key
from tasks.core.layout import Layout
from tasks.registry.tracking import Tracker, run_name
from tasks.stages import STAGES, Stage

log = logging.getLogger("sslpipe")

LAUNCHED_BY, DVC_REPRO = "sslpipe.launched_by", "sslpipe.dvc_repro"
DVC_PREFIX = "dvc-"  # the run names of stage commands run by dvc


def dvc_repro_id() -> str | None:
    """Under DVC (which sets ``DVC_STAGE`` for a stage's command): the dvc process running this
    one, as ``<UTC start time>-pid<pid>``, the same for every stage of one ``dvc repro`` and
    different for the next; None outside DVC or when no dvc process is found among the parents."""
    if "DVC_STAGE" not in os.environ:
        return None
    from datetime import UTC, datetime
    from pathlib import Path

    import psutil

    try:
        parents = psutil.Process().parents()
    except psutil.Error:
        return None
    for parent in parents:  # nearest first: the shell DVC started the command in, then dvc
        try:
            command = parent.cmdline()
            started = parent.create_time()
        except psutil.Error:
            continue
        # `dvc repro`, `python -m dvc repro`, `python .venv/bin/dvc exp run`
        if any(Path(part).name in ("dvc", "dvc.exe") for part in command[:3]):
            return f"{datetime.fromtimestamp(started, UTC):%Y%m%d-%H%M%S}-pid{parent.pid}"
    return None


def launch_tags(launched_by: str) -> dict[str, str]:
    """``sslpipe.launched_by``, and under DVC the ``sslpipe.dvc_repro`` its runs share."""
    repro = dvc_repro_id()
    return {LAUNCHED_BY: launched_by, **({DVC_REPRO: repro} if repro else {})}


def stage_tracker(name: str, layout: Layout, cfg: PipelineConfig) -> Tracker:
    """The run one stage command owns: ``validate-<time>`` by hand, ``dvc-validate-<time>`` under
    DVC (pretrain: ``simclr-pretrain``), tagged with the stage and who ran it."""
    by_dvc = "DVC_STAGE" in os.environ
    prefix = f"{cfg.pretrain.method}-{name}" if name == "pretrain" else name
    tags = {"sslpipe.stage": name, **launch_tags("dvc repro" if by_dvc else f"sslpipe {name}")}
    return pipeline_tracker(layout, cfg, DVC_PREFIX + prefix if by_dvc else prefix, tags)


def pipeline_tracker(layout: Layout, cfg: PipelineConfig, name: str, tags: dict[str, str] | None = None) -> Tracker:
    """The run a pipeline run (or a stage run alone) owns; created when a stage first logs."""
    return Tracker(layout.root, cfg.register.experiment, run_name=run_name(name), tags=tags, params=cfg.flat())


def tracker_for(stage: Stage, layout: Layout, cfg: PipelineConfig, inputs: dict[str, object], own: Tracker) -> Tracker:
    """Stages acting on a trained model log into that model's run; the others into ``own``."""
    if stage.model_run:
        run_id = inputs["pretrain"].run_id  # type: ignore[attr-defined]
        if not (own.started and own.run_id == run_id):
            return Tracker(layout.root, cfg.register.experiment, run_id=run_id)
    return own


def stage_context(stage: Stage, layout: Layout, cfg: PipelineConfig, tracker: Tracker, progress: bool) -> StageContext:
    """What the stage's shell gets: the modality (decided once, from the data source) and its part."""
    modality = cfg.modality(layout.root)
    return StageContext(
        layout, cfg, tracker, progress, modality=modality, part=stage.part(modality), key=input_key(stage, layout.root, cfg)
    )


class StageFailed(Exception):
    """A stage's result says it failed (validation found bad data). Raised inside the stage's
    Prefect task so that the task run ends Failed; carries the result (``result``) for the flow,
    which ends Failed with the message. The CLI reports it in one line, like any expected fault."""

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


def failed_validation(result) -> str | None:
    """Why a validation result (``Validated``) failed, in one line; None if it passed."""
    if getattr(result, "success", True):
        return None
    heads = [summary.splitlines()[0] for summary in result.summaries if summary]
    return "; ".join([h for h in heads if ": FAILED" in h] or heads) or "the data failed validation"


def failing_task_fn(fn: Callable, why_failed: Callable[[object], str | None]) -> Callable:
    """``fn`` for a Prefect task: raises :class:`StageFailed` when ``why_failed(result)`` names
    a failure, so the task run ends Failed instead of Completed."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        result = fn(*args, **kwargs)
        why = why_failed(result)
        if why is not None:
            raise StageFailed(why, result)
        return result

    return run


REASON_LIMIT = 1000  # characters of error/reason and of the description's sentence


def fault_reason(err: BaseException) -> str:
    """Why ``err`` stopped a stage, in one line: the messages the CLI prints for a full disk or
    a server that went away, else the exception's own message (a built-in's with its type)."""
    from flows.preflight import infrastructure_message, one_line
    from tasks.core.disk import is_no_space, no_space_message

    if is_no_space(err):
        return no_space_message(err)  # type: ignore[arg-type]
    message = infrastructure_message(err)
    if message is None:
        message = one_line(err, REASON_LIMIT)
        if type(err).__module__ == "builtins" and not isinstance(err, OSError):
            message = f"{type(err).__name__}: {message}"
    return message


def failure_note(stage: str, reason: str) -> str:
    """The failed run's description: one plain sentence, the stage and the cause."""
    reason = " ".join(reason.split())[:REASON_LIMIT]
    return f"The {stage} stage failed: {reason}" + ("" if reason.endswith((".", "!", "?")) else ".")


def end_failed(tracker: Tracker, stage: str, reason: str) -> None:
    """End ``tracker``'s run FAILED (if it was started) with the description and the tags
    ``error/stage``, ``error/reason`` saying what failed; quietly, like :func:`end_quietly`."""
    if tracker.started:
        try:
            tracker.set_tags(
                {"mlflow.note.content": failure_note(stage, reason), "error/stage": stage, "error/reason": reason[:REASON_LIMIT]}
            )
        except Exception as err:  # noqa: BLE001 - the fault on its way up is the news; this goes to the log
            log.info("could not describe the failed MLflow run: %s", " ".join(str(err).split())[:300])
    end_quietly(tracker, "FAILED")


def end_on_fault(tracker: Tracker, stage: str | None, err: BaseException) -> None:
    """End ``tracker``'s run on the way out of ``err``: KILLED for an interrupt (Ctrl-C; SIGTERM
    is turned into KILLED later, tasks/registry/tracking.py), else FAILED saying why."""
    if isinstance(err, Exception) and stage is not None:
        end_failed(tracker, stage, fault_reason(err))
    else:
        end_quietly(tracker, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")


def end_quietly(tracker: Tracker, status: str) -> None:
    """End ``tracker``'s run on the way out of a failure; a store that is gone too (the tracking
    server that died is often the failure) must not replace the fault being raised."""
    try:
        tracker.end(status)
    except Exception as err:  # noqa: BLE001 - the fault on its way up is the news; this goes to the log
        log.info("could not mark the MLflow run %s: %s", status, " ".join(str(err).split())[:300])


def run_alone(name: str, layout: Layout, cfg: PipelineConfig, progress: bool = True, given: PipelineConfig | None = None):
    """One stage as its own process would run it: inputs from disk, its own (or its model's) run.

    Run by hand, the finished stage is recorded in dvc.lock (``given``: the config before
    ``auto`` is resolved, as params.yaml and ``--set`` say); run by ``dvc repro`` (which sets
    ``DVC_STAGE``), DVC records it itself."""
    stage = STAGES[name]
    inputs = {upstream: STAGES[upstream].result_type().load(layout) for upstream in stage.inputs}
    own = stage_tracker(name, layout, cfg)
    tracker = tracker_for(stage, layout, cfg, inputs, own)
    try:
        result = stage.load()(stage_context(stage, layout, cfg, tracker, progress), *inputs.values())
    except BaseException as err:
        note_stage(err, name)
        end_on_fault(own, name, err)
        raise
    why = failed_validation(result)
    if why is not None:  # bad data: the command prints the report and exits 2; the run says why
        end_failed(own, name, why)
        return result
    own.end()
    if is_main() and "DVC_STAGE" not in os.environ:  # under torchrun, rank 0 alone records it
        Book(layout.root, given or cfg).record(stage)
    return result
