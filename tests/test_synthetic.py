"""Synthetic nuclei volumes (napari_unet.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.errors import ConfigError
from napari_unet.synthetic import nuclei_volume

SMALL = (16, 64, 64)


def test_same_seed_same_volume_other_seed_other_volume() -> None:
    image, labels = nuclei_volume(SMALL, 4, seed=3)
    again_image, again_labels = nuclei_volume(SMALL, 4, seed=3)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    other_image, other_labels = nuclei_volume(SMALL, 4, seed=4)
    assert not np.array_equal(labels, other_labels)
    assert not np.array_equal(image, other_image)


@pytest.mark.parametrize("layout", ["sparse", "crowded"])
@pytest.mark.parametrize("anisotropy", [1.0, 2.0])
def test_labels_are_the_asked_number_of_single_connected_objects(
    layout: str, anisotropy: float
) -> None:
    image, labels = nuclei_volume(
        (24, 80, 80), 6, layout=layout, anisotropy=anisotropy, diameter=(10, 18), seed=1
    )
    assert image.shape == labels.shape == (24, 80, 80)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(np.unique(labels), np.arange(7))
    for index in range(1, 7):
        # 6-connectivity (faces only): the strictest reading of "one object".
        assert ndi.label(labels == index)[1] == 1
    # Whole nuclei: none touches the volume's border.
    border = np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel()])
    border = np.concatenate([border, labels[:, :, [0, -1]].ravel()])
    assert not border.any()


def z_extents(labels: np.ndarray) -> np.ndarray:
    return np.array([box[0].stop - box[0].start for box in ndi.find_objects(labels)])


def test_anisotropy_shrinks_the_z_extent_of_nuclei_in_planes() -> None:
    _, isotropic = nuclei_volume((40, 96, 96), 5, anisotropy=1.0, diameter=(14, 18), seed=2)
    _, coarse = nuclei_volume((40, 96, 96), 5, anisotropy=2.0, diameter=(14, 18), seed=2)
    # A 14-18 pixel nucleus spans about 14-18 planes at anisotropy 1 and half at 2.
    assert 12 <= z_extents(isotropic).mean() <= 20
    assert 0.4 < z_extents(coarse).mean() / z_extents(isotropic).mean() < 0.65
    # XY extents do not change.
    xy = [box[2].stop - box[2].start for box in ndi.find_objects(coarse)]
    assert 10 <= np.mean(xy) <= 22


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of labels that share a voxel face."""
    pairs = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[1:].ravel()
        b = np.moveaxis(labels, axis, 0)[:-1].ravel()
        touching = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[touching].tolist(), b[touching].tolist())}
    return pairs


def test_crowded_nuclei_touch_and_sparse_ones_do_not() -> None:
    _, crowded = nuclei_volume((20, 96, 96), 12, layout="crowded", diameter=(12, 18), seed=5)
    _, sparse = nuclei_volume((20, 96, 96), 6, layout="sparse", diameter=(12, 18), seed=5)
    assert len(touching_pairs(crowded)) >= 4
    assert not touching_pairs(sparse)
    # Sparse nuclei are apart, not just not touching: dilating by 1 voxel keeps them so.
    assert ndi.label(ndi.binary_dilation(sparse > 0))[1] == 6


def test_image_is_a_dark_background_with_bright_noisy_nuclei() -> None:
    image, labels = nuclei_volume(SMALL, 4, diameter=(12, 16), seed=6)
    assert image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0
    inside, outside = image[labels > 0], image[labels == 0]
    assert inside.mean() > 3 * outside.mean()
    # Noise: neighbouring background voxels differ, and nuclei are not flat.
    assert outside.std() > 2 and inside.std() > 10


def test_more_blur_along_z_than_in_xy() -> None:
    # A sharp edge crossed along Z rises over more voxels than one crossed along X.
    image, labels = nuclei_volume((40, 64, 64), 1, diameter=(24, 24), seed=7)
    smooth = ndi.gaussian_filter(image, 1.0)
    z, y, x = (int(round(c)) for c in ndi.center_of_mass(labels > 0))
    along_z = np.abs(np.diff(smooth[:, y, x])).max()
    along_x = np.abs(np.diff(smooth[z, y, :])).max()
    assert along_z < along_x


@pytest.mark.parametrize(
    "options",
    [
        {"layout": "grid"},
        {"anisotropy": 0.0},
        {"diameter": (20.0, 10.0)},
        {"shape": (64, 64)},
        {"n_nuclei": 500},
    ],
)
def test_bad_settings_raise_config_error(options: dict) -> None:
    arguments = {"shape": SMALL, "n_nuclei": 2, **options}
    with pytest.raises(ConfigError):
        nuclei_volume(**arguments)
