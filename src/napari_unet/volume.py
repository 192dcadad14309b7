"""3D objects from a 2D model: turn per-plane predictions of a volume into one label per object.

A 2D model sees one plane at a time, so by itself it numbers the sections of a nucleus
plane by plane. Three ways to get one id per object across the whole volume:

* :func:`link_planes` (**link**): label each plane on its own, then give a plane's
  object the id of the object in the plane before that overlaps it most, when their
  intersection over union reaches ``iou_threshold`` (Cellpose's ``stitch_threshold``).
  Cheap, but a nucleus whose sections shrink fast at its poles, or that the model
  misses in one plane, comes out in pieces.
* :func:`watershed_volume` (**watershed**): stack the per-plane probabilities into a
  ``(C, Z, Y, X)`` volume and run the same threshold and seeded watershed as a plane
  gets (:func:`napari_unet.postprocess.probabilities_to_labels`), in 3D.
* :func:`orthogonal_probabilities` then :func:`watershed_volume` (**orthogonal**): the
  network also looks at the XZ and YZ planes of the volume, resampled along Z to the
  XY pixel size for the anisotropy; the three views' probabilities are averaged
  (Cellpose's ``do_3D`` averages its flows the same way). The side views see the top
  and bottom of each nucleus as a boundary, which the XY planes cannot, at three
  times the network work.

Shapes: a volume is ``(Z, Y, X)`` (grey), probabilities are ``(C, Z, Y, X)`` with the
channels of the model's target, labels are ``(Z, Y, X)``. ``anisotropy`` is the Z step
over the XY pixel size (2 when planes are twice as far apart as pixels).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi

# Re-exported: the methods' names live with the prediction settings.
from napari_unet.config import VOLUME_METHODS as VOLUME_METHODS
from napari_unet.errors import ConfigError, DataError
from napari_unet.metrics import overlap_table
from napari_unet.postprocess import label_dtype, probabilities_to_labels

#: Cellpose's default ``stitch_threshold``.
DEFAULT_LINK_IOU = 0.25
#: ``seed_threshold`` for the ``contour`` target on :func:`orthogonal_probabilities`.
#: The mean of three views dilutes a boundary that only the side views see (where
#: nuclei touch along Z, two thirds of it), so a core must have a lower boundary
#: probability than in one view (0.5); 0.2 split touching nuclei best on the crowded
#: volumes of ``benchmarks/bench_volumes.py --quick``.
ORTHOGONAL_SEED_THRESHOLD = 0.2

#: ``predict_planes(stack)``: ``(N, H, W)`` planes in, ``(C, N, H, W)`` probabilities out.
PlanePredictor = Callable[[np.ndarray], np.ndarray]


def _check_anisotropy(anisotropy: float) -> float:
    if not (isinstance(anisotropy, numbers.Real) and np.isfinite(anisotropy) and anisotropy > 0):
        raise ConfigError(
            f"anisotropy must be a number > 0 (Z step / XY pixel size), got {anisotropy!r}; "
            "use 1 for cubic voxels."
        )
    return float(anisotropy)


def _object_ids(labels: np.ndarray) -> np.ndarray:
    """The object ids of ``labels``, sorted (the order of :func:`overlap_table`)."""
    ids = np.unique(labels)
    return ids[ids > 0]


def _links(previous: np.ndarray, current: np.ndarray, iou_threshold: float) -> np.ndarray:
    """For each object of ``current``, the id in ``previous`` it continues, or 0.

    A pair qualifies when its IoU reaches ``iou_threshold`` and is the best of the
    previous object's pairs; each current object then takes its best qualifying
    partner, and each previous object goes to one current object at most.
    """
    current_ids = _object_ids(current)
    links = np.zeros(len(current_ids), dtype=np.int64)
    previous_ids = _object_ids(previous)
    if len(previous_ids) == 0 or len(current_ids) == 0:
        return links
    before, after, iou, _, _ = overlap_table(previous, current)
    keep = iou >= iou_threshold
    before, after, iou = before[keep], after[keep], iou[keep]
    best_of_previous = np.zeros(len(previous_ids))
    np.maximum.at(best_of_previous, before, iou)
    keep = iou >= best_of_previous[before]
    before, after, iou = before[keep], after[keep], iou[keep]
    best = _best_pair_per(after, iou)
    before, after, iou = before[best], after[best], iou[best]
    best = _best_pair_per(before, iou)
    links[after[best]] = previous_ids[before[best]]
    return links


def _best_pair_per(owner: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Index of the highest-IoU pair of each distinct ``owner`` (the first one on ties)."""
    order = np.lexsort((-iou, owner))
    return order[np.unique(owner[order], return_index=True)[1]]


def link_planes(plane_labels: np.ndarray, iou_threshold: float = DEFAULT_LINK_IOU) -> np.ndarray:
    """One id per object across Z, by linking each plane's objects to the plane before.

    Parameters
    ----------
    plane_labels : np.ndarray
        ``(Z, Y, X)`` integer labels, each plane labelled on its own (ids may repeat
        between planes or not); 0 is background.
    iou_threshold : float
        Smallest intersection over union, in ``(0, 1]``, of two sections in
        neighbouring planes that makes them one object.

    Returns
    -------
    np.ndarray
        ``(Z, Y, X)`` labels ``0..N``, sequential in order of first appearance from
        plane 0, uint16 (wider past 65,535 objects).

    Raises
    ------
    DataError
        If the labels are not a 3D integer array.
    ConfigError
        If ``iou_threshold`` is outside ``(0, 1]``.
    """
    plane_labels = np.asarray(plane_labels)
    if plane_labels.ndim != 3 or not np.issubdtype(plane_labels.dtype, np.integer):
        raise DataError(
            f"link_planes needs (Z, Y, X) integer labels, got {plane_labels.dtype} of shape "
            f"{plane_labels.shape}."
        )
    if not 0 < iou_threshold <= 1:
        raise ConfigError(f"iou_threshold must lie in (0, 1], got {iou_threshold}; try 0.25.")
    linked = np.zeros(plane_labels.shape, dtype=np.int64)
    count = 0
    for z, plane in enumerate(plane_labels):
        ids = _object_ids(plane)
        links = _links(linked[z - 1], plane, iou_threshold) if z else np.zeros(len(ids), np.int64)
        new = links == 0
        links[new] = np.arange(count + 1, count + 1 + np.count_nonzero(new))
        count += int(np.count_nonzero(new))
        # Current ids -> linked ids, through their rank among the plane's ids.
        inside = plane > 0
        linked[z][inside] = links[np.searchsorted(ids, plane[inside])]
    return linked.astype(label_dtype(count))


def watershed_volume(
    probabilities: np.ndarray,
    target: str = "contour",
    anisotropy: float = 1.0,
    **settings: Any,
) -> np.ndarray:
    """3D labels of a volume's stacked probabilities: threshold and seeded watershed in 3D.

    Parameters
    ----------
    probabilities : np.ndarray
        ``(C, Z, Y, X)`` probabilities, e.g. a 2D model's per-plane outputs stacked
        along Z (``predict(..., return_probabilities=True).probabilities`` of a stack).
    target : {"foreground", "contour", "distance"}
        What the model predicts (``model.config.target``).
    anisotropy : float
        Z step over XY pixel size; sets the voxel size of the ``foreground`` target's
        distance transform (the other targets' elevations come from the network).
    **settings
        Post-processing keywords of
        :func:`napari_unet.postprocess.probabilities_to_labels` (``threshold``,
        ``min_size`` in voxels, ``seed_threshold``, ``core_threshold``, ...).

    Returns
    -------
    np.ndarray
        ``(Z, Y, X)`` labels ``0..N``, sequential, uint16 (uint32 past 65,535 objects).

    Raises
    ------
    DataError
        If the probabilities are not ``(C, Z, Y, X)``.
    ConfigError
        If ``anisotropy`` is not a number > 0.
    """
    anisotropy = _check_anisotropy(anisotropy)
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4:
        raise DataError(
            f"watershed_volume needs (C, Z, Y, X) probabilities, got shape {probabilities.shape}."
        )
    return probabilities_to_labels(
        probabilities, target, spacing=(anisotropy, 1.0, 1.0), **settings
    )


def resample_z(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``array`` linearly resampled to ``size`` samples along ``axis`` (end samples kept)."""
    if array.shape[axis] == size:
        return array
    factors = [1.0] * array.ndim
    factors[axis] = size / array.shape[axis]
    # zoom's output size is round(n * size / n) = size.
    return ndi.zoom(array, factors, order=1, mode="nearest")


def _predict_view(predict_planes: PlanePredictor, planes: np.ndarray) -> np.ndarray:
    """``predict_planes(planes)``, checked to be ``(C, N, H, W)`` for ``(N, H, W[, C])`` planes."""
    probabilities = np.asarray(predict_planes(np.ascontiguousarray(planes)), dtype=np.float32)
    if probabilities.ndim != 4 or probabilities.shape[1:] != planes.shape[:3]:
        raise DataError(
            f"predict_planes must map (N, H, W) planes to (C, N, H, W) probabilities; it gave "
            f"shape {probabilities.shape} for planes of shape {planes.shape}."
        )
    return probabilities


def orthogonal_probabilities(
    volume: np.ndarray,
    predict_planes: PlanePredictor,
    anisotropy: float = 1.0,
    xy_probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities of a volume averaged over its XY, XZ and YZ planes.

    The volume is resampled along Z to cubic voxels (``round(Z * anisotropy)``
    planes, linear interpolation), its XZ and YZ planes are predicted, the XY
    planes' probabilities are resampled the same way, the three are averaged, and
    the mean is resampled back to the volume's Z planes.

    Parameters
    ----------
    volume : np.ndarray
        ``(Z, Y, X)`` grey volume, or ``(Z, Y, X, C)`` with its channels last.
    predict_planes : callable
        ``predict_planes(planes)`` maps ``(N, H, W)`` planes (``(N, H, W, C)`` for a
        volume with channels) to ``(C, N, H, W)``
        probabilities, each plane predicted on its own (e.g.
        ``lambda s: predict(s, model, return_probabilities=True).probabilities``).
    anisotropy : float
        Z step over XY pixel size.
    xy_probabilities : np.ndarray, optional
        ``(C, Z, Y, X)`` probabilities of the XY planes, if already predicted (the
        per-plane prediction's); otherwise ``predict_planes(volume)``.

    Returns
    -------
    np.ndarray
        ``(C, Z, Y, X)`` float32 probabilities, for :func:`watershed_volume`.

    Raises
    ------
    DataError
        If the volume is not 3D, or ``predict_planes`` or ``xy_probabilities`` do not
        have the shapes above.
    ConfigError
        If ``anisotropy`` is not a number > 0.
    """
    anisotropy = _check_anisotropy(anisotropy)
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise DataError(
            "orthogonal_probabilities needs a (Z, Y, X) grey volume or (Z, Y, X, C), got "
            f"shape {volume.shape}."
        )
    spatial = volume.shape[:3]
    n_planes = volume.shape[0]
    if xy_probabilities is None:
        xy_probabilities = _predict_view(predict_planes, volume)
    xy_probabilities = np.asarray(xy_probabilities, dtype=np.float32)
    if xy_probabilities.ndim != 4 or xy_probabilities.shape[1:] != spatial:
        raise DataError(
            f"xy_probabilities must be (C, Z, Y, X) = (C, {', '.join(map(str, spatial))}), "
            f"got shape {xy_probabilities.shape}."
        )
    depth = max(1, round(n_planes * anisotropy))
    cubic = resample_z(volume.astype(np.float32, copy=False), depth, axis=0)
    # XZ planes: one per row y, each (depth, X); YZ planes: one per column x, (depth, Y);
    # channels, if any, stay last.
    channels = tuple(range(3, volume.ndim))
    xz = _predict_view(predict_planes, cubic.transpose(1, 0, 2, *channels)).transpose(0, 2, 1, 3)
    yz = _predict_view(predict_planes, cubic.transpose(2, 0, 1, *channels)).transpose(0, 2, 3, 1)
    mean = (resample_z(xy_probabilities, depth, axis=1) + xz + yz) / 3
    return resample_z(mean, n_planes, axis=1).astype(np.float32, copy=False)


def volume_labels(
    probabilities: np.ndarray,
    method: str,
    target: str = "contour",
    anisotropy: float = 1.0,
    volume: np.ndarray | None = None,
    predict_planes: PlanePredictor | None = None,
    orthogonal_seed_threshold: float = ORTHOGONAL_SEED_THRESHOLD,
    **settings: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """3D labels of a volume from its XY planes' probabilities, by ``method``.

    The dispatcher of prediction's ``volume`` mode over the three ways of this module.

    Parameters
    ----------
    probabilities : np.ndarray
        ``(C, Z, Y, X)`` probabilities of the XY planes.
    method : {"link", "watershed", "orthogonal"}
        :func:`link_planes` of the planes labelled on their own, :func:`watershed_volume`,
        or :func:`orthogonal_probabilities` then :func:`watershed_volume`.
    target : str
        What the model predicts (``model.config.target``).
    anisotropy : float
        Z step over XY pixel size, > 0.
    volume : np.ndarray, optional
        ``(Z, Y, X)`` or ``(Z, Y, X, C)`` network input (normalised); needed by
        ``orthogonal``.
    predict_planes : callable, optional
        Planes of ``volume`` -> ``(C, N, H, W)`` probabilities; needed by ``orthogonal``.
    orthogonal_seed_threshold : float
        ``seed_threshold`` of a ``contour`` model on the mean of the three views
        (:data:`ORTHOGONAL_SEED_THRESHOLD` unless the user gave one).
    **settings
        Post-processing keywords of
        :func:`napari_unet.postprocess.probabilities_to_labels`.

    Returns
    -------
    labels, probabilities : np.ndarray
        ``(Z, Y, X)`` labels ``0..N`` and the probabilities they came from (the mean of
        the three views for ``orthogonal``, else ``probabilities``).

    Raises
    ------
    ConfigError
        If ``method`` is unknown, ``anisotropy`` is not > 0, or ``orthogonal`` lacks its
        volume or predictor.
    """
    anisotropy = _check_anisotropy(anisotropy)
    if method == "link":
        planes = np.stack(
            [
                probabilities_to_labels(plane, target, **settings)
                for plane in probabilities.swapaxes(0, 1)
            ]
        )
        return link_planes(planes), probabilities
    if method == "orthogonal":
        if volume is None or predict_planes is None:
            raise ConfigError(
                "volume_method 'orthogonal' needs the volume and a plane predictor; give "
                "both, or use volume_method='watershed'."
            )
        probabilities = orthogonal_probabilities(volume, predict_planes, anisotropy, probabilities)
        if target == "contour":
            settings["seed_threshold"] = orthogonal_seed_threshold
    elif method != "watershed":
        raise ConfigError(
            f"volume_method {method!r} is unknown; use one of {', '.join(VOLUME_METHODS)}."
        )
    return watershed_volume(probabilities, target, anisotropy, **settings), probabilities
