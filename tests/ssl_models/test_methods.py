"""Every registered method: one step on tiny models, plus each method's own mechanics."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.methods import METHODS, build_method, default_backbone
from ssl_models.methods.colorization import ab_bin_centres, rgb_to_lab, soft_encode
from ssl_models.methods.inpainting import random_square_mask
from ssl_models.methods.relative_patch import NEIGHBOURS
from ssl_models.training import TrainSettings, pretrain

TINY_KWARGS = {
    "resnet18_cifar": {"width": 4},
    "vit_tiny": {"dim": 32, "depth": 1, "heads": 2},
    "vit_small": {"dim": 32, "depth": 1, "heads": 2},
}
CASES = [(name, backbone) for name, cls in METHODS.items() for backbone in cls.backbones]
MOMENTUM = {
    "moco": ("key_encoder", "key_projector"),
    "byol": ("target_encoder", "target_projector"),
    "dino": ("teacher_encoder", "teacher_head"),
    "ibot": ("teacher_encoder", "teacher_head"),
    "mocov3": ("momentum_encoder", "momentum_projector"),
}
ONLINE_HEAD = {"dino": "head", "ibot": "head"}  # the online module the target's second part copies; else "projector"


def tiny_method(name: str, backbone: str | None = None, **hparams):
    backbone = backbone or default_backbone(name)
    return build_method(name, Encoder(backbone, TINY_KWARGS[backbone]), ViewPolicy(), **hparams)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_expected_methods_are_registered():
    expected = {
        "simclr",
        "moco",
        "byol",
        "simsiam",
        "barlow_twins",
        "vicreg",
        "mae",
        "rotation",
        "relative_patch",
        "colorization",
        "inpainting",
        "dino",
        "ibot",
        "swav",
        "nnclr",
        "mocov3",
    }
    assert expected <= set(METHODS)
    assert default_backbone("mae") == "vit_tiny"
    assert default_backbone("ibot") == "vit_tiny"
    for cls in METHODS.values():
        doc = sys.modules[cls.__module__].__doc__ or ""
        assert "Backbones:" in doc and "Kept after training" in doc, cls.__module__
        assert set(cls.backbones) <= {"resnet18_cifar", "vit_tiny", "vit_small"}
        assert isinstance(getattr(cls, "recommended", {}), dict)


@pytest.mark.parametrize(("name", "backbone"), CASES)
def test_training_step_contract(name, backbone, images):
    torch.manual_seed(0)
    method = tiny_method(name, backbone)
    assert isinstance(method.encoder, Encoder)
    out = method.training_step(images)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.embeddings.ndim == 2 and out.embeddings.shape[0] == len(images)
    assert not out.embeddings.requires_grad
    out.loss.backward()
    encoder_grads = [p.grad for p in method.encoder.parameters() if p.grad is not None]
    assert encoder_grads and any(g.abs().sum() > 0 for g in encoder_grads)
    if hasattr(method, "after_step"):  # optional: only momentum methods have one
        method.after_step(0.5)
        method.after_step(1.0)


@pytest.mark.parametrize("name", list(METHODS))
def test_pretrain_runs_each_method(name):
    # Through the real loop: channels_last, the optimiser's parameter groups, after_step.
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    history = pretrain(tiny_method(name), images, TrainSettings(epochs=1, batch_size=8), progress=False)
    assert len(history) == 1 and math.isfinite(history[0].loss)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [("moco", {"cosine_momentum": True}), ("byol", {}), ("dino", {}), ("ibot", {}), ("mocov3", {"cosine_momentum": True})],
)
def test_momentum_targets_follow_the_online_network(name, hparams, images):
    method = tiny_method(name, **hparams)
    target_encoder, target_projector = (getattr(method, a) for a in MOMENTUM[name])
    online = [*method.encoder.parameters(), *getattr(method, ONLINE_HEAD.get(name, "projector")).parameters()]
    target = [*target_encoder.parameters(), *target_projector.parameters()]
    # A copy at the start, and not trainable: the optimiser never sees it.
    assert all(torch.equal(t, o) for t, o in zip(target, online, strict=True))
    assert not any(t.requires_grad for t in target)
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert not trainable & {id(t) for t in target}

    out = method.training_step(images)
    out.loss.backward()
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5).step()

    def distance() -> float:
        return sum((t - o).pow(2).sum().item() for t, o in zip(target, online, strict=True)) ** 0.5

    before = distance()
    assert before > 0
    method.after_step(0.0)  # progress 0: momentum at its base value
    after = distance()
    base = method.tau_base if name == "byol" else method.base_momentum
    assert after == pytest.approx(base * before, rel=1e-4)  # t - o shrinks by exactly m
    method.after_step(1.0)  # the cosine schedule reaches 1: the target stops moving
    assert distance() == pytest.approx(after, rel=1e-6)


def test_moco_constant_momentum_by_default(images):
    method = tiny_method("moco")
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    gap = [(t - o).clone() for t, o in zip(method.key_encoder.parameters(), method.encoder.parameters(), strict=True)]
    method.after_step(1.0)  # no cosine: still m = 0.99 at the end of training
    for g, t, o in zip(gap, method.key_encoder.parameters(), method.encoder.parameters(), strict=True):
        assert torch.allclose(t - o, 0.99 * g, atol=1e-6)


def test_moco_queue_fills_then_wraps(images):
    method = tiny_method("moco", queue_size=20)
    assert int(method.queue_filled) == 0
    method.training_step(images)  # empty queue: in-batch negatives, then 8 keys queued
    assert (int(method.queue_filled), int(method.queue_ptr)) == (8, 8)
    method.training_step(images)
    method.training_step(images)  # 24 keys into 20 slots: full, pointer wrapped to 4
    assert (int(method.queue_filled), int(method.queue_ptr)) == (20, 4)
    assert torch.allclose(method.queue.norm(dim=1), torch.ones(20), atol=1e-5)


def test_moco_queue_larger_than_the_data(images):
    # K > dataset size: the queue just keeps filling; only filled slots are negatives.
    method = tiny_method("moco", queue_size=4096)
    for _ in range(3):
        out = method.training_step(images)
        assert torch.isfinite(out.loss)
    assert int(method.queue_filled) == 24
    assert method.queue[24:].abs().sum() == 0


def test_moco_state_dict_keeps_the_queue(images):
    method = tiny_method("moco", queue_size=32)
    method.training_step(images)
    state = method.state_dict()
    assert {"queue", "queue_ptr", "queue_filled"} <= set(state)
    clone = tiny_method("moco", queue_size=32)
    clone.load_state_dict(state)
    assert torch.equal(clone.queue, method.queue) and int(clone.queue_filled) == 8


@pytest.mark.parametrize(("name", "loss_name"), [("simsiam", "negative_cosine_similarity"), ("byol", "byol_loss")])
def test_stop_gradient_on_the_target_side(name, loss_name, images, monkeypatch):
    # The second argument of every loss call (the other view's projection, or the EMA
    # target's) must carry no gradient; the first (the prediction) must.
    module = __import__(f"ssl_models.methods.{name}", fromlist=[loss_name])
    original, calls = getattr(module, loss_name), []

    def spy(p, z):
        calls.append((p.requires_grad, z.requires_grad))
        return original(p, z)

    monkeypatch.setattr(module, loss_name, spy)
    tiny_method(name).training_step(images)
    assert calls == [(True, False), (True, False)]  # symmetrised: two directions


# --- MAE ------------------------------------------------------------------------------


def test_mae_patchify_round_trip_and_layout():
    mae = tiny_method("mae")
    x = torch.rand(2, 3, 32, 32)
    patches = mae.patchify(x)
    assert patches.shape == (2, 64, 4 * 4 * 3)
    assert torch.equal(mae.unpatchify(patches), x)
    # Patch 1 is the top row's second square; its values are (p, p, 3) row-major.
    assert torch.equal(patches[0, 1].view(4, 4, 3), x[0, :, 0:4, 4:8].permute(1, 2, 0))


def test_mae_random_masking():
    mae = tiny_method("mae")
    tokens = torch.arange(2 * 64, dtype=torch.float).view(2, 64, 1).expand(-1, -1, 3)
    kept, mask, ids_restore = mae.random_masking(tokens, 0.75)
    assert kept.shape == (2, 16, 3)
    assert mask.sum(1).tolist() == [48, 48]
    # The kept tokens are exactly the unmasked positions.
    for b in range(2):
        visible = (mask[b] == 0).nonzero().flatten()
        assert sorted(kept[b, :, 0].long().tolist()) == (visible + 64 * b).tolist()
    assert torch.equal(ids_restore.sort(1).values, torch.arange(64).expand(2, -1))


def test_mae_loss_counts_only_hidden_patches():
    mae = tiny_method("mae", norm_pix_loss=False)
    imgs, pred = torch.rand(2, 3, 32, 32), torch.rand(2, 64, 48)
    mask = torch.zeros(2, 64)
    mask[:, :10] = 1
    loss = mae.forward_loss(imgs, pred, mask)
    pred2 = pred.clone()
    pred2[:, 10:] += 5  # visible patches: no effect
    assert mae.forward_loss(imgs, pred2, mask).item() == pytest.approx(loss.item())
    expected = (pred[:, :10] - mae.patchify(imgs)[:, :10]).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mae_norm_pix_targets_are_standardised_patches():
    mae = tiny_method("mae", norm_pix_loss=True)
    imgs = torch.rand(2, 3, 32, 32)
    target = mae.patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    loss = mae.forward_loss(imgs, target, torch.ones(2, 64))
    assert loss.item() == pytest.approx(0, abs=1e-8)


def test_mae_encoder_sees_only_visible_tokens_and_still_encodes_whole_images(images):
    mae = tiny_method("mae")
    latent, _, ids_restore = mae.forward_encoder(images, 0.75)
    assert latent.shape == (8, 1 + 16, 32)
    assert mae.forward_decoder(latent, ids_restore).shape == (8, 64, 48)
    assert mae.encoder(images).shape == (8, mae.encoder.feature_dim)  # the plain encoder path


def test_mae_needs_a_vit():
    with pytest.raises(ValueError):
        build_method("mae", Encoder("resnet18_cifar", {"width": 4}), ViewPolicy())


# --- relative patch location ----------------------------------------------------------------


def test_relative_patch_cuts_the_right_grid_cells():
    method = tiny_method("relative_patch", jitter_pixels=0, patch_resolution=7)
    image = torch.arange(3 * 32 * 32, dtype=torch.float).view(1, 3, 32, 32)
    origin = torch.tensor([[2.0, 1.0]])  # x = 2, y = 1
    for label, (row, col) in enumerate(NEIGHBOURS):
        patch = method._extract(image, torch.tensor([[float(row), float(col)]]), origin)
        top, left = 1 + 11 * row, 2 + 11 * col  # pitch = 7 + 4
        assert torch.allclose(patch, image[:, :, top : top + 7, left : left + 7], atol=1e-3), label


def test_relative_patch_colour_dropping_keeps_one_channel():
    method = tiny_method("relative_patch")
    patches = torch.rand(6, 3, 16, 16)
    dropped = method._drop_colour(patches, torch.ones(6, dtype=torch.bool))
    for b in range(6):
        kept = [c for c in range(3) if torch.equal(dropped[b, c], patches[b, c])]
        assert len(kept) == 1
        others = [c for c in range(3) if c != kept[0]]
        assert dropped[b, others].std() < 0.05  # faint noise
    assert torch.equal(method._drop_colour(patches, torch.zeros(6, dtype=torch.bool)), patches)


def test_relative_patch_with_all_neighbours(images):
    method = tiny_method("relative_patch", all_neighbours=True)
    out = method.training_step(images)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.embeddings.shape == (len(images), method.encoder.feature_dim)


def test_relative_patch_rejects_a_grid_that_does_not_fit():
    with pytest.raises(ValueError):
        tiny_method("relative_patch", patch_pixels=10, gap_pixels=4)


# --- colorization -------------------------------------------------------------------------


def test_rgb_to_lab_known_values():
    # Reference values for sRGB / D65 (e.g. Bruce Lindbloom's calculator).
    colours = {
        (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
        (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
        (1.0, 0.0, 0.0): (53.24, 80.09, 67.20),
        (0.0, 1.0, 0.0): (87.73, -86.18, 83.18),
        (0.0, 0.0, 1.0): (32.30, 79.19, -107.86),
        (0.5, 0.5, 0.5): (53.39, 0.0, 0.0),
    }
    rgb = torch.tensor(list(colours)).T.reshape(1, 3, len(colours), 1)
    lab = rgb_to_lab(rgb).reshape(3, -1).T
    for got, expected in zip(lab.tolist(), colours.values(), strict=True):
        assert got == pytest.approx(expected, abs=0.02)


def test_soft_encoding_is_a_distribution_peaked_at_the_nearest_bin():
    centres = ab_bin_centres()
    assert centres.shape == (22 * 22, 2)
    ab = torch.tensor([[12.0, -31.0], [-105.0, 105.0]]).T.reshape(1, 2, 2, 1)
    target = soft_encode(ab, centres)  # (1, Q, 2, 1)
    assert torch.allclose(target.sum(1), torch.ones(1, 2, 1))
    assert (target > 0).sum(1).flatten().tolist() == [5, 5]
    nearest = target.argmax(1).flatten()
    assert centres[nearest[0]].tolist() == [15.0, -35.0]
    assert centres[nearest[1]].tolist() == [-105.0, 105.0]


def test_colorization_sees_only_grey(images, monkeypatch):
    method = tiny_method("colorization")
    seen = []
    original = method.encoder.backbone.forward_features_map
    monkeypatch.setattr(method.encoder.backbone, "forward_features_map", lambda x: seen.append(x) or original(x))
    method.training_step(images)
    rgb = seen[0] * method.encoder.std + method.encoder.mean  # undo the Encoder's normalisation
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-5) and torch.allclose(rgb[:, 0], rgb[:, 2], atol=1e-5)


# --- inpainting -------------------------------------------------------------------------------


def test_random_square_mask():
    mask = random_square_mask(10, 32, 16)
    assert mask.shape == (10, 1, 32, 32)
    assert mask.sum(dim=(1, 2, 3)).tolist() == [256.0] * 10
    rows, cols = mask.any(3).flatten(1), mask.any(2).flatten(1)  # one contiguous square
    assert rows.sum(1).tolist() == [16] * 10 and cols.sum(1).tolist() == [16] * 10


def test_rotation_step_holds_all_four_rotations(images, monkeypatch):
    method = tiny_method("rotation")
    seen = []
    original = method.encoder.forward
    monkeypatch.setattr(method.encoder, "forward", lambda x: seen.append(x) or original(x))
    method.training_step(images)
    x = seen[0]
    assert x.shape[0] == 4 * len(images)
    for r in range(4):
        assert torch.equal(torch.rot90(x[: len(images)], r, dims=(2, 3)), x[r * len(images) : (r + 1) * len(images)])


def test_momentum_helper_is_an_ema_with_a_cosine_schedule():
    from ssl_models.momentum import cosine_schedule, update_momentum

    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    update_momentum([online], [target], 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    assert cosine_schedule(0.99, 0.0) == pytest.approx(0.99) and cosine_schedule(0.99, 1.0) == pytest.approx(1.0)
    assert [m for m in METHODS if hasattr(METHODS[m], "after_step")] == ["moco", "byol", "dino", "ibot", "swav", "mocov3"]


# --- DINO and iBOT ----------------------------------------------------------------------


def with_local_crops(name: str, backbone: str, crops: int):
    views = ViewPolicy(local_crops=crops, local_size=16)
    return build_method(name, Encoder(backbone, TINY_KWARGS[backbone]), views)


def test_dino_teacher_sees_the_global_views_and_the_student_every_view(images, monkeypatch):
    method = with_local_crops("dino", "resnet18_cifar", 3)
    seen = {"student": [], "teacher": []}
    for role, encoder in (("student", method.encoder), ("teacher", method.teacher_encoder)):
        original = encoder.forward
        monkeypatch.setattr(encoder, "forward", lambda x, role=role, original=original: seen[role].append(tuple(x.shape)) or original(x))
    out = method.training_step(images)
    assert seen["teacher"] == [(16, 3, 32, 32)]  # the 2 global views, once
    assert seen["student"] == [(16, 3, 32, 32), (24, 3, 16, 16)]  # global views, then the 3 local crops
    assert out.embeddings.shape == (8, method.head.last_layer.shape[1])  # the bottleneck of the first global view


@pytest.mark.parametrize(("name", "backbone"), [("dino", "vit_tiny"), ("ibot", "vit_tiny"), ("dino", "vit_small")])
def test_local_crops_on_a_vit(name, backbone, images):
    method = with_local_crops(name, backbone, 2)
    out = method.training_step(images)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_dino_centre_follows_the_teacher_mean_and_schedules_follow_progress(images):
    method = tiny_method("dino", center_momentum=0.9, teacher_temp=0.07, warmup_teacher_temp=0.04, teacher_temp_warmup=0.5)
    assert torch.equal(method.center, torch.zeros_like(method.center))
    with torch.no_grad():
        method.training_step(images)
    assert method.center.abs().sum() > 0
    from ssl_models.losses.dino import teacher_temperature

    assert teacher_temperature(0.0, 0.04, 0.07, 0.5) == pytest.approx(0.04)
    assert teacher_temperature(0.25, 0.04, 0.07, 0.5) == pytest.approx(0.055)
    assert teacher_temperature(0.9, 0.04, 0.07, 0.5) == pytest.approx(0.07)
    assert teacher_temperature(0.0, 0.04, 0.07, 0.0) == pytest.approx(0.07)
    method.after_step(0.3)
    assert float(method.progress) == pytest.approx(0.3)
    clone = tiny_method("dino")
    clone.load_state_dict(method.state_dict())  # the centre and the progress resume with a checkpoint
    assert torch.equal(clone.center, method.center) and float(clone.progress) == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_the_last_layer_is_frozen_for_the_first_part_of_training(name, images):
    method = tiny_method(name, freeze_last_layer=0.1)
    assert method.find_unused_parameters  # DDP: the frozen layer has no gradient
    method.training_step(images).loss.backward()
    assert method.head.last_layer.grad is None
    assert any(p.grad is not None for p in method.head.mlp.parameters())
    method.zero_grad(set_to_none=True)
    method.after_step(0.1)
    method.training_step(images).loss.backward()
    assert method.head.last_layer.grad is not None and method.head.last_layer.grad.abs().sum() > 0
    assert not tiny_method(name).find_unused_parameters


def test_dino_head_prototypes_are_unit_vectors():
    from ssl_models.heads import DINOHead

    head = DINOHead(16, 32, 8, 64)
    with torch.no_grad():
        head.last_layer.mul_(7.0)  # the norm of V does not matter: the layer is weight-normalised
    logits = head(torch.randn(5, 16))
    assert logits.shape == (5, 64) and logits.abs().max() <= 1 + 1e-6
    assert torch.allclose(head.project(torch.randn(5, 16)).norm(dim=1), torch.ones(5))


def test_dino_koleo_weight_adds_the_regulariser(images):
    torch.manual_seed(0)
    plain = tiny_method("dino").training_step(images).loss
    torch.manual_seed(0)
    with_koleo = tiny_method("dino", koleo_weight=0.1).training_step(images).loss
    assert with_koleo.item() != pytest.approx(plain.item())


def test_ibot_needs_a_vit():
    with pytest.raises(ValueError, match="ViT"):
        build_method("ibot", Encoder("resnet18_cifar", {"width": 4}), ViewPolicy())


def test_ibot_masks_only_the_students_patches(images, monkeypatch):
    method = tiny_method("ibot", mask_prob=1.0, mask_ratio=(0.3, 0.3))
    calls = []
    for role, vit in (("student", method.encoder.backbone), ("teacher", method.teacher_encoder.backbone)):
        original = vit.forward_tokens
        monkeypatch.setattr(vit, "forward_tokens", lambda x, *a, role=role, original=original: calls.append((role, a)) or original(x, *a))
    out = method.training_step(images)
    (teacher_role, teacher_args), (student_role, student_args) = calls
    assert (teacher_role, teacher_args) == ("teacher", ())
    mask, token = student_args
    assert student_role == "student" and token is method.mask_token
    assert mask.shape == (16, 64) and all(16 <= hidden <= 19 for hidden in mask.sum(1).tolist())  # about 30% of 64
    out.loss.backward()
    assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0
    assert method.patch_center.abs().sum() > 0


def test_block_masks():
    from ssl_models.masking import block_mask, block_masks

    torch.manual_seed(0)
    for grid, num in ((8, 6), (8, 32), (14, 98)):
        mask = block_mask(grid, num)
        assert mask.shape == (grid, grid) and 0 < mask.sum() <= num
        assert mask.sum() >= num - 3  # rectangles fill the target all but a corner
    masks = block_masks(400, 8, ratio=(0.1, 0.5), prob=0.5)
    hidden = masks.sum(1)
    assert masks.shape == (400, 64)
    assert 0.4 < (hidden > 0).float().mean() < 0.6  # about half the images
    assert hidden[hidden > 0].min() >= 4 and hidden.max() <= 32
    # Blocks: a hidden patch mostly has a hidden neighbour (random scattering would give ~30%).
    grid = masks.view(400, 8, 8)
    right = grid[:, :, :-1] & grid[:, :, 1:]
    below = grid[:, :-1, :] & grid[:, 1:, :]
    with_neighbour = torch.zeros_like(grid)
    with_neighbour[:, :, :-1] |= right
    with_neighbour[:, :, 1:] |= right
    with_neighbour[:, :-1, :] |= below
    with_neighbour[:, 1:, :] |= below
    assert (with_neighbour & grid).sum() / grid.sum() > 0.9
    torch.manual_seed(1)
    again = block_masks(400, 8)
    torch.manual_seed(1)
    assert torch.equal(again, block_masks(400, 8))  # reproducible from torch's seed


# --- SwAV, NNCLR, MoCo v3, local crops as extra positives ----------------------------------


def test_swav_prototypes_are_frozen_first_then_learn(images):
    method = tiny_method("swav", freeze_prototypes=0.1)
    method.training_step(images).loss.backward()
    assert method.prototypes.weight.grad.abs().sum() == 0  # frozen: zero, but a gradient (DDP needs one)
    method.zero_grad()
    method.after_step(0.1)
    method.training_step(images).loss.backward()
    assert method.prototypes.weight.grad.abs().sum() > 0


def test_swav_queue_fills_from_the_start_and_joins_sinkhorn_from_queue_start(images, monkeypatch):
    import ssl_models.methods.swav as swav

    method = tiny_method("swav", queue_size=16, queue_start=0.5)
    rows = []
    monkeypatch.setattr(swav, "sinkhorn", lambda s, *a: rows.append(s.shape[0]) or torch.ones_like(s) / s.shape[1])
    method.training_step(images)
    assert int(method.queue.filled) == 8 and rows == [8, 8]  # stored, not used yet
    method.after_step(0.5)
    method.training_step(images)
    assert rows[2:] == [8 + 8, 8 + 8]  # the 8 queued rows of each global view join the batch's
    assert int(method.queue.filled) == 16 and method.queue.queue.shape == (16, 2, 128)


@pytest.mark.parametrize("name", ["swav", "simclr", "byol", "nnclr"])
def test_local_crops_are_used_when_asked(name, images, monkeypatch):
    method = tiny_method(name)
    method.views = ViewPolicy(local_crops=2, local_size=16)
    sizes = []
    original = method.encoder.forward
    monkeypatch.setattr(method.encoder, "forward", lambda x: sizes.append(tuple(x.shape)) or original(x))
    out = method.training_step(images)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.embeddings.shape[0] == len(images)
    assert sum(s[0] for s in sizes if s[-1] == 16) == 2 * len(images)  # both local crops were encoded
    assert METHODS[name].local_crops == 0  # off unless asked (SwAV: by measurement)


def test_simclr_without_local_crops_is_plain_nt_xent(images):
    from ssl_models.losses import nt_xent_loss

    method = tiny_method("simclr")
    torch.manual_seed(3)
    loss = method.training_step(images).loss
    torch.manual_seed(3)
    z = method.projector(method.encoder(torch.cat([method.views(images), method.views(images)])))
    assert torch.equal(loss, nt_xent_loss(z[:8], z[8:], method.temperature))


def test_nnclr_support_set_gives_the_neighbour(images):
    from ssl_models.losses import nearest_neighbour

    support = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    z = support[[3, 1]] + 0.01 * torch.randn(2, 4)
    assert torch.equal(nearest_neighbour(z, support), support[[3, 1]])
    method = tiny_method("nnclr", support_size=12)
    method.training_step(images)  # empty support set: each view's own embedding is its neighbour
    method.training_step(images)
    assert int(method.support.filled) == 12 and int(method.support.ptr) == 4
    assert torch.allclose(method.support.queue.norm(dim=1), torch.ones(12), atol=1e-5)


def test_mocov3_freezes_the_vit_patch_projection_and_recommends_adamw(images):
    method = tiny_method("mocov3", "vit_tiny")
    assert not any(p.requires_grad for p in method.encoder.backbone.patch_embed.parameters())
    method.training_step(images).loss.backward()
    grads = [p.grad for p in method.encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert METHODS["mocov3"].recommended["optimizer"] == "adamw"
