import math

import pytest
import torch

from ssl_models.augment import (
    ViewPolicy,
    color_jitter,
    gaussian_blur,
    luminance,
    random_grayscale,
    random_resized_crop,
    rotate_hue,
)


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(16, 3, 32, 32)


def test_policy_shapes_and_range(images):
    views = ViewPolicy(size=24, blur_p=0.5)(images)
    assert views.shape == (16, 3, 24, 24)
    assert views.dtype == torch.float32
    assert views.min() >= 0 and views.max() <= 1


def test_every_image_draws_its_own_parameters(images):
    one = images[:1].expand(8, -1, -1, -1).contiguous()
    views = ViewPolicy()(one)
    distinct = {tuple(v.flatten()[:64].tolist()) for v in views}
    assert len(distinct) == 8


def test_crop_of_full_area_without_flip_is_identity(images):
    out = random_resized_crop(images, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(out, images, atol=1e-5)


def test_flip_always_mirrors(images):
    out = random_resized_crop(images, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(out, images.flip(-1), atol=1e-5)


def test_crop_zooms_in(images):
    # A crop of a quarter of the area, resized back up, is smoother than the original.
    out = random_resized_crop(images, 32, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_p=0.0)
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < (images[..., 1:] - images[..., :-1]).abs().mean()


def test_jitter_with_probability_zero_is_identity(images):
    assert torch.allclose(color_jitter(images, p=0.0), images, atol=1e-5)  # identity up to float rounding


def test_jitter_changes_images_independently(images):
    out = color_jitter(images, p=1.0)
    ratios = out.mean(dim=(1, 2, 3)) / images.mean(dim=(1, 2, 3))
    assert ratios.std() > 0.01  # not one shared factor


def test_hue_rotation_by_zero_or_full_turn_is_identity(images):
    for angle in (0.0, 2 * math.pi):
        out = rotate_hue(images * 0.5 + 0.25, torch.full((16,), angle))
        assert torch.allclose(out, images * 0.5 + 0.25, atol=1e-4)


def test_hue_rotation_keeps_gray_pixels_gray():
    gray = torch.full((2, 3, 4, 4), 0.5)
    assert torch.allclose(rotate_hue(gray, torch.tensor([1.0, 2.0])), gray, atol=1e-5)


def test_grayscale_always_makes_channels_equal(images):
    out = random_grayscale(images, p=1.0)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    assert torch.allclose(out[:, :1], luminance(images))


def test_blur_keeps_constant_images_and_smooths_noise(images):
    flat = torch.full((4, 3, 32, 32), 0.3)
    assert torch.allclose(gaussian_blur(flat, sigma=(1.0, 1.0), p=1.0), flat, atol=1e-5)
    blurred = gaussian_blur(images, sigma=(1.5, 1.5), p=1.0)
    assert blurred.std() < images.std()


def test_identity_policy_reports_not_random():
    assert not ViewPolicy(crop_scale=(1.0, 1.0), flip_p=0, jitter_p=0, grayscale_p=0).is_random
    assert ViewPolicy().is_random


def test_local_views_are_small_crops_drawn_per_image_and_off_by_default():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ViewPolicy().local_views(images) == []
    policy = ViewPolicy(local_crops=3, local_size=16)
    crops = policy.local_views(images)
    assert len(crops) == 3 and all(c.shape == (4, 3, 16, 16) for c in crops)
    assert not torch.allclose(crops[0], crops[1])  # each crop draws its own parameters
    assert min(c.min() for c in crops) >= 0 and max(c.max() for c in crops) <= 1


def test_local_crop_size_follows_the_image_size():
    from ssl_models.augment import local_crop_size, recipe_for_size

    assert [local_crop_size(s) for s in (32, 64, 96, 224)] == [16, 24, 40, 96]
    assert recipe_for_size(224).local_size == 96 and recipe_for_size(32).local_size == 16
