"""The one fine-tuning loop: images (with their augmentation) and text (AdamW, none), every recipe key honoured."""

import dataclasses
import itertools
import json

import pytest
import torch

from ssl_models.encoder import Encoder
from ssl_models.evaluation import extract_features, project_2d
from ssl_models.finetune import (
    TEXT_FINETUNE,
    FinetuneSettings,
    classifier_accuracy,
    confusion_matrix,
    finetune_accuracy,
    image_augment,
    load_classifier,
    lr_factor,
    save_classifier,
    stratified_subset,
    train_classifier,
)
from ssl_models.text import TextEncoder, text_features, text_module_from_weights

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


def _keyword_documents(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N, 12) whose class is their keyword (ids 10-13, half the pieces) among random filler (20-49), padded."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    ids = torch.randint(20, 50, (len(labels), 12), generator=g)
    keyword = torch.rand(len(labels), 12, generator=g) < 0.5
    ids[keyword] = (10 + labels)[:, None].expand(-1, 12)[keyword]
    ids[:, 0], ids[:, 8:] = 2, 0  # [CLS] ... then padding
    return ids, labels


def _text_encoder(seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(vocab_size=50, max_len=16, dim=16, depth=1)


def _trained_text_weights(**recipe) -> dict[str, torch.Tensor]:
    ids, labels = _keyword_documents(4, seed=0)
    settings = dataclasses.replace(TEXT_FINETUNE, **{"steps": 4, "batch_size": 8, **recipe})
    return train_classifier(_text_encoder(), ids, labels, 4, settings, augment=None).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


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
    images = {"features": extract_features, "augment": image_augment(settings)}
    acc, classifier = finetune_accuracy(encoder, train, test, 3, settings, **images)
    scratch_acc, _ = finetune_accuracy(encoder, train, test, 3, settings, random_init=True, **images)
    assert acc > 0.9 and scratch_acc > 0.9
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert classifier(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_confusion_matrix_counts_true_against_predicted_and_agrees_with_the_accuracy():
    train, test = _colour_images(12, seed=0), _colour_images(8, seed=1)
    settings = FinetuneSettings(steps=3, batch_size=16, lr=0.05, warmup_steps=1)
    classifier = train_classifier(_encoder(), *train, num_classes=3, settings=settings, augment=image_augment(settings))
    matrix = confusion_matrix(classifier, *test, 3, extract_features)
    predicted = extract_features(classifier, test[0]).argmax(1)
    assert matrix.shape == (3, 3) and matrix.dtype == torch.int64
    assert matrix.sum(1).tolist() == [8, 8, 8]  # each row: the test items of that true class
    assert matrix.sum(0).tolist() == torch.bincount(predicted, minlength=3).tolist()  # each column: what was predicted
    assert matrix.trace().item() / matrix.sum().item() == pytest.approx(classifier_accuracy(classifier, *test, features=extract_features))


def test_untrained_classifier_is_at_chance_and_training_is_what_helps():
    train, test = _colour_images(12, seed=0), _colour_images(8, seed=1)
    encoder = _encoder()
    settings = FinetuneSettings(steps=0, batch_size=16)
    # Zero steps: a random head on random features guesses.
    untrained = train_classifier(encoder, *train, num_classes=3, settings=settings, augment=image_augment(settings))
    assert classifier_accuracy(untrained, *test, features=extract_features) < 0.7


def test_classifier_round_trip_without_pickle(tmp_path):
    train = _colour_images(4, seed=0)
    settings = FinetuneSettings(steps=2, batch_size=8)
    classifier = train_classifier(_encoder(), *train, num_classes=3, settings=settings, augment=image_augment(settings))
    save_classifier(classifier, tmp_path / "clf", extra={"classes": ["red", "green", "blue"]})
    loaded = load_classifier(tmp_path / "clf")
    images = torch.rand(4, 3, 16, 16)
    assert torch.allclose(classifier(images), loaded(images))
    assert (tmp_path / "clf" / "config.json").read_text().count("green") == 1


def test_image_augment_gives_floats_in_the_unit_range_at_the_same_size():
    images, _ = _colour_images(2, seed=0)
    out = image_augment(FinetuneSettings(crop_scale_min=0.3, flip_p=1.0))(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1


def test_the_loop_augments_every_training_batch_and_only_through_augment():
    images, labels = _colour_images(4, seed=0)
    seen = []

    def augment(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.dtype)
        return batch.float() / 255

    train_classifier(_encoder(), images, labels, 3, FinetuneSettings(steps=3, batch_size=4), augment=augment)
    assert seen == [torch.uint8] * 3, "one call a step, on the batch as read"


def test_text_fine_tuning_and_scratch_learn_a_keyword_task_without_touching_the_encoder():
    train, test = _keyword_documents(16, seed=0), _keyword_documents(8, seed=1)
    encoder = _text_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    settings = dataclasses.replace(TEXT_FINETUNE, steps=30, batch_size=16)  # the text recipe, AdamW at 5e-4
    for random_init in (False, True):
        acc, classifier = finetune_accuracy(
            encoder, train, test, 4, settings, random_init=random_init, features=text_features, augment=None
        )
        assert acc > 0.9, (random_init, acc)
    assert _same(before, encoder.state_dict()), "fine-tuning works on a copy"
    assert classifier(test[0][:3]).shape == (3, 4)


def test_text_fine_tuning_is_deterministic_and_honours_every_recipe_key():
    """finetune.lr, weight_decay, warmup_steps and optimizer reach the text loop (the old text loop ignored them)."""
    reference = _trained_text_weights()
    assert _same(reference, _trained_text_weights()), "the same recipe gives the same weights"
    for changed in (
        {"lr": 1e-3},
        {"warmup_steps": 1},
        {"weight_decay": 0.5},
        {"optimizer": "sgd", "lr": 0.05},
        {"seed": 1},
        {"batch_size": 4},
    ):
        assert not _same(reference, _trained_text_weights(**changed)), changed


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; choose sgd or adamw"):
        _trained_text_weights(optimizer="adam")


def test_the_learning_rate_warms_up_linearly_then_decays_to_zero():
    settings = FinetuneSettings(steps=20, warmup_steps=4)
    factors = [lr_factor(settings, step) for step in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in itertools.pairwise(factors[4:])) and factors[-1] < 0.01
    assert lr_factor(FinetuneSettings(steps=20, warmup_steps=0), 0) == 1.0, "no warm-up: the full rate at once"


def test_a_text_classifier_round_trips_through_its_config(tmp_path):
    ids, labels = _keyword_documents(2, seed=0)
    classifier = train_classifier(_text_encoder(), ids, labels, 4, dataclasses.replace(TEXT_FINETUNE, steps=2), augment=None)
    save_classifier(classifier, tmp_path / "clf")
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["modality"] == "text" and config["num_classes"] == 4
    loaded = text_module_from_weights(config, torch.load(tmp_path / "clf" / "weights.pt", weights_only=True))
    torch.testing.assert_close(text_features(classifier, ids), text_features(loaded, ids))


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
