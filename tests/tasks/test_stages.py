"""The declared stage list: dvc.yaml comes from it, a stage's code deps are the code its shell
and its parts run (never another stage's), and no stage imports another.
(What DVC then says is stale: tests/tasks/core/test_freshness.py, tests/test_dvc_pipeline.py.)"""

import ast
import inspect

import yaml

from tasks.core.freshness import code_deps, stage_code_deps
from tasks.stages import MODALITIES, PIPELINE, STAGES, dvc_yaml
from tests.conftest import REPO

STAGE_MODULES = {module for stage in PIPELINE for module in stage.modules} | {"tasks.finetune"}


def test_committed_dvc_yaml_is_generated_from_the_stage_list():
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml(), "run `sslpipe generate` and commit dvc.yaml"


def test_git_keeps_exactly_the_outs_dvc_does_not_cache():
    """`cache: false` outs (metrics, plot data, small PNGs) are meant for git, so that DVC
    experiments compare; cached outs (data, models, validation tables) must stay out of git."""
    import subprocess

    outs = [(out.path, out.cache) for stage in PIPELINE for out in stage.outs]
    outs += [(path, options.get("cache", True)) for stage in PIPELINE for plot in stage.plots for path, options in plot.items()]
    found = subprocess.run(["git", "check-ignore", "--no-index", *(p for p, _ in outs)], cwd=REPO, capture_output=True, text=True)
    ignored = set(found.stdout.split())
    assert {path for path, cache in outs if not cache} & ignored == set(), ".gitignore hides a report DVC leaves to git"
    assert {path for path, cache in outs if cache} - ignored == set(), ".gitignore lets in an out DVC caches"


def _file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def test_code_deps_follow_the_imports():
    pretrain = stage_code_deps(STAGES["pretrain"])
    assert {
        "tasks/pretrain.py",
        "tasks/image/pretrain.py",
        "tasks/text/pretrain.py",
        "tasks/image/prepared.py",
        "ssl_models/training.py",
    } <= set(pretrain)
    assert {"ssl_models/methods/simclr.py", "ssl_models/methods/mae.py", "ssl_models/methods/mlm.py", "ssl_models/augment.py"} <= set(
        pretrain
    )
    ingest = stage_code_deps(STAGES["ingest"])
    assert {
        "tasks/ingest.py",
        "tasks/image/ingest.py",
        "tasks/image/prepared.py",
        "tasks/image/imaging.py",
        "tasks/text/tokens.py",
        "tasks/core/atomic.py",
    } <= set(ingest)
    register = stage_code_deps(STAGES["register"])
    assert {"tasks/registry/promotion.py", "tasks/evaluation/scoring.py", "ssl_models/evaluation.py"} <= set(register)


def test_pretrain_depends_on_every_method_and_augment_on_the_one_it_runs():
    """Methods are imported by name (``pretrain.method``), which no import statement shows, so
    pretrain lists the whole package; augment runs MLM's masking only, so a change to SwAV must
    not rerun it."""
    methods = {path.relative_to(REPO).as_posix() for path in (REPO / "ssl_models/methods").glob("*.py")}
    assert len(methods) > 15
    assert methods <= set(stage_code_deps(STAGES["pretrain"]))
    augment = {path for path in stage_code_deps(STAGES["augment"]) if path.startswith("ssl_models/methods/")}
    assert augment == {"ssl_models/methods/__init__.py", "ssl_models/methods/base.py", "ssl_models/methods/mlm.py"}


def test_a_stage_depends_on_no_code_it_cannot_run():
    """Another stage's shell or parts, or the training and SSL methods for the data stages, in a
    stage's deps would rerun it for nothing (an SSL method's change re-validating the data)."""
    for stage in PIPELINE:
        others = {_file(module) for other in PIPELINE if other is not stage for module in other.modules}
        deps = set(stage_code_deps(stage))
        assert not deps & others, f"{stage.name} depends on {sorted(deps & others)}"
        assert {_file(module) for module in stage.modules} <= deps
    for name in ("validate", "ingest"):
        deps = stage_code_deps(STAGES[name])
        assert not [
            path
            for path in deps
            if path.startswith("ssl_models/methods/") or path in ("ssl_models/training.py", "tasks/registry/promotion.py")
        ], name
    # The config's own imports (the SSL methods) are not followed: a method change reruns pretrain, not ingest.
    assert "ssl_models/methods/mae.py" not in code_deps("tasks.core.config")


def test_each_stage_has_a_part_per_modality_behind_one_shell():
    generated = yaml.safe_load(dvc_yaml())["stages"]
    for stage in PIPELINE:
        assert set(stage.parts) == set(MODALITIES)
        shell = stage.load()
        assert len(inspect.signature(shell).parameters) == 1 + len(stage.inputs), stage.name  # ctx, then the inputs' results
        assert inspect.signature(shell).return_annotation == stage.result
        for modality in MODALITIES:
            assert stage.part(modality).__name__ == f"tasks.{modality}.{stage.name}"
            assert _file(stage.parts[modality]) in generated[stage.name]["deps"]


def test_no_stage_module_imports_another_stage_module():
    for module in STAGE_MODULES:
        path = REPO / (module.replace(".", "/") + ".py")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        assert not (imported & (STAGE_MODULES - {module})), f"{module} imports {imported & STAGE_MODULES}"
