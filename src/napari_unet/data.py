"""Turning images into network input: intensity normalisation, training data.

These functions are shared by training and prediction so that a model sees its
inputs prepared identically in both. Which axis is channel, stack or plane is
:mod:`napari_unet.layout`'s decision; :func:`prepare_plane` is that layout's
``(C, H, W)`` float32 network input of one plane, normalised.

The second part serves training: reading image/label folders (:func:`load_pairs_from_folders`,
:func:`load_dsb`), splitting stacks into planes (:func:`split_planes`), building targets
(:func:`make_targets`), and drawing augmented random patches (:class:`PatchSampler`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.config import SPARSE_CONTACT_WEIGHT_ERROR, TARGET_CHANNELS, NormalizationConfig
from napari_unet.errors import DataError
from napari_unet.io import find_dsb_samples, find_pairs, read_dsb_sample, read_image
from napari_unet.layout import layout_for_labels, to_channels_first


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


# --------------------------------------------------------------------------------------
# Training data: reading pairs, splitting stacks into planes, targets, patches, augmentation
# --------------------------------------------------------------------------------------

#: Half-width, in pixels, of the inner object boundary that the ``contour`` target marks
#: (a pixel is a contour pixel when a different label lies within this Chebyshev distance).
CONTOUR_WIDTH = 2


def contact_pixels(instances: np.ndarray) -> np.ndarray:
    """Pixels where two different objects lie within :data:`CONTOUR_WIDTH` pixels.

    These are the gaps and borders between touching or nearly touching objects, the
    pixels that decide whether two nuclei come out separated or merged (the idea of the
    U-Net paper's weight map, with a window instead of distances).

    Parameters
    ----------
    instances : np.ndarray
        ``(H, W)`` instance labels, 0 = background.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool.
    """
    from scipy import ndimage

    size = 2 * CONTOUR_WIDTH + 1
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
    images: Sequence[Any], labels: Sequence[Any]
) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Turn image/label pairs (2D planes or stacks) into lists of 2D planes.

    Parameters
    ----------
    images : sequence of array-like
        Numpy or dask arrays: ``(H, W)`` grey, ``(H, W, C)`` colour/multichannel (or
        channels first, ``(C, H, W)``) when the labels are ``(H, W)``, or stacks
        ``(Z, H, W[, C])`` / ``(Z, C, H, W)`` with labels ``(Z, H, W)``.
    labels : sequence of array-like
        Integer label images of the image shape without its channel axis.

    Returns
    -------
    image_planes, label_planes : list of np.ndarray
        ``(H, W)`` or ``(H, W, C)`` image planes (channels moved last) and ``(H, W)``
        label planes.
    channels_last : bool
        Whether image planes carry a trailing channel axis.

    Raises
    ------
    DataError
        If the lists are empty or differ in length, or a pair's shapes do not match.
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
        label_array = checked_labels(label, f"pair {index}")
        colour_flags.add(colour)
        # Flatten any leading stack axes (Z, T, ...) into a list of planes.
        n_planes = int(np.prod(label_shape[:-2], dtype=np.int64))
        image_stack = image.reshape((n_planes, *image_shape[len(label_shape) - 2 :]))
        label_stack = label_array.reshape((n_planes, *label_shape[-2:]))
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
    """Instance labels of one plane: connected components in binary mode."""
    if label_mode == "binary":
        from skimage.measure import label as connected_components

        return connected_components(labels > 0, connectivity=1)
    return labels


def make_targets(
    labels: np.ndarray, target: str, label_mode: str = "instance", contact_weight: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """Network targets for one label plane.

    Parameters
    ----------
    labels : np.ndarray
        ``(H, W)`` integer labels, read as ``label_mode`` says
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

    Returns
    -------
    targets : np.ndarray
        ``(C, H, W)`` uint8, 0..255 meaning 0..1 (one byte per value keeps big sets in memory).
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
        size = 2 * CONTOUR_WIDTH + 1
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
            distance = ndimage.distance_transform_edt(foreground & ~touching)
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
    weights[:, contact_pixels(instances)] = contact_weight
    return targets, weights


@dataclass
class PlaneData:
    """One training plane ready for patch sampling.

    Attributes
    ----------
    image : np.ndarray
        ``(C, H, W)`` float32, normalised.
    targets : np.ndarray
        ``(C_out, H, W)`` uint8 targets (0..255 = 0..1), see :func:`make_targets`.
    weights : np.ndarray or None
        ``(C_out, H, W)`` uint8 loss weights, None = all ones.
    """

    image: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        """Plane height and width."""
        return self.image.shape[1], self.image.shape[2]


def prepare_training_planes(
    images: Sequence[Any],
    labels: Sequence[Any],
    in_channels: int,
    normalization: NormalizationConfig,
    target: str,
    label_mode: str = "instance",
    what: str = "training",
    contact_weight: int = 1,
) -> list[PlaneData]:
    """Split, normalise and build targets for every plane of a set of pairs.

    ``contact_weight`` weights the pixels between objects (see :func:`make_targets`).

    Raises
    ------
    DataError
        On empty sets, shape mismatches, or a set whose labels mark no object at all
        (nothing to learn from).
    """
    image_planes, label_planes, channels_last = split_planes(images, labels)
    channel_axis = -1 if channels_last else None
    planes = []
    for image, label in zip(image_planes, label_planes, strict=True):
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise DataError(f"a {what} image of shape {image.shape} is empty.")
        prepared = prepare_plane(image, in_channels, normalization, channel_axis)
        targets, weights = make_targets(label, target, label_mode, contact_weight)
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


def crop_patch(
    plane: PlaneData, top: int, left: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a ``size`` x ``size`` patch at (``top``, ``left``), reflect-padding small planes.

    Returns ``(image (C,S,S) float32, targets (C_out,S,S) float32 in 0..1, weights
    (C_out,S,S) float32)``. Padded pixels get weight 0 so they never enter the loss.
    """
    height, width = plane.shape
    bottom, right = min(top + size, height), min(left + size, width)
    image = plane.image[:, top:bottom, left:right]
    targets = plane.targets[:, top:bottom, left:right].astype(np.float32) / 255.0
    if plane.weights is None:
        weights = np.ones(targets.shape, np.float32)
    else:
        weights = plane.weights[:, top:bottom, left:right].astype(np.float32)
    pad_h, pad_w = size - (bottom - top), size - (right - left)
    if pad_h or pad_w:
        pad = ((0, 0), (0, pad_h), (0, pad_w))
        # Reflect keeps the image statistics; numpy reflects repeatedly for big pads.
        mode = "reflect" if image.shape[1] > 1 and image.shape[2] > 1 else "edge"
        image = np.pad(image, pad, mode=mode)
        targets = np.pad(targets, pad, mode=mode)
        weights = np.pad(weights, pad, mode="constant")
    return np.ascontiguousarray(image), np.ascontiguousarray(targets), weights


def augment_patch(
    image: np.ndarray, targets: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random augmentation of one square patch (numpy; cheap next to a training step).

    Geometry (applied identically to image, targets and weights): horizontal and vertical
    flips with probability 1/2 each, rotation by a random multiple of 90 degrees.
    Intensity (image only): contrast scale x U(0.75, 1.33), brightness shift + U(-0.1, 0.1),
    gamma U(0.7, 1.4) on the positive part of the normalised values, and with probability
    1/2 Gaussian noise of standard deviation U(0, 0.05). These mirror the variation between
    microscopes and stains; none changes what is an object.
    """
    if rng.random() < 0.5:
        image, targets, weights = image[:, :, ::-1], targets[:, :, ::-1], weights[:, :, ::-1]
    if rng.random() < 0.5:
        image, targets, weights = image[:, ::-1], targets[:, ::-1], weights[:, ::-1]
    turns = int(rng.integers(4))
    if turns:
        image = np.rot90(image, turns, axes=(1, 2))
        targets = np.rot90(targets, turns, axes=(1, 2))
        weights = np.rot90(weights, turns, axes=(1, 2))
    image = np.array(image, dtype=np.float32)  # own copy before in-place edits
    gamma = np.float32(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    # In place where positive: half the time of gathering and scattering those pixels.
    np.power(image, gamma, out=image, where=image > 0)
    image *= np.float32(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    image += np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.5:
        sigma = rng.uniform(0.0, 0.05)
        image += rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return image, np.ascontiguousarray(targets), np.ascontiguousarray(weights)


class PatchSampler:
    """Draws random training batches of square patches from a list of planes.

    Parameters
    ----------
    planes : list of PlaneData
        The training planes.
    patch_size : int
        Side of each square patch; planes smaller than it are reflect-padded (and the
        padding is masked out of the loss).
    sampling : {"area", "image"}
        ``area``: a plane is picked with probability proportional to its pixel count, so
        every pixel of the set is equally likely to be seen (large images are not
        under-used). ``image``: every plane equally often, whatever its size.
    augment : bool
        Apply :func:`augment_patch`.
    rng : np.random.Generator
        Source of randomness (seeded by the caller for reproducibility).
    """

    def __init__(
        self,
        planes: Sequence[PlaneData],
        patch_size: int,
        sampling: str,
        augment: bool,
        rng: np.random.Generator,
    ) -> None:
        self.planes = list(planes)
        self.patch_size = patch_size
        self.augment = augment
        self.rng = rng
        areas = np.array([h * w for h, w in (p.shape for p in self.planes)], dtype=np.float64)
        weights = areas if sampling == "area" else np.ones_like(areas)
        self.probabilities = weights / weights.sum()

    def patches_per_epoch(self) -> int:
        """Patches that cover the set's area about once (at least one per plane)."""
        area = sum(h * w for h, w in (p.shape for p in self.planes))
        return max(len(self.planes), int(np.ceil(area / self.patch_size**2)))

    def sample(
        self, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One random patch ``(image, targets, weights)`` as float32 arrays.

        Drawn with ``rng``, or with the sampler's own generator when None.
        """
        rng = self.rng if rng is None else rng
        plane = self.planes[int(rng.choice(len(self.planes), p=self.probabilities))]
        height, width = plane.shape
        top = int(rng.integers(max(height - self.patch_size, 0) + 1))
        left = int(rng.integers(max(width - self.patch_size, 0) + 1))
        patch = crop_patch(plane, top, left, self.patch_size)
        if self.augment:
            patch = augment_patch(*patch, rng)
        return patch

    def batch(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A stacked batch ``(N,C,S,S), (N,C_out,S,S), (N,C_out,S,S)`` (see :meth:`sample`)."""
        patches = [self.sample(rng) for _ in range(batch_size)]
        return tuple(np.stack(parts) for parts in zip(*patches, strict=True))  # type: ignore[return-value]

    def epoch_batches(
        self, batch_size: int, steps: int, threads: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The ``steps`` batches of one epoch, in order.

        With ``threads=0`` each batch is drawn from the sampler's generator when it is
        asked for. With ``threads > 0`` every batch gets its own generator, seeded from the
        sampler's one at the start of the epoch, and a pool of that many threads prepares
        up to ``2 * threads`` batches ahead while the caller trains on the current one
        (numpy releases the GIL in the array work). The batches are then the same for any
        number of threads (not the same as with 0), and the sampler's generator ends the
        epoch in the same state, so a resumed run continues identically. Closing the
        iterator early drops the batches not yet started.
        """
        if threads == 0:
            for _ in range(steps):
                yield self.batch(batch_size)
            return
        seeds = iter(self.rng.integers(2**63, size=steps).tolist())
        with ThreadPoolExecutor(threads, thread_name_prefix="napari-unet-patches") as pool:
            pending: deque[Future[tuple[np.ndarray, np.ndarray, np.ndarray]]] = deque()

            def submit_next() -> None:
                seed = next(seeds, None)
                if seed is not None:
                    pending.append(pool.submit(self.batch, batch_size, np.random.default_rng(seed)))

            for _ in range(2 * threads):
                submit_next()
            try:
                while pending:
                    batch = pending.popleft().result()
                    submit_next()
                    yield batch
            finally:
                for future in pending:
                    future.cancel()
