"""The declared stage list: dvc.yaml comes from it, code deps are found from the imports,
no stage imports another, and a stage is stale exactly when what it depends on changed."""

import ast
import json

import yaml

from tasks.core.config import load_config
from tasks.stages import PIPELINE, STAGES, code_deps, dvc_yaml, mark_done, stale_reason
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


def test_code_deps_follow_the_imports():
    pretrain = code_deps("tasks.pretrain")
    assert {"tasks/pretrain.py", "tasks/image/prepared.py", "ssl_models/training.py", "ssl_models/methods/simclr.py", "ssl_models/augment.py"} <= set(pretrain)
    ingest = code_deps("tasks.ingest")
    assert {"tasks/ingest.py", "tasks/image/prepared.py", "tasks/image/imaging.py", "tasks/image/sources.py", "tasks/core/atomic.py"} <= set(ingest)
    # The config's own imports (the SSL methods) are not followed: a method change reruns pretrain, not ingest.
    assert not any(path.startswith("ssl_models/methods") for path in ingest + code_deps("tasks.validate"))
    register = code_deps("tasks.register")
    assert {"tasks/registry/promotion.py", "tasks/evaluation/scoring.py", "ssl_models/evaluation.py"} <= set(register)


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


def test_a_stage_is_stale_when_its_params_inputs_or_outputs_change(tmp_path):
    cfg = load_config(None)
    stage = STAGES["augment"]
    (tmp_path / "data" / "prepared" / "unlabeled").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "unlabeled" / "images.npy").write_bytes(b"one")
    preview = tmp_path / "reports" / "augment_preview.png"
    preview.parent.mkdir()
    preview.write_bytes(b"png")
    assert stale_reason(stage, tmp_path, cfg) == "never run here"
    mark_done(stage, tmp_path, cfg)
    assert stale_reason(stage, tmp_path, cfg) is None
    assert stale_reason(stage, tmp_path, load_config(None, ["pretrain.epochs=3"])) is None  # not one of its params
    assert "changed" in stale_reason(stage, tmp_path, load_config(None, ["augment.flip_p=0.1"]))
    (tmp_path / "data" / "prepared" / "unlabeled" / "images.npy").write_bytes(b"two")
    assert "changed" in stale_reason(stage, tmp_path, cfg)
    mark_done(stage, tmp_path, cfg)
    preview.unlink()
    assert "reports/augment_preview.png" in stale_reason(stage, tmp_path, cfg)
    record = json.loads((tmp_path / ".sslpipe" / "stages" / "augment.json").read_text())
    assert set(record) == {"inputs", "out:reports/augment_preview.png"}


def test_each_stage_has_a_text_function_with_the_same_result_and_both_codes_in_dvc_yaml():
    import inspect

    generated = yaml.safe_load(dvc_yaml())["stages"]
    for stage in PIPELINE:
        image, text = stage.load("image"), stage.load("text")
        assert image is not text and text.__module__ == "tasks.text.pipeline"
        assert inspect.signature(text).return_annotation == inspect.signature(image).return_annotation == stage.result
        deps = generated[stage.name]["deps"]
        assert f"{stage.module.replace('.', '/')}.py" in deps and "tasks/text/pipeline.py" in deps
