"""The pipeline, declared once.

Each :class:`Stage` names its shell (what every modality does in that stage, written once),
its parts (one module per modality: tasks/image/<stage>.py, tasks/text/<stage>.py), the
earlier stages whose results it takes, the files it reads and writes, and the params it
depends on. From this one list come:

- the Prefect flow (flows/pipeline.py), which passes results from stage to stage;
- the CLI's stage commands (``sslpipe validate``, ...), which rebuild a stage's inputs from
  the earlier stages' outputs (``Result.load``);
- ``dvc.yaml`` (:func:`dvc_yaml`; ``sslpipe generate`` writes it, a test fails when the
  committed file differs), whose code deps are the modules the stage's shell and parts run
  (tasks/core/freshness.py ``stage_code_deps``);
- what is stale: DVC's own view of these stages (tasks/core/freshness.py ``Book``), for
  ``sslpipe run``, scheduled runs and ``dvc repro`` alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Out:
    path: str
    cache: bool = True  # False: small reports kept in git (.gitignore lets them in), not in DVC's cache
    persist: bool = False  # True: DVC keeps it between runs (the drift reference)
    kind: str = "out"  # out | metric | plot
    note: str = ""


MODALITIES = ("image", "text")  # each has a part in every stage: tasks/<modality>/<stage>.py


@dataclass(frozen=True)
class Stage:
    name: str
    shell: str  # "module:function": what every modality does in this stage, written once
    help: str
    parts: dict[str, str] = field(default_factory=dict)  # modality -> the module holding its part of the stage
    inputs: tuple[str, ...] = ()  # earlier stages whose results it takes, in argument order
    deps: tuple[str, ...] = ()  # files it reads; ${section.key} takes the path from the params
    params: tuple[str, ...] = ()  # params sections or keys it depends on
    outs: tuple[Out, ...] = ()
    result: str = ""  # tasks.core.results class its function returns
    model_run: bool = False  # logs into the run of the model it is given, not a run of its own
    plots: tuple[dict, ...] = field(default_factory=tuple)
    # packages it imports a module of by name at run time (the SSL method ``pretrain.method``
    # names), which no import statement shows: every module in them is its code too
    picks: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module it may run: its shell and each modality's part (DVC reruns it when any changes)."""
        return (self.shell.split(":")[0], *self.parts.values())

    def load(self) -> Callable:
        """The shell: ``shell(ctx, *inputs)``, with the modality's part in ``ctx.part``."""
        module, name = self.shell.split(":")
        return getattr(importlib.import_module(module), name)

    def part(self, modality: str) -> ModuleType:
        """The module holding ``modality``'s part of this stage."""
        if modality not in self.parts:
            raise ValueError(f"stage {self.name} has no {modality!r} part; expected one of {tuple(self.parts)}")
        return importlib.import_module(self.parts[modality])

    def result_type(self) -> type:
        import tasks.core.results

        return getattr(tasks.core.results, self.result)


def parts(stage: str) -> dict[str, str]:
    """Each modality's part of ``stage``: tasks/<modality>/<stage>.py."""
    return {modality: f"tasks.{modality}.{stage}" for modality in MODALITIES}


FINETUNE_RECIPE = (
    "finetune.steps",
    "finetune.batch_size",
    "finetune.optimizer",
    "finetune.lr",
    "finetune.weight_decay",
    "finetune.warmup_steps",
    "finetune.crop_scale_min",
    "finetune.flip_p",
    "finetune.seed",
)

PIPELINE: tuple[Stage, ...] = (
    Stage(
        "validate",
        "tasks.validate:validate",
        "check the images or documents with a Great Expectations checkpoint (reports/validation/)",
        parts=parts("validate"),
        deps=("${data.unlabeled}", "${data.labeled}"),
        params=("data.unlabeled", "data.labeled", "data.image_size", "data.text_columns", "data.label_column", "validate"),
        outs=(
            # Per-image tables and Data Docs grow with the data: DVC's cache, not git, keeps them.
            Out("reports/validation", note="reports, per-image tables (ingest reads `accepted`), Data Docs"),
            Out("reports/quarantine.csv", cache=False, note="every bad file with its fault"),
            Out("data/reference_stats.json", cache=False, persist=True, note="the drift reference: git-tracked, rewritten by each pass"),
        ),
        result="Validated",
    ),
    Stage(
        "ingest",
        "tasks.ingest:ingest",
        "decode validated images (or tokenize documents) into data/prepared/ (the DVC-tracked training data)",
        parts=parts("ingest"),
        inputs=("validate",),
        deps=("${data.unlabeled}", "${data.labeled}", "reports/validation"),
        params=("data", "text.vocab_size", "text.max_len"),
        outs=(Out("data/prepared/unlabeled", note="the training data; its DVC hash is the data version"), Out("data/prepared/labeled")),
        result="Prepared",
    ),
    Stage(
        "augment",
        "tasks.augment:augment",
        "check the view policy (text: the masking) and draw reports/augment_preview.png",
        parts=parts("augment"),
        inputs=("ingest",),
        deps=("data/prepared/unlabeled",),
        params=("augment", "data.image_size", "pretrain.seed", "pretrain.method", "pretrain.method_params", "text"),
        outs=(Out("reports/augment_preview.png", cache=False),),
        result="Preview",
    ),
    Stage(
        "pretrain",
        "tasks.pretrain:pretrain",
        "train the SSL method; writes models/encoder/ (its MLflow run id inside)",
        parts=parts("pretrain"),
        inputs=("ingest", "augment"),
        deps=("data/prepared/unlabeled", "reports/augment_preview.png"),
        params=("pretrain", "augment", "data.image_size", "text"),
        outs=(Out("models/encoder"), Out("reports/pretrain/curves.png", cache=False)),
        plots=({"reports/pretrain/history.csv": {"cache": False, "x": "epoch", "y": "loss"}},),
        result="Pretrained",
        picks=("ssl_models.methods",),
    ),
    Stage(
        "evaluate",
        "tasks.evaluate:evaluate",
        "linear probe and kNN for SSL, random-init and raw pixels (text: TF-IDF) (reports/metrics.json)",
        parts=parts("evaluate"),
        inputs=("ingest", "pretrain"),
        deps=("models/encoder", "data/prepared/labeled"),
        params=("evaluate", "pretrain.device", "pretrain.seed", *FINETUNE_RECIPE),
        outs=(
            Out("reports/label_efficiency.csv", cache=False, note="drawn by the top-level plot"),
            Out("reports/metrics.json", cache=False, kind="metric"),
            Out("reports/evaluation.png", cache=False, kind="plot"),
            Out("reports/label_efficiency.png", cache=False, kind="plot"),
            Out("reports/embeddings.png", cache=False, kind="plot"),
        ),
        result="Evaluation",
        model_run=True,
    ),
    Stage(
        "register",
        "tasks.register:register",
        "log the encoder to MLflow, register a new version (text: ssl-text-encoder), run the promotion gate",
        parts=parts("register"),
        inputs=("ingest", "pretrain", "evaluate"),
        deps=("models/encoder", "reports/metrics.json", "data/prepared/labeled"),
        params=("register", "evaluate", "pretrain.device"),
        outs=(Out("reports/registered.json", cache=False),),
        result="Registered",
        model_run=True,
    ),
    Stage(
        "embed",
        "tasks.embed:embed",
        "embed the pool with the registered encoder (data/embeddings/), find near-duplicates and outliers, shortlist what to label",
        parts=parts("embed"),
        inputs=("ingest", "pretrain", "register"),
        deps=("models/encoder", "reports/registered.json", "data/prepared/unlabeled", "data/prepared/labeled"),
        params=("select", "pretrain.device"),
        outs=(
            Out("data/embeddings", note="faiss index, embeddings, paths, neighbours; tagged with encoder and data version"),
            Out("reports/selection/near_duplicates.csv", note="grows with the pool: DVC's cache, not git"),
            Out("reports/selection/outliers.csv", cache=False),
            Out("reports/selection/selected.csv", cache=False, note="the default shortlist (select.budget, select.strategy)"),
            Out("reports/selection/label_efficiency.csv", cache=False),
            Out("reports/selection/metrics.json", cache=False, kind="metric"),
            Out("reports/selection/near_duplicates.png", cache=False, kind="plot"),
            Out("reports/selection/outliers.png", cache=False, kind="plot"),
            Out("reports/selection/selected.png", cache=False, kind="plot"),
            Out("reports/selection/label_efficiency.png", cache=False, kind="plot"),
        ),
        result="Embedded",
        model_run=True,
    ),
)

STAGES = {stage.name: stage for stage in PIPELINE}


# --- dvc.yaml --------------------------------------------------------------------------------


def dvc_yaml(root: Path | None = None) -> str:
    """``dvc.yaml`` for :data:`PIPELINE`: ``sslpipe <stage>`` per stage, code deps included.

    In the project's own checkout (``root`` None or the checkout) the code deps are paths
    relative to it; in any other root (a scheduled run's, a test's) they are the absolute
    paths of the code that runs, so DVC notices an upgrade there too.
    """
    import yaml

    from tasks.core.freshness import REPO, stage_code_deps

    def code(stage: Stage) -> list[str]:
        own = root is None or Path(root).resolve() == REPO
        return [path if own else str(REPO / path) for path in stage_code_deps(stage)]

    stages: dict[str, Any] = {}
    for stage in PIPELINE:
        entry: dict[str, Any] = {"cmd": f"sslpipe {stage.name} -q", "deps": [*stage.deps, *code(stage)], "params": list(stage.params)}
        groups: dict[str, list] = {"outs": [], "metrics": [], "plots": []}
        for out in stage.outs:
            options = {k: v for k, v in (("cache", out.cache), ("persist", out.persist)) if v != Out.__dataclass_fields__[k].default}
            groups[{"out": "outs", "metric": "metrics", "plot": "plots"}[out.kind]].append({out.path: options} if options else out.path)
        groups["plots"] += list(stage.plots)
        entry |= {key: value for key, value in groups.items() if value}
        stages[stage.name] = entry
    top_plots = [
        {
            "label_efficiency": {
                "x": "fraction",
                "y": {"reports/label_efficiency.csv": ["ssl_finetune", "scratch"]},
                "x_label": "share of train labels",
                "y_label": "test accuracy",
            }
        }
    ]
    header = (
        "# Generated from tasks/stages.py by `sslpipe generate`: do not edit by hand.\n"
        "# Each stage runs the same shell and parts as the Prefect flow (`sslpipe <stage>`); its deps list\n"
        "# the project modules its shell and its parts import, so changing any of them reruns it (and only it).\n"
        "# Run it with the venv on PATH: `make repro`, or `source .venv/bin/activate && dvc repro`.\n"
    )
    return header + yaml.safe_dump({"stages": stages, "plots": top_plots}, sort_keys=False, width=1000)
