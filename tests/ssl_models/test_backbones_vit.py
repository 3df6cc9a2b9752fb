"""The small ViT backbone ("vit_tiny") and the additive feature-map hook on the ResNet."""

from __future__ import annotations

import pytest
import torch

from ssl_models.backbones import ResNet18Cifar, VisionTransformer, build_backbone, sincos_position_embedding
from ssl_models.encoder import Encoder, load_encoder, save_encoder

TINY = {"dim": 32, "depth": 2, "heads": 2}


def test_vit_is_registered_and_maps_images_to_features():
    vit = build_backbone("vit_tiny", **TINY)
    assert isinstance(vit, VisionTransformer)
    assert vit(torch.rand(3, 3, 32, 32)).shape == (3, vit.feature_dim) == (3, 32)


def test_vit_takes_the_pipelines_common_kwargs():
    # The pipeline passes width and image_size to every backbone: width sets dim = 8 * width,
    # the feature size of the ResNet at the same width.
    vit = build_backbone("vit_tiny", width=4, image_size=32)
    assert vit.feature_dim == 32 == ResNet18Cifar(width=4).feature_dim
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 32)


@pytest.mark.parametrize(("image_size", "patch_size"), [(32, 4), (32, 8), (16, 2)])
def test_vit_image_and_patch_size(image_size, patch_size):
    vit = VisionTransformer(image_size=image_size, patch_size=patch_size, **TINY)
    grid = image_size // patch_size
    assert vit.num_patches == grid**2
    assert vit.pos_embed.shape == (1, 1 + grid**2, 32)
    assert vit.forward_tokens(torch.rand(2, 3, image_size, image_size)).shape == (2, 1 + grid**2, 32)
    assert vit.forward_features_map(torch.rand(2, 3, image_size, image_size)).shape == (2, 32, grid, grid)


def test_vit_rejects_sizes_that_do_not_tile():
    with pytest.raises(ValueError):
        VisionTransformer(image_size=30, patch_size=4)


def test_vit_pooling_modes():
    x = torch.rand(2, 3, 32, 32)
    vit = VisionTransformer(**TINY, pool="cls").eval()
    tokens = vit.forward_tokens(x)
    assert torch.allclose(vit(x), tokens[:, 0])
    vit.pool_mode = "mean"
    assert torch.allclose(vit(x), tokens[:, 1:].mean(1))


def test_vit_features_do_not_depend_on_the_rest_of_the_batch():
    # No BatchNorm: an image's features are the same alone or in a batch.
    vit = VisionTransformer(**TINY)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(vit(x)[:1], vit(x[:1]), atol=1e-5)


def test_sincos_position_embedding():
    pos = sincos_position_embedding(16, 4, cls_token=True)
    assert pos.shape == (17, 16)
    assert torch.all(pos[0] == 0)  # the class token gets no position
    # Every patch position is encoded differently; bounded like sin/cos.
    assert torch.cdist(pos[1:], pos[1:]).add(torch.eye(16)).min() > 0.1
    assert pos.abs().max() <= 1
    # Patch (0, 0) is all sin(0) = 0 / cos(0) = 1 in both halves.
    half = torch.cat([torch.zeros(4), torch.ones(4)])
    assert torch.allclose(pos[1], torch.cat([half, half]))


def test_vit_encoder_round_trips_through_save_and_load(tmp_path):
    encoder = Encoder("vit_tiny", {**TINY, "image_size": 32, "patch_size": 4}).eval()
    save_encoder(encoder, tmp_path)
    assert not any("pos_embed" in k for k in encoder.state_dict())  # fixed: rebuilt, not stored
    loaded = load_encoder(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(encoder(x), loaded(x), atol=1e-6)


def test_vit_trains():
    vit = VisionTransformer(**TINY)
    vit(torch.rand(2, 3, 32, 32)).sum().backward()
    # Every parameter gets a gradient; the class token too, through attention, under mean pooling.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.parameters())


def test_resnet_feature_map_pools_to_forward():
    net = ResNet18Cifar(width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    fmap = net.forward_features_map(x)
    assert fmap.shape == (2, 32, 4, 4)
    assert torch.allclose(fmap.mean(dim=(2, 3)), net(x), atol=1e-6)


# --- vit_small, timm's layout, other input sizes, masks -------------------------------------


def test_vit_small_is_vit_s_and_ignores_the_width_knob():
    vit = build_backbone("vit_small", width=16, image_size=32)
    assert (vit.feature_dim, len(vit.blocks), vit.blocks[0].attn.heads, vit.patch_size) == (384, 12, 6, 4)
    assert 21e6 < sum(p.numel() for p in vit.parameters()) < 22e6
    assert build_backbone("vit_small", image_size=224).patch_size == 16
    tiny = build_backbone("vit_small", dim=32, depth=1, heads=2)
    assert tiny(torch.rand(2, 3, 32, 32)).shape == (2, 32)


def test_timm_loads_the_state_dict_and_computes_the_same_tokens():
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer as TimmViT

    from ssl_models.backbones import timm_state_dict

    ours = VisionTransformer(image_size=32, patch_size=4, **TINY).eval()
    theirs = TimmViT(
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=0,
        global_pool="token",
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-5),
    ).eval()
    theirs.load_state_dict(timm_state_dict(ours))  # strict: every name and shape matches
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs.forward_features(x), ours.forward_tokens(x), rtol=1e-4, atol=1e-5)


def test_weights_saved_with_the_old_names_still_load():
    vit = VisionTransformer(**TINY).eval()
    new_to_old = {"patch_embed.proj.": "patch_embed.", "mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.2."}
    old_state = {}
    for key, value in vit.state_dict().items():
        for new, old in new_to_old.items():
            key = key.replace(new, old)
        old_state[key] = value
    assert "patch_embed.weight" in old_state and "blocks.0.mlp.0.weight" in old_state
    encoder_state = {f"backbone.{k}": v for k, v in old_state.items()}
    encoder = Encoder("vit_tiny", TINY)
    encoder.load_state_dict(encoder_state)  # strict
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(encoder.backbone(x), vit(x), atol=1e-6)


def test_smaller_crops_get_an_interpolated_position_embedding():
    vit = VisionTransformer(image_size=32, patch_size=4, **TINY)
    assert vit.position_embedding(8) is vit.pos_embed
    small = vit.position_embedding(4)
    assert small.shape == (1, 1 + 16, 32)
    assert torch.equal(small[:, 0], vit.pos_embed[:, 0])  # the class token's is kept
    # The corners of the 4x4 grid are near the corners of the 8x8 grid, not its first rows.
    grid = vit.pos_embed[0, 1:].view(8, 8, 32)
    small_grid = small[0, 1:].view(4, 4, 32)
    assert (small_grid[3, 3] - grid[7, 7]).norm() < (small_grid[3, 3] - grid[3, 3]).norm()
    assert vit(torch.rand(2, 3, 16, 16)).shape == (2, 32)
    assert vit.forward_features_map(torch.rand(2, 3, 16, 16)).shape == (2, 32, 4, 4)
    with pytest.raises(ValueError, match="patch size"):
        vit(torch.rand(2, 3, 18, 18))


def test_a_mask_replaces_the_hidden_patches_by_the_mask_token():
    vit = VisionTransformer(**TINY).eval()
    x = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :10] = True
    token = torch.randn(1, 1, 32)
    embedded = vit.embed_patches(x, mask, token)
    positions = vit.pos_embed[:, 1:]
    assert torch.allclose(embedded[0, :10], (token + positions)[0, :10])
    assert torch.allclose(embedded[:, 10:], vit.embed_patches(x)[:, 10:])
    assert torch.allclose(embedded[1], vit.embed_patches(x)[1])
    assert vit.forward_tokens(x, mask, token).shape == (2, 65, 32)
    with pytest.raises(ValueError):
        vit.embed_patches(x, mask)
