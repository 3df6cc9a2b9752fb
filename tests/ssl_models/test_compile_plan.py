"""``compile: auto`` compiles only when the time it saves exceeds the compile time."""

from __future__ import annotations

import logging

import torch

from ssl_models.augment import ViewPolicy
from ssl_models.compile_plan import COMPILE_S, PROBE_STEPS, SPEEDUP, AutoCompile, compile_pays
from ssl_models.encoder import Encoder
from ssl_models.methods import build_method
from ssl_models.training import TrainSettings, pretrain


def test_compiling_pays_only_when_the_saving_exceeds_the_compile_time():
    # The break-even: steps * step_s * (1 - 1/SPEEDUP) == COMPILE_S
    break_even_s = COMPILE_S["cpu"] / (1 - 1 / SPEEDUP)
    assert compile_pays(1000, 1.1 * break_even_s / 1000, "cpu")[0]
    assert not compile_pays(1000, 0.9 * break_even_s / 1000, "cpu")[0]
    pays, reason = compile_pays(20, 0.5, "cpu")
    assert not pays and reason.startswith("torch.compile off: 20 steps left at 0.50 s") and "310 s of compiling on cpu" in reason
    assert compile_pays(10_000, 0.2, "cuda")[0]  # a GPU compiles in about a minute: long GPU runs compile


def test_the_decision_is_taken_once_after_the_probe_steps():
    plan = AutoCompile(total_steps=100, device="cpu")
    decided_at = [step for step in range(1, 101) if plan.step_done(step)]
    assert decided_at == [PROBE_STEPS + 1] and plan.reason
    short = AutoCompile(total_steps=3, device="cpu")
    assert [step for step in range(1, 4) if short.step_done(step)] == [3]  # a run shorter than the probe decides at its end
    assert not short.pays


def test_a_short_run_stays_eager_and_says_why(caplog):
    torch.manual_seed(0)
    method = build_method("simclr", Encoder("resnet18_cifar", {"width": 4}), ViewPolicy())
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    with caplog.at_level(logging.INFO, logger="ssl_models.training"):
        pretrain(method, images, TrainSettings(epochs=1, batch_size=8, warmup_epochs=0, compile="auto"), progress=False)
    assert any(r.getMessage().startswith(f"torch.compile off: {8 - PROBE_STEPS - 1} steps left") for r in caplog.records), caplog.text
    assert not any(hasattr(m, "_compiled_call_impl") and m._compiled_call_impl is not None for m in method.modules())
