"""Momentum (EMA) encoders, shared by BYOL and MoCo: plain functions, no base class.

    theta_target <- m * theta_target + (1 - m) * theta_online

with m (BYOL's tau) either constant or raised from ``base`` to 1 by a cosine over training
(Grill et al., 2020, section 3.2).

    momentum = cosine_schedule(0.99, progress)        # 0.99 at the start, 1.0 at the end
    update_momentum(online_modules, target_modules, momentum)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn


def cosine_schedule(base: float, progress: float) -> float:
    """``base`` at progress 0, rising to 1 at progress 1 along a half cosine."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def update_momentum(online: Iterable[nn.Module], target: Iterable[nn.Module], m: float) -> None:
    """EMA of the online modules' parameters into the target modules' (same architecture, same order)."""
    online_params = [p for module in online for p in module.parameters()]
    target_params = [p for module in target for p in module.parameters()]
    for t, o in zip(target_params, online_params, strict=True):
        t.mul_(m).add_(o.detach(), alpha=1 - m)


def frozen_copy(module: nn.Module) -> nn.Module:
    """An exact copy of ``module`` that the optimiser never touches (requires_grad off): the
    start of a momentum (EMA) network, e.g. DINO's teacher."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
