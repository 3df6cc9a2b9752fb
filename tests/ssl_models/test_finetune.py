import torch

from ssl_models.encoder import Encoder
from ssl_models.evaluation import project_2d
from ssl_models.finetune import (
    FinetuneSettings,
    classifier_accuracy,
    finetune_accuracy,
    load_classifier,
    save_classifier,
    stratified_subset,
    train_classifier,
)

COLOURS = torch.tensor([[220, 30, 30], [30, 200, 40], [40, 60, 230]], dtype=torch.float)


def _colour_images(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class is their dominant colour: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    base = COLOURS[labels].view(-1, 3, 1, 1).expand(-1, 3, 16, 16)
    images = (base + 40 * torch.randn(base.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return images, labels


def _encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder("resnet18_cifar", {"width": 4}, image_size=16)


def test_stratified_subset_takes_the_share_of_every_class():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7)
    idx = stratified_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [10, 5, 1]  # round(0.7) = 1: no class is ever left out
    assert idx.unique().numel() == len(idx) and torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, stratified_subset(labels, 0.1, seed=0))
    assert not torch.equal(idx, stratified_subset(labels, 0.1, seed=1))
    assert len(stratified_subset(labels, 1.0)) == len(labels)
    assert torch.bincount(labels[stratified_subset(labels, 0.001)]).tolist() == [1, 1, 1]


def test_stratified_subset_rejects_impossible_fractions():
    for bad in (0.0, -0.1, 1.5):
        try:
            stratified_subset(torch.tensor([0, 1]), bad)
        except ValueError as err:
            assert str(bad) in str(err)
        else:
            raise AssertionError(f"fraction {bad} was accepted")


def test_fine_tuning_and_scratch_learn_an_easy_task_without_touching_the_encoder():
    train, test = _colour_images(12, seed=0), _colour_images(8, seed=1)
    encoder = _encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    settings = FinetuneSettings(steps=25, batch_size=16, lr=0.05, warmup_steps=2)
    acc, classifier = finetune_accuracy(encoder, train, test, 3, settings)
    scratch_acc, _ = finetune_accuracy(encoder, train, test, 3, settings, random_init=True)
    assert acc > 0.9 and scratch_acc > 0.9
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert classifier(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_untrained_classifier_is_at_chance_and_training_is_what_helps():
    train, test = _colour_images(12, seed=0), _colour_images(8, seed=1)
    encoder = _encoder()
    settings = FinetuneSettings(steps=0, batch_size=16)
    # Zero steps: a random head on random features guesses.
    untrained = train_classifier(encoder, *train, num_classes=3, settings=settings)
    assert classifier_accuracy(untrained, *test) < 0.7


def test_classifier_round_trip_without_pickle(tmp_path):
    train = _colour_images(4, seed=0)
    classifier = train_classifier(_encoder(), *train, num_classes=3, settings=FinetuneSettings(steps=2, batch_size=8))
    save_classifier(classifier, tmp_path / "clf", extra={"classes": ["red", "green", "blue"]})
    loaded = load_classifier(tmp_path / "clf")
    images = torch.rand(4, 3, 16, 16)
    assert torch.allclose(classifier(images), loaded(images))
    assert (tmp_path / "clf" / "config.json").read_text().count("green") == 1


def test_tsne_picture_keeps_clusters_apart():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(20)
    points = project_2d(centres[labels] + torch.randn(60, 16, generator=g), seed=0)
    assert points.shape == (60, 2)
    # Nearest neighbours in the picture share a class: the picture does not mislead.
    distances = torch.cdist(points, points).fill_diagonal_(float("inf"))
    neighbours = distances.topk(5, largest=False).indices
    assert (labels[neighbours] == labels[:, None]).float().mean() > 0.95
    assert project_2d(torch.randn(5, 4), seed=0).shape == (5, 2)  # tiny sets: perplexity capped
