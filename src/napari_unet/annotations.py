"""User annotations before training: checks that they can train, and a held-out strip.

A person painting labels in napari (or exporting them from another tool) needs to
hear what is wrong before a run starts, in words that say what to paint: labels
that are all zero, scribbles with values other than 1 and 2, a validation strip
with no annotation. These checks work on numpy or dask arrays of any depth
(a stack is checked as a whole) without loading more than a reduction needs.

:func:`split_held_out_strip` holds out the last part of every plane along its longer
side (bottom or right), so that one annotated image can both train and validate a
model; the Train widget calls it for its *held-out strip* validation.
:func:`split_held_out_slab` does the same for a single training volume of a 3D model
with its last planes (a Z slab), after the volume is prepared as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_unet.errors import DataError
from napari_unet.patches import PlaneData

#: Fewest rows/columns a held-out validation strip gets (unless the plane is smaller).
MIN_STRIP = 16
#: Fewest planes a held-out Z slab of a volume gets (unless the volume is shallower).
MIN_SLAB = 4


def held_out_size(size: int, fraction: float, minimum: int = MIN_STRIP) -> int:
    """Rows, columns or planes held out of an axis of ``size``: ``fraction`` of it, at
    least ``minimum`` and at most half the axis (0 when the axis has a single one)."""
    return min(max(math.ceil(size * fraction), minimum), size // 2)


def count_planes(labels: Any) -> int:
    """Number of 2D planes in a label image or stack (product of the leading axes)."""
    return int(np.prod(np.shape(labels)[:-2], dtype=np.int64))


def is_annotated(labels: Any) -> bool:
    """Whether ``labels`` mark anything: an object, or any scribble in sparse mode."""
    return bool(np.asarray((labels > 0).any()))


def check_training_labels(name: str, labels: Any, label_mode: str) -> None:
    """Refuse labels that cannot train a model, with a message saying what to paint.

    Parameters
    ----------
    name : str
        The labels' name in the messages (a layer or file name).
    labels : array_like
        Integer or boolean labels, 2D or a stack (numpy or dask).
    label_mode : {"instance", "binary", "sparse"}
        How the values are read (see :data:`napari_unet.data.LABEL_MODES`); sparse
        scribbles must be 0 (not annotated), 1 (background) or 2 (object).

    Raises
    ------
    DataError
        If the labels are not integers, are all zero, or (sparse) hold values over 2
        or mark no object.
    """
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "iub":  # signed, unsigned integers and booleans
        raise DataError(f"Labels {name!r} hold {dtype} values; labels must be integers.")
    if not is_annotated(labels):
        raise DataError(
            f"Labels {name!r} are empty: paint some objects"
            + (" (label 2) and background (label 1)" if label_mode == "sparse" else "")
            + " first."
        )
    if label_mode == "sparse":
        top = int(np.asarray(labels.max()))
        if top > 2:
            raise DataError(
                f"Scribble labels use 1 = background and 2 = object, but {name!r} holds "
                f"labels up to {top}; pick instance mode or repaint with labels 1 and 2."
            )
        if not np.asarray((labels == 2).any()):
            raise DataError(f"Scribbles {name!r} mark no object: paint some with label 2.")


def split_held_out_strip(
    images: Sequence[Any], labels: Sequence[Any], fraction: float
) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Hold out the last ``fraction`` of every plane along its longer side.

    The strip is the bottom rows of a plane at least as tall as it is wide, else its
    right columns; it has at least :data:`MIN_STRIP` rows/columns and at most half
    the plane. Every plane of a stack is cut at the same place. Arrays are sliced,
    not copied.

    Parameters
    ----------
    images : sequence of array_like
        Images of their labels' shape, plus an optional trailing colour axis.
    labels : sequence of array_like
        ``(..., H, W)`` labels, one per image.
    fraction : float
        Share of each plane held out, in (0, 1).

    Returns
    -------
    train_images, train_labels, val_images, val_labels : list
        The parts trained on and the held-out strips, in the order given.

    Raises
    ------
    DataError
        If a plane is too small to split, or either part of the labels holds no
        annotation at all (nothing to learn from, or nothing to validate on).
    """
    train_images, train_labels, val_images, val_labels = [], [], [], []
    for image, label in zip(images, labels, strict=True):
        height, width = label.shape[-2:]
        axis = label.ndim - 2 if height >= width else label.ndim - 1
        size = label.shape[axis]
        strip = held_out_size(size, fraction)
        if strip < 1:
            raise DataError(f"An image of shape {label.shape} is too small to split.")
        cut = size - strip
        keep = [slice(None)] * image.ndim
        held = [slice(None)] * image.ndim
        keep[axis], held[axis] = slice(0, cut), slice(cut, size)
        train_images.append(image[tuple(keep)])
        val_images.append(image[tuple(held)])
        train_labels.append(label[tuple(keep[: label.ndim])])
        val_labels.append(label[tuple(held[: label.ndim])])
    for what, arrays in (("training part", train_labels), ("held-out strip", val_labels)):
        if not any(is_annotated(array) for array in arrays):
            raise DataError(
                f"The {what} of the labels (validation holds out the last "
                f"{fraction:.0%} of each image, bottom or right) has no annotation; "
                "paint some there, or validate on whole images."
            )
    return train_images, train_labels, val_images, val_labels


def split_held_out_slab(
    volume: PlaneData, fraction: float, sparse: bool
) -> tuple[PlaneData, PlaneData]:
    """Hold out the last ``fraction`` of a prepared volume's planes (a Z slab) to validate.

    The slab has at least :data:`MIN_SLAB` planes and at most half the volume; both
    parts are views of the volume (normalised, targets built, as a whole).

    Parameters
    ----------
    volume : PlaneData
        A ``(C, Z, Y, X)`` training volume.
    fraction : float
        Share of the planes held out, in (0, 1).
    sparse : bool
        Whether the labels are scribbles (annotated = any scribble, else any object).

    Returns
    -------
    train, validation : PlaneData

    Raises
    ------
    DataError
        If the volume has a single plane, or either part holds no annotation.
    """
    depth = volume.shape[0]
    slab = held_out_size(depth, fraction, MIN_SLAB)
    if slab < 1:
        raise DataError(
            f"A single volume of {depth} plane(s) has no planes to spare for validation; "
            "give validation volumes, or set val_fraction to 0 (validate on the training data)."
        )
    parts = volume.part(0, 0, depth - slab), volume.part(0, depth - slab, depth)
    for what, part in zip(("training part", "held-out Z slab"), parts, strict=True):
        counted = part.weights[0] if sparse and part.weights is not None else part.targets[0]
        if not counted.any():
            raise DataError(
                f"The {what} of the volume (validation holds out its last {slab} of {depth} "
                "planes) has no annotation; annotate some there, give validation volumes, "
                "or set val_fraction to 0."
            )
    return parts
