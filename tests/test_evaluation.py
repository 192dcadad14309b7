"""Evaluation of a model on labelled images (napari_unet.evaluation)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import make_blobs, make_threshold_model
from napari_unet.errors import ConfigError, DataError
from napari_unet.evaluation import (
    CSV_COLUMNS,
    classify_modality,
    evaluate,
    overlay_image,
    resize_pair,
    score_labels_events,
    score_plane,
)
from napari_unet.io import read_image
from napari_unet.metrics import instance_metrics, pixel_metrics
from napari_unet.prediction import PredictConfig, predict, run_to_end

PIXEL = ("accuracy", "f1", "jaccard", "recall", "precision")
INSTANCE = ("dsb_score", "ap50", "ap75", "f1_50", "pq")


def test_scores_match_the_metrics_module() -> None:
    images, labels = make_blobs(n=3, shape=(40, 48))
    model = make_threshold_model()
    config = PredictConfig(threshold=0.5, min_size=0)
    report = evaluate(images, labels, model, config, names=["a", "b", "c"])
    assert set(report.summary) == {"n_images", "pixel", "instance"}
    assert set(report.summary["pixel"]) == set(PIXEL)
    assert set(report.summary["instance"]) == set(INSTANCE)
    assert report.summary["n_images"] == 3
    expected_pixel, expected_instance = [], []
    for row, image, truth in zip(report.rows, images, labels):
        result = predict(image, model, config)
        pixel = pixel_metrics(truth > 0, result.labels > 0)
        instance = instance_metrics(truth, result.labels)
        for key in PIXEL:
            assert row[key] == pytest.approx(pixel[key])
        for key in INSTANCE:
            assert row[key] == pytest.approx(instance[key])
        assert row["n_true"] == 4 and set(row) == set(CSV_COLUMNS)
        expected_pixel.append(pixel)
        expected_instance.append(instance)
    for key in PIXEL:
        assert report.summary["pixel"][key] == pytest.approx(
            np.mean([p[key] for p in expected_pixel])
        )
    for key in INSTANCE:
        mean = np.mean([p[key] for p in expected_instance])
        assert report.summary["instance"][key] == pytest.approx(mean)
    assert report.summary["instance"]["dsb_score"] > 0.5  # the blobs are found


def test_resize_protocol_compares_at_the_resized_size() -> None:
    images, labels = make_blobs(n=2, shape=(48, 64), rgb=True)
    model = make_threshold_model(in_channels=3)
    report = evaluate(images, labels, model, resize=32)
    assert all((row["height"], row["width"]) == (32, 32) for row in report.rows)
    image, truth = resize_pair(images[0], labels[0], 32)
    assert image.shape == (32, 32, 3) and truth.shape == (32, 32)
    assert set(np.unique(truth)) <= set(np.unique(labels[0]))  # nearest: no new label values
    expected = pixel_metrics(truth, predict(image, model).labels)
    assert report.rows[0]["f1"] == pytest.approx(expected["f1"])


def test_modalities_and_per_modality_summaries() -> None:
    rng = np.random.default_rng(0)
    # grey stored as RGB, as in the DSB: dark (fluorescence) and bright (brightfield)
    fluorescence = np.repeat(rng.integers(0, 60, (32, 32, 1)), 3, axis=-1).astype(np.uint8)
    brightfield = np.repeat(rng.integers(180, 230, (32, 32, 1)), 3, axis=-1).astype(np.uint8)
    stained = np.stack(
        [
            rng.integers(180, 240, (32, 32)),
            rng.integers(60, 120, (32, 32)),
            rng.integers(150, 210, (32, 32)),
        ],
        axis=-1,
    ).astype(np.uint8)
    assert classify_modality(fluorescence) == "fluorescence"
    assert classify_modality(brightfield) == "brightfield"
    assert classify_modality(stained) == "H&E"
    assert classify_modality(fluorescence[..., 0]) == "fluorescence"
    assert classify_modality(np.full((8, 8), 50_000, np.uint16)) == "brightfield"
    labels = [np.zeros((32, 32), np.uint16)] * 3
    report = evaluate(
        [fluorescence, brightfield, stained], labels, make_threshold_model(in_channels=3)
    )
    assert [row["modality"] for row in report.rows] == ["fluorescence", "brightfield", "H&E"]
    assert set(report.per_modality) == {"fluorescence", "brightfield", "H&E"}
    assert all(summary["n_images"] == 1 for summary in report.per_modality.values())
    table = report.format_table()
    assert "H&E" in table and "dsb_score" in table


def test_csv_overlays_and_label_files(tmp_path) -> None:
    images, labels = make_blobs(n=2, shape=(30, 36))
    report = evaluate(
        images,
        labels,
        make_threshold_model(),
        names=["one", "two"],
        overlay_dir=tmp_path / "overlays",
        labels_dir=tmp_path / "labels",
    )
    path = report.write_csv(tmp_path / "score.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["one", "two"]
    assert tuple(rows[0]) == CSV_COLUMNS
    assert float(rows[1]["dsb_score"]) == pytest.approx(report.rows[1]["dsb_score"], abs=1e-6)
    overlay = read_image(tmp_path / "overlays" / "one.png")
    assert overlay.shape == (30, 3 * 36 + 8, 3)
    assert read_image(tmp_path / "labels" / "two.tif").shape == (30, 36)
    assert overlay_image(images[0], labels[0], labels[0]).dtype == np.uint8


def test_bad_inputs_are_refused_before_any_output(tmp_path) -> None:
    images, labels = make_blobs(n=2, shape=(30, 36))
    model = make_threshold_model()
    overlays = tmp_path / "overlays"
    with pytest.raises(DataError, match="shape"):
        evaluate(images, [labels[0], labels[1][:20]], model, overlay_dir=overlays)
    assert not overlays.exists()  # the first image was not written either
    with pytest.raises(DataError, match="no images"):
        evaluate([], [], model)
    with pytest.raises(DataError, match="pair"):
        evaluate(images, labels[:1], model)
    with pytest.raises(DataError, match="integer"):
        evaluate(images[:1], [labels[0].astype(np.float32)], model)
    with pytest.raises(DataError, match="channel"):
        evaluate([np.zeros((30, 36, 3), np.uint8)], labels[:1], make_threshold_model(in_channels=2))


def test_multichannel_images_are_scored_like_their_channels_last_copies() -> None:
    images, labels = make_blobs(n=2, shape=(40, 48))
    # Two channels: the blobs, and a dimmer copy; the channel axis first, as in many stacks.
    stacks = [np.stack([image, image // 2]) for image in images]
    model = make_threshold_model(in_channels=2, gain=40.0)
    config = PredictConfig(threshold=0.5, min_size=0)
    first = evaluate(stacks, labels, model, config, channel_axis=0)
    last = evaluate([np.moveaxis(s, 0, -1) for s in stacks], labels, model, config, channel_axis=2)
    assert first.summary == last.summary
    assert first.summary["instance"]["ap50"] > 0.7
    with pytest.raises(DataError, match="channel"):
        evaluate(stacks, labels, make_threshold_model(in_channels=3), config, channel_axis=0)


def test_keyword_overrides_are_prediction_settings_only() -> None:
    images, labels = make_blobs(n=2, shape=(30, 36))
    model = make_threshold_model()
    everything_removed = evaluate(images, labels, model, min_size=10**6)
    assert everything_removed.summary["instance"]["f1_50"] == 0
    with pytest.raises(ConfigError, match=r"Unknown prediction setting\(s\) \['tile'\]; valid"):
        evaluate(images, labels, model, tile=64)


def test_pixel_scores_are_those_of_the_labels_a_user_gets() -> None:
    """One definition of pixel F1: the post-processed labels' foreground, in every path."""
    images, labels = make_blobs(n=1, shape=(40, 48))
    image, truth = images[0], labels[0]
    speck = (slice(38, 40), slice(0, 2))
    assert not truth[speck].any()
    image[speck] = 255  # a bright speck: over the threshold, under the minimum size
    model = make_threshold_model()
    config = PredictConfig(threshold=0.5, min_size=20)
    result = predict(image, model, config, return_probabilities=True)
    assert (result.probabilities[0][speck] > 0.5).all() and not result.labels[speck].any()

    row = evaluate([image], [truth], model, config).rows[0]
    pixel, instance = score_plane(truth, result.labels)
    assert row["f1"] == pytest.approx(pixel["f1"]) and row["dsb_score"] == instance["dsb_score"]
    assert row["f1"] > pixel_metrics(truth, result.probabilities[0] > 0.5)["f1"]
    # scoring the labels as they are (the Evaluate widget) gives the same numbers
    scores = run_to_end(score_labels_events(truth, result.labels))
    assert scores["pixel"]["f1"] == pytest.approx(row["f1"])
    assert scores["instance"]["dsb_score"] == pytest.approx(row["dsb_score"])


def test_label_stacks_are_scored_plane_by_plane() -> None:
    _, labels = make_blobs(n=2, shape=(32, 32))
    truth, prediction = np.stack(labels), np.stack([labels[0], labels[0]])
    events = score_labels_events(truth, prediction)
    progress = [next(events), next(events)]
    assert [(p.done, p.total) for p in progress] == [(1, 2), (2, 2)]
    scores = run_to_end(score_labels_events(truth, prediction))
    expected = [score_plane(t, p)[0]["f1"] for t, p in zip(truth, prediction)]
    assert scores["pixel"]["f1"] == pytest.approx(np.mean(expected))
    assert scores["instance"]["n_images"] == 2 and scores["pixel"]["f1"] < 1
    with pytest.raises(DataError, match="pick labels of the same image"):
        run_to_end(score_labels_events(truth, prediction[:, :16]))
    with pytest.raises(DataError, match="not an image"):
        run_to_end(score_labels_events(truth[0, 0], prediction[0, 0]))
