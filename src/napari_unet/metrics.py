"""Segmentation quality: pixel metrics for binary masks, matching metrics for instance labels.

Pixel metrics follow the reference evaluation: each image is flattened, accuracy,
F1 (Dice), Jaccard (IoU), recall and precision are computed for the foreground
class (scikit-learn's ``average="binary"``), and a dataset's score is the plain
mean over images. They are computed here with numpy; the test-suite checks them
against scikit-learn. Evaluation (the CLI, the Python API and the Evaluate widget) passes
the foreground of the predicted *labels*, after post-processing, as the predicted mask
(:func:`napari_unet.evaluation.score_plane`).

Instance metrics match true and predicted objects one-to-one by intersection over
union (IoU), as StarDist's ``matching`` does: a pair may match at threshold ``t``
when ``IoU >= t``, and the Hungarian algorithm picks the matching with the most
pairs, breaking ties by the larger summed IoU. From the matches at each threshold
come TP, FP, FN, precision, recall, F1 and the "average precision" of the 2018
Data Science Bowl, ``TP / (TP + FP + FN)``. The DSB score of an image is the mean
of the latter over the thresholds 0.50, 0.55, ..., 0.95. Panoptic quality
(Kirillov et al. 2019) is ``SQ * RQ`` with matches at ``IoU > 0.5``.

Empty cases
-----------
Every ratio whose numerator and denominator are both zero ("nothing to find and
nothing found") is **1**; every other ratio is computed as written. This is
scikit-learn's ``zero_division=1.0`` (its default, ``"warn"``, returns 0 and warns):

* both masks empty: accuracy = F1 = Jaccard = recall = precision = 1;
* true mask empty, prediction not: recall = 1 (nothing was missed), precision = F1 = Jaccard = 0;
* prediction empty, true mask not: precision = 1 (nothing false), recall = F1 = Jaccard = 0.

The same rule makes an image with no true and no predicted object score 1 on every
instance metric, as the DSB rules say, while an image where only one side has
objects scores 0 on TP/(TP+FP+FN), F1 and PQ.

Speed: the overlap of all object pairs is one ``np.bincount`` over combined label
indices (a sort-based count when the pair table would be large), and only objects
whose best candidates are ambiguous go through the Hungarian algorithm, so a
2048 x 2048 image with thousands of objects is scored in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_unet.errors import DataError

#: IoU thresholds of the 2018 Data Science Bowl score: 0.50, 0.55, ..., 0.95.
THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

#: Keys of :func:`pixel_metrics`.
PIXEL_KEYS: tuple[str, ...] = ("accuracy", "f1", "jaccard", "recall", "precision")

#: Scalar summary keys of :func:`instance_metrics` (also in the evaluation summary).
INSTANCE_KEYS: tuple[str, ...] = ("dsb_score", "ap50", "ap75", "f1_50", "pq")

# Per-threshold lists of :func:`match_instances` that are ratios (averaged over
# images) and that are counts (summed over images).
_RATIO_LISTS = ("precision", "recall", "f1", "ap")
_COUNT_LISTS = ("tp", "fp", "fn")


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with 0/0 = 1 (see the module's "Empty cases")."""
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


def _same_shape(true: Any, pred: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise DataError(
            f"true and predicted {what} must have the same shape, got {true.shape} and "
            f"{pred.shape}; resize the prediction to the ground truth first."
        )
    if true.size == 0:
        raise DataError(f"the {what} have no pixels (shape {true.shape}).")
    return true, pred


def _as_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean foreground: non-zero pixels. Floats must already be 0/1."""
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating) and not np.isin(mask, (0.0, 1.0)).all():
        raise DataError(
            "a float mask must hold only 0 and 1; threshold probabilities first "
            "(e.g. mask = prob > 0.5)."
        )
    return mask != 0


def pixel_metrics(true_mask: Any, pred_mask: Any) -> dict[str, float]:
    """Accuracy, F1 (Dice), Jaccard (IoU), recall and precision of one binary mask.

    Parameters
    ----------
    true_mask, pred_mask : array_like
        Ground truth and prediction of the same shape (any dimensionality).
        Non-zero pixels are foreground, so label images can be passed directly;
        float masks must hold only 0 and 1.

    Returns
    -------
    dict
        ``{"accuracy", "f1", "jaccard", "recall", "precision"}`` as floats, equal to
        scikit-learn's scores with ``average="binary", zero_division=1.0`` on the
        flattened masks (see the module's "Empty cases").

    Raises
    ------
    DataError
        If the shapes differ, the masks are empty arrays, or a float mask is not 0/1.
    """
    true, pred = _same_shape(true_mask, pred_mask, "masks")
    true, pred = _as_mask(true), _as_mask(pred)
    n_true, n_pred = np.count_nonzero(true), np.count_nonzero(pred)
    tp = np.count_nonzero(true & pred)
    fp, fn = n_pred - tp, n_true - tp
    tn = true.size - tp - fp - fn
    return {
        "accuracy": _ratio(tp + tn, true.size),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": _ratio(tp, tp + fp + fn),
        "recall": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
    }


def mean_pixel_metrics(pairs: Iterable[tuple[Any, Any] | Mapping[str, float]]) -> dict[str, float]:
    """Mean of :func:`pixel_metrics` over images, as the reference evaluation reports.

    Parameters
    ----------
    pairs : iterable
        ``(true_mask, pred_mask)`` pairs, or dictionaries already returned by
        :func:`pixel_metrics` (to average per-image results without recomputing).

    Returns
    -------
    dict
        The five pixel metrics, each the unweighted mean over images, and
        ``n_images``.

    Raises
    ------
    DataError
        If there are no images.
    """
    rows = [dict(item) if isinstance(item, Mapping) else pixel_metrics(*item) for item in pairs]
    if not rows:
        raise DataError("no images to average pixel metrics over.")
    summary: dict[str, float] = {
        key: float(np.mean([row[key] for row in rows])) for key in PIXEL_KEYS
    }
    summary["n_images"] = len(rows)
    return summary


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map labels to ``0..n`` (0 stays background), keeping label order; returns (index, n)."""
    if not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == bool:
            labels = labels.astype(np.uint8)
        else:
            raise DataError(
                f"label images must be integers, got {labels.dtype}; cast or relabel them "
                "(e.g. skimage.measure.label)."
            )
    flat = labels.ravel()
    largest = int(flat.max())
    if int(flat.min()) < 0:
        raise DataError("label images must not hold negative labels; relabel them.")
    if largest <= 4 * flat.size + 65536:
        # Labels of sensible size: a lookup table built from the label counts.
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=1) > 0
        present[0] = True
        lookup = np.cumsum(present) - 1
        return lookup[flat], int(lookup[-1])
    # Huge label ids (e.g. hashes): a sort is cheaper than a table that large.
    ids, index = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        index += 1
    return index.reshape(-1), int(index.max())


def overlap_table(
    true_labels: Any, pred_labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of overlapping true and predicted objects, with its IoU.

    Objects are numbered ``0..n_true-1`` and ``0..n_pred-1`` in increasing order of
    their label ids; background (0) is not an object.

    Returns
    -------
    true_index, pred_index : np.ndarray
        Object numbers of each overlapping pair, shape ``(n_pairs,)``.
    iou : np.ndarray
        IoU of each pair, float64, ``> 0``.
    true_areas, pred_areas : np.ndarray
        Pixel count of every object, shapes ``(n_true,)`` and ``(n_pred,)``.

    Raises
    ------
    DataError
        If the shapes differ or the labels are not non-negative integers.
    """
    true, pred = _same_shape(true_labels, pred_labels, "label images")
    true_idx, n_true = _compact_labels(true)
    pred_idx, n_pred = _compact_labels(pred)
    true_areas = np.bincount(true_idx, minlength=n_true + 1)[1:]
    pred_areas = np.bincount(pred_idx, minlength=n_pred + 1)[1:]
    both = (true_idx > 0) & (pred_idx > 0)
    # One integer per (true, pred) pair of each overlapping pixel; counting the
    # integers counts the intersection of every pair at once.
    codes = (true_idx[both] - 1).astype(np.int64) * max(n_pred, 1) + (pred_idx[both] - 1)
    if n_true * n_pred <= max(true.size, 1 << 20):
        counts = np.bincount(codes, minlength=n_true * n_pred)
        codes = np.flatnonzero(counts)
        intersection = counts[codes]
    else:
        codes, intersection = np.unique(codes, return_counts=True)
    t_index, p_index = np.divmod(codes, max(n_pred, 1))
    union = true_areas[t_index] + pred_areas[p_index] - intersection
    return t_index, p_index, intersection / union, true_areas, pred_areas


def _match(
    t_index: np.ndarray,
    p_index: np.ndarray,
    iou: np.ndarray,
    n_true: int,
    n_pred: int,
    threshold: float,
) -> int:
    """Size of the best one-to-one matching among pairs with ``IoU >= threshold`` (TP).

    Objects with a single candidate whose candidate also has a single one are
    matched directly; the rest fall into connected groups, each solved with the
    Hungarian algorithm (most matches first, then largest IoU, as StarDist). At
    thresholds above 0.5 no object has two candidates, and at 0.5 only exact ties
    do, so the groups are tiny; lower thresholds can form large dense groups.
    """
    keep = iou >= threshold
    t_index, p_index, iou = t_index[keep], p_index[keep], iou[keep]
    t_degree = np.bincount(t_index, minlength=n_true)
    p_degree = np.bincount(p_index, minlength=n_pred)
    unique = (t_degree[t_index] == 1) & (p_degree[p_index] == 1)
    tp = int(np.count_nonzero(unique))
    if unique.all():
        return tp
    t_index, p_index, iou = t_index[~unique], p_index[~unique], iou[~unique]
    graph = coo_matrix(
        (np.ones(len(iou)), (t_index, n_true + p_index)), shape=(n_true + n_pred,) * 2
    )
    _, component = connected_components(graph, directed=False)
    pair_component = component[t_index]
    order = np.argsort(pair_component, kind="stable")
    starts = np.flatnonzero(np.diff(pair_component[order], prepend=-1))
    for group in np.split(order, starts[1:]):
        rows, row_of = np.unique(t_index[group], return_inverse=True)
        cols, col_of = np.unique(p_index[group], return_inverse=True)
        scores = np.zeros((len(rows), len(cols)))
        scores[row_of, col_of] = iou[group]
        candidate = np.zeros_like(scores, dtype=bool)
        candidate[row_of, col_of] = True
        # Each match is worth 1; the IoU term (< 1 in total) only breaks ties.
        cost = -candidate.astype(float) - scores / (2 * min(scores.shape))
        r, c = linear_sum_assignment(cost)
        tp += int(np.count_nonzero(candidate[r, c]))
    return tp


def match_instances(
    true_labels: Any, pred_labels: Any, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """Match objects one-to-one by IoU at each threshold and count the outcome.

    Parameters
    ----------
    true_labels, pred_labels : array_like
        Integer label images of the same shape (any dimensionality); 0 is
        background, label ids need not be consecutive.
    thresholds : sequence of float
        IoU thresholds in ``(0, 1]``; a pair matches when ``IoU >= threshold``.

    Returns
    -------
    dict
        ``thresholds``, and per threshold (lists in the same order) ``tp``, ``fp``,
        ``fn`` (ints), ``precision``, ``recall``, ``f1`` and ``ap`` =
        TP/(TP+FP+FN) (floats, 0/0 = 1); ``n_true``, ``n_pred`` (object counts).

    Raises
    ------
    DataError
        If the shapes differ, labels are not non-negative integers, or a threshold
        is outside ``(0, 1]``.
    """
    return _match_table(overlap_table(true_labels, pred_labels), thresholds)


def _match_table(table: tuple[np.ndarray, ...], thresholds: Sequence[float]) -> dict[str, Any]:
    """:func:`match_instances` on an :func:`overlap_table` result."""
    thresholds = [float(t) for t in thresholds]
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise DataError(f"IoU thresholds must lie in (0, 1], got {thresholds}.")
    t_index, p_index, iou, true_areas, pred_areas = table
    n_true, n_pred = len(true_areas), len(pred_areas)
    result: dict[str, Any] = {"thresholds": thresholds, "n_true": n_true, "n_pred": n_pred}
    for key in (*_COUNT_LISTS, *_RATIO_LISTS):
        result[key] = []
    for threshold in thresholds:
        tp = _match(t_index, p_index, iou, n_true, n_pred, threshold)
        fp, fn = n_pred - tp, n_true - tp
        result["tp"].append(tp)
        result["fp"].append(fp)
        result["fn"].append(fn)
        result["precision"].append(_ratio(tp, tp + fp))
        result["recall"].append(_ratio(tp, tp + fn))
        result["f1"].append(_ratio(2 * tp, 2 * tp + fp + fn))
        result["ap"].append(_ratio(tp, tp + fp + fn))
    return result


def panoptic_quality(true_labels: Any, pred_labels: Any) -> dict[str, float]:
    """Panoptic quality ``PQ = SQ * RQ`` of one image, matching at ``IoU > 0.5``.

    Above 0.5 every object has at most one partner, so the matching is unique.
    ``SQ`` is the mean IoU of the matches, ``RQ = TP / (TP + FP/2 + FN/2)`` (the
    F1 score). No objects on either side gives 1; objects on one side only give 0.

    Returns
    -------
    dict
        ``{"pq", "sq", "rq"}`` as floats.
    """
    return _panoptic_table(overlap_table(true_labels, pred_labels))


def _panoptic_table(table: tuple[np.ndarray, ...]) -> dict[str, float]:
    """:func:`panoptic_quality` on an :func:`overlap_table` result."""
    _, _, iou, true_areas, pred_areas = table
    matched = iou[iou > 0.5]
    tp = len(matched)
    fp, fn = len(pred_areas) - tp, len(true_areas) - tp
    rq = _ratio(tp, tp + (fp + fn) / 2)
    # No match but objects present: SQ is irrelevant (RQ = 0); report 0 rather than 0/0.
    sq = float(matched.mean()) if tp else (1.0 if fp + fn == 0 else 0.0)
    return {"pq": sq * rq, "sq": sq, "rq": rq}


def instance_metrics(
    true_labels: Any, pred_labels: Any, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """All instance metrics of one image.

    Parameters
    ----------
    true_labels, pred_labels : array_like
        Integer label images of the same shape; 0 is background.
    thresholds : sequence of float
        IoU thresholds; the DSB score averages ``ap`` over them. ``ap50``, ``ap75``
        and ``f1_50`` need 0.5 and 0.75 among them (they are NaN otherwise).

    Returns
    -------
    dict
        ``dsb_score`` (mean of ``ap`` over the thresholds), ``ap50``, ``ap75``,
        ``f1_50``, ``pq``, ``sq``, ``rq`` (floats); ``n_true``, ``n_pred``;
        and the per-threshold lists of :func:`match_instances`.
    """
    table = overlap_table(true_labels, pred_labels)
    matches = _match_table(table, thresholds)
    at = {round(t, 6): i for i, t in enumerate(matches["thresholds"])}

    def pick(key: str, threshold: float) -> float:
        index = at.get(threshold)
        return float("nan") if index is None else float(matches[key][index])

    return {
        "dsb_score": float(np.mean(matches["ap"])),
        "ap50": pick("ap", 0.5),
        "ap75": pick("ap", 0.75),
        "f1_50": pick("f1", 0.5),
        **_panoptic_table(table),
        **matches,
    }


def mean_instance_metrics(
    items: Iterable[tuple[Any, Any] | Mapping[str, Any]],
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Instance metrics over a set of images.

    The DSB score is the mean over images of each image's score (the competition's
    rule); every other score is likewise the unweighted mean over images.

    Parameters
    ----------
    items : iterable
        ``(true_labels, pred_labels)`` pairs, or dictionaries already returned by
        :func:`instance_metrics` (all with the same thresholds).
    thresholds : sequence of float
        IoU thresholds used for pairs.

    Returns
    -------
    dict
        ``dsb_score``, ``ap50``, ``ap75``, ``f1_50``, ``pq``, ``sq``, ``rq`` (means
        over images); ``thresholds``; ``precision``, ``recall``, ``f1``, ``ap``
        (per-threshold means over images); ``tp``, ``fp``, ``fn``, ``n_true``,
        ``n_pred`` (totals over images); ``n_images``.

    Raises
    ------
    DataError
        If there are no images or the per-image thresholds differ.
    """
    rows = [
        dict(item) if isinstance(item, Mapping) else instance_metrics(*item, thresholds=thresholds)
        for item in items
    ]
    if not rows:
        raise DataError("no images to average instance metrics over.")
    if any(row["thresholds"] != rows[0]["thresholds"] for row in rows):
        raise DataError("the images were scored at different IoU thresholds; rescore them alike.")
    summary: dict[str, Any] = {
        key: float(np.mean([row[key] for row in rows])) for key in (*INSTANCE_KEYS, "sq", "rq")
    }
    summary["thresholds"] = list(rows[0]["thresholds"])
    for key in _RATIO_LISTS:
        summary[key] = [float(v) for v in np.mean([row[key] for row in rows], axis=0)]
    for key in _COUNT_LISTS:
        summary[key] = [int(v) for v in np.sum([row[key] for row in rows], axis=0)]
    summary["n_true"] = int(sum(row["n_true"] for row in rows))
    summary["n_pred"] = int(sum(row["n_pred"] for row in rows))
    summary["n_images"] = len(rows)
    return summary
