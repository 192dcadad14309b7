"""Tests of the input preparation in napari_unet.data: normalisation of laid-out planes, labels.

(Datasets, patches and targets of data.py are tested in test_data.py; the channel
layout in test_layout.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.config import NormalizationConfig
from napari_unet.data import (
    apply_intensity_range,
    checked_labels,
    intensity_range,
    normalize,
    prepare_plane,
)
from napari_unet.errors import DataError
from napari_unet.layout import to_channels_first


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


@pytest.mark.parametrize("mode", ["percentile", "minmax", "none"])
def test_a_range_computed_once_applies_to_any_region(mode: str) -> None:
    image = np.random.default_rng(0).integers(0, 4000, (3, 40, 50)).astype(np.uint16)
    config = NormalizationConfig(mode, 2.0, 98.0)
    low, high = intensity_range(image, config)
    whole = normalize(image, config)
    region = apply_intensity_range(image[:, 10:30, 5:25], low, high)
    assert region.dtype == np.float32
    np.testing.assert_array_equal(region, whole[:, 10:30, 5:25])
    assert apply_intensity_range(image, 5.0, 5.0).dtype == np.float32
    assert not apply_intensity_range(image, 5.0, 5.0).any()  # a constant range: zeros
    with pytest.raises(DataError, match="NaN"):
        intensity_range(np.array([[1.0, np.inf]]), config)


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
