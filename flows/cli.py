"""``sslpipe``: run the whole pipeline, or one stage (what ``dvc.yaml`` calls).

Imports stay inside the commands so that ``sslpipe --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from tasks.core.disk import is_no_space, no_space_message
from tasks.stages import PIPELINE


class ExpectedError(Exception):
    """A fault of the input or the config: printed without a traceback, exit 2."""


def _project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", help="parameter file (default: params.yaml in the project root; defaults for every key if that is missing)"
    )
    parser.add_argument("--root", default=".", help="project root holding data/, reports/, models/ (default: .)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set pretrain.epochs=5 (repeatable)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")


def _lock_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-wait", action="store_true", help="if another run holds the project root, exit 2 at once (default: wait for it)"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    _project(parser)
    _lock_option(parser)
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="unlabeled images (a folder, a tar archive, or torchvision:NAME) or text (a .txt, .jsonl, .csv(.gz) file or a folder of .txt; "
        "then --set pretrain.method=mlm) (sets data.unlabeled)",
    )
    parser.add_argument(
        "--eval-data", metavar="DIR", help="labeled evaluation images, one folder per class, or labeled text (sets data.labeled)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe",
        description="Self-supervised pretraining pipeline: unlabeled images in, a pretrained, evaluated, registered encoder out.",
        epilog="MLflow store: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db. Prefect: $PREFECT_API_URL, else "
        "a temporary local server.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run every stage as one Prefect flow and print the summary",
        description="Run validate, ingest, augment, pretrain, evaluate, register and embed as one Prefect flow, tracked in one MLflow run. "
        "Stages whose code, params and inputs are unchanged since they last succeeded are skipped.",
    )
    _common(run)
    run.add_argument("--force", action="store_true", help="rerun every stage, even those dvc.lock says are up to date")
    for stage in PIPELINE:
        _common(commands.add_parser(stage.name, help=stage.help, description=f"Stage '{stage.name}': {stage.help}."))
    from flows.curation import add_commands

    for curation in add_commands(commands):  # select, similar: the embed stage's index at work
        _project(curation)
    generate = commands.add_parser(
        "generate",
        help="write dvc.yaml from the declared stages (tasks/stages.py)",
        description="Write dvc.yaml from the stage list in tasks/stages.py; with --params also params.yaml from the "
        "defaults in tasks/core/config.py.",
    )
    generate.add_argument("--root", default=".", help="where to write (default: .)")
    generate.add_argument("--params", action="store_true", help="also overwrite params.yaml with the defaults")
    serve = commands.add_parser(
        "serve",
        help="run the pipeline on a schedule (a Prefect deployment; needs a Prefect server)",
        description="Register the pipeline on ROOT as a Prefect deployment with a schedule and execute its runs in this process until "
        "stopped (or, with --pool, on a process work pool whose workers execute them). Each run reads ROOT's parameters at its start "
        "and applies --set; one run at a time, a run due while one is active is skipped. "
        "Needs a real Prefect server: `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api.",
    )
    serve.add_argument("--root", default=".", help="project root whose params.yaml each run reads (default: .)")
    serve.add_argument("--params", default="params.yaml", help="parameter file, relative to the root (default: params.yaml)")
    serve.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter in every scheduled run (repeatable)",
    )
    when = serve.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *" (03:00 every day)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS seconds")
    serve.add_argument("--timezone", help="IANA timezone of the cron schedule, e.g. Europe/Berlin (default: UTC)")
    serve.add_argument(
        "--pool", metavar="NAME", help="register on this process work pool and return; `prefect worker start --pool NAME` runs it"
    )
    serve.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune the champion encoder on a labeled folder and register ssl-classifier",
        description="Fine-tune models:/ssl-encoder@champion (+ a linear head) on labeled images, compare with training from scratch "
        "at finetune.compare_fraction of the labels, log an MLflow run (experiment ssl-finetune) and register a version of ssl-classifier.",
    )
    _project(finetune)
    _lock_option(finetune)
    finetune.add_argument(
        "--data", dest="finetune_data", metavar="DIR",
        help="labeled images: <class>/ folders, or train/<class>/ + test/<class>/; a folder or tar archive; or "
            "labeled text (fine-tunes the text encoder) (sets finetune.data)",
    )  # fmt: skip
    promote = commands.add_parser(
        "promote",
        help="make VERSION the @champion of ssl-encoder by hand",
        description="Move the @champion alias of register.model_name to VERSION; the previous champion is remembered "
        "for `sslpipe rollback`.",
    )
    promote.add_argument("version", metavar="VERSION", help="a registered version number")
    _project(promote)
    rollback = commands.add_parser(
        "rollback",
        help="move @champion back to the previous champion",
        description="Undo the last change of @champion (by the promotion gate or `sslpipe promote`); repeatable, back through the history.",
    )
    _project(rollback)
    export = commands.add_parser(
        "export",
        help="export a registered encoder as ONNX or a torch.export program",
        description="Export a registered encoder (default models:/<register.model_name>@<register.champion_alias>) with a dynamic "
        "batch axis, check it against the torch encoder on the version's input example (fails above 1e-4) and log the file to "
        "the version's MLflow run.",
    )
    export.add_argument("--format", dest="export_format", choices=["onnx", "torch_export"], default="onnx", help="(default: onnx)")
    export.add_argument("--model", metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion)")
    export.add_argument("--out", metavar="DIR", help="where the file goes (default: <root>/models/export)")
    _project(export)
    return parser


def _config(args: argparse.Namespace):
    """The checked config; loaded once, before the root is locked or anything is written."""
    if getattr(args, "config", None) is not None:
        return args.config
    from tasks.core.config import ConfigError, load_config

    overrides = list(args.overrides)
    # Each command has its own data options; the ones it lacks are simply absent.
    if getattr(args, "data", None):
        overrides.append(f"data.unlabeled={args.data}")
    if getattr(args, "eval_data", None):
        overrides.append(f"data.labeled={args.eval_data}")
    if getattr(args, "finetune_data", None):
        overrides.append(f"finetune.data={args.finetune_data}")
    # The default params.yaml may be missing (then: defaults); a file the user named may not.
    params = Path(args.params or "params.yaml")
    if not params.is_absolute():
        params = Path(args.root) / params
    try:
        args.config = load_config(params, overrides, missing_ok=args.params is None)
    except ConfigError as err:
        raise ExpectedError(str(err)) from None
    return args.config


def _check_sources(cfg, root: str, keys=("data.unlabeled", "data.labeled")) -> None:
    from tasks.core.layout import Layout
    from tasks.image.sources import TORCHVISION_PREFIX

    layout = Layout.at(root)
    for key in keys:
        section, name = key.split(".")
        source = getattr(getattr(cfg, section), name)
        if not source.startswith(TORCHVISION_PREFIX) and not Path(layout.source(source)).exists():
            where = "" if Path(source).is_absolute() else f", looked for under {layout.root}"
            raise ExpectedError(f"{source}: no such file or folder ({key}){where}")


def _result_of(state, what: str):
    """A finished flow's result. A flow that raised raises the same exception here (the CLI
    then tells an expected fault from a bug by its type); one that returned a Failed state
    (bad data: its message is the validation's summary) becomes an ExpectedError."""
    if state.is_failed():
        try:
            data = state.result(raise_on_failure=False)
        except Exception as err:  # noqa: BLE001 - a result that cannot be read back: the message is all there is
            data = err
        if isinstance(data, BaseException) and not type(data).__module__.startswith("prefect"):
            raise data
        raise ExpectedError(state.message or f"{what} failed; see the log above")
    return state.result()


def run_pipeline(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_sources(cfg, args.root)
    from flows.pipeline import ssl_pipeline
    from tasks.evaluation.scoring import summary_table

    state = ssl_pipeline(config=cfg, root=str(Path(args.root).resolve()), force=args.force, progress=not args.quiet, return_state=True)
    result = _result_of(state, "the pipeline")
    print()
    for name, why in result["skipped"].items():
        print(f"{name:<9} skipped: {why}")
    for name, why in result["ran"].items():
        print(f"{name:<9} ran: {why}")
    registered = result["registered"]
    if "register" not in result["ran"]:
        print(
            f"\nnothing changed: nothing trained or registered ({registered.model_name} version {registered.version} "
            "is the latest from this root)"
        )
        return 0
    print(f"\n{cfg.pretrain.method} encoder registered as {registered.model_name} version {registered.version} (@{registered.alias})")
    print(f"promotion gate: {registered.decision}")
    print(f"MLflow run {registered.run_id}\n")
    print(summary_table(result["metrics"]))
    return 0


def run_stage(args: argparse.Namespace) -> int:
    from flows.stage_runner import run_alone
    from tasks.core.layout import Layout

    cfg = _config(args)
    if args.command == "validate":
        _check_sources(cfg, args.root)
    result = run_alone(args.command, Layout.at(args.root), cfg.resolved(), progress=not args.quiet, given=cfg)
    if args.command == "validate":
        print("\n".join(result.summaries))
        return 0 if result.success else 2
    if args.command == "evaluate":
        from tasks.evaluation.scoring import summary_table

        print(summary_table(result.metrics))
    elif args.command == "register":
        print(f"{result.model_name} version {result.version} (@{result.alias}); promotion gate: {result.decision}")
    elif args.command == "embed":
        print(
            f"{result.counts['items']} items embedded with {result.encoder}: "
            + ", ".join(f"{v} {k}" for k, v in result.counts.items() if k != "items")
        )
    return 0


def generate(args: argparse.Namespace) -> int:
    from tasks.core.atomic import write_text
    from tasks.core.config import params_yaml
    from tasks.stages import dvc_yaml

    root = Path(args.root)
    write_text(root / "dvc.yaml", dvc_yaml())
    print(f"wrote {root / 'dvc.yaml'}")
    if args.params:
        write_text(root / "params.yaml", params_yaml())
        print(f"wrote {root / 'params.yaml'}")
    return 0


def serve(args: argparse.Namespace) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        raise ExpectedError(
            "schedules need a Prefect server: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (the temporary server of `sslpipe run` cannot hold schedules)"
        )
    root = Path(args.root).resolve()
    params = Path(args.params) if Path(args.params).is_absolute() else root / args.params
    if not params.exists():
        raise ExpectedError(f"{params}: no such parameter file (--params, relative to --root {root})")
    _config(argparse.Namespace(**{**vars(args), "root": str(root), "params": str(params)}))  # a bad --set fails now, not at 3 am
    from flows import deploy

    try:
        schedule = deploy.schedule(args.cron, args.interval, args.timezone)
    except ValueError as err:
        raise ExpectedError(str(err)) from None
    when = f"cron {args.cron!r}" if args.cron else f"every {args.interval:g} s"
    tz = f" ({schedule.timezone})" if schedule.timezone else ""
    if args.pool:
        deployment_id = deploy.deploy_to_pool(
            args.pool, root, args.cron, args.interval, args.timezone, str(params), args.overrides, args.name
        )
        print(f"deployment ssl-pipeline-scheduled/{args.name} ({deployment_id}) on work pool {args.pool!r}, {when}{tz}, root {root}")
        print(f"start a worker to run it: prefect worker start --pool {args.pool}")
        return 0
    print(f"serving ssl-pipeline-scheduled/{args.name}: {when}{tz}, root {root}; Ctrl-C stops")
    deploy.serve_pipeline(root, args.cron, args.interval, args.timezone, str(params), args.overrides, args.name)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_sources(cfg, args.root, keys=("finetune.data",))
    from flows.finetune import finetune_flow, summary

    result = _result_of(finetune_flow(config=cfg, root=str(Path(args.root).resolve()), return_state=True), "fine-tuning")
    print(f"\n{summary(result)}")
    print(f"classifier registered as {result['model_name']} version {result['version']}; MLflow run {result['run_id']}")
    return 0


def run_registry_command(args: argparse.Namespace) -> int:
    """``promote VERSION`` / ``rollback``: move @champion by hand, under the registry lock."""
    from mlflow import MlflowClient

    from tasks.registry import promotion as promote
    from tasks.registry.tracking import tracking_uri

    cfg = _config(args)
    root = Path(args.root).resolve()
    uri = tracking_uri(root)
    client = MlflowClient(uri, registry_uri=uri)
    name, alias = cfg.register.model_name, cfg.register.champion_alias
    try:
        with promote.registry_lock(root):
            if args.command == "promote":
                previous = promote.promote(client, name, args.version, alias)
                print(f"{name} version {int(args.version)} is now @{alias}" + (f" (was version {previous})" if previous else ""))
            else:
                restored, replaced = promote.rollback(client, name, alias)
                print(f"{name} @{alias} rolled back to version {restored}" + (f" (was version {replaced})" if replaced else ""))
    except promote.PromotionError as err:
        raise ExpectedError(f"{err} (store: {uri})") from None
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``export``: a registered encoder as ONNX or a torch.export program (tasks/registry/export.py)."""
    from tasks.registry.export import export_registered
    from tasks.registry.tracking import use_store

    cfg = _config(args)
    root = Path(args.root).resolve()
    use_store(root, cfg.register.experiment)
    uri = args.model or f"models:/{cfg.register.model_name}@{cfg.register.champion_alias}"
    out = Path(args.out) if args.out else root / "models" / "export"
    from mlflow.exceptions import MlflowException

    try:
        exported = export_registered(uri, args.export_format, out)
    except MlflowException as err:  # no such model, version or alias: one line, not a traceback
        raise ExpectedError(f"sslpipe export: {uri}: {err.message}") from None
    print(exported.summary())
    return 0


def run_curation(args: argparse.Namespace) -> int:
    """``select`` / ``similar`` (flows/curation.py)."""
    from flows import curation

    cfg = _config(args)
    return {"select": curation.select_command, "similar": curation.similar_command}[args.command](args, cfg)


COMMANDS = {
    "select": run_curation,
    "similar": run_curation,
    "run": run_pipeline,
    "serve": serve,
    "finetune": run_finetune,
    "promote": run_registry_command,
    "rollback": run_registry_command,
    "generate": generate,
    "export": run_export,
}
# Faults of the input, the config or the order of stages: a message, exit 2, no traceback.
EXPECTED = (
    "tasks.image.sources:SourceError",
    "tasks.core.results:MissingInput",
    "tasks.registry.registration:MismatchedScores",
    "tasks.image.augment:AugmentPolicyError",
    "tasks.text.augment:MaskingPolicyError",
    "tasks.validation.report:DataValidationError",
    "tasks.registry.promotion:PromotionError",
    "ssl_models.training:TrainingDiverged",
    "ssl_models.export:ExportMismatch",
    "tasks.image.init:InitError",
    "ssl_models.training:TrainingStopped",
    "ssl_models.training:CheckpointMismatch",
    "tasks.curation.index:CurationError",
    "flows.stage_runner:StageFailed",
)


def _expected_errors() -> tuple[type[BaseException], ...]:
    import importlib

    found: list[type[BaseException]] = [ExpectedError, FileNotFoundError]
    for name in EXPECTED:
        module, cls = name.split(":")
        found.append(getattr(importlib.import_module(module), cls))
    return tuple(found)


# Commands that work in the project root: one at a time per root (tasks/core/root_lock.py).
LOCKED = {"run", "finetune", *(stage.name for stage in PIPELINE)}
# Commands that run a Prefect flow: they need a Prefect API (a temporary server if none is set).
FLOWS = {"run", "finetune"}


def _is_interrupt(err: BaseException) -> bool:
    # Prefect turns SIGTERM into its own TerminationSignal while a flow runs.
    return isinstance(err, KeyboardInterrupt) or type(err).__name__ == "TerminationSignal"


def _torchrun_worker() -> bool:
    """A rank other than 0 of a torchrun job (docs/distributed.md). Rank 0 holds the root's lock
    and cleans up for the job; this one only trains: waiting for the lock, it would block rank 0,
    which waits for it to join the process group."""
    return "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0") != "0"


def _prepare_root(args: argparse.Namespace, stack: contextlib.ExitStack, guard) -> None:
    """Under the root's lock: clean what a killed run left, check the servers, and for a
    flow without PREFECT_API_URL start a temporary Prefect server (stopped by ``stack``)."""
    from flows import fault_log, preflight
    from flows.prefect_server import temporary_server
    from tasks.core.atomic import clean_staging
    from tasks.core.root_lock import hold_root
    from tasks.registry.tracking import end_dead_runs, tag_new_runs, tracking_uri

    root = Path(args.root).resolve()
    if not root.is_dir():
        raise ExpectedError(f"{root}: no such project folder (--root)")
    _config(args)  # a config fault is found before anything is locked, started or written
    stack.enter_context(
        hold_root(root, wait=not args.no_wait, on_wait=lambda line: print(f"sslpipe {args.command}: {line}", file=sys.stderr, flush=True))
    )
    guard.root = root
    clean_staging(root)
    preflight.check_mlflow(tracking_uri(root))  # a sqlite store is created or migrated here, under the lock
    ended = end_dead_runs(root)
    tag_new_runs(root)  # host, pid, root on every MLflow run this process opens: the next start can tell if it died
    if ended:
        print(
            f"sslpipe {args.command}: marked {len(ended)} MLflow run(s) of a process that is gone as KILLED: {', '.join(ended)}",
            file=sys.stderr,
        )
    with contextlib.suppress(OSError):  # a root that cannot take a log file (a full disk) still runs
        fault_log.open_log_file(root, args.command)
    if args.command in FLOWS:
        if os.environ.get("PREFECT_API_URL"):
            preflight.check_prefect(os.environ["PREFECT_API_URL"])
        else:
            guard.temporary_api = stack.enter_context(temporary_server(root))
            stack.callback(_drain_prefect_clients)  # runs first: while the server is still up


def _drain_prefect_clients() -> None:
    """Send Prefect's queued logs and events now, while the temporary server is still up;
    at interpreter exit it would be gone and the client would retry for many seconds."""
    if "prefect" not in sys.modules:
        return
    try:
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=5, at_exit=False)
    except Exception:
        logging.getLogger(__name__).debug("could not drain Prefect's clients", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    console = logging.StreamHandler()
    # The console has its own level: loggers the flow opens to INFO for Prefect's run log
    # (flows/run_logs.py) stay quiet here with -q.
    console.setLevel(level)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", handlers=[console])
    for noisy in (
        "great_expectations",
        "great_expectations.data_context.types.base",
        "alembic",
        "httpx",
        "urllib3",
        "mlflow.store.db.utils",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Each retry of a bounded MLflow request is a warning; a server that stays away is one line of ours.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # Telemetry calls hang or fail without a network; opt out unless the user opted in.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if getattr(args, "quiet", False):  # MLflow's own download bars ignore the log level
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from flows import preflight
    from flows.interrupts import run_guarded

    preflight.bound_client_retries()  # before any MLflow or Prefect client exists
    return run_guarded(args.command, lambda guard: _main(args, guard))


def _main(args: argparse.Namespace, guard) -> int:
    from flows import fault_log, preflight
    from flows.prefect_server import ServerStartError
    from tasks.core.root_lock import RootBusy

    try:
        with contextlib.ExitStack() as stack:
            try:
                if args.command in LOCKED and not _torchrun_worker():
                    _prepare_root(args, stack, guard)
                # Prefect's own tracebacks of an expected fault stay out of the terminal (the log file has them)
                fault_log.quiet_terminal(_is_expected)
                return COMMANDS.get(args.command, run_stage)(args)
            except BaseException as err:
                if _is_interrupt(err):
                    guard.cleaning_up()
                    # Still under the lock and with the Prefect server up (Prefect has already
                    # reported the flow run crashed while the exception passed through it).
                    args.ended_runs = _end_interrupted_runs()
                raise
    except (*_expected_errors(), RootBusy, ServerStartError, preflight.ServiceUnavailable) as err:
        return _fault(args, err, str(err))
    except Exception as err:
        message = no_space_message(err) if is_no_space(err) else preflight.infrastructure_message(err)
        if message is None:
            fault_log.write_traceback(err, f"sslpipe {args.command}: unexpected error")
            raise
        return _fault(args, err, message)
    except BaseException as err:
        if not _is_interrupt(err):
            raise
        print(guard.line(getattr(args, "ended_runs", [])), file=sys.stderr, flush=True)
        guard.done()
        # Everything is cleaned up; what is left at interpreter exit is Prefect's clients
        # shutting down against a server that is gone (seconds of retries). Skip it.
        sys.stdout.flush()
        os._exit(guard.exit_code())


def _is_expected(err: BaseException) -> bool:
    """A fault the CLI reports in one line (its type, a full disk, a server or store that failed)."""
    from flows import preflight

    if isinstance(err, (*_expected_errors(), preflight.ServiceUnavailable)) or is_no_space(err):
        return True
    return isinstance(err, Exception) and preflight.infrastructure_message(err) is not None


def _fault(args: argparse.Namespace, err: BaseException, message: str) -> int:
    """The one line of an expected fault: the stage, what happened, where the traceback is; exit 2."""
    from flows import fault_log

    fault_log.write_traceback(err, f"sslpipe {args.command}: {message}")
    stage = fault_log.stage_of(err)
    prefix = f"{stage}: " if stage and stage != args.command else ""
    root = Path(args.root).resolve() if getattr(args, "root", None) else None
    print(f"sslpipe {args.command}: error: {prefix}{message}{fault_log.where_logged(root)}", file=sys.stderr)
    return 2


def _end_interrupted_runs() -> list[str]:
    if "mlflow" not in sys.modules:
        return []
    from tasks.registry.tracking import end_interrupted_runs

    try:
        return end_interrupted_runs("KILLED")
    except Exception:  # noqa: BLE001 - a store that is gone too must not hide the interrupt
        return []


if __name__ == "__main__":
    sys.exit(main())
