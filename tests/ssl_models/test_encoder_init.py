"""Given weights into an encoder (``pretrain.init``): its own state_dict, its backbone's, or a
torchvision / timm model's; a classifier's keys are left out, a missing tensor or another shape
fails with one line naming the keys."""

import pytest
import torch

from ssl_models.encoder import Encoder, InitWeightsError, load_init_weights


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_encoders_own_state_dict_loads():
    torch.manual_seed(0)
    source, target = Encoder("resnet18_cifar", {"width": 4}), Encoder("resnet18_cifar", {"width": 4})
    assert not same_weights(source, target)
    assert load_init_weights(target, source.state_dict()) == []
    assert same_weights(source, target)


def test_a_torchvision_models_file_loads_into_the_backbone_leaving_out_its_classifier():
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)  # what resnet18's downloaded file holds: fc included
    target = Encoder("resnet18", {"image_size": 224}, 224)
    assert load_init_weights(target, resnet.state_dict()) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.backbone.net.conv1.weight, resnet.conv1.weight)


def test_another_shape_names_the_keys():
    import torchvision

    target = Encoder("resnet18", {"image_size": 32}, 32)  # the CIFAR stem: a 3x3 conv1, not ImageNet's 7x7
    expected = r"^1 tensor\(s\) have another shape: backbone.net.conv1.weight \(64, 3, 7, 7\) given, \(64, 3, 3, 3\) here$"
    with pytest.raises(InitWeightsError, match=expected):
        load_init_weights(target, torchvision.models.resnet18(weights=None).state_dict())


def test_missing_tensors_are_named():
    source = Encoder("resnet18_cifar", {"width": 4}).state_dict()
    del source["backbone.stem.0.weight"]
    with pytest.raises(InitWeightsError, match=r"1 of the encoder's \d+ tensors are not in the given weights: backbone.stem.0.weight"):
        load_init_weights(Encoder("resnet18_cifar", {"width": 4}), source)
