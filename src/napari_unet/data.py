"""Turning images into network input: intensity normalisation, training data.

These functions are shared by training and prediction so that a model sees its
inputs prepared identically in both. Which axis is channel, stack or plane is
:mod:`napari_unet.layout`'s decision; :func:`prepare_plane` is that layout's
``(C, H, W)`` float32 network input of one plane, normalised, and
:func:`prepare_volume` the ``(C, Z, Y, X)`` input of a 3D model, normalised as a whole.

The second part serves training: reading image/label folders (:func:`load_pairs_from_folders`,
:func:`load_dsb`), splitting stacks into planes or volumes (:func:`split_planes`) and
building their targets (:func:`make_targets`, in 2D and 3D). Patches and augmentation
are :mod:`napari_unet.patches`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.config import (
    SPARSE_CONTACT_WEIGHT_ERROR,
    TARGET_CHANNELS,
    ModelConfig,
    NormalizationConfig,
    TrainConfig,
)
from napari_unet.errors import DataError
from napari_unet.io import SAMPLES_DIR, find_dsb_samples, find_pairs, read_dsb_sample, read_image
from napari_unet.layout import layout_for_labels, match_channels, to_channels_first
from napari_unet.modality import classify_modality
from napari_unet.patches import PlaneData


def intensity_range(image: np.ndarray, config: NormalizationConfig) -> tuple[float, float]:
    """``(low, high)``: the intensities that ``config`` maps to 0 and 1 in ``image``.

    All channels together: ``percentile`` gives the ``config.low``/``config.high``
    percentiles, ``minmax`` the extremes, ``none`` (and an empty image) ``(0, 1)``,
    which leaves the values as they are. Block-wise prediction computes the range on a
    whole (or subsampled) plane and applies it to each block with
    :func:`apply_intensity_range`, so a block sees the values the plane would.

    Raises
    ------
    DataError
        If the image holds NaN or infinite values.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise DataError(
            "the image holds NaN or infinite values; replace them (e.g. numpy.nan_to_num) first."
        )
    if config.mode == "none" or image.size == 0:
        return 0.0, 1.0
    if config.mode == "percentile":
        low, high = np.percentile(image, [config.low, config.high])
    else:
        low, high = image.min(), image.max()
    return float(low), float(high)


def apply_intensity_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(image - low) / (high - low)`` as float32; zeros when ``high <= low`` (constant)."""
    image = np.asarray(image, dtype=np.float32)
    scale = high - low
    if scale <= 0:
        return np.zeros_like(image)
    return (image - np.float32(low)) / np.float32(scale)


def normalize(image: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    """Scale intensities of one image (all channels together) as ``config`` says.

    :func:`intensity_range` then :func:`apply_intensity_range`. Returns float32 of the
    same shape. A constant image maps to zeros.

    Raises
    ------
    DataError
        If the image holds NaN or infinite values.
    """
    image = np.asarray(image, dtype=np.float32)
    return apply_intensity_range(image, *intensity_range(image, config))


def prepare_plane(
    plane: np.ndarray,
    in_channels: int,
    normalization: NormalizationConfig,
    channel_axis: int | None = None,
) -> np.ndarray:
    """``to_channels_first`` then ``normalize``: the exact network input for one plane."""
    return normalize(to_channels_first(plane, in_channels, channel_axis), normalization)


def prepare_volume(
    volume: np.ndarray,
    in_channels: int,
    normalization: NormalizationConfig,
    channels_last: bool = False,
) -> np.ndarray:
    """The ``(C, Z, Y, X)`` float32 input of a 3D model: ``(Z, Y, X)`` or, with
    ``channels_last``, ``(Z, Y, X, C)`` channels matched to the model
    (:func:`napari_unet.layout.match_channels`), normalised over the whole volume."""
    volume = np.asarray(volume)
    channels_first = np.moveaxis(volume, -1, 0) if channels_last else volume[None]
    return normalize(match_channels(channels_first, in_channels), normalization)


# --------------------------------------------------------------------------------------
# Training data: reading pairs, splitting stacks into planes, targets, patches, augmentation
# --------------------------------------------------------------------------------------

#: Half-width, in pixels, of the inner object boundary that the ``contour`` target marks
#: (a pixel is a contour pixel when a different label lies within this Chebyshev distance).
CONTOUR_WIDTH = 2


def contour_window(ndim: int, anisotropy: float = 1.0) -> tuple[int, ...]:
    """Sides of the window within which :data:`CONTOUR_WIDTH` pixels count as near.

    ``2 * CONTOUR_WIDTH + 1`` along Y and X; along the Z of a volume the same physical
    width in planes (``anisotropy`` = Z step / XY pixel), at least one plane each side,
    so that the top and bottom of an object are boundary too.
    """
    side = 2 * CONTOUR_WIDTH + 1
    if ndim == 2:
        return side, side
    planes = max(1, round(CONTOUR_WIDTH / anisotropy))
    return 2 * planes + 1, side, side


def contact_pixels(instances: np.ndarray, anisotropy: float = 1.0) -> np.ndarray:
    """Pixels where two different objects lie within :data:`CONTOUR_WIDTH` pixels.

    These are the gaps and borders between touching or nearly touching objects, the
    pixels that decide whether two nuclei come out separated or merged (the idea of the
    U-Net paper's weight map, with a window instead of distances).

    Parameters
    ----------
    instances : np.ndarray
        ``(H, W)`` or ``(Z, Y, X)`` instance labels, 0 = background.
    anisotropy : float
        A volume's Z step over its XY pixel size (see :func:`contour_window`).

    Returns
    -------
    np.ndarray
        Bool, of the labels' shape.
    """
    from scipy import ndimage

    size = contour_window(np.ndim(instances), anisotropy)
    instances = np.asarray(instances, dtype=np.int64)
    highest = ndimage.maximum_filter(instances, size=size)
    # For the lowest label in the window, background must not count: it becomes a
    # value above every label.
    absent = int(instances.max(initial=0)) + 1
    lowest = ndimage.minimum_filter(np.where(instances > 0, instances, absent), size=size)
    return (highest > 0) & (lowest != absent) & (highest != lowest)


def load_pairs_from_folders(
    images_dir: str | Path, labels_dir: str | Path
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read every image of ``images_dir`` and its label file (same stem) of ``labels_dir``.

    Raises
    ------
    DataError
        If a folder is missing or empty, stems do not match, or a file is unreadable.
    """
    pairs = find_pairs(images_dir, labels_dir)
    images = [read_image(image_path) for image_path, _ in pairs]
    labels = [read_image(label_path) for _, label_path in pairs]
    return images, labels


def load_dsb(folder: str | Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read a 2018 Data Science Bowl folder into (images, instance labels) lists.

    Accepts the original Kaggle layout ``<id>/images/<id>.png`` + ``<id>/masks/*.png``
    (one mask per nucleus, merged into instance labels) and, for convenience, the
    merged layout ``images/<id>.png`` + ``labels/<id>.png``.

    Raises
    ------
    DataError
        If ``folder`` holds neither layout.
    """
    folder = Path(folder)
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return load_pairs_from_folders(folder / "images", folder / "labels")
    images, labels = [], []
    for sample in find_dsb_samples(folder):
        image, label = read_dsb_sample(sample)
        images.append(image)
        labels.append(label)
    return images, labels


def split_planes(
    images: Sequence[Any], labels: Sequence[Any], ndim: int = 2
) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Turn image/label pairs (2D planes or stacks) into lists of 2D planes, or of 3D
    volumes with ``ndim=3``.

    Parameters
    ----------
    images : sequence of array-like
        Numpy or dask arrays: ``(H, W)`` grey, ``(H, W, C)`` colour/multichannel (or
        channels first, ``(C, H, W)``) when the labels are ``(H, W)``, or stacks
        ``(Z, H, W[, C])`` / ``(Z, C, H, W)`` with labels ``(Z, H, W)``.
    labels : sequence of array-like
        Integer label images of the image shape without its channel axis.
    ndim : {2, 3}
        2: every plane on its own; 3: every ``(Z, H, W)`` volume (the axes before Z,
        such as T, are split).

    Returns
    -------
    image_planes, label_planes : list of np.ndarray
        ``(H, W)`` or ``(H, W, C)`` image planes (channels moved last) and ``(H, W)``
        label planes; ``(Z, H, W[, C])`` and ``(Z, H, W)`` volumes with ``ndim=3``.
    channels_last : bool
        Whether image planes carry a trailing channel axis.

    Raises
    ------
    DataError
        If the lists are empty or differ in length, or a pair's shapes do not match,
        or (``ndim=3``) a pair is not a volume.
    """
    if len(images) == 0:
        raise DataError("no training images were given; add at least one image with labels.")
    if len(images) != len(labels):
        raise DataError(
            f"got {len(images)} image(s) but {len(labels)} label image(s); give one label "
            "image per image."
        )
    image_planes: list[np.ndarray] = []
    label_planes: list[np.ndarray] = []
    colour_flags = set()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        image_shape, label_shape = tuple(image.shape), tuple(label.shape)
        try:
            layout = layout_for_labels(image_shape, label_shape)
        except DataError as error:
            raise DataError(f"pair {index}: {error}") from None
        colour = layout.channel_axis is not None
        if colour and layout.channel_axis != len(image_shape) - 1:
            image = np.moveaxis(image, layout.channel_axis, -1)
            image_shape = tuple(image.shape)
        if len(label_shape) < 2:
            raise DataError(f"pair {index}: labels of shape {label_shape} are not an image.")
        if len(label_shape) < ndim:
            raise DataError(
                f"pair {index}: labels of shape {label_shape} are a 2D image, not a (Z, Y, X) "
                "volume; a 3D model (ndim 3) trains on volumes: give volumes, or train a 2D "
                "model (ndim 2)."
            )
        label_array = checked_labels(label, f"pair {index}")
        colour_flags.add(colour)
        # Flatten any leading stack axes (Z, T, ... or T of volumes) into a list of samples.
        n_planes = int(np.prod(label_shape[:-ndim], dtype=np.int64))
        image_stack = image.reshape((n_planes, *image_shape[len(label_shape) - ndim :]))
        label_stack = label_array.reshape((n_planes, *label_shape[-ndim:]))
        for plane in range(n_planes):
            image_planes.append(np.asarray(image_stack[plane]))
            label_planes.append(label_stack[plane])
    if len(colour_flags) > 1:
        raise DataError(
            "some images have a channel axis and others do not; convert them all to grey or "
            "all to colour."
        )
    return image_planes, label_planes, colour_flags.pop()


def infer_in_channels(images: Sequence[Any], labels: Sequence[Any]) -> int:
    """Number of network input channels the first pair calls for (alpha not counted).

    Raises
    ------
    DataError
        As :func:`split_planes`.
    """
    split_planes(images[:1], labels[:1])  # the pair's checks and messages
    return layout_for_labels(np.shape(images[0]), np.shape(labels[0])).model_channels


def checked_labels(labels: Any, where: str) -> np.ndarray:
    """``labels`` as int64, after checking that every value is a whole number >= 0 (floats too).

    Raises
    ------
    DataError
        Naming ``where`` (e.g. ``"pair 3"``), if a value is negative, not a whole number,
        not finite, or the labels are not numbers at all.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: labels of type {labels.dtype} are not numbers; give integer label "
            "images (0 = background)."
        )
    if labels.dtype.kind == "f" and not (
        np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))
    ):
        raise DataError(
            f"{where}: labels hold non-integer values ({labels.dtype}); give integer label "
            "images (0 = background)."
        )
    if labels.dtype.kind in "if" and labels.size and labels.min() < 0:
        raise DataError(
            f"{where}: labels hold negative values (down to {labels.min():g}); label ids are "
            "0 (background) or positive: relabel them, e.g. with skimage.measure.label."
        )
    return labels.astype(np.int64, copy=False)


def _instances(labels: np.ndarray, label_mode: str) -> np.ndarray:
    """Instance labels of one plane or volume: connected components in binary mode."""
    if label_mode == "binary":
        from skimage.measure import label as connected_components

        return connected_components(labels > 0, connectivity=1)
    return labels


def make_targets(
    labels: np.ndarray,
    target: str,
    label_mode: str = "instance",
    contact_weight: int = 1,
    anisotropy: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Network targets for one label plane, or one volume (in 3D: objects, boundaries
    and distances in 3D).

    Parameters
    ----------
    labels : np.ndarray
        ``(H, W)`` or ``(Z, Y, X)`` integer labels, read as ``label_mode`` says
        (see :data:`napari_unet.config.LABEL_MODES`).
    target : {"foreground", "contour", "distance"}
        ``foreground``: ch0 = object. ``contour``: ch0 = object, ch1 = the
        :data:`CONTOUR_WIDTH`-pixel inner boundary of each object (where a different label,
        background included, is near). ``distance``: ch0 = object, ch1 = Euclidean distance to
        the nearest pixel outside the object, divided by the object's maximum (so 1 at each
        object's centre), which keeps small and large nuclei on the same scale.
    label_mode : {"instance", "binary", "sparse"}
    contact_weight : int
        Loss weight of the :func:`contact_pixels` between objects (every channel); other
        pixels weigh 1. 1 = no extra weight. Not for sparse labels, which mark no objects.
    anisotropy : float
        A volume's Z step over its XY pixel size: the boundary's width and the distances
        along Z are physical (see :func:`contour_window`).

    Returns
    -------
    targets : np.ndarray
        ``(C, H, W)`` (``(C, Z, Y, X)``) uint8, 0..255 meaning 0..1 (one byte per value
        keeps big sets in memory).
    weights : np.ndarray or None
        ``(C, H, W)`` uint8 loss weights, or None when every pixel counts once. In sparse mode
        only annotated pixels count, and only for ch0 (scribbles say nothing about boundaries).

    Raises
    ------
    DataError
        If sparse labels hold values other than 0, 1, 2.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if label_mode == "sparse" and contact_weight != 1:
        raise DataError(SPARSE_CONTACT_WEIGHT_ERROR)
    if label_mode == "sparse":
        if labels.size and (labels.min() < 0 or labels.max() > 2):
            raise DataError(
                f"sparse (scribble) labels must be 0 = not annotated, 1 = background, "
                f"2 = object; found values up to {labels.max()}. Paint with labels 1 and 2."
            )
        n_channels = TARGET_CHANNELS[target]
        targets = np.zeros((n_channels, *labels.shape), np.uint8)
        targets[0] = (labels == 2) * 255
        weights = np.zeros((n_channels, *labels.shape), np.uint8)
        weights[0] = labels > 0
        return targets, weights
    instances = _instances(labels, label_mode)
    foreground = instances > 0
    channels = [foreground.astype(np.uint8) * 255]
    if target in ("contour", "distance"):
        size = contour_window(labels.ndim, anisotropy)
        # A pixel touches another label (or the background) within CONTOUR_WIDTH pixels.
        near_other = (ndimage.maximum_filter(instances, size=size) != instances) | (
            ndimage.minimum_filter(instances, size=size) != instances
        )
        if target == "contour":
            channels.append((foreground & near_other).astype(np.uint8) * 255)
        else:
            # Pixels touching a neighbouring object count as outside, so touching
            # nuclei get separate distance peaks.
            spread = ndimage.maximum_filter(instances, size=3)
            touching = (spread != ndimage.minimum_filter(instances, size=3)) & foreground
            sampling = (anisotropy, 1.0, 1.0) if labels.ndim == 3 else None
            distance = ndimage.distance_transform_edt(foreground & ~touching, sampling=sampling)
            _, inverse = np.unique(instances, return_inverse=True)
            inverse = inverse.reshape(instances.shape)
            maxima = ndimage.maximum(distance, inverse, np.arange(inverse.max() + 1))
            maxima = np.asarray(maxima, dtype=np.float64)
            maxima[maxima <= 0] = 1.0
            scaled = np.where(foreground, distance / maxima[inverse], 0.0)
            channels.append(np.round(scaled * 255).astype(np.uint8))
    elif target != "foreground":
        raise DataError(f"target {target!r} is unknown; use one of {sorted(TARGET_CHANNELS)}.")
    targets = np.stack(channels)
    if contact_weight == 1:
        return targets, None
    weights = np.ones(targets.shape, np.uint8)
    weights[:, contact_pixels(instances, anisotropy)] = contact_weight
    return targets, weights


def prepare_training_planes(
    images: Sequence[Any],
    labels: Sequence[Any],
    in_channels: int,
    normalization: NormalizationConfig,
    target: str,
    label_mode: str = "instance",
    what: str = "training",
    contact_weight: int = 1,
    ndim: int = 2,
    anisotropy: float = 1.0,
) -> list[PlaneData]:
    """Split, normalise and build targets for every plane of a set of pairs, or (``ndim=3``)
    every volume (normalised as a whole, :func:`prepare_volume`; targets in 3D).

    ``contact_weight`` weights the pixels between objects and ``anisotropy`` is the
    volumes' Z step over their XY pixel size (see :func:`make_targets`).

    Raises
    ------
    DataError
        On empty sets, shape mismatches, or a set whose labels mark no object at all
        (nothing to learn from).
    """
    image_planes, label_planes, channels_last = split_planes(images, labels, ndim)
    channel_axis = -1 if channels_last else None
    planes = []
    for image, label in zip(image_planes, label_planes, strict=True):
        if min(label.shape) < 1:
            raise DataError(f"a {what} image of shape {image.shape} is empty.")
        if ndim == 3:
            prepared = prepare_volume(image, in_channels, normalization, channels_last)
        else:
            prepared = prepare_plane(image, in_channels, normalization, channel_axis)
        targets, weights = make_targets(label, target, label_mode, contact_weight, anisotropy)
        planes.append(PlaneData(prepared, targets, weights))
    if label_mode == "sparse":
        if not any(plane.weights is not None and plane.weights[0].any() for plane in planes):
            raise DataError(
                f"the {what} scribbles annotate no pixel; paint some background (label 1) "
                "and object (label 2) pixels."
            )
    elif not any(plane.targets[0].any() for plane in planes):
        raise DataError(
            f"the {what} labels mark no object in any image (all zero); check that the label "
            "files are the right ones, or use label_mode='sparse' for scribbles."
        )
    return planes


def replay_planes(
    config: TrainConfig, model_config: ModelConfig
) -> tuple[list[PlaneData], list[str]]:
    """The first ``config.replay_samples`` bundled DSB 2018 samples as training planes.

    Mixed into a fine-tune's own images so that the model keeps what it knew of the
    images it was trained on. None for scribbles (``sparse`` labels mean something else),
    for a model of other than 1 or 3 channels, or for a 3D model (the samples are planes).
    Also returns each sample's modality (for ``sampling="modality"``).
    """
    if (
        not config.replay_samples
        or config.label_mode == "sparse"
        or model_config.in_channels not in (1, 3)
        or model_config.ndim != 2
    ):
        return [], []
    pairs = find_pairs(SAMPLES_DIR / "images", SAMPLES_DIR / "labels")[: config.replay_samples]
    sample_images = [read_image(image) for image, _ in pairs]
    planes = prepare_training_planes(
        sample_images,
        [read_image(labels) for _, labels in pairs],
        in_channels=model_config.in_channels,
        normalization=model_config.normalization,
        target=model_config.target,
        what="replayed sample",
        contact_weight=config.contact_weight,
    )
    return planes, [classify_modality(image) for image in sample_images]
