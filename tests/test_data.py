"""Tests of the training-data part of napari_unet.data: pairs, planes, volumes, targets.

(Channel layout and normalisation are tested in test_data_prep.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_blobs
from napari_unet.config import NormalizationConfig
from napari_unet.data import (
    CONTOUR_WIDTH,
    contact_pixels,
    infer_in_channels,
    load_dsb,
    load_pairs_from_folders,
    make_targets,
    prepare_training_planes,
    split_planes,
)
from napari_unet.errors import DataError
from napari_unet.io import write_png


def two_touching_squares() -> np.ndarray:
    labels = np.zeros((20, 30), np.int32)
    labels[4:16, 3:13] = 1
    labels[4:16, 13:25] = 2
    return labels


def test_foreground_target() -> None:
    labels = two_touching_squares()
    targets, weights = make_targets(labels, "foreground")
    assert targets.shape == (1, 20, 30) and targets.dtype == np.uint8 and weights is None
    assert np.array_equal(targets[0] == 255, labels > 0)


def test_contour_target_marks_inner_boundaries_between_touching_objects() -> None:
    labels = two_touching_squares()
    targets, _ = make_targets(labels, "contour")
    contour = targets[1] > 0
    assert not contour[labels == 0].any()  # inner boundary only
    # CONTOUR_WIDTH pixels on each side of the line where the squares touch.
    assert contour[10, 13 - CONTOUR_WIDTH : 13 + CONTOUR_WIDTH].all()
    assert not contour[10, 13 - CONTOUR_WIDTH - 1] and not contour[10, 13 + CONTOUR_WIDTH]
    assert not contour[10, 7] and not contour[10, 19]  # object interiors
    assert contour[4, 8] and contour[5, 8] and not contour[6, 8]  # 2 px at the outer edge


def test_contact_pixels_lie_between_objects_only() -> None:
    labels = two_touching_squares()
    labels[4:16, 27:30] = 3  # 2 px of background between objects 2 and 3
    labels[0:2, 0:2] = 4  # far from every other object
    contact = contact_pixels(labels)
    # Within CONTOUR_WIDTH of both touching squares: the line where they meet.
    assert contact[10, 13 - CONTOUR_WIDTH : 13 + CONTOUR_WIDTH].all()
    assert not contact[10, 13 - CONTOUR_WIDTH - 1] and not contact[10, 13 + CONTOUR_WIDTH]
    # The background gap between objects 2 and 3 counts, the outer edges do not.
    assert contact[10, 25:27].all()
    assert not contact[labels == 4].any() and not contact[10, 7] and not contact[1, 13]
    assert not contact_pixels(np.zeros((5, 5), np.uint16)).any()
    # The largest label of the dtype is an object like any other.
    extreme = np.ones((4, 6), np.uint16)
    extreme[:, :3] = np.iinfo(np.uint16).max
    assert np.array_equal(contact_pixels(extreme)[0], [False, True, True, True, True, False])


def test_contact_weight_weights_every_channel_there_and_refuses_scribbles() -> None:
    labels = two_touching_squares()
    targets, plain = make_targets(labels, "contour")
    weighted_targets, weights = make_targets(labels, "contour", contact_weight=10)
    assert plain is None and np.array_equal(targets, weighted_targets)
    assert weights.shape == targets.shape and weights.dtype == np.uint8
    contact = contact_pixels(labels)
    assert (weights[:, contact] == 10).all() and (weights[:, ~contact] == 1).all()
    # Binary masks: objects are the connected components, which here merge into one.
    _, binary = make_targets(labels > 0, "foreground", "binary", contact_weight=10)
    assert (binary == 1).all()
    with pytest.raises(DataError, match="contact_weight"):
        make_targets(np.ones((4, 4), np.uint8), "foreground", "sparse", contact_weight=5)


def test_distance_target_peaks_once_per_object_and_separates_touching_ones() -> None:
    labels = two_touching_squares()
    targets, _ = make_targets(labels, "distance")
    distance = targets[1].astype(float) / 255
    assert distance[labels == 0].max() == 0
    for index in (1, 2):
        assert distance[labels == index].max() == pytest.approx(1.0)
    # Low where the squares touch: each object is its own hill.
    assert distance[10, 12] < 0.3 and distance[10, 13] < 0.3


def test_binary_mode_splits_connected_components() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8] = 1
    mask[12:18, 12:18] = 1
    targets, _ = make_targets(mask, "distance", "binary")
    distance = targets[1].astype(float) / 255
    assert distance[2:8, 2:8].max() == pytest.approx(1) and distance[
        12:18, 12:18
    ].max() == pytest.approx(1)


def test_sparse_targets_and_errors() -> None:
    scribbles = np.array([[0, 1, 2], [2, 0, 1]])
    targets, weights = make_targets(scribbles, "foreground", "sparse")
    assert np.array_equal(weights[0], scribbles > 0)
    assert np.array_equal(targets[0] > 0, scribbles == 2)
    with pytest.raises(DataError, match="1 = background, 2 = object"):
        make_targets(np.array([[0, 3]]), "foreground", "sparse")


def test_split_planes_handles_rgb_and_stacks() -> None:
    images, labels = make_blobs(n=2, shape=(16, 18), rgb=True)
    planes, label_planes, channels_last = split_planes(images, labels)
    assert channels_last and len(planes) == 2 and planes[0].shape == (16, 18, 3)
    stack = [np.stack(images)]  # (Z, H, W, 3)
    planes, label_planes, channels_last = split_planes(stack, [np.stack(labels)])
    assert channels_last and len(planes) == 2 and label_planes[1].shape == (16, 18)
    assert infer_in_channels(images, labels) == 3
    grey, grey_labels = make_blobs(n=1, shape=(16, 18))
    assert infer_in_channels(grey, grey_labels) == 1
    # Channels first (as napari holds multichannel images): moved last.
    two_channels = [np.stack([grey[0], grey[0] // 2])]
    planes, _, channels_last = split_planes(two_channels, grey_labels)
    assert channels_last and planes[0].shape == (16, 18, 2)
    assert np.array_equal(planes[0][..., 1], grey[0] // 2)
    assert infer_in_channels(two_channels, grey_labels) == 2


def two_touching_boxes() -> np.ndarray:
    """A (9, 12, 20) volume of two boxes touching across X = 10, planes 2 to 6."""
    labels = np.zeros((9, 12, 20), np.int32)
    labels[2:7, 2:10, 2:10] = 1
    labels[2:7, 2:10, 10:18] = 2
    return labels


def test_contour_target_in_3d_marks_boundaries_along_every_axis() -> None:
    labels = two_touching_boxes()
    contour = make_targets(labels, "contour")[0][1] > 0
    assert not contour[labels == 0].any()
    assert contour[4, 5, 10 - CONTOUR_WIDTH : 10 + CONTOUR_WIDTH].all()  # between the boxes
    assert contour[2:4, 5, 5].all() and not contour[4, 5, 5]  # top, not the middle plane
    # At anisotropy 2 the boundary is one plane thick along Z: the same physical width.
    coarse = make_targets(labels, "contour", anisotropy=2.0)[0][1] > 0
    assert coarse[2, 5, 5] and not coarse[3, 5, 5]
    assert contact_pixels(labels)[4, 5, 9] and not contact_pixels(labels)[4, 5, 5]


def test_distance_and_contact_weight_targets_in_3d() -> None:
    labels = two_touching_boxes()
    targets, weights = make_targets(labels, "distance", contact_weight=5, anisotropy=2.0)
    assert targets.shape == weights.shape == (2, 9, 12, 20)
    distance = targets[1].astype(float) / 255
    assert distance[labels == 1].max() == pytest.approx(1) and not distance[labels == 0].any()
    assert weights[0, 4, 5, 10] == 5 and weights[0, 4, 5, 4] == 1
    scribbles, scribble_weights = make_targets(np.clip(labels, 0, 2), "contour", "sparse")
    assert scribbles.shape == scribble_weights.shape == (2, 9, 12, 20)


def test_volumes_are_split_normalised_as_a_whole_and_refused_as_planes() -> None:
    labels = two_touching_boxes()
    image = (labels > 0) * 100.0 + np.arange(9)[:, None, None]
    volumes, label_volumes, channels_last = split_planes(
        [np.stack([image, image])], [np.stack([labels, labels])], ndim=3
    )  # (T, Z, Y, X): two volumes
    assert len(volumes) == 2 and volumes[0].shape == labels.shape and not channels_last
    (volume,) = prepare_training_planes(
        [image], [labels], 1, NormalizationConfig(mode="minmax"), "contour", ndim=3
    )
    assert volume.image.shape == (1, 9, 12, 20) and volume.targets.shape == (2, 9, 12, 20)
    assert volume.image.min() == 0 and volume.image.max() == 1  # one range for all planes
    rgb = np.repeat(image[..., None], 3, axis=-1)
    (colour,) = prepare_training_planes(
        [rgb], [labels], 3, NormalizationConfig(), "contour", ndim=3
    )
    assert colour.image.shape == (3, 9, 12, 20)
    with pytest.raises(DataError, match=r"2D image, not a \(Z, Y, X\) volume"):
        split_planes([image[0]], [labels[0]], ndim=3)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        ([], [], "no training images"),
        ([np.zeros((8, 8))], [], "one label image per image"),
        ([np.zeros((8, 8))], [np.zeros((8, 9), int)], "does not fit label shape"),
        ([np.zeros((8, 8, 3))], [np.zeros((8, 7), int)], "does not fit label shape"),
        ([np.zeros((8, 8))], [np.full((8, 8), 0.5)], "non-integer"),
        ([np.zeros((8, 8)), np.zeros((8, 8, 3))], [np.zeros((8, 8), int)] * 2, "channel axis"),
    ],
)
def test_split_planes_errors_name_the_fix(images, labels, message) -> None:
    with pytest.raises(DataError, match=message):
        split_planes(images, labels)


def test_all_empty_labels_are_refused() -> None:
    images, labels = make_blobs(n=2)
    with pytest.raises(DataError, match="mark no object"):
        prepare_training_planes(
            images,
            [np.zeros_like(label) for label in labels],
            1,
            NormalizationConfig(),
            "foreground",
        )
    with pytest.raises(DataError, match="annotate no pixel"):
        prepare_training_planes(
            images,
            [np.zeros_like(label) for label in labels],
            1,
            NormalizationConfig(),
            "foreground",
            "sparse",
        )


def test_folder_readers(tmp_path) -> None:
    images, labels = make_blobs(n=2, shape=(16, 16))
    for name, image, label in zip(("a", "b"), images, labels, strict=True):
        write_png(tmp_path / "split" / "images" / f"{name}.png", image)
        write_png(tmp_path / "split" / "labels" / f"{name}.png", label)
        # Kaggle layout: one mask file per object
        write_png(tmp_path / "kaggle" / name / "images" / f"{name}.png", image)
        for index in np.unique(label)[1:]:
            write_png(tmp_path / "kaggle" / name / "masks" / f"{index}.png", (label == index) * 255)
    read_images, read_labels = load_pairs_from_folders(
        tmp_path / "split" / "images", tmp_path / "split" / "labels"
    )
    assert np.array_equal(read_images[1], images[1]) and np.array_equal(read_labels[0], labels[0])
    for folder in ("split", "kaggle"):
        dsb_images, dsb_labels = load_dsb(tmp_path / folder)
        assert len(dsb_images) == 2
        assert np.array_equal(dsb_labels[0] > 0, labels[0] > 0)
    with pytest.raises(DataError):
        load_dsb(tmp_path / "nowhere")
