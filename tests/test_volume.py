"""3D objects from per-plane predictions (napari_unet.volume)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from napari_unet.errors import ConfigError, DataError
from napari_unet.metrics import instance_metrics
from napari_unet.synthetic import nuclei_volume
from napari_unet.volume import (
    link_planes,
    orthogonal_probabilities,
    watershed_volume,
)


def per_plane_labels(labels: np.ndarray) -> np.ndarray:
    """What a 2D model gives today: each plane's objects numbered on their own, after
    the previous plane's (unique across the stack, but a new id in every plane)."""
    planes = np.stack([connected_components(plane > 0, connectivity=1) for plane in labels])
    offsets = np.cumsum([0, *planes.reshape(len(planes), -1).max(axis=1)[:-1]])
    return np.where(planes > 0, planes + offsets[:, None, None], 0)


def plane_probabilities(labels: np.ndarray) -> np.ndarray:
    """``contour`` probabilities a perfect 2D model would give, plane by plane.

    Foreground is the objects; the boundary is each plane's inner object outline
    (2 pixels wide, as the contour target is trained), so nothing marks where
    nuclei meet along Z.
    """
    boundary = np.stack(
        [
            ndi.binary_dilation(find_boundaries(plane, mode="inner")) & (plane > 0)
            for plane in labels
        ]
    )
    return np.stack([labels > 0, boundary]).astype(np.float32)


def assert_same_objects(truth: np.ndarray, found: np.ndarray, iou: float = 0.9) -> None:
    scores = instance_metrics(truth, found, thresholds=[iou])
    assert scores["n_pred"] == scores["n_true"]
    assert scores["ap"] == [1.0]


# ------------------------------------------------------------------- link_planes
def test_linking_gives_each_nucleus_one_id_across_z() -> None:
    _, truth = nuclei_volume((24, 64, 64), 3, diameter=(14, 18), seed=1)
    planes = per_plane_labels(truth)
    assert planes.max() > 10 * 3  # each nucleus spans more than 10 planes
    linked = link_planes(planes, iou_threshold=0.1)
    np.testing.assert_array_equal(np.unique(linked), np.arange(4))  # sequential
    assert_same_objects(truth, linked, iou=0.99)
    assert linked.dtype == np.uint16
    # At Cellpose's 0.25 the small tips of the nuclei (IoU with the section next to
    # them under 0.25) start objects of their own: the weakness of linking by IoU.
    assert link_planes(planes).max() > 3


def test_linking_needs_the_iou_threshold_and_is_one_to_one() -> None:
    planes = np.zeros((3, 20, 40), np.int32)
    planes[0, 5:15, 5:15] = 1  # 100 pixels
    planes[1, 5:15, 9:19] = 7  # IoU 60/140 = 0.43 with the square before
    planes[2, 5:15, 5:10] = 2  # both halves overlap object 7's area, one of them best
    planes[2, 5:15, 12:19] = 3
    linked = link_planes(planes, iou_threshold=0.4)
    assert linked[0, 6, 6] == linked[1, 6, 12]
    # Object 7 continues into one of the pieces only (the larger IoU: 70/100), the
    # other piece starts a new object.
    assert linked[2, 6, 14] == linked[1, 6, 12]
    assert linked[2, 6, 6] not in (0, linked[1, 6, 12])
    assert linked.max() == 2
    unlinked = link_planes(planes, iou_threshold=0.5)
    assert unlinked[0, 6, 6] != unlinked[1, 6, 12]


def test_linking_survives_empty_planes_and_refuses_bad_input() -> None:
    planes = np.zeros((4, 8, 8), np.uint8)
    planes[1, 2:5, 2:5] = 4
    planes[3, 2:5, 2:5] = 4  # same place, but an empty plane between: a new object
    linked = link_planes(planes)
    assert linked.max() == 2
    with pytest.raises(DataError):
        link_planes(np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError):
        link_planes(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ConfigError):
        link_planes(planes, iou_threshold=0)


# ------------------------------------------------------------- watershed_volume
def test_3d_watershed_separates_touching_nuclei() -> None:
    _, truth = nuclei_volume((24, 72, 72), 5, layout="crowded", diameter=(16, 20), seed=3)
    assert ndi.label(truth > 0)[1] < 5  # some touch: components merge them
    labels = watershed_volume(plane_probabilities(truth), "contour", min_size=20)
    assert labels.shape == truth.shape and labels.dtype == np.uint16
    scores = instance_metrics(truth, labels)
    assert scores["n_pred"] == 5
    assert scores["ap50"] == 1.0


def test_3d_watershed_of_planes_splits_side_by_side_nuclei_but_not_stacked_ones() -> None:
    # Anisotropy 2: balls of radius 9 span 9 planes. Per-plane outlines part nuclei that
    # touch side by side; where one lies on another, no XY plane shows the contact (the
    # orthogonal views do, see below).
    z, y, x = np.mgrid[:24, :32, :56]
    side_by_side = np.zeros(z.shape, np.uint16)
    for index, (centre_z, centre_x) in enumerate([(12, 14), (12, 32), (7, 44)], start=1):
        ball = ((z - centre_z) * 2) ** 2 + (y - 16) ** 2 + (x - centre_x) ** 2 < 9.5**2
        side_by_side[ball & (side_by_side == 0)] = index
    labels = watershed_volume(plane_probabilities(side_by_side), "contour", anisotropy=2.0)
    assert instance_metrics(side_by_side, labels)["ap50"] == 1.0
    stacked = np.zeros(z.shape, np.uint16)
    stacked[((z - 7) * 2) ** 2 + (y - 16) ** 2 + (x - 28) ** 2 < 9.5**2] = 1
    stacked[(((z - 16) * 2) ** 2 + (y - 16) ** 2 + (x - 28) ** 2 < 9.5**2) & (stacked == 0)] = 2
    assert watershed_volume(plane_probabilities(stacked), "contour", anisotropy=2.0).max() == 1


def test_3d_watershed_fills_holes_in_3d_and_keeps_the_foreground_target_working() -> None:
    z, y, x = np.mgrid[:20, :32, :32]
    radius = np.sqrt((z - 10) ** 2 + (y - 16) ** 2 + (x - 16) ** 2)
    shell = ((radius < 8) & (radius >= 3)).astype(np.float32)
    labels = watershed_volume(shell[None], "foreground", separate=False)
    assert labels.max() == 1
    assert labels[10, 16, 16] == 1  # the cavity belongs to the object
    unfilled = watershed_volume(shell[None], "foreground", separate=False, fill_holes=False)
    assert unfilled[10, 16, 16] == 0
    # Two balls of radius 10 overlapping along Z (centres 14 apart) at anisotropy 2: only
    # a distance transform in physical units sees the neck between them.
    z, y, x = np.mgrid[:24, :32, :32]
    balls = np.zeros(z.shape, np.float32)
    for centre in (12, 26):
        balls[(2 * z - centre) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 < 10**2] = 1
    assert watershed_volume(balls[None], "foreground", anisotropy=2.0).max() == 2
    assert watershed_volume(balls[None], "foreground", anisotropy=1.0).max() == 1


def test_3d_watershed_refuses_a_plane_and_a_bad_anisotropy() -> None:
    with pytest.raises(DataError):
        watershed_volume(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ConfigError):
        watershed_volume(np.zeros((2, 4, 8, 8), np.float32), anisotropy=0)


# ----------------------------------------------------- orthogonal_probabilities
class LabelReader:
    """A stand-in 2D "model" with the predictor contract, for a volume whose voxels hold
    the true labels: the contour probabilities a perfect model would give, plane by plane
    (rounding the labels that resampling blends). Records the plane shapes it gets."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, planes: np.ndarray) -> np.ndarray:
        self.shapes.append(planes.shape)
        return plane_probabilities(np.rint(planes).astype(np.int32))


def test_orthogonal_views_keep_each_voxel_in_place() -> None:
    # A "model" returning its planes: every view gives the volume back, so any mix-up of
    # axes or planes shows.
    volume = np.random.default_rng(0).random((5, 7, 9)).astype(np.float32)
    same = orthogonal_probabilities(volume, lambda planes: planes[None], 1.0)
    np.testing.assert_allclose(same[0], volume, atol=1e-6)
    # Along a smooth ramp in Z, resampling to 10 planes and back is exact too.
    ramp = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], (5, 7, 9))
    stretched = orthogonal_probabilities(ramp, lambda planes: planes[None], 2.0)
    np.testing.assert_allclose(stretched[0], ramp, atol=1e-5)


@pytest.mark.parametrize("anisotropy", [1.0, 2.0])
def test_orthogonal_views_resample_for_anisotropy_and_find_the_nuclei(anisotropy: float) -> None:
    # Crowded nuclei touch in every direction, also on top of each other.
    n_planes = round(32 / anisotropy)
    _, truth = nuclei_volume(
        (n_planes, 48, 56), 3, layout="crowded", anisotropy=anisotropy, diameter=(14, 16), seed=1
    )
    volume = truth.astype(np.float32)
    model = LabelReader()
    probabilities = orthogonal_probabilities(volume, model, anisotropy)
    # XY planes as they are, XZ and YZ planes of the volume resampled to cubic voxels.
    assert model.shapes == [(n_planes, 48, 56), (48, 32, 56), (56, 32, 48)]
    assert probabilities.shape == (2, n_planes, 48, 56) and probabilities.dtype == np.float32
    # Every view sees the nuclei where they are: foreground agrees away from the edges.
    inside = ndi.binary_erosion(truth > 0, iterations=2)
    assert probabilities[0][inside].min() > 0.99
    labels = watershed_volume(probabilities, "contour", anisotropy=anisotropy, threshold=0.5)
    assert instance_metrics(truth, labels)["ap50"] == 1.0


def test_orthogonal_views_reuse_given_xy_probabilities_and_average_the_views() -> None:
    volume = np.zeros((6, 10, 12), np.float32)

    def constant(planes: np.ndarray) -> np.ndarray:
        return np.full((2, *planes.shape), 0.3, np.float32)

    xy = np.full((2, 6, 10, 12), 0.9, np.float32)
    probabilities = orthogonal_probabilities(volume, constant, 2.0, xy_probabilities=xy)
    np.testing.assert_allclose(probabilities, 0.5)  # (0.9 + 0.3 + 0.3) / 3


def test_orthogonal_views_refuse_bad_shapes() -> None:
    volume = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(DataError, match="predict_planes"):
        orthogonal_probabilities(volume, lambda planes: planes[None, :, :4])
    with pytest.raises(DataError, match="xy_probabilities"):
        orthogonal_probabilities(volume, LabelReader(), xy_probabilities=np.zeros((2, 4, 8)))
    with pytest.raises(DataError):
        orthogonal_probabilities(volume[0], LabelReader())
    with pytest.raises(ConfigError):
        orthogonal_probabilities(volume, LabelReader(), anisotropy=-1)
    with pytest.raises(ConfigError):
        orthogonal_probabilities(volume, LabelReader(), anisotropy=float("nan"))
    # A numpy scalar (e.g. from a layer's scale) is a number like any other.
    assert orthogonal_probabilities(volume, LabelReader(), np.float32(1.5)).shape == (2, 4, 8, 8)
