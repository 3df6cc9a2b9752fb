"""``pretrain.init`` sources as local files (tasks/image/init.py): the project's own weights.pt,
a .safetensors file of a timm model (what a download gives: the offline path), with the file's
sha256; what is not a weights-only state_dict, or does not fit, fails with one line; timm weights
that cannot be downloaded say how to pass a file instead."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from ssl_models.backbones import TimmBackbone
from ssl_models.encoder import Encoder, save_encoder
from tasks.core.layout import Layout
from tasks.core.results import file_sha256
from tasks.image.init import InitError, apply_init, resolve_init


def test_the_projects_own_weights_file_is_a_source(tmp_path):
    torch.manual_seed(0)
    trained = Encoder("resnet18_cifar", {"width": 4})
    save_encoder(trained, tmp_path / "models" / "encoder")
    init = resolve_init("models/encoder/weights.pt", Layout.at(tmp_path), 32)  # relative to the root
    assert init.path == tmp_path / "models" / "encoder" / "weights.pt"
    assert init.sha256 == file_sha256(init.path)
    fresh = Encoder("resnet18_cifar", {"width": 4})
    assert apply_init(fresh, init) == []
    assert torch.equal(fresh.backbone.stem[0].weight, trained.backbone.stem[0].weight)


def test_a_timm_safetensors_file_loads_into_a_timm_encoder(tmp_path):
    torch.manual_seed(0)
    timm_model = TimmBackbone("resnet18").net  # its keys as timm's hub files have them (conv1.weight, ...)
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    init = resolve_init(str(tmp_path / "resnet18.safetensors"), Layout.at(tmp_path), 32)
    encoder = Encoder("timm:resnet18", {"image_size": 32}, 32)
    apply_init(encoder, init)
    assert torch.equal(encoder.backbone.net.conv1.weight, timm_model.conv1.weight)


def test_a_file_that_does_not_fit_fails_naming_the_keys(tmp_path):
    save_encoder(Encoder("resnet18_cifar", {"width": 8}), tmp_path / "wide")
    init = resolve_init(str(tmp_path / "wide" / "weights.pt"), Layout.at(tmp_path), 32)
    expected = r"does not fit the encoder: \d+ tensor\(s\) have another shape: backbone.stem.0.weight \(8, 3, 3, 3\)"
    with pytest.raises(InitError, match=expected):
        apply_init(Encoder("resnet18_cifar", {"width": 4}), init)


def test_a_pickled_object_is_refused_and_a_missing_file_named(tmp_path):
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"weights": object()}))
    init = resolve_init(str(tmp_path / "model.pt"), Layout.at(tmp_path), 32)
    with pytest.raises(InitError, match="is not a weights-only state_dict"):
        apply_init(Encoder("resnet18_cifar", {"width": 4}), init)
    with pytest.raises(InitError, match=r"pretrain.init=nowhere.pt: no such file"):
        resolve_init("nowhere.pt", Layout.at(tmp_path), 32)


def test_timm_weights_offline_fail_with_one_line_saying_to_pass_a_file(tmp_path, hub_offline):
    with pytest.raises(InitError, match="could not download its pretrained weights") as raised:
        resolve_init("timm:resnet18", Layout.at(tmp_path), 32)
    assert "\n" not in str(raised.value)
    assert "pretrain.init=/path/to/weights.safetensors" in str(raised.value)
