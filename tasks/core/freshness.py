"""What is up to date, and what a stage depends on: DVC's book is the only one.

**Code deps.** A stage's code is the project modules its shell and its parts import, at any
depth (lazy imports included), found from the bytecode: :func:`stage_code_deps`. They are
listed in ``dvc.yaml``, so a change to an SSL method reruns pretrain and what follows, never
validate or ingest.

**The book.** ``dvc.lock`` says which stages are up to date, for ``dvc repro`` and for
``sslpipe run`` and scheduled runs alike (:class:`Book`): the flow asks DVC's ``status`` for
each declared stage before running it, and after a stage succeeds it records it with DVC's
``commit`` (its deps', params' and outs' hashes into ``dvc.lock``, cached outs into DVC's
cache), which is what ``dvc repro`` does after running a stage's command. So after
``sslpipe run``, ``dvc status`` is clean and ``dvc repro`` runs nothing, and the reverse.

DVC reads params from ``params.yaml``. A run whose ``--set`` overrides change a stage's
params runs that stage without asking DVC and does not record it: ``dvc.lock`` would
otherwise claim that params.yaml's values made those outputs. ``dvc status`` then shows the
stage as changed, which is the truth; put the values in params.yaml (or use
``dvc exp run -S``) to have them recorded.

**The resume key** (:func:`input_key`): a digest of a stage's code, params and inputs that
names its resume checkpoint, so that a changed config starts afresh.
"""

from __future__ import annotations

import contextlib
import dis
import hashlib
import json
import logging
import os
import shutil
import types
from functools import cache
from pathlib import Path
from typing import Any

from tasks.stages import Stage

log = logging.getLogger("sslpipe")

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "ssl_models", "flows")
# Interface modules every stage imports: the config (its values reach a stage as params, which
# are deps of their own), the context and the result types. Only their imports within tasks/
# are followed, or every stage would rerun when any SSL method changes.
LEAVES = ("tasks.core.config", "tasks.core.context", "tasks.core.results")
IMPORT_NAME = dis.opmap["IMPORT_NAME"]


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


@cache
def _imports(path: Path, module: str) -> frozenset[str]:
    """Project modules ``path`` imports (at any depth in the file, so lazy imports count).

    Read from the compiled bytecode (each IMPORT_NAME with its level and from-list), not from
    ``ast.parse``: CPython 3.11's ast objects are not thread-safe ("AST constructor recursion
    depth mismatch" when a Prefect thread parses at the same time: seen in a pipeline run).
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for code in _code_objects(compile(path.read_text(), str(path), "exec", dont_inherit=True)):
        if IMPORT_NAME not in code.co_code:  # most functions import nothing: skip decoding them
            continue
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
    return frozenset(".".join(name.split(".")[:i]) for name in found for i in range(1, len(name.split(".")) + 1))


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
    """The project files a stage runs: its shell's and every modality's part's (one dvc.yaml serves
    images and text, so a change to either part reruns the stage: simple, and never stale), and
    every module of the packages it picks a module from by name (``Stage.picks``)."""
    picked = [f"{package}.{path.stem}" for package in stage.picks for path in sorted(REPO.joinpath(*package.split(".")).glob("*.py"))]
    return tuple(sorted({path for module in (*stage.modules, *picked) for path in code_deps(module)}))


# --- the resume key --------------------------------------------------------------------------


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


def _param(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def input_key(stage: Stage, root: Path, cfg) -> str:
    """A digest of what a stage's result depends on (code, params, input files): names its resume checkpoint."""
    tree = cfg.as_dict()
    params = {name: _param(tree, name) for name in stage.params}
    deps = {}
    for dep in stage.deps:
        value = str(_param(tree, dep[2:-1])) if dep.startswith("${") else dep
        deps[value] = "torchvision" if value.startswith("torchvision:") else _path_digest(root / value)
    code = {name: hashlib.md5((REPO / name).read_bytes()).hexdigest() for name in stage_code_deps(stage)}
    return hashlib.sha256(json.dumps([params, deps, code], sort_keys=True, default=str).encode()).hexdigest()


# --- the book: DVC's ---------------------------------------------------------------------------


class Book:
    """DVC's view of the declared stages in the project root ``root``, for one run.

    ``cfg`` is the config the run really uses (params.yaml plus any ``--set``, before ``auto``
    is resolved: DVC compares params.yaml's words). A root that is not a DVC project yet is
    made one (``dvc init``, and ``dvc.yaml`` written from the declared stages); where that
    fails there is no book: every stage runs and nothing is recorded (said once).
    """

    def __init__(self, root: Path, cfg) -> None:
        from tasks.core.config import load_config

        self.root = Path(root).resolve()
        self.enabled = _dvc_project(self.root)
        params = self.root / "params.yaml"
        try:
            self._declared = load_config(params).as_dict() if params.exists() else None
        except ValueError:  # a broken params.yaml: DVC cannot read it either
            self._declared = None
        self._used = cfg.as_dict()

    def overridden(self, stage: Stage) -> list[str]:
        """The stage's params whose value in this run is not params.yaml's (``--set``)."""
        if self._declared is None:
            return list(stage.params)
        used, declared = _flat(self._used), _flat(self._declared)
        return [
            key
            for key in used
            if any(key == name or key.startswith(f"{name}.") for name in stage.params) and used[key] != declared.get(key)
        ]

    def stale_reason(self, stage: Stage) -> str | None:
        """None when DVC says the stage is up to date, else why it must run."""
        if not self.enabled:
            return "no DVC project to say it is up to date"
        if self._declared is None:
            return f"no params.yaml in {self.root} for DVC to compare with (not recorded in dvc.lock)"
        overridden = self.overridden(stage)
        if overridden:
            return f"--set {', '.join(overridden)} differs from params.yaml (not recorded in dvc.lock)"
        if not self._locked(stage):
            return "first run on this root"
        try:
            status = self._repo(lambda repo: repo.status(targets=[self._target(stage)]))
        except Exception as err:  # noqa: BLE001 - any DVC fault: run the stage, which is never wrong
            return f"DVC cannot tell ({type(err).__name__}: {err})"
        return describe_status(next(iter(status.values())), self.root) if status else None

    def record(self, stage: Stage) -> bool:
        """Record the finished stage in dvc.lock as ``dvc repro`` would; False when it is not recorded."""
        if not self.enabled or self.overridden(stage):
            return False
        try:
            self._repo(lambda repo: repo.commit(self._target(stage), force=True))
        except Exception as err:  # noqa: BLE001 - the stage's outputs are written: say why DVC did not record them
            log.warning(
                "%s: not recorded in dvc.lock (%s: %s); `dvc commit %s` records it", stage.name, type(err).__name__, err, stage.name
            )
            return False
        return True

    def _locked(self, stage: Stage) -> bool:
        """Whether dvc.lock holds a record of ``stage`` (from an earlier run or ``dvc repro``)."""
        import yaml

        lock = self.root / "dvc.lock"
        try:
            return stage.name in (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        except (OSError, yaml.YAMLError, AttributeError):  # no lock yet, or one DVC must judge itself
            return lock.exists()

    def _target(self, stage: Stage) -> str:
        # DVC resolves a bare stage name against the current directory, not the repo it was given.
        return f"{self.root / 'dvc.yaml'}:{stage.name}"

    def _repo(self, action):
        from dvc.repo import Repo

        # A fresh Repo per call: it reads dvc.yaml and dvc.lock as they are now, after earlier records.
        # DVC resolves some paths against the working directory, so it is the root meanwhile.
        with contextlib.chdir(self.root), _quiet("dvc"), Repo(str(self.root)) as repo:
            return action(repo)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"augment": {"flip_p": 0.5}}`` -> ``{"augment.flip_p": 0.5}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_status(changes: list, root: Path | None = None) -> str:
    """DVC's status entry of one stage, as a short reason: ``changed deps: ssl_models/methods/mae.py``."""

    def short(path: str) -> str:
        for base in (root, REPO):
            if base is not None and path.startswith(f"{base}/"):
                return path[len(str(base)) + 1 :]
        return path

    parts = []
    for change in changes:
        if isinstance(change, str):
            parts.append(change)
            continue
        for kind, paths in change.items():
            found = paths.items() if isinstance(paths, dict) else ()
            named = [short(path) + ("" if what == "modified" else f" ({what})") for path, what in found]
            more = f" and {len(named) - 2} more" if len(named) > 2 else ""
            parts.append(f"{kind}: {', '.join(named[:2])}{more}" if named else kind)
    return "; ".join(parts) or "changed"


@contextlib.contextmanager
def _quiet(name: str):
    """DVC's own info lines ("Updating lock file") stay out of the pipeline's output."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dvc_project(root: Path) -> bool:
    """Make ``root`` a DVC project whose dvc.yaml declares the stages as they are now; False if it cannot be."""
    from tasks.core.atomic import write_text
    from tasks.stages import dvc_yaml

    try:
        if not (root / ".dvc").is_dir():
            from dvc.repo import Repo

            # Without its own git repo, DVC runs without one (`dvc exp` needs git: `git init` first).
            with _quiet("dvc"):
                Repo.init(str(root), no_scm=not (root / ".git").exists(), subdir=False).close()
            log.info("initialised DVC in %s: dvc.lock keeps the record of which stages are up to date", root)
        # Earlier versions kept a book of their own here; dvc.lock is the only one now.
        shutil.rmtree(root / ".sslpipe" / "stages", ignore_errors=True)
        declared = dvc_yaml(root)
        path = root / "dvc.yaml"
        if not path.exists() or path.read_text() != declared:
            write_text(path, declared)
            log.info("%s: written from the declared stages", path)
    except Exception as err:  # noqa: BLE001 - the pipeline still runs; it only cannot skip what is up to date
        log.warning(
            "%s is not a DVC project and cannot be made one (%s: %s): every stage runs, none is recorded", root, type(err).__name__, err
        )
        return False
    return True
