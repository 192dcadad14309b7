"""Tests of the input preparation in napari_unet.data: channel layout, normalisation, labels.

(Datasets, patches and targets of data.py are tested in test_data.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.config import NormalizationConfig
from napari_unet.data import checked_labels, normalize, prepare_plane, to_channels_first
from napari_unet.errors import DataError


def test_grey_plane_to_one_channel() -> None:
    plane = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out = to_channels_first(plane, 1)
    assert out.shape == (1, 3, 4) and out.dtype == np.float32
    assert np.array_equal(out[0], plane)
    assert out.flags.c_contiguous


def test_grey_plane_is_repeated_for_an_rgb_model() -> None:
    plane = np.random.default_rng(0).random((5, 6))
    out = to_channels_first(plane, 3)
    assert out.shape == (3, 5, 6)
    assert all(np.array_equal(out[c], plane.astype(np.float32)) for c in range(3))


def test_rgb_plane_channels_last_to_first() -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    out = to_channels_first(rgb, 3)
    assert out.shape == (3, 4, 5)
    assert np.array_equal(out, np.moveaxis(rgb, -1, 0).astype(np.float32))


def test_rgba_alpha_is_dropped() -> None:
    rgba = np.random.default_rng(2).integers(0, 255, (4, 5, 4), dtype=np.uint8)
    out = to_channels_first(rgba, 3)
    assert np.array_equal(out, np.moveaxis(rgba[..., :3], -1, 0).astype(np.float32))


def test_rgb_plane_is_averaged_for_a_grey_model() -> None:
    rgb = np.random.default_rng(3).integers(0, 255, (4, 5, 4), dtype=np.uint8)
    out = to_channels_first(rgb, 1)
    assert out.shape == (1, 4, 5)
    assert np.allclose(out[0], rgb[..., :3].astype(np.float32).mean(axis=-1))


def test_explicit_channel_axis() -> None:
    chw = np.random.default_rng(4).random((2, 7, 8)).astype(np.float32)
    assert np.array_equal(to_channels_first(chw, 2, channel_axis=0), chw)
    hwc = np.moveaxis(chw, 0, -1)
    assert np.array_equal(to_channels_first(hwc, 2, channel_axis=-1), chw)
    assert np.array_equal(to_channels_first(hwc, 2, channel_axis=2), chw)
    # four real channels on a non-last axis are not mistaken for RGBA
    four = np.random.default_rng(5).random((4, 3, 3))
    assert to_channels_first(four, 4, channel_axis=0).shape == (4, 3, 3)


@pytest.mark.parametrize(
    ("shape", "in_channels", "channel_axis", "message"),
    [
        ((5, 6, 2), 2, None, "cannot tell the channel axis.*give channel_axis"),
        ((2, 3, 4, 5), 1, None, "expected a 2D plane"),
        ((5,), 1, None, "expected a 2D plane"),
        ((2, 5, 6), 3, 0, "has 2 channel.*model takes 3"),
        ((5, 6, 3), 2, None, "has 3 channel.*model takes 2"),
    ],
)
def test_channel_errors(
    shape: tuple[int, ...], in_channels: int, channel_axis: int | None, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        to_channels_first(np.zeros(shape), in_channels, channel_axis)


def test_percentile_normalisation() -> None:
    image = np.linspace(0, 1000, 9_999, dtype=np.float64).reshape(101, 99)
    out = normalize(image, NormalizationConfig("percentile", 1.0, 99.0))
    assert out.dtype == np.float32 and out.shape == image.shape
    low, high = np.percentile(image.astype(np.float32), [1.0, 99.0])
    assert np.allclose(out, (image - low) / (high - low), atol=1e-5)
    # outliers beyond the percentiles are not clipped: only rescaled
    assert out.min() < 0 and out.max() > 1


def test_minmax_and_none_normalisation() -> None:
    image = np.array([[10, 20], [30, 50]], np.uint16)
    assert np.allclose(normalize(image, NormalizationConfig("minmax")), [[0, 0.25], [0.5, 1]])
    raw = normalize(image, NormalizationConfig("none"))
    assert raw.dtype == np.float32 and np.array_equal(raw, image)


@pytest.mark.parametrize("mode", ["percentile", "minmax"])
def test_constant_image_maps_to_zeros(mode: str) -> None:
    out = normalize(np.full((4, 4, 3), 7, np.uint8), NormalizationConfig(mode))
    assert out.dtype == np.float32 and not out.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mode", ["percentile", "minmax", "none"])
def test_non_finite_values_raise_data_error(bad: float, mode: str) -> None:
    image = np.ones((3, 3), np.float32)
    image[1, 1] = bad
    with pytest.raises(DataError, match="NaN or infinite.*nan_to_num"):
        normalize(image, NormalizationConfig(mode))


def test_normalisation_uses_all_channels_together() -> None:
    image = np.stack([np.zeros((4, 4)), np.full((4, 4), 10.0)])
    out = normalize(image, NormalizationConfig("minmax"))
    # a per-channel scaling would map both channels to zeros
    assert np.allclose(out[0], 0) and np.allclose(out[1], 1)


def test_prepare_plane_is_layout_then_normalisation() -> None:
    rgb = np.random.default_rng(6).integers(0, 4096, (9, 7, 3)).astype(np.uint16)
    config = NormalizationConfig("percentile", 2.0, 98.0)
    out = prepare_plane(rgb, 3, config)
    assert out.shape == (3, 9, 7) and out.dtype == np.float32
    assert np.array_equal(out, normalize(to_channels_first(rgb, 3), config))
    grey = prepare_plane(rgb, 1, NormalizationConfig("minmax"))
    assert grey.shape == (1, 9, 7) and grey.min() == 0 and grey.max() == 1


@pytest.mark.parametrize(
    "labels",
    [
        np.array([[0, 1], [2, 3]], np.uint16),
        np.array([[0, 1], [2, 3]], np.int32),
        np.array([[0.0, 1.0], [2.0, 3.0]], np.float32),  # whole floats, as some TIFFs hold
        np.array([[False, True], [True, False]]),
    ],
)
def test_checked_labels_accepts_whole_non_negative_numbers(labels: np.ndarray) -> None:
    out = checked_labels(labels, "pair 0")
    assert out.dtype == np.int64 and np.array_equal(out, labels.astype(np.int64))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([[0, -1], [2, 3]], np.int16), "pair 4: labels hold negative values"),
        (np.array([[0.0, -2.0]], np.float64), "pair 4: labels hold negative values"),
        (np.array([[0.0, 1.5]], np.float32), "pair 4: labels hold non-integer values"),
        (np.array([[0.0, np.nan]], np.float32), "pair 4: labels hold non-integer values"),
        (np.array([[0.0, np.inf]], np.float32), "pair 4: labels hold non-integer values"),
        (np.array([[0, 1j]]), "pair 4: labels of type complex128 are not numbers"),
        (np.array([["a", "b"]]), "pair 4: labels of type <U1 are not numbers"),
    ],
)
def test_checked_labels_refuses_other_values(labels: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        checked_labels(labels, "pair 4")
