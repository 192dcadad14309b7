"""Tests of napari_unet.metrics: against scikit-learn, a brute-force StarDist-style matcher,
and hand-computed cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from napari_unet.errors import DataError
from napari_unet.metrics import (
    INSTANCE_KEYS,
    PIXEL_KEYS,
    THRESHOLDS,
    instance_metrics,
    match_instances,
    mean_instance_metrics,
    mean_pixel_metrics,
    overlap_table,
    panoptic_quality,
    pixel_metrics,
)


def sklearn_pixel(true: np.ndarray, pred: np.ndarray, **kwargs: object) -> dict[str, float]:
    """The reference evaluation: flatten, sklearn scores with average='binary'."""
    # scikit-learn is a test dependency only; the hand-computed tests run without it
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    t, p = (np.asarray(true).ravel() > 0).astype(int), (np.asarray(pred).ravel() > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": sklearn_metrics.accuracy_score(t, p),
            "f1": sklearn_metrics.f1_score(t, p, average="binary", **kwargs),
            "jaccard": sklearn_metrics.jaccard_score(t, p, average="binary", **kwargs),
            "recall": sklearn_metrics.recall_score(t, p, average="binary", **kwargs),
            "precision": sklearn_metrics.precision_score(t, p, average="binary", **kwargs),
        }


def brute_force_matching(
    true: np.ndarray, pred: np.ndarray, thresholds: tuple[float, ...]
) -> tuple[list[int], float]:
    """StarDist's algorithm written plainly: dense IoU matrix, Hungarian with
    cost -(iou >= t) - iou / (2 * n_matched). Returns TP per threshold and PQ (IoU > 0.5)."""
    true_ids = [i for i in np.unique(true) if i != 0]
    pred_ids = [j for j in np.unique(pred) if j != 0]
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for a, i in enumerate(true_ids):
        for b, j in enumerate(pred_ids):
            inter = np.count_nonzero((true == i) & (pred == j))
            union = np.count_nonzero((true == i) | (pred == j))
            iou[a, b] = inter / union
    n_matched = min(iou.shape)
    tps = []
    for t in thresholds:
        if n_matched == 0:
            tps.append(0)
            continue
        rows, cols = linear_sum_assignment(-(iou >= t).astype(float) - iou / (2 * n_matched))
        tps.append(int(np.count_nonzero(iou[rows, cols] >= t)))
    matched = iou[iou > 0.5]
    fp, fn = len(pred_ids) - len(matched), len(true_ids) - len(matched)
    if len(true_ids) == len(pred_ids) == 0:
        pq = 1.0
    else:
        pq = matched.sum() / (len(matched) + fp / 2 + fn / 2)
    return tps, pq


def random_labels(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Touching and separate blobs: Voronoi cells of random seeds, cut to discs."""
    seeds = np.zeros(shape, np.int32)
    points = rng.integers(0, shape, (n, 2))
    seeds[points[:, 0], points[:, 1]] = np.arange(1, n + 1)
    distance, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return np.where(distance < rng.uniform(2, 6), seeds[iy, ix], 0)


def perturb(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted, some objects merged, some dropped, ids scrambled."""
    pred = np.roll(labels, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    ids = np.unique(pred)[1:]
    mapping = np.zeros(labels.max() + 1, np.int64)
    mapping[ids] = rng.permutation(len(ids)) * 13 + 100
    merged = rng.choice(ids, size=len(ids) // 4, replace=False) if len(ids) else ids
    mapping[merged] = mapping[rng.choice(ids, size=len(merged))] if len(ids) else 0
    mapping[rng.choice(ids, size=len(ids) // 8, replace=False)] = 0
    return mapping[pred]


def box(shape: tuple[int, int], *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """Label image with rectangles (label, row0, row1, col0, col1)."""
    labels = np.zeros(shape, np.int32)
    for label, r0, r1, c0, c1 in boxes:
        labels[r0:r1, c0:c1] = label
    return labels


# ---------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("seed", range(8))
def test_pixel_metrics_match_sklearn_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 40, 2))
    true = rng.random(shape) < rng.uniform(0.05, 0.9)
    pred = rng.random(shape) < rng.uniform(0.05, 0.9)
    ours = pixel_metrics(true, pred)
    assert set(ours) == set(PIXEL_KEYS)
    assert all(type(v) is float for v in ours.values())
    # zero_division=1.0 is the documented convention; on non-degenerate masks it
    # agrees with sklearn's default, i.e. with the reference evaluation itself.
    assert ours == pytest.approx(sklearn_pixel(true, pred, zero_division=1.0), abs=1e-12)
    if true.any() and pred.any() and (true & pred).any():
        assert ours == pytest.approx(sklearn_pixel(true, pred), abs=1e-12)


@pytest.mark.parametrize(
    ("true_on", "pred_on", "expected"),
    [
        (False, False, dict(accuracy=1, f1=1, jaccard=1, recall=1, precision=1)),
        (False, True, dict(accuracy=0.75, f1=0, jaccard=0, recall=1, precision=0)),
        (True, False, dict(accuracy=0.75, f1=0, jaccard=0, recall=0, precision=1)),
    ],
)
def test_pixel_metrics_empty_masks(true_on: bool, pred_on: bool, expected: dict) -> None:
    true, pred = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    true[0] = true_on
    pred[0] = pred_on
    ours = pixel_metrics(true, pred)
    assert ours == pytest.approx(expected)
    assert ours == pytest.approx(sklearn_pixel(true, pred, zero_division=1.0))


def test_pixel_metrics_hand_computed_shift() -> None:
    true = box((20, 20), (1, 0, 10, 0, 10))
    pred = box((20, 20), (7, 0, 10, 2, 12))  # shifted 2 px: 80 shared, 20 + 20 wrong
    ours = pixel_metrics(true, pred)
    assert ours == pytest.approx(
        dict(accuracy=360 / 400, f1=160 / 200, jaccard=80 / 120, recall=0.8, precision=0.8)
    )


def test_pixel_metrics_accept_labels_and_binary_floats() -> None:
    true = box((8, 8), (5, 0, 4, 0, 4), (9, 4, 8, 4, 8))
    perfect = dict.fromkeys(PIXEL_KEYS, 1.0)
    assert pixel_metrics(true, true.astype(float) > 0) == pytest.approx(perfect)
    assert pixel_metrics(true, (true > 0).astype(np.float32))["f1"] == 1.0


def test_pixel_metrics_errors() -> None:
    with pytest.raises(DataError, match="same shape"):
        pixel_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(DataError, match="threshold"):
        pixel_metrics(np.zeros((4, 4)), np.full((4, 4), 0.7))
    with pytest.raises(DataError, match="no pixels"):
        pixel_metrics(np.zeros((0, 4)), np.zeros((0, 4)))


def test_mean_pixel_metrics_is_the_mean_over_images() -> None:
    rng = np.random.default_rng(3)
    pairs = [(rng.random((16, 12)) < 0.4, rng.random((16, 12)) < 0.5) for _ in range(5)]
    summary = mean_pixel_metrics(pairs)
    reference = [sklearn_pixel(t, p) for t, p in pairs]
    for key in PIXEL_KEYS:
        assert summary[key] == pytest.approx(np.mean([r[key] for r in reference]))
    assert summary["n_images"] == 5
    # per-image dictionaries average to the same thing
    assert mean_pixel_metrics([pixel_metrics(t, p) for t, p in pairs]) == pytest.approx(summary)
    with pytest.raises(DataError, match="no images"):
        mean_pixel_metrics([])


# ---------------------------------------------------------------- overlap table


def test_overlap_table_non_sequential_ids() -> None:
    true = box((10, 10), (1000, 0, 4, 0, 4), (3, 6, 10, 6, 10))
    pred = box((10, 10), (42, 0, 4, 2, 6), (7, 6, 10, 6, 10), (8, 0, 2, 8, 10))
    t_index, p_index, iou, true_areas, pred_areas = overlap_table(true, pred)
    # objects are numbered by increasing label id: true 3 -> 0, 1000 -> 1; pred 7, 8, 42
    assert true_areas.tolist() == [16, 16]
    assert pred_areas.tolist() == [16, 4, 16]
    pairs = {(int(t), int(p)): v for t, p, v in zip(t_index, p_index, iou)}
    assert pairs == pytest.approx({(0, 0): 1.0, (1, 2): 8 / 24})


def test_large_and_huge_label_ids_give_the_same_result() -> None:
    rng = np.random.default_rng(1)
    true = random_labels(rng, (48, 48), 30)
    pred = perturb(rng, true)
    expected = instance_metrics(true, pred)
    huge_pred = np.where(pred > 0, pred.astype(np.uint64) + 2**50, 0).astype(np.uint64)
    huge = instance_metrics(true.astype(np.uint64) * 2**40, huge_pred)
    for key in ("tp", "fp", "fn", "ap", "pq", "dsb_score"):
        assert huge[key] == pytest.approx(expected[key])


def test_many_objects_sort_based_table() -> None:
    # 1,600 one-pixel objects on each side: the pair table is counted by sorting
    true = np.arange(1, 1601).reshape(40, 40)
    assert instance_metrics(true, true * 3)["ap"] == [1.0] * 10
    # 800 two-pixel predictions, each covering two true pixels with IoU exactly 0.5
    pairs = instance_metrics(true, np.arange(1600).reshape(40, 40) // 2 + 1)
    assert pairs["tp"] == [800] + [0] * 9
    assert (pairs["fp"][0], pairs["fn"][0]) == (0, 800)


# ---------------------------------------------------------------- instance metrics


@pytest.mark.parametrize("seed", range(6))
def test_matching_agrees_with_brute_force_stardist(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = random_labels(rng, (40, 48), int(rng.integers(3, 25)))
    pred = perturb(rng, true)
    # low thresholds make objects compete for partners, exercising the Hungarian step
    thresholds = (0.1, 0.2, 0.3, 0.4, *THRESHOLDS)
    expected_tp, expected_pq = brute_force_matching(true, pred, thresholds)
    result = match_instances(true, pred, thresholds)
    assert result["tp"] == expected_tp
    assert result["fp"] == [result["n_pred"] - tp for tp in expected_tp]
    assert panoptic_quality(true, pred)["pq"] == pytest.approx(expected_pq)


def test_identical_labels_score_one_whatever_the_ids() -> None:
    true = box((12, 12), (5, 0, 3, 0, 3), (17, 5, 9, 5, 9), (1000, 10, 12, 0, 12))
    pred = np.where(true > 0, true * 7 + 1, 0)
    result = instance_metrics(true, pred)
    for key in INSTANCE_KEYS:
        assert result[key] == 1.0
    assert result["tp"] == [3] * 10 and result["fp"] == [0] * 10
    assert result["n_true"] == result["n_pred"] == 3


def test_shifted_object() -> None:
    true = box((20, 20), (1, 0, 10, 0, 10))
    pred = box((20, 20), (2, 0, 10, 2, 12))  # IoU 80 / 120 = 2/3
    result = instance_metrics(true, pred)
    assert result["tp"] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert result["ap"] == [1.0] * 4 + [0.0] * 6
    assert result["dsb_score"] == pytest.approx(0.4)
    assert (result["ap50"], result["ap75"], result["f1_50"]) == (1.0, 0.0, 1.0)
    assert result["pq"] == pytest.approx(2 / 3)
    assert result["sq"] == pytest.approx(2 / 3) and result["rq"] == 1.0


def test_split_nucleus_exact_half_tie() -> None:
    # one 10x20 nucleus predicted as two 10x10 halves: both halves have IoU exactly 0.5
    true = box((10, 20), (1, 0, 10, 0, 20))
    pred = box((10, 20), (4, 0, 10, 0, 10), (9, 0, 10, 10, 20))
    result = instance_metrics(true, pred)
    assert (result["tp"][0], result["fp"][0], result["fn"][0]) == (1, 1, 0)
    assert result["ap50"] == 0.5 and result["f1_50"] == pytest.approx(2 / 3)
    assert result["tp"][1:] == [0] * 9 and result["ap"][1:] == [0.0] * 9
    assert result["dsb_score"] == pytest.approx(0.05)
    assert result["pq"] == 0.0  # PQ matches only at IoU > 0.5


def test_split_nucleus_uneven() -> None:
    true = box((10, 20), (1, 0, 10, 0, 20))
    pred = box((10, 20), (2, 0, 10, 0, 12), (3, 0, 10, 12, 20))  # IoU 0.6 and 0.4
    result = instance_metrics(true, pred)
    assert result["tp"] == [1, 1, 1] + [0] * 7
    assert result["ap"] == [0.5] * 3 + [0.0] * 7
    assert result["precision"][:3] == [0.5] * 3 and result["recall"][:3] == [1.0] * 3
    assert result["dsb_score"] == pytest.approx(0.15)
    assert result["pq"] == pytest.approx(0.6 * (1 / 1.5))


def test_merged_nuclei() -> None:
    true = box((10, 20), (3, 0, 10, 0, 8), (8, 0, 10, 8, 20))  # IoU 0.4 and 0.6 with the merge
    pred = box((10, 20), (1, 0, 10, 0, 20))
    result = instance_metrics(true, pred)
    assert (result["tp"][0], result["fp"][0], result["fn"][0]) == (1, 0, 1)
    assert result["recall"][0] == 0.5 and result["precision"][0] == 1.0
    assert result["dsb_score"] == pytest.approx(0.15)


def test_hungarian_beats_greedy() -> None:
    # On one row: A=[0,10) B=[10,14); X=[3,14) Y=[0,3).
    # IoU A-X 0.5, B-X 4/11, A-Y 0.3. Greedy takes A-X and leaves B and Y unmatched;
    # the optimal one-to-one matching at 0.3 is A-Y + B-X.
    true = box((1, 14), (1, 0, 1, 0, 10), (2, 0, 1, 10, 14))
    pred = box((1, 14), (1, 0, 1, 3, 14), (2, 0, 1, 0, 3))
    assert match_instances(true, pred, thresholds=(0.3, 0.5))["tp"] == [2, 1]


def test_empty_images() -> None:
    empty = np.zeros((8, 8), np.uint16)
    objects = box((8, 8), (4, 0, 4, 0, 4), (6, 5, 8, 5, 8))
    both = instance_metrics(empty, empty)
    assert all(both[key] == 1.0 for key in INSTANCE_KEYS)
    assert both["precision"] == both["recall"] == both["f1"] == [1.0] * 10

    no_truth = instance_metrics(empty, objects)
    assert all(no_truth[key] == 0.0 for key in INSTANCE_KEYS)
    assert no_truth["fp"] == [2] * 10 and no_truth["recall"] == [1.0] * 10
    assert no_truth["precision"] == [0.0] * 10

    missed = instance_metrics(objects, empty)
    assert all(missed[key] == 0.0 for key in INSTANCE_KEYS)
    assert missed["fn"] == [2] * 10 and missed["precision"] == [1.0] * 10
    assert missed["recall"] == [0.0] * 10


def test_three_dimensional_and_boolean_labels() -> None:
    true = np.zeros((4, 6, 6), np.int32)
    true[1:3, 1:4, 1:4] = 9
    assert instance_metrics(true, true > 0)["dsb_score"] == 1.0


def test_instance_metric_errors() -> None:
    labels = np.ones((4, 4), np.int32)
    with pytest.raises(DataError, match="same shape"):
        instance_metrics(labels, labels[:2])
    with pytest.raises(DataError, match="integers"):
        instance_metrics(labels.astype(float), labels)
    with pytest.raises(DataError, match="negative"):
        instance_metrics(-labels, labels)
    with pytest.raises(DataError, match="thresholds"):
        match_instances(labels, labels, thresholds=(0.0, 0.5))


def test_instance_metrics_value_types() -> None:
    rng = np.random.default_rng(5)
    true = random_labels(rng, (32, 32), 10)
    result = instance_metrics(true, perturb(rng, true))
    for key in (*INSTANCE_KEYS, "sq", "rq"):
        assert type(result[key]) is float
    assert result["thresholds"] == list(THRESHOLDS)
    for key in ("precision", "recall", "f1", "ap"):
        assert len(result[key]) == 10 and all(type(v) is float for v in result[key])
    assert result["dsb_score"] == pytest.approx(np.mean(result["ap"]))


def test_mean_instance_metrics() -> None:
    rng = np.random.default_rng(7)
    truths = [random_labels(rng, (32, 32), 12) for _ in range(3)]
    pairs = [(t, perturb(rng, t)) for t in truths] + [(np.zeros((8, 8), int),) * 2]
    rows = [instance_metrics(t, p) for t, p in pairs]
    summary = mean_instance_metrics(pairs)
    # DSB rule: the mean of the per-image scores (the empty image counts as 1)
    assert summary["dsb_score"] == pytest.approx(np.mean([r["dsb_score"] for r in rows]))
    assert summary["pq"] == pytest.approx(np.mean([r["pq"] for r in rows]))
    assert summary["ap"] == pytest.approx(np.mean([r["ap"] for r in rows], axis=0))
    assert summary["tp"] == np.sum([r["tp"] for r in rows], axis=0).tolist()
    assert summary["n_true"] == sum(r["n_true"] for r in rows) and summary["n_images"] == 4
    from_rows = mean_instance_metrics(rows)
    assert from_rows.keys() == summary.keys()
    for key, value in summary.items():
        assert from_rows[key] == pytest.approx(value)
    with pytest.raises(DataError, match="no images"):
        mean_instance_metrics([])
    other = instance_metrics(*pairs[0], thresholds=(0.5, 0.75))
    with pytest.raises(DataError, match="different IoU thresholds"):
        mean_instance_metrics([rows[0], other])
