import torch

from ssl_models.encoder import Encoder, load_encoder, save_encoder
from ssl_models.evaluation import extract_features, knn_accuracy, linear_probe, raw_pixel_features

CENTRES = torch.randn(4, 20, generator=torch.Generator().manual_seed(42)) * 5


def _separable(n_per_class: int = 60, seed: int = 0):
    """Four well-separated Gaussian clusters; train and test share the centres."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(CENTRES)).repeat_interleave(n_per_class)
    x = CENTRES[y] + torch.randn(len(y), CENTRES.shape[1], generator=g)
    return x, y


def test_linear_probe_reaches_about_100_percent_on_separable_features():
    x, y = _separable()
    tx, ty = _separable(seed=1)
    result = linear_probe(x, y, tx, ty)
    assert result.accuracy > 0.98
    assert result.weight_decay in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def test_linear_probe_is_at_chance_on_random_labels():
    x, _ = _separable()
    y = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(3))
    tx, _ = _separable(seed=1)
    ty = torch.randint(0, 4, (len(tx),), generator=torch.Generator().manual_seed(4))
    assert linear_probe(x, y, tx, ty).accuracy < 0.45


def test_knn_on_clusters_and_its_weighting():
    x, y = _separable()
    tx, ty = _separable(seed=1)
    assert knn_accuracy(x, y, tx, ty, k=10) > 0.98
    # Worked by hand: neighbours with sims 1.0 (class 0) and 0.9, 0.9 (class 1), t=0.01:
    # votes e^100 vs 2e^90 -> class 0 wins despite being outnumbered.
    train = torch.tensor([[1.0, 0.0], [0.9, 0.43589], [0.9, -0.43589]])
    labels = torch.tensor([0, 1, 1])
    assert knn_accuracy(train, labels, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), k=3, temperature=0.01) == 1.0
    assert knn_accuracy(train, labels, torch.tensor([[1.0, 0.0]]), torch.tensor([1]), k=3, temperature=10.0) == 1.0


def test_encoder_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": 4}).eval()
    save_encoder(encoder, tmp_path / "enc", extra={"method": "simclr"})
    loaded = load_encoder(tmp_path / "enc")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(extract_features(encoder, images), extract_features(loaded, images))
    assert extract_features(loaded, images).shape == (5, 32)


def test_raw_pixel_baseline_is_at_most_32_px():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(raw_pixel_features(images), images.flatten(1).float() / 255)
    large = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    pooled = raw_pixel_features(large)  # area-averaged to 32 px: 3,072 features, not 150,528
    assert pooled.shape == (3, 3 * 32 * 32)
    assert torch.allclose(pooled[0, 0], large[0, 0, :7, :7].float().mean() / 255)
