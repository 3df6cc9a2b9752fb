"""``compile: auto``: torch.compile only when the run is long enough for compiling to pay.

torch.compile makes a step faster after a slow first one that compiles the graph. On the
2-core CPU it gave +29% img/s after about 5 minutes of compiling (benchmarks/bench_compile.py,
benchmarks/results/compile-cpu.json); a GPU compiles in about a minute. So compiling pays
when the eager time left exceeds the compile time over the share of a step it saves:

    compile  iff  remaining_steps * eager_step_s * (1 - 1 / SPEEDUP)  >  COMPILE_S[device]

The eager step time is measured, not guessed: the first ``PROBE_STEPS`` steps of a run are
eager and timed, then the decision is taken once, logged with its reason, and kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

SPEEDUP = 1.29  # compiled / eager img/s, measured on the CPU (compile-cpu.json)
COMPILE_S = {"cpu": 310.0, "cuda": 60.0}  # seconds the first compiled steps cost, about
PROBE_STEPS = 5  # eager steps timed before deciding (after one untimed warm-up step)


def compile_pays(remaining_steps: int, eager_step_s: float, device: str) -> tuple[bool, str]:
    """Whether compiling pays for the rest of the run, and a one-line reason."""
    saving = remaining_steps * eager_step_s * (1 - 1 / SPEEDUP)
    cost = COMPILE_S.get(device, COMPILE_S["cpu"])
    verdict = "on" if saving > cost else "off"
    return saving > cost, (
        f"torch.compile {verdict}: {remaining_steps} steps left at {eager_step_s:.2f} s would save about "
        f"{saving:.0f} s at +{SPEEDUP - 1:.0%}, against about {cost:.0f} s of compiling on {device}"
    )


@dataclass
class AutoCompile:
    """Times the first steps, then decides once (:func:`compile_pays`): ``step_done`` returns
    True on the step it decided at; the decision is then in ``pays``, the reason in ``reason``."""

    total_steps: int
    device: str
    started: float = 0.0
    steps: int = 0
    pays: bool = False
    reason: str = ""
    decided: bool = False

    def step_done(self, step: int) -> bool:
        """Call after each optimiser step (``step``: steps done in the whole run)."""
        if self.decided:
            return False
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.steps += 1
        if self.steps == 1:  # the first step pays one-off costs (allocations, lazy init): not timed
            self.started = time.perf_counter()
            return False
        if self.steps <= PROBE_STEPS and step < self.total_steps:
            return False
        self.decided = True
        step_s = (time.perf_counter() - self.started) / (self.steps - 1)
        self.pays, self.reason = compile_pays(self.total_steps - step, step_s, self.device)
        return True
