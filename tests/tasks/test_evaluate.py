"""The evaluate shell: one for every modality, each part supplying the same interface."""

from __future__ import annotations

import importlib
import inspect

import pytest

from tasks.evaluate import EvaluatePart
from tasks.stages import STAGES
from tests.conftest import REPO

MEMBERS = {name for name in vars(EvaluatePart) if not name.startswith("_")} | set(EvaluatePart.__annotations__)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_each_modality_s_part_supplies_the_whole_interface(modality):
    part = STAGES["evaluate"].part(modality)
    assert {"UNIT", "FINETUNE", "load_labeled", "load_encoder", "features", "baselines", "augment"} == MEMBERS
    missing = {name for name in MEMBERS if not hasattr(part, name)}
    assert not missing, f"{part.__name__} lacks {missing}"
    for name in MEMBERS - set(EvaluatePart.__annotations__):  # the shell's calls bind to the part's functions
        params = [p for p in inspect.signature(getattr(EvaluatePart, name)).parameters.values() if p.name != "self"]
        required = [None for p in params if p.default is inspect.Parameter.empty]
        inspect.signature(getattr(part, name)).bind(*required, **{p.name: None for p in params if p.default is not inspect.Parameter.empty})


def test_neither_the_shell_nor_the_protocol_asks_which_modality_it_is():
    for module in ("tasks.evaluate", "tasks.evaluation.scoring", "tasks.evaluation"):
        source = (REPO / (module.replace(".", "/") + ("/__init__.py" if module == "tasks.evaluation" else ".py"))).read_text()
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
        assert "ctx.modality" not in code and '== "text"' not in code and '== "image"' not in code, module
        importlib.import_module(module)
