"""``sslpipe``: run the whole pipeline, or one stage (what ``dvc.yaml`` calls).

Imports stay inside the commands so that ``sslpipe --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

STAGES = {
    "validate": "check the images with a Great Expectations checkpoint (reports/validation/)",
    "ingest": "decode validated images into data/prepared/ (the DVC-tracked training data)",
    "augment": "check the view policy and draw reports/augment_preview.png",
    "pretrain": "train the SSL method; writes models/encoder/ and opens the MLflow run",
    "evaluate": "linear probe and kNN for SSL, random-init and raw pixels (reports/metrics.json)",
    "register": "log the encoder to MLflow and register a new version of the model",
}


class ExpectedError(Exception):
    """A fault of the input or the config: printed without a traceback, exit 2."""


def _project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml in the project root)")
    parser.add_argument("--root", default=".", help="project root holding data/, reports/, models/ (default: .)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a parameter, e.g. --set pretrain.epochs=5 (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")


def _common(parser: argparse.ArgumentParser) -> None:
    _project(parser)
    parser.add_argument("--data", metavar="DIR", help="unlabeled images: a folder, a tar archive, or torchvision:NAME (sets data.unlabeled)")
    parser.add_argument("--eval-data", metavar="DIR", help="labeled evaluation images, one folder per class (sets data.labeled)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe",
        description="Self-supervised pretraining pipeline: unlabeled images in, a pretrained, evaluated, registered encoder out.",
        epilog="MLflow store: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db. Prefect: $PREFECT_API_URL, else a temporary local server.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run every stage as one Prefect flow and print the summary", description="Run validate, ingest, augment, pretrain, evaluate and register as one Prefect flow, tracked in one MLflow run.")
    _common(run)
    for name, text in STAGES.items():
        _common(commands.add_parser(name, help=text, description=f"Stage '{name}': {text}."))
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
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a parameter in every scheduled run (repeatable)")
    when = serve.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *" (03:00 every day)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS seconds")
    serve.add_argument("--timezone", help="IANA timezone of the cron schedule, e.g. Europe/Berlin (default: UTC)")
    serve.add_argument("--pool", metavar="NAME", help="register on this process work pool and return; `prefect worker start --pool NAME` runs it")
    serve.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune the champion encoder on a labeled folder and register ssl-classifier",
        description="Fine-tune models:/ssl-encoder@champion (+ a linear head) on labeled images, compare with training from scratch "
        "at finetune.compare_fraction of the labels, log an MLflow run (experiment ssl-finetune) and register a version of ssl-classifier.",
    )
    _project(finetune)
    finetune.add_argument("--data", dest="finetune_data", metavar="DIR", help="labeled images: <class>/ folders, or train/<class>/ + test/<class>/; a folder or tar archive (sets finetune.data)")
    promote = commands.add_parser(
        "promote",
        help="make VERSION the @champion of ssl-encoder by hand",
        description="Move the @champion alias of register.model_name to VERSION; the previous champion is remembered for `sslpipe rollback`.",
    )
    promote.add_argument("version", metavar="VERSION", help="a registered version number")
    _project(promote)
    rollback = commands.add_parser(
        "rollback",
        help="move @champion back to the previous champion",
        description="Undo the last change of @champion (by the promotion gate or `sslpipe promote`); repeatable, back through the history.",
    )
    _project(rollback)
    return parser


def _config(args: argparse.Namespace):
    from tasks.config import ConfigError, load_config

    overrides = list(args.overrides)
    # Each command has its own data options; the ones it lacks are simply absent.
    if getattr(args, "data", None):
        overrides.append(f"data.unlabeled={args.data}")
    if getattr(args, "eval_data", None):
        overrides.append(f"data.labeled={args.eval_data}")
    if getattr(args, "finetune_data", None):
        overrides.append(f"finetune.data={args.finetune_data}")
    params = Path(args.params)
    if not params.is_absolute():
        params = Path(args.root) / params
    try:
        return load_config(params, overrides)
    except ConfigError as err:
        raise ExpectedError(str(err)) from None


def _check_sources(cfg) -> None:
    from tasks.sources import TORCHVISION_PREFIX

    for key, source in (("data.unlabeled", cfg.data.unlabeled), ("data.labeled", cfg.data.labeled)):
        if not source.startswith(TORCHVISION_PREFIX) and not Path(source).exists():
            raise ExpectedError(f"{source}: no such file or folder ({key})")


def _result_of(state, what: str):
    """A finished flow's result; a Failed state (its message names the fault) becomes an ExpectedError."""
    if state.is_failed():
        raise ExpectedError(state.message or f"{what} failed; see the log above")
    return state.result()


def run_pipeline(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_sources(cfg)
    from flows.pipeline import ssl_pipeline
    from tasks.evaluate import summary_table

    result = _result_of(ssl_pipeline(config=cfg, root=str(Path(args.root).resolve()), return_state=True), "the pipeline")
    print(f"\n{cfg.pretrain.method} encoder registered as {cfg.register.model_name} version {result['version']} (@{cfg.register.alias})")
    print(f"promotion gate: {result['decision']}")
    print(f"MLflow run {result['run_id']}\n")
    print(summary_table(result["metrics"]))
    return 0


def run_stage(args: argparse.Namespace) -> int:
    import importlib

    from tasks.layout import Layout

    cfg = _config(args)
    layout = Layout.at(args.root)
    module = importlib.import_module(f"tasks.{args.command}")
    stage = getattr(module, f"{args.command}_stage")
    if args.command == "validate":
        _check_sources(cfg)
        reports = stage(layout, cfg)
        for report in reports:
            print(report.summary())
        if not all(r.success for r in reports):
            return 2
    elif args.command == "pretrain":
        from ssl_models.training import TrainingDiverged

        try:
            stage(layout, cfg, progress=not args.quiet)
        except TrainingDiverged as err:
            raise ExpectedError(f"{cfg.pretrain.method} diverged: {err}") from None
    else:
        result = stage(layout, cfg)
        if args.command == "evaluate":
            print(module.summary_table(result))
        elif args.command == "register":
            print(f"{result['model_name']} version {result['version']} (@{result['alias']}); promotion gate: {result['decision']}")
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
        deployment_id = deploy.deploy_to_pool(args.pool, root, args.cron, args.interval, args.timezone, str(params), args.overrides, args.name)
        print(f"deployment ssl-pipeline-scheduled/{args.name} ({deployment_id}) on work pool {args.pool!r}, {when}{tz}, root {root}")
        print(f"start a worker to run it: prefect worker start --pool {args.pool}")
        return 0
    print(f"serving ssl-pipeline-scheduled/{args.name}: {when}{tz}, root {root}; Ctrl-C stops")
    deploy.serve_pipeline(root, args.cron, args.interval, args.timezone, str(params), args.overrides, args.name)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from tasks.sources import TORCHVISION_PREFIX

    source = cfg.finetune.data
    if not source.startswith(TORCHVISION_PREFIX) and not Path(source).exists():
        raise ExpectedError(f"{source}: no such file or folder (finetune.data)")
    from flows.finetune import finetune_flow, summary

    result = _result_of(finetune_flow(config=cfg, root=str(Path(args.root).resolve()), return_state=True), "fine-tuning")
    print(f"\n{summary(result)}")
    print(f"classifier registered as {cfg.finetune.model_name} version {result['version']}; MLflow run {result['run_id']}")
    return 0


def run_registry_command(args: argparse.Namespace) -> int:
    """``promote VERSION`` / ``rollback``: move @champion by hand, under the registry lock."""
    from mlflow import MlflowClient

    from tasks import promote
    from tasks.tracking import tracking_uri

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


COMMANDS = {"run": run_pipeline, "serve": serve, "finetune": run_finetune, "promote": run_registry_command, "rollback": run_registry_command}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "great_expectations.data_context.types.base", "alembic", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Telemetry calls hang or fail without a network; opt out unless the user opted in.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from tasks.sources import SourceError

    try:
        return COMMANDS.get(args.command, run_stage)(args)
    except (ExpectedError, SourceError, FileNotFoundError) as err:
        print(f"sslpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
