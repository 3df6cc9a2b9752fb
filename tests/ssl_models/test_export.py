"""Exported encoders (ONNX in onnxruntime, torch.export programs) give the module's features at
any batch size: image encoders (ours, timm's) and the text encoder (token ids in)."""

import pytest
import torch

from ssl_models.encoder import Encoder
from ssl_models.export import ExportMismatch, check_onnx, check_program, export_onnx, export_program, onnx_features
from ssl_models.text import TextEncoder


def token_batch() -> torch.Tensor:
    """Three documents of 4, 10 and 20 tokens, padded to 32 ([CLS] ... [SEP], 0 = [PAD])."""
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(3, 32, dtype=torch.long)
    for row, length in enumerate((4, 10, 20)):
        ids[row, :length] = torch.randint(5, 300, (length,), generator=g)
    return ids


def test_exported_program_gives_the_same_embeddings_at_any_batch_size(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": 4}).eval()
    exported = torch.export.load(export_program(encoder, torch.rand(2, 3, 32, 32), tmp_path / "encoder.pt2")).module()
    for batch in (1, 5):
        images = torch.rand(batch, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(exported(images), encoder(images), atol=1e-5)
    assert check_program(tmp_path / "encoder.pt2", encoder, torch.rand(3, 3, 32, 32)) <= 1e-5


@pytest.fixture(scope="module")
def exported_cifar(tmp_path_factory):
    """Our CIFAR ResNet (width 4) and its ONNX file, exported at batch 2 (once: an export takes seconds)."""
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": 4}).eval()
    return encoder, export_onnx(encoder, torch.rand(2, 3, 32, 32), tmp_path_factory.mktemp("onnx") / "encoder.onnx")


def test_onnx_matches_the_image_encoder_at_other_batch_sizes(exported_cifar):
    encoder, path = exported_cifar
    assert check_onnx(path, encoder, torch.rand(5, 3, 32, 32)) <= 1e-5  # batch 5 and 1, exported at 2
    assert onnx_features(path, torch.rand(7, 3, 32, 32)).shape == (7, encoder.feature_dim)


def test_onnx_of_a_timm_encoder_matches_it(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder("timm:convnext_atto", {"image_size": 32}, 32).eval()
    path = export_onnx(encoder, torch.rand(2, 3, 32, 32), tmp_path / "encoder.onnx")
    assert check_onnx(path, encoder, torch.rand(3, 3, 32, 32)) <= 1e-5


def test_onnx_text_encoder_takes_token_ids_of_any_batch_and_length(tmp_path):
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=300, max_len=32, dim=32, depth=1).eval()
    ids = token_batch()
    path = export_onnx(encoder, ids[:2], tmp_path / "text.onnx")
    # The third document is longer than both rows it was exported with: no length baked in.
    assert check_onnx(path, encoder, ids) <= 1e-5
    assert check_onnx(path, encoder, ids[:, :24]) <= 1e-5


def test_a_mismatch_above_the_tolerance_fails(exported_cifar):
    _, path = exported_cifar
    torch.manual_seed(1)
    other = Encoder("resnet18_cifar", {"width": 4}).eval()  # other random weights
    with pytest.raises(ExportMismatch, match="onnxruntime differs"):
        check_onnx(path, other, torch.rand(2, 3, 32, 32))
