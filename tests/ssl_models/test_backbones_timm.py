"""timm models as backbones (``pretrain.backbone=timm:NAME``): pooled features, no classifier,
nothing downloaded, the image size passed to models that need one, rebuilt from config.json."""

import pytest
import torch

from ssl_models.backbones import TimmBackbone, build_backbone
from ssl_models.encoder import Encoder, load_encoder, save_encoder
from ssl_models.methods import check_image_size


@pytest.fixture(autouse=True)
def offline(hub_offline):
    """Building a backbone must never download: with the hub offline a download attempt would fail."""


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("vit_tiny_patch16_224", 192), ("efficientnet_b0", 1280)])
def test_a_timm_backbone_gives_pooled_features_at_32_px(name, dim):
    backbone = build_backbone(f"timm:{name}", width=16, image_size=32)  # width is not timm's: ignored
    assert isinstance(backbone, TimmBackbone)
    assert backbone.net.num_classes == 0  # the classifier is gone
    assert backbone.feature_dim == dim
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, dim)


def test_a_vit_is_built_at_the_image_size():
    backbone = TimmBackbone("vit_tiny_patch16_224", image_size=32)
    assert backbone.net.patch_embed.img_size == (32, 32)  # a 2x2 grid of 16 px patches, not 224 px's 14x14


def test_the_encoder_is_rebuilt_from_its_config(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder("timm:convnext_atto", {"width": 16, "image_size": 32}, 32).eval()
    loaded = load_encoder(save_encoder(encoder, tmp_path / "encoder"))
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), encoder(images))


def test_dense_tasks_get_a_cnn_map_and_a_clear_error_from_a_vit():
    assert TimmBackbone("resnet18").forward_features_map(torch.rand(2, 3, 64, 64)).shape == (2, 512, 2, 2)
    with pytest.raises(ValueError, match="gives tokens, not a spatial map"):
        TimmBackbone("vit_tiny_patch16_224", image_size=32).forward_features_map(torch.rand(2, 3, 32, 32))


def test_an_unknown_timm_model_is_named():
    with pytest.raises(ValueError, match="timm has no model 'resnet1800'"):
        build_backbone("timm:resnet1800")


def test_simclr_can_train_on_a_timm_backbone_and_mae_says_it_cannot():
    check_image_size("simclr", 32, "timm:resnet18")
    with pytest.raises(ValueError, match="MAE needs a ViT backbone"):
        check_image_size("mae", 32, "timm:resnet18")
