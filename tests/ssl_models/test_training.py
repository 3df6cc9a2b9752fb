"""The shared pretraining loop: optimiser groups, the schedule and collapse statistics."""

from __future__ import annotations

import pytest
import torch

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.methods import build_method
from ssl_models.training import EpochStats, TrainSettings, _make_optimizer, collapse_warning, effective_rank, pretrain


def tiny_simsiam(**hparams):
    return build_method("simsiam", Encoder("resnet18_cifar", {"width": 4}), ViewPolicy(), **hparams)


def test_lr_scales_speed_up_one_submodule_only():
    method = tiny_simsiam(predictor_lr_scale=10.0)
    optimizer = _make_optimizer(method, TrainSettings(weight_decay=1e-4), lr=0.1)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    # Every trainable parameter is in exactly one group.
    assert sorted(lr_of) == sorted(id(p) for p in method.parameters() if p.requires_grad)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(lr_of)
    predictor = {id(p) for p in method.predictor.parameters()}
    for p in method.parameters():
        assert lr_of[id(p)] == pytest.approx(1.0 if id(p) in predictor else 0.1)
        assert decay_of[id(p)] == (1e-4 if p.ndim > 1 else 0.0)  # no decay on biases and norms
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # the logged group is the unscaled one


def test_scaled_groups_follow_the_same_schedule(tmp_path):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    settings = TrainSettings(epochs=3, batch_size=8, lr=0.256, warmup_epochs=1)  # peak lr 0.008 at batch 8
    checkpoint = tmp_path / "ckpt.pt"
    lrs_after_epoch = {}

    def read_lrs(stats: EpochStats) -> None:
        groups = torch.load(checkpoint)["optimizer"]["param_groups"]
        lrs_after_epoch[stats.epoch] = (stats.lr, sorted({group["lr"] for group in groups}))

    pretrain(tiny_simsiam(predictor_lr_scale=10.0), images, settings, on_epoch_end=read_lrs, checkpoint_path=checkpoint, progress=False)
    logged, (base, scaled) = lrs_after_epoch[2]  # 4 of 6 steps: 2 of warm-up, halfway down the cosine
    assert base == pytest.approx(0.5 * 0.008) and scaled == pytest.approx(10 * base)
    assert logged == pytest.approx(base)


def test_effective_rank_and_the_collapse_warning():
    torch.manual_seed(0)
    spread = torch.randn(512, 64)
    line = torch.randn(512, 1) * torch.randn(1, 64)  # every embedding on one line
    assert effective_rank(spread) > 50
    assert effective_rank(line) == pytest.approx(1.0, abs=0.05)

    def stats(std: float, rank: float) -> EpochStats:
        return EpochStats(epoch=1, loss=0.0, lr=0.1, images_per_s=1.0, embedding_std=std, effective_rank=rank)

    assert collapse_warning(stats(0.12, 40.0), dim=64) is None
    assert "point" in collapse_warning(stats(0.001, 40.0), dim=64)
    assert "line" in collapse_warning(stats(0.12, 1.2), dim=64)
