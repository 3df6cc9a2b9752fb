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
