"""Checks of user annotations and the held-out strip split (napari_unet.annotations)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_unet.annotations import (
    MIN_SLAB,
    MIN_STRIP,
    check_training_labels,
    count_planes,
    is_annotated,
    split_held_out_slab,
    split_held_out_strip,
)
from napari_unet.errors import DataError
from napari_unet.patches import PlaneData


def test_labels_that_cannot_train_are_refused_with_what_to_paint() -> None:
    labels = np.zeros((20, 20), np.uint16)
    with pytest.raises(DataError, match="empty: paint some objects first"):
        check_training_labels("cells", labels, "instance")
    with pytest.raises(DataError, match=r"\(label 2\) and background \(label 1\)"):
        check_training_labels("cells", labels, "sparse")
    with pytest.raises(DataError, match="float32 values; labels must be integers"):
        check_training_labels("cells", labels.astype(np.float32), "instance")
    labels[2:5, 2:5] = 7
    check_training_labels("cells", labels, "instance")
    check_training_labels("cells", labels > 0, "binary")  # booleans are masks
    with pytest.raises(DataError, match="labels up to 7; pick instance mode"):
        check_training_labels("cells", labels, "sparse")
    scribbles = np.where(labels > 0, 1, 0).astype(np.uint8)
    with pytest.raises(DataError, match="mark no object: paint some with label 2"):
        check_training_labels("scribbles", scribbles, "sparse")
    scribbles[10, 10] = 2
    check_training_labels("scribbles", scribbles, "sparse")


def test_checks_work_on_lazy_stacks() -> None:
    stack = np.zeros((3, 16, 16), np.uint8)
    stack[2, 4, 4] = 2
    lazy = da.from_array(stack, chunks=(1, 16, 16))
    assert is_annotated(lazy) and count_planes(lazy) == 3 and count_planes(stack[0]) == 1
    check_training_labels("stack", lazy, "sparse")
    with pytest.raises(DataError, match="empty"):
        check_training_labels("stack", lazy[:2], "instance")


def test_the_strip_is_the_bottom_of_a_tall_plane_and_the_right_of_a_wide_one() -> None:
    tall_image = np.arange(200 * 50).reshape(200, 50)
    tall_labels = np.ones((200, 50), np.uint16)
    wide_image = np.zeros((40, 100, 3), np.uint8)  # RGB: the colour axis is not cut
    wide_labels = np.ones((40, 100), np.uint16)
    train_images, train_labels, val_images, val_labels = split_held_out_strip(
        [tall_image, wide_image], [tall_labels, wide_labels], 0.1
    )
    assert train_images[0].shape == (180, 50) and val_images[0].shape == (20, 50)
    np.testing.assert_array_equal(val_images[0], tall_image[180:])
    assert train_labels[0].shape == (180, 50) and val_labels[0].shape == (20, 50)
    # 10% of 100 columns is under the minimum strip width
    assert val_images[1].shape == (40, MIN_STRIP, 3) and val_labels[1].shape == (40, MIN_STRIP)
    assert train_images[1].shape == (40, 100 - MIN_STRIP, 3)
    # a plane smaller than twice the minimum gives half of itself
    small = split_held_out_strip([np.zeros((20, 10))], [np.ones((20, 10), np.uint8)], 0.1)
    assert small[2][0].shape == (10, 10)


def test_every_plane_of_a_stack_is_cut_at_the_same_place() -> None:
    labels = np.ones((4, 64, 32), np.uint16)
    images = np.zeros((4, 64, 32), np.float32)
    train_images, _, val_images, val_labels = split_held_out_strip([images], [labels], 0.25)
    assert train_images[0].shape == (4, 48, 32) and val_images[0].shape == (4, 16, 32)
    assert val_labels[0].shape == (4, 16, 32)


def test_a_part_without_annotation_is_refused() -> None:
    labels = np.zeros((100, 40), np.uint16)
    labels[:10] = 1  # only the top, which is trained on
    with pytest.raises(DataError, match="held-out strip of the labels .* has no annotation"):
        split_held_out_strip([np.zeros((100, 40))], [labels], 0.2)
    with pytest.raises(DataError, match="training part"):
        split_held_out_strip([np.zeros((100, 40))], [labels[::-1]], 0.2)
    with pytest.raises(DataError, match="too small to split"):
        split_held_out_strip([np.zeros((1, 1))], [np.ones((1, 1), np.uint8)], 0.2)


def volume_of(labels: np.ndarray) -> PlaneData:
    """A prepared-like volume whose foreground target is ``labels > 0``."""
    targets = ((labels > 0) * 255).astype(np.uint8)[None]
    return PlaneData(labels[None].astype(np.float32), targets, None)


def test_a_volume_holds_out_its_last_planes() -> None:
    labels = np.zeros((20, 8, 8), np.uint16)
    labels[:, 2:5, 2:5] = 1
    train, held = split_held_out_slab(volume_of(labels), 0.1, sparse=False)
    assert held.shape == (MIN_SLAB, 8, 8) and train.shape == (20 - MIN_SLAB, 8, 8)
    train, held = split_held_out_slab(volume_of(labels[:6]), 0.1, sparse=False)
    assert held.shape[0] == 3  # at most half
    with pytest.raises(DataError, match="1 plane\\(s\\) has no planes to spare"):
        split_held_out_slab(volume_of(labels[:1]), 0.1, sparse=False)
    labels[-MIN_SLAB:] = 0
    with pytest.raises(DataError, match="held-out Z slab of the volume .* has no annotation"):
        split_held_out_slab(volume_of(labels), 0.1, sparse=False)
    # Scribbles count where they are painted (weights), object or background.
    scribbles = volume_of(labels)
    scribbles.weights = np.ones_like(scribbles.targets)
    assert split_held_out_slab(scribbles, 0.1, sparse=True)[1].shape[0] == MIN_SLAB
