"""Choosing a model's post-processing on annotated images (napari_unet.tuning)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import make_blobs, make_threshold_model
from napari_unet.errors import ConfigError, DataError
from napari_unet.prediction import PredictConfig, predict
from napari_unet.tuning import PostprocessGrid, tune, tune_events


def blobs_with_specks(n: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Blob images plus bright 2x2 specks that are not in the labels (noise to filter out)."""
    images, labels = make_blobs(n=n, shape=(48, 48), seed=3)
    rng = np.random.default_rng(4)
    for image, label in zip(images, labels):
        for _ in range(4):
            r, c = rng.integers(1, 46, size=2)
            if not label[r - 1 : r + 3, c - 1 : c + 3].any():
                image[r : r + 2, c : c + 2] = 200
    return images, labels


def test_grid_is_checked_with_a_fix_in_the_message() -> None:
    with pytest.raises(ConfigError, match="thresholds is empty"):
        PostprocessGrid(thresholds=())
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        PostprocessGrid(thresholds=(0.5, 1.0))
    with pytest.raises(ConfigError, match="from 0"):
        PostprocessGrid(core_thresholds=(-0.1,))
    with pytest.raises(ConfigError, match="whole numbers"):
        PostprocessGrid(min_sizes=(8.5,))
    with pytest.raises(ConfigError, match="fewer values"):
        PostprocessGrid(thresholds=tuple(np.linspace(0.01, 0.99, 50)), min_sizes=tuple(range(50)))
    grid = PostprocessGrid([0.5, 0.6], [0.3, 0.5], [0.0], [8])
    assert len(grid.combinations("contour")) == 4
    # other targets ignore the seed threshold, so it is not varied for them
    assert len(grid.combinations("foreground")) == 2


def test_tuning_finds_the_minimum_size_that_drops_the_specks_and_stores_it() -> None:
    images, labels = blobs_with_specks()
    model = make_threshold_model()
    grid = PostprocessGrid(thresholds=(0.5,), core_thresholds=(0.0,), min_sizes=(0, 8))
    result = tune(images, labels, model, grid=grid)
    assert [row["min_size"] for row in result.rows] == [8, 0]
    assert result.rows[0]["f1_50"] > result.rows[1]["f1_50"]
    assert result.best == {
        "threshold": 0.5,
        "seed_threshold": 0.5,  # a foreground model ignores it: the default, not tried
        "core_threshold": 0.0,
        "min_size": 8,
    }
    assert result.per_image.shape == (2, 3)
    np.testing.assert_allclose(result.per_image.mean(axis=1), [r["f1_50"] for r in result.rows])

    result.apply(model, "three blob images")
    assert model.metadata["postprocess"]["tuned_on"] == "three blob images"
    assert PredictConfig().for_model(model).min_size == 8
    # prediction with nothing given now drops the specks
    labels_found = predict(images[0], model).labels
    assert labels_found.max() == len(np.unique(labels[0])) - 1


def test_holdout_scores_choose_on_one_half_and_score_the_other() -> None:
    images, labels = blobs_with_specks(n=4)
    grid = PostprocessGrid(thresholds=(0.5,), core_thresholds=(0.0,), min_sizes=(0, 8))
    result = tune(images, labels, make_threshold_model(), grid=grid, rank_by="dsb_score")
    scores = result.holdout_scores(10)
    assert scores.shape == (10,) and np.all((scores >= 0) & (scores <= 1))
    one = tune(images[:1], labels[:1], make_threshold_model(), grid=grid)
    with pytest.raises(DataError, match="at least two images"):
        one.holdout_scores(3)


def test_bad_inputs_are_refused_before_any_prediction() -> None:
    images, labels = make_blobs(n=2)
    model = make_threshold_model()
    with pytest.raises(DataError, match="pair them up"):
        tune(images, labels[:1], model)
    with pytest.raises(DataError, match="no images"):
        tune([], [], model)
    with pytest.raises(DataError, match="no object"):
        tune(images, [np.zeros_like(label) for label in labels], model)
    with pytest.raises(DataError, match="must match their image"):
        tune(images, [labels[0][:20], labels[1]], model)
    with pytest.raises(DataError, match="2D integer"):
        tune(images, [labels[0].astype(float), labels[1]], model)
    with pytest.raises(ConfigError, match="rank_by"):
        tune(images, labels, model, rank_by="accuracy")


def test_events_report_progress_and_stop_cancels() -> None:
    images, labels = make_blobs(n=2)
    grid = PostprocessGrid(thresholds=(0.5,), core_thresholds=(0.0, 0.8), min_sizes=(8,))
    events = list(tune_events(images, labels, make_threshold_model(), grid=grid))
    assert [(p.done, p.total) for p in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    stop = threading.Event()
    stop.set()
    with pytest.raises(DataError, match="stopped"):
        tune(images, labels, make_threshold_model(), grid=grid, stop=stop)


def test_keyword_overrides_are_prediction_settings_only() -> None:
    images, labels = make_blobs(n=2)
    with pytest.raises(ConfigError, match=r"Unknown prediction setting\(s\) \['grid_size'\]"):
        tune(images, labels, make_threshold_model(), grid_size=3)
