"""Probabilities to instance labels (napari_unet.postprocess)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from napari_unet.data import make_targets
from napari_unet.metrics import instance_metrics
from napari_unet.postprocess import label_dtype, probabilities_to_labels
from napari_unet.synthetic import nuclei_volume


def touching_discs(shape: tuple[int, int] = (64, 96)) -> np.ndarray:
    """Labels of two radius-15 discs whose centres are 26 px apart (they overlap)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    labels[(rows - 32) ** 2 + (cols - 30) ** 2 < 15**2] = 1
    labels[((rows - 32) ** 2 + (cols - 56) ** 2 < 15**2) & (labels == 0)] = 2
    return labels


def test_watershed_separates_touching_discs_that_components_merge() -> None:
    truth = touching_discs()
    foreground = (truth > 0).astype(np.float32)[None]
    assert connected_components(truth > 0).max() == 1
    assert probabilities_to_labels(foreground, separate=False).max() == 1
    separated = probabilities_to_labels(foreground, "foreground", separate=True)
    assert separated.max() == 2
    # each predicted object is essentially one of the discs
    for index in (1, 2):
        overlap = np.bincount(truth[separated == index], minlength=3)[1:]
        assert overlap.max() / overlap.sum() > 0.95


def test_contour_target_splits_along_the_predicted_boundary() -> None:
    truth = touching_discs()
    boundary = find_boundaries(truth, mode="inner").astype(np.float32)
    probabilities = np.stack([(truth > 0).astype(np.float32), boundary])
    labels = probabilities_to_labels(probabilities, "contour")
    assert labels.max() == 2
    assert (labels > 0).sum() == (truth > 0).sum()  # the watershed fills the boundary too


def test_distance_target_seeds_from_predicted_distance_maxima() -> None:
    rows, cols = np.mgrid[:64, :96]
    distance = np.zeros((64, 96), np.float32)
    for centre, peak in ((30, 1.0), (56, 0.8)):
        radius = np.sqrt((rows - 32) ** 2 + (cols - centre) ** 2)
        distance = np.maximum(distance, peak * np.clip(1 - radius / 15, 0, 1))
    probabilities = np.stack([(distance > 0).astype(np.float32), distance])
    assert probabilities_to_labels(probabilities, "distance").max() == 2
    assert probabilities_to_labels(probabilities, "distance", separate=False).max() == 1
    # The lower peak (0.8) rises about 0.65 above the saddle between the cones: a seed
    # threshold (peak height) over that leaves one seed.
    for height, objects in ((0.05, 2), (0.6, 2), (0.7, 1)):
        split = probabilities_to_labels(probabilities, "distance", seed_threshold=height)
        assert split.max() == objects, height


def hysteresis_scene() -> tuple[np.ndarray, np.ndarray]:
    """Contour probabilities of two discs joined by a neck, and a faint blob.

    Foreground probability: 0.95 in the discs, 0.75 in the neck between them, in a
    2-pixel rim around them and in the blob; boundary probability 0 everywhere (a
    model that missed the contact). Returns ``(probabilities, extent)`` with
    ``extent`` the pixels over 0.7 that belong to the discs (rims and neck).
    """
    truth = touching_discs()
    rows, cols = np.mgrid[:64, :96]
    foreground = np.where(truth > 0, 0.95, 0.0).astype(np.float32)
    foreground[(foreground > 0) & (cols >= 40) & (cols <= 46)] = 0.75
    rim = (ndimage.distance_transform_edt(truth == 0) <= 2) & (truth == 0)
    foreground[rim] = 0.75
    extent = foreground > 0.7
    foreground[50:60, 80:90] = 0.75
    return np.stack([foreground, np.zeros_like(foreground)]), extent


@pytest.mark.parametrize("target", ["contour", "distance", "foreground"])
def test_core_threshold_splits_in_the_confident_mask_and_grows_to_the_threshold(target) -> None:
    probabilities, extent = hysteresis_scene()
    plain = probabilities_to_labels(probabilities, target, threshold=0.7)
    assert plain[55, 85] > 0  # at 0.7 the faint blob is an object
    if target == "contour":
        assert plain[32, 20] == plain[32, 66]  # and the neck joins the discs' seeds
    split = probabilities_to_labels(probabilities, target, threshold=0.7, core_threshold=0.9)
    assert split.max() == 2  # the two discs; the blob has no confident pixel
    np.testing.assert_array_equal(split > 0, extent)  # grown over the rims and the neck
    left, right = split[32, 20], split[32, 66]
    assert left != right and {left, right} == {1, 2}


def test_core_threshold_at_or_under_the_threshold_changes_nothing() -> None:
    probabilities, _ = hysteresis_scene()
    plain = probabilities_to_labels(probabilities, "contour", threshold=0.7, min_size=8)
    for core_threshold in (0.0, 0.5, 0.7):
        np.testing.assert_array_equal(
            probabilities_to_labels(
                probabilities, "contour", threshold=0.7, min_size=8, core_threshold=core_threshold
            ),
            plain,
        )


def test_small_objects_removed_and_holes_filled() -> None:
    mask = np.zeros((40, 60), np.float32)
    mask[5:25, 5:25] = 1
    mask[12:16, 12:16] = 0  # a hole inside one object
    mask[30:32, 50:52] = 1  # a 4-pixel speck
    labels = probabilities_to_labels(mask[None], min_size=5, separate=False)
    assert labels.max() == 1
    assert labels[14, 14] == 1
    assert labels[31, 51] == 0
    kept = probabilities_to_labels(mask[None], min_size=0, separate=False, fill_holes=False)
    assert kept.max() == 2 and kept[14, 14] == 0


def test_a_gap_enclosed_by_two_objects_stays_background() -> None:
    labels = np.zeros((30, 30), np.float32)
    labels[5:25, 5:15] = 1
    labels[5:25, 15:25] = 1
    labels[10:20, 12:18] = 0
    contour = np.zeros_like(labels)
    contour[:, 14:16] = 1  # the two halves are separate objects
    result = probabilities_to_labels(np.stack([labels, contour]), "contour", min_size=0)
    assert result.max() == 2
    assert result[15, 15] == 0


def test_threshold_and_sequential_labels() -> None:
    probabilities = np.zeros((1, 20, 40), np.float32)
    probabilities[0, 2:8, 2:8] = 0.6
    probabilities[0, 12:18, 30:36] = 0.4
    assert probabilities_to_labels(probabilities, threshold=0.5).max() == 1
    labels = probabilities_to_labels(probabilities, threshold=0.3)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert labels.dtype == np.uint16
    assert probabilities_to_labels(probabilities[0], threshold=0.3).max() == 2  # 2D input


def test_label_dtype_widens_past_65535_objects() -> None:
    assert label_dtype(65535) == np.uint16
    assert label_dtype(65536) == np.uint32
    assert label_dtype(2**32) == np.uint64
    grid = np.zeros((1, 600, 600), np.float32)
    grid[0, ::2, ::2] = 1  # 90,000 isolated pixels
    labels = probabilities_to_labels(grid, separate=False)
    assert labels.max() == 90_000
    assert labels.dtype == np.uint32


def test_wrong_channels_for_the_target_are_refused() -> None:
    with pytest.raises(ValueError, match="needs"):
        probabilities_to_labels(np.zeros((1, 8, 8)), "contour")
    with pytest.raises(ValueError, match="unknown"):
        probabilities_to_labels(np.zeros((1, 8, 8)), "edges")


def test_contour_cores_grow_to_the_nearest_core_in_a_crowded_volume() -> None:
    # The exact targets of touching nuclei, smoothed by one voxel as a network's output
    # is: flooding the boundary probability let cores flow around their neighbours
    # through the boundary band (AP50 0.24 here); growing each core to its nearest
    # voxels keeps them apart.
    _, truth = nuclei_volume(
        (16, 96, 96), 12, layout="crowded", anisotropy=2.0, diameter=(10.0, 20.0), seed=0
    )
    targets, _ = make_targets(truth, "contour", anisotropy=2.0)
    smooth = np.stack(
        [ndimage.gaussian_filter(channel / np.float32(255), (0.5, 1, 1)) for channel in targets]
    )
    labels = probabilities_to_labels(smooth, "contour", spacing=(2.0, 1.0, 1.0))
    assert instance_metrics(truth, labels)["ap50"] >= 0.6
