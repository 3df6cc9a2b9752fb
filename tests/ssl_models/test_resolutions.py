"""Real resolutions: stems, patch sizes and view recipes follow the image size; 224 px works."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from ssl_models.augment import recipe_for_size
from ssl_models.backbones import build_backbone, default_patch_size
from ssl_models.data import TensorImages
from ssl_models.encoder import Encoder
from ssl_models.evaluation import extract_features
from ssl_models.finetune import FinetuneSettings, classifier_accuracy, image_augment, train_classifier
from ssl_models.methods import build_method, check_image_size
from ssl_models.training import TrainSettings, pretrain


@pytest.mark.parametrize(
    ("name", "size", "stem"),
    [("resnet18_cifar", 32, "cifar"), ("resnet18_cifar", 96, "imagenet"), ("resnet18", 64, "cifar"), ("resnet50", 224, "imagenet")],
)
def test_the_resnet_stem_follows_the_size(name, size, stem):
    net = build_backbone(name, width=8, image_size=size)
    assert net.stem_kind == stem
    out = net.forward_features_map(torch.zeros(1, 3, size, size))
    assert out.shape[-1] == size // (8 if stem == "cifar" else 32)  # the ImageNet stem divides by 4 more


def test_the_vit_patch_follows_the_size():
    assert [default_patch_size(s) for s in (32, 64, 96, 128, 224)] == [4, 8, 8, 16, 16]
    vit = build_backbone("vit_tiny", width=4, image_size=224)
    assert vit.patch_size == 16 and vit.num_patches == 196
    with pytest.raises(ValueError, match="image size 50"):
        default_patch_size(50)


def test_the_view_recipe_turns_blur_on_at_large_sizes():
    assert recipe_for_size(32).blur_p == 0 and recipe_for_size(224).blur_p == 0.5
    views = recipe_for_size(224)(torch.rand(2, 3, 256, 256))
    assert views.shape == (2, 3, 224, 224)


def test_a_method_that_cannot_train_at_a_size_says_so():
    check_image_size("mae", 224)  # passes
    with pytest.raises(ValueError, match=r"'mae'.*50 px"):
        check_image_size("mae", 50)
    with pytest.raises(ValueError, match="32 to 512"):
        check_image_size("simclr", 16)


def test_pretrain_evaluate_and_finetune_at_224_px():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8)
    encoder = Encoder("resnet18_cifar", {"width": 8, "image_size": 224}, 224)
    method = build_method("simclr", encoder, recipe_for_size(224), hidden_dim=32, projection_dim=16)
    history = pretrain(method, TensorImages(images), TrainSettings(epochs=1, batch_size=4), progress=False)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0].loss))
    features = extract_features(encoder, TensorImages(images), batch_size=3)
    assert features.shape == (8, 64)
    labels = torch.tensor([0, 1] * 4)
    settings = FinetuneSettings(steps=2, batch_size=4)
    classifier = train_classifier(encoder, TensorImages(images), labels, 2, settings, augment=image_augment(settings))
    assert 0 <= classifier_accuracy(classifier, TensorImages(images), labels, features=partial(extract_features, batch_size=3)) <= 1


def test_a_backbone_is_described_as_built_at_its_size():
    from ssl_models.backbones import describe

    assert describe("resnet18_cifar", 224) == "resnet18_cifar, imagenet stem"  # the name is historical
    assert describe("resnet18_cifar", 32) == "resnet18_cifar, cifar stem"
    assert describe("vit_tiny", 224) == "vit_tiny, patch 16"
