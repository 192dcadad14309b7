"""Tests of napari_unet.patches: cropping, augmentation and sampling of planes and volumes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import make_blobs
from napari_unet.config import NormalizationConfig
from napari_unet.data import prepare_training_planes
from napari_unet.patches import PatchSampler, augment_patch, crop_patch, flip_and_rotate
from napari_unet.synthetic import nuclei_volume


def test_small_planes_are_reflect_padded_and_padding_is_masked() -> None:
    images, labels = make_blobs(n=1, shape=(20, 12))
    (plane,) = prepare_training_planes(images, labels, 1, NormalizationConfig(), "contour")
    image, targets, weights = crop_patch(plane, (0, 0), 32)
    assert image.shape == (1, 32, 32) and targets.shape == weights.shape == (2, 32, 32)
    assert weights[:, :20, :12].all() and not weights[:, 20:].any() and not weights[:, :, 12:].any()
    assert np.array_equal(image[0, :20, :12], plane.image[0])
    assert np.array_equal(image[0, 20, :12], plane.image[0, 18])  # reflection


def test_augmentation_keeps_image_and_targets_aligned() -> None:
    rng = np.random.default_rng(0)
    target = (rng.random((1, 16, 16)) > 0.5).astype(np.float32)
    image = target.copy() * 0.8 + 0.1
    weights = np.ones_like(target)
    weights[0, 0, :3] = 0
    for _ in range(20):
        aug_image, aug_target, aug_weights = augment_patch(image, target, weights, rng)
        assert aug_image.shape == image.shape and aug_image.dtype == np.float32
        # Intensity changes are monotonic and the noise small: objects stay brighter.
        inside, outside = aug_image[aug_target > 0], aug_image[aug_target == 0]
        assert np.median(inside) > np.median(outside)
        assert aug_weights.sum() == weights.sum() and aug_target.sum() == target.sum()


def test_sampler_area_weighting_and_epoch_size() -> None:
    images = [np.zeros((64, 64), np.uint8), np.zeros((16, 16), np.uint8)]
    labels = [np.ones((64, 64), int), np.ones((16, 16), int)]
    planes = prepare_training_planes(images, labels, 1, NormalizationConfig(), "foreground")
    area = PatchSampler(planes, 16, "area", False, np.random.default_rng(0))
    assert area.probabilities == pytest.approx([64 * 64 / (64 * 64 + 256), 256 / (64 * 64 + 256)])
    assert area.patches_per_epoch() == 17
    uniform = PatchSampler(planes, 16, "image", False, np.random.default_rng(0))
    assert uniform.probabilities == pytest.approx([0.5, 0.5])
    x, t, w = uniform.batch(3)
    assert x.shape == (3, 1, 16, 16) and t.shape == w.shape == (3, 1, 16, 16)


def _blob_sampler(seed: int = 0) -> PatchSampler:
    images, labels = make_blobs(n=4, shape=(48, 48))
    planes = prepare_training_planes(images, labels, 1, NormalizationConfig(), "contour")
    return PatchSampler(planes, 32, "area", True, np.random.default_rng(seed))


def test_threaded_batches_are_the_same_for_any_thread_count() -> None:
    runs = {}
    for threads in (1, 3):
        sampler = _blob_sampler()
        runs[threads] = list(sampler.epoch_batches(4, 7, threads))
        runs[threads, "next"] = sampler.rng.integers(1 << 30)  # where the generator ends
    assert len(runs[1]) == 7
    for one, three in zip(runs[1], runs[3], strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(one, three, strict=True))
    assert runs[1, "next"] == runs[3, "next"]
    # Different batches of the epoch are different draws.
    assert not np.array_equal(runs[1][0][0], runs[1][1][0])


def test_unthreaded_batches_follow_the_sampler_stream() -> None:
    direct = _blob_sampler()
    expected = [direct.batch(4) for _ in range(3)]
    batches = list(_blob_sampler().epoch_batches(4, 3, threads=0))
    for got, want in zip(batches, expected, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_closing_the_threaded_batches_early_stops_the_threads() -> None:
    batches = _blob_sampler().epoch_batches(4, 1000, threads=2)
    first = next(batches)
    assert first[0].shape == (4, 1, 32, 32)
    batches.close()  # what training does when the user stops
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-unet-patches")]


def small_volume() -> tuple[np.ndarray, np.ndarray]:
    """A 12 x 40 x 40 synthetic nuclei volume with its labels."""
    return nuclei_volume((12, 40, 40), 3, diameter=(8, 10), seed=1)


def test_volume_patches_are_cut_and_padded_along_every_axis() -> None:
    image, labels = small_volume()
    (volume,) = prepare_training_planes(
        [image], [labels], 1, NormalizationConfig(), "contour", ndim=3
    )
    assert volume.shape == (12, 40, 40) and volume.size == 12 * 40 * 40
    patch, targets, weights = crop_patch(volume, (4, 30, 0), (16, 16, 16))
    assert patch.shape == (1, 16, 16, 16) and targets.shape == weights.shape == (2, 16, 16, 16)
    # 8 planes and 10 rows of the volume; the rest is padding, out of the loss.
    assert weights[:, :8, :10].all() and not weights[:, 8:].any() and not weights[:, :, 10:].any()
    assert np.array_equal(patch[0, :8, :10], volume.image[0, 4:, 30:, :16])


def test_volume_augmentation_flips_z_and_keeps_every_array_aligned() -> None:
    rng = np.random.default_rng(0)
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], (6, 8, 8))
    arrays = (ramp[None].copy(), ramp[None].copy(), ramp[None].copy() + 1)
    z_orders = set()
    for _ in range(20):
        image, targets, weights = flip_and_rotate(arrays, rng)
        assert image.shape == (1, 6, 8, 8)
        assert np.array_equal(image, targets) and np.array_equal(weights, image + 1)
        z_orders.add(float(image[0, 0, 0, 0]))  # Z is never mixed with X or Y
        assert (image[0] == image[0, :, :1, :1]).all()
    assert z_orders == {0.0, 5.0}  # both Z orders occur
    image, targets, weights = augment_patch(*arrays, rng)
    assert image.dtype == np.float32 and not np.array_equal(image, targets)  # intensity


def test_volume_sampler_draws_batches_of_the_patch_shape() -> None:
    image, labels = small_volume()
    volumes = prepare_training_planes(
        [image, image[:6]], [labels, labels[:6]], 1, NormalizationConfig(), "contour", ndim=3
    )
    sampler = PatchSampler(volumes, (8, 16, 16), "area", True, np.random.default_rng(0))
    assert sampler.probabilities == pytest.approx([2 / 3, 1 / 3])
    assert sampler.patches_per_epoch() == int(np.ceil(18 * 40 * 40 / (8 * 16 * 16)))
    x, t, w = sampler.batch(3)
    assert x.shape == (3, 1, 8, 16, 16) and t.shape == w.shape == (3, 2, 8, 16, 16)
    cube = PatchSampler(volumes, 16, "image", False, np.random.default_rng(0))
    assert cube.patch_shape == (16, 16, 16)
