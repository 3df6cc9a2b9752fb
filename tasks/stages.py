"""The pipeline, declared once.

Each :class:`Stage` names its function (one per modality: images, and text, which the
data source decides: tasks/core/config.py ``PipelineConfig.modality``), the earlier stages whose results it takes, the
files it reads and writes, the params sections it depends on, and (found from the code,
:func:`code_deps`) every project module it runs. From this one list come:

- the Prefect flow (flows/pipeline.py), which passes results from stage to stage;
- the CLI's stage commands (``sslpipe validate``, ...), which rebuild a stage's inputs from
  the earlier stages' outputs (``Result.load``);
- ``dvc.yaml`` (:func:`dvc_yaml`; ``sslpipe generate`` writes it, a test fails when the
  committed file differs);
- what is stale (:func:`fingerprint`): ``sslpipe run`` and scheduled runs skip a stage whose
  code, params, inputs and outputs are what they were when it last succeeded, by the same
  declared deps that DVC checks.
"""

from __future__ import annotations

import dis
import hashlib
import importlib
import json
import os
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "ssl_models", "flows")
# Interface modules every stage imports: the config (its values reach a stage as params, which
# are deps of their own), the context and the result types. Only their imports within tasks/
# are followed, or every stage would rerun when any SSL method changes.
LEAVES = ("tasks.core.config", "tasks.core.context", "tasks.core.results")


@dataclass(frozen=True)
class Out:
    path: str
    cache: bool = True  # False: small reports kept in git (.gitignore lets them in), not in DVC's cache
    persist: bool = False  # True: DVC keeps it between runs (the drift reference)
    kind: str = "out"  # out | metric | plot
    note: str = ""


MODALITIES = ("image", "text")


@dataclass(frozen=True)
class Stage:
    name: str
    function: str  # "module:function", the typed stage function for images
    help: str
    text: str = ""  # "module:function" for text sources: same inputs, result and outputs
    inputs: tuple[str, ...] = ()  # earlier stages whose results it takes, in argument order
    deps: tuple[str, ...] = ()  # files it reads; ${section.key} takes the path from the params
    params: tuple[str, ...] = ()  # params sections or keys it depends on
    outs: tuple[Out, ...] = ()
    result: str = ""  # tasks.core.results class its function returns
    model_run: bool = False  # logs into the run of the model it is given, not a run of its own
    plots: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def module(self) -> str:
        return self.function.split(":")[0]

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module it may run: both modalities' (DVC reruns the stage when either changes)."""
        return tuple(dict.fromkeys(f.split(":")[0] for f in (self.function, self.text) if f))

    def load(self, modality: str = "image") -> Callable:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        module, name = (self.text if modality == "text" and self.text else self.function).split(":")
        return getattr(importlib.import_module(module), name)

    def result_type(self) -> type:
        import tasks.core.results

        return getattr(tasks.core.results, self.result)


FINETUNE_RECIPE = ("finetune.steps", "finetune.batch_size", "finetune.lr", "finetune.weight_decay", "finetune.warmup_steps", "finetune.crop_scale_min", "finetune.flip_p", "finetune.seed")

PIPELINE: tuple[Stage, ...] = (
    Stage(
        "validate", "tasks.validate:validate",
        "check the images or documents with a Great Expectations checkpoint (reports/validation/)",
        text="tasks.text.pipeline:validate",
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
        "ingest", "tasks.ingest:ingest",
        "decode validated images (or tokenize documents) into data/prepared/ (the DVC-tracked training data)",
        text="tasks.text.pipeline:ingest",
        inputs=("validate",),
        deps=("${data.unlabeled}", "${data.labeled}", "reports/validation"),
        params=("data", "text.vocab_size", "text.max_len"),
        outs=(Out("data/prepared/unlabeled", note="the training data; its DVC hash is the data version"), Out("data/prepared/labeled")),
        result="Prepared",
    ),
    Stage(
        "augment", "tasks.augment:augment",
        "check the view policy (text: the masking) and draw reports/augment_preview.png",
        text="tasks.text.pipeline:augment",
        inputs=("ingest",),
        deps=("data/prepared/unlabeled",),
        params=("augment", "data.image_size", "pretrain.seed", "pretrain.method_params", "text"),
        outs=(Out("reports/augment_preview.png", cache=False),),
        result="Preview",
    ),
    Stage(
        "pretrain", "tasks.pretrain:pretrain",
        "train the SSL method; writes models/encoder/ (its MLflow run id inside)",
        text="tasks.text.pipeline:pretrain",
        inputs=("ingest", "augment"),
        deps=("data/prepared/unlabeled", "reports/augment_preview.png"),
        params=("pretrain", "augment", "data.image_size", "text"),
        outs=(Out("models/encoder"), Out("reports/pretrain/curves.png", cache=False)),
        plots=({"reports/pretrain/history.csv": {"cache": False, "x": "epoch", "y": "loss"}},),
        result="Pretrained",
    ),
    Stage(
        "evaluate", "tasks.evaluate:evaluate",
        "linear probe and kNN for SSL, random-init and raw pixels (text: TF-IDF) (reports/metrics.json)",
        text="tasks.text.pipeline:evaluate",
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
        "register", "tasks.register:register",
        "log the encoder to MLflow, register a new version (text: ssl-text-encoder), run the promotion gate",
        text="tasks.text.pipeline:register",
        inputs=("ingest", "pretrain", "evaluate"),
        deps=("models/encoder", "reports/metrics.json", "data/prepared/labeled"),
        params=("register", "evaluate", "pretrain.device"),
        outs=(Out("reports/registered.json", cache=False),),
        result="Registered",
        model_run=True,
    ),
)

STAGES = {stage.name: stage for stage in PIPELINE}


# --- code deps: the project modules a stage runs, found from its imports --------------------


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _imports(path: Path, module: str) -> set[str]:
    """Project modules ``path`` imports (at any depth in the file, so lazy imports count).

    Read from the compiled bytecode (each IMPORT_NAME with its level and from-list), not from
    ``ast.parse``: CPython 3.11's ast objects are not thread-safe ("AST constructor recursion
    depth mismatch" when a Prefect thread parses at the same time: seen in a pipeline run).
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for code in _code_objects(compile(path.read_text(), str(path), "exec", dont_inherit=True)):
        instructions = list(dis.get_instructions(code))
        for i, instruction in enumerate(instructions):
            if instruction.opname != "IMPORT_NAME":
                continue
            level, names = instructions[i - 2].argval, instructions[i - 1].argval  # LOAD_CONST level, LOAD_CONST from-list
            base = instruction.argval
            if level:
                anchor = package.split(".")[: len(package.split(".")) - level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{name}" for name in names or () if name != "*"}  # `from pkg import submodule`
    # importing a.b.c runs a/__init__.py and a/b/__init__.py too
    return {".".join(name.split(".")[:i]) for name in found for i in range(1, len(name.split(".")) + 1)}


@cache
def code_deps(module: str) -> tuple[str, ...]:
    """Every project source file ``module`` runs, relative to the repo, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        imports = _imports(path, name)
        todo += sorted(m for m in imports if name not in LEAVES or m.startswith("tasks."))
    return tuple(sorted({p.relative_to(REPO).as_posix() for p in seen.values()}))


def stage_code_deps(stage: Stage) -> tuple[str, ...]:
    """The project files of both of a stage's functions: one dvc.yaml serves images and text, and a
    change to either's code reruns the stage (for the other modality too: simple and never stale)."""
    return tuple(sorted({path for module in stage.modules for path in code_deps(module)}))


# --- dvc.yaml --------------------------------------------------------------------------------


def dvc_yaml() -> str:
    """``dvc.yaml`` for :data:`PIPELINE`: ``sslpipe <stage>`` per stage, code deps included."""
    import yaml

    stages: dict[str, Any] = {}
    for stage in PIPELINE:
        entry: dict[str, Any] = {"cmd": f"sslpipe {stage.name} -q", "deps": [*stage.deps, *stage_code_deps(stage)], "params": list(stage.params)}
        groups: dict[str, list] = {"outs": [], "metrics": [], "plots": []}
        for out in stage.outs:
            options = {k: v for k, v in (("cache", out.cache), ("persist", out.persist)) if v != Out.__dataclass_fields__[k].default}
            groups[{"out": "outs", "metric": "metrics", "plot": "plots"}[out.kind]].append({out.path: options} if options else out.path)
        groups["plots"] += list(stage.plots)
        entry |= {key: value for key, value in groups.items() if value}
        stages[stage.name] = entry
    top_plots = [
        {"label_efficiency": {"x": "fraction", "y": {"reports/label_efficiency.csv": ["ssl_finetune", "scratch"]}, "x_label": "share of train labels", "y_label": "test accuracy"}}
    ]
    header = (
        "# Generated from tasks/stages.py by `sslpipe generate`: do not edit by hand.\n"
        "# Each stage runs the same function as the Prefect flow (`sslpipe <stage>`); its deps list\n"
        "# every project module it imports, so changing any of them reruns it.\n"
        "# Run it with the venv on PATH: `make repro`, or `source .venv/bin/activate && dvc repro`.\n"
    )
    return header + yaml.safe_dump({"stages": stages, "plots": top_plots}, sort_keys=False, width=1000)


# --- what is stale ------------------------------------------------------------------------------


def _path_digest(path: Path) -> str:
    """A cheap fingerprint of a file or folder: relative names, kinds, sizes and mtimes (what
    DVC's state cache trusts too). Only ``lstat``: nothing is opened, so a FIFO, an unreadable
    file, a link loop or a name that is not UTF-8 in a user's dump cannot block or break it."""
    if not os.path.lexists(path):
        return "missing"
    digest = hashlib.sha256()
    entries = [(path, b"")] if not path.is_dir() else []
    for folder, subfolders, files in os.walk(path) if path.is_dir() else ():
        subfolders.sort()
        entries += [(Path(folder) / name, os.fsencode(os.path.relpath(Path(folder) / name, path))) for name in sorted(files)]
    for entry, name in entries:
        stat = entry.lstat()
        digest.update(name + f"\0{stat.st_mode:o}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _param(cfg_dict: dict, dotted: str) -> Any:
    node: Any = cfg_dict
    for part in dotted.split("."):
        node = node[part]
    return node


def _expand(dep: str, cfg_dict: dict) -> str:
    if dep.startswith("${") and dep.endswith("}"):
        return str(_param(cfg_dict, dep[2:-1]))
    return dep


def input_key(stage: Stage, root: Path, cfg) -> str:
    """The digest of what a stage's result depends on (code, params, input files)."""
    return fingerprint(stage, root, cfg)["inputs"]


def fingerprint(stage: Stage, root: Path, cfg) -> dict[str, str]:
    """What a stage's result depends on, and what it wrote, as digests."""
    cfg_dict = cfg.as_dict()
    print_params = {name: _param(cfg_dict, name) for name in stage.params}
    deps = {}
    for dep in stage.deps:
        value = _expand(dep, cfg_dict)
        deps[value] = "torchvision" if value.startswith("torchvision:") else _path_digest(root / value)
    code = {name: hashlib.md5((REPO / name).read_bytes()).hexdigest() for name in stage_code_deps(stage)}
    inputs = hashlib.sha256(json.dumps([print_params, deps, code], sort_keys=True, default=str).encode()).hexdigest()
    outs = {out.path: _path_digest(root / out.path) for out in stage.outs}
    return {"inputs": inputs, **{f"out:{path}": value for path, value in outs.items()}}


def _record(root: Path, stage: Stage) -> Path:
    return root / ".sslpipe" / "stages" / f"{stage.name}.json"


def stale_reason(stage: Stage, root: Path, cfg) -> str | None:
    """None when the stage is up to date, else why it must run."""
    record = _record(root, stage)
    if not record.exists():
        return "never run here"
    previous = json.loads(record.read_text())
    now = fingerprint(stage, root, cfg)
    if previous.get("inputs") != now["inputs"]:
        return "its code, params or input data changed"
    changed = [key.removeprefix("out:") for key in now if key != "inputs" and previous.get(key) != now[key]]
    if changed:
        return f"{', '.join(changed)} changed or went missing"
    return None


def mark_done(stage: Stage, root: Path, cfg) -> None:
    from tasks.core.atomic import write_json

    write_json(_record(root, stage), fingerprint(stage, root, cfg))


def forget(root: Path, names: list[str]) -> None:
    for name in names:
        _record(root, STAGES[name]).unlink(missing_ok=True)


def project_root_of_repo() -> Path:
    return REPO


os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
