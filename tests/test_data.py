"""Tests of the training-data part of napari_unet.data: pairs, planes, targets, patches.

(Channel layout and normalisation are tested in test_data_prep.py.)
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import make_blobs
from napari_unet.config import NormalizationConfig
from napari_unet.data import (
    CONTOUR_WIDTH,
    PatchSampler,
    augment_patch,
    contact_pixels,
    crop_patch,
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


def test_small_planes_are_reflect_padded_and_padding_is_masked() -> None:
    images, labels = make_blobs(n=1, shape=(20, 12))
    (plane,) = prepare_training_planes(images, labels, 1, NormalizationConfig(), "contour")
    image, targets, weights = crop_patch(plane, 0, 0, 32)
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
