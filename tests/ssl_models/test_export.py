"""The exported encoder (torch.export program) gives the same embeddings as the module."""

import torch

from ssl_models.encoder import Encoder, export_program


def test_exported_program_gives_the_same_embeddings_at_any_batch_size(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": 4}).eval()
    exported = torch.export.load(export_program(encoder, tmp_path / "encoder.pt2")).module()
    for batch in (1, 5):
        images = torch.rand(batch, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(exported(images), encoder(images), atol=1e-5)
