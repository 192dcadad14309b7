"""Stain, colour and scale augmentation and modality-balanced sampling, on real DSB images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import io
from napari_unet.colour_augment import (
    ModalitySampler,
    hed_jitter,
    invert,
    is_colour,
    modality_augment,
    rescale_patch,
    to_grey,
)
from napari_unet.config import ModelConfig, NormalizationConfig, TrainConfig
from napari_unet.data import prepare_training_planes
from napari_unet.modality import classify_modality
from napari_unet.patches import PatchSampler, crop_patch
from napari_unet.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    found = io.find_pairs(io.SAMPLES_DIR / "images", io.SAMPLES_DIR / "labels")
    return [io.read_image(i) for i, _ in found], [io.read_image(lab) for _, lab in found]


@pytest.fixture(scope="module")
def planes(pairs):
    images, labels = pairs
    return prepare_training_planes(images, labels, 3, NormalizationConfig(), "contour")


@pytest.fixture(scope="module")
def modalities(pairs) -> list[str]:
    return [classify_modality(image) for image in pairs[0]]


def he_patch(planes, modalities, size: int = 96):
    return crop_patch(planes[modalities.index("H&E")], (0, 0), size)


def test_colour_changes_keep_shape_range_and_what_is_an_object(planes, modalities) -> None:
    image, _, _ = he_patch(planes, modalities)
    assert is_colour(image)
    jittered = hed_jitter(image, np.random.default_rng(0))
    assert jittered.shape == image.shape and jittered.dtype == np.float32
    assert jittered.min() >= 0.0 and jittered.max() <= 1.0
    assert not np.allclose(jittered, np.clip(image, 0, 1), atol=1e-3)  # the stain moved
    # Nuclei stay where they were: the jittered haematoxylin-dark pixels follow the original.
    darkness, jittered_darkness = 1 - image.mean(axis=0), 1 - jittered.mean(axis=0)
    assert np.corrcoef(darkness.ravel(), jittered_darkness.ravel())[0, 1] > 0.9
    grey = to_grey(image)
    assert not is_colour(grey) and grey.shape == image.shape
    np.testing.assert_allclose(grey[0], image.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(invert(invert(grey)), grey, atol=1e-6)
    fluorescence = crop_patch(planes[modalities.index("fluorescence")], (0, 0), 96)[0]
    assert not is_colour(fluorescence)
    # Fluorescence (light on black) becomes brightfield-like (dark on light).
    assert fluorescence.mean() < 0.5 < invert(fluorescence).mean()


@pytest.mark.parametrize("zoom", [0.75, 1.0, 1.33])
def test_rescale_keeps_targets_and_weights_aligned_with_the_image(planes, zoom) -> None:
    _, targets, weights = crop_patch(planes[0], (0, 0), 128)
    # The foreground target as the image: after the zoom, image and target must agree.
    image = np.repeat(targets[:1], 3, axis=0)
    out_image, out_targets, out_weights = rescale_patch(
        (image, targets, weights), zoom, np.random.default_rng(1)
    )
    assert out_image.shape == (3, 128, 128) and out_targets.shape == targets.shape
    assert out_weights.shape == weights.shape
    assert set(np.unique(out_targets)) <= {0.0, 1.0}  # nearest neighbour: still binary
    assert set(np.unique(out_weights)) <= {0.0, 1.0}
    counted = out_weights[0] > 0
    agree = (out_image[0] > 0.5) == (out_targets[0] > 0.5)
    assert agree[counted].mean() > 0.98
    if zoom < 1:  # shrunk and padded: the padding is out of the loss
        assert not out_weights[:, -10:, -10:].any()
    area = (targets[0] > 0.5).mean()
    if zoom > 1:
        assert (out_targets[0] > 0.5).mean() == pytest.approx(area, abs=0.15)


def test_random_augmentation_keeps_shapes_alignment_and_range(planes, modalities) -> None:
    rng = np.random.default_rng(2)
    for _ in range(12):
        image, targets, weights = he_patch(planes, modalities, 64)
        out = modality_augment((image, targets, weights), rng)
        assert [part.shape for part in out] == [image.shape, targets.shape, weights.shape]
        assert all(part.dtype == np.float32 for part in out)
        assert set(np.unique(out[1])) <= {0.0, 1.0}
        # Within the normalised image's range or its inversion's (jitter clips to 0..1).
        low, high = min(image.min(), 1 - image.max(), 0), max(image.max(), 1 - image.min(), 1)
        assert (
            np.isfinite(out[0]).all() and low - 1e-5 <= out[0].min() <= out[0].max() <= high + 1e-5
        )


def test_modality_sampling_draws_the_one_he_image_half_the_time(planes, modalities) -> None:
    balanced = ModalitySampler(planes, 64, False, np.random.default_rng(3), modalities)
    assert isinstance(balanced, PatchSampler)
    he = modalities.index("H&E")
    assert balanced.probabilities[he] == pytest.approx(0.5)
    draws = np.random.default_rng(4).choice(len(planes), 2000, p=balanced.probabilities)
    assert np.mean(draws == he) == pytest.approx(0.5, abs=0.05)
    plain = ModalitySampler(planes, 64, True, np.random.default_rng(3))
    assert plain.probabilities[he] == pytest.approx(0.25)
    image, targets, weights = plain.sample()
    assert image.shape == (3, 64, 64) and targets.shape == weights.shape == (2, 64, 64)


def test_without_modalities_planes_are_drawn_as_sampling_says(planes) -> None:
    sizes = np.array([plane.size for plane in planes], dtype=np.float64)
    by_area = ModalitySampler(planes, 64, True, np.random.default_rng(3), sampling="area")
    np.testing.assert_allclose(by_area.probabilities, sizes / sizes.sum())
    by_image = ModalitySampler(planes, 64, True, np.random.default_rng(3), sampling="image")
    np.testing.assert_allclose(by_image.probabilities, 1 / len(planes))


def test_training_with_modality_sampling_and_augmentation_runs(pairs) -> None:
    config = TrainConfig(
        model=ModelConfig.from_preset("tiny", target="contour"),
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
        patch_size=32,
        sampling="modality",
        colour_augment=True,
        scale_augment=True,
        device="cpu",
        val_fraction=0.25,
    )
    result = train(*pairs, config=config)
    saved = result.model.metadata["train_config"]
    assert (saved["sampling"], saved["colour_augment"], saved["scale_augment"]) == (
        "modality",
        True,
        True,
    )
    assert np.isfinite(result.best_val_loss)
