"""The Evaluate widget: the table shows the metrics module's numbers; CSV export."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from skimage.draw import disk

from conftest import make_threshold_model
from napari_unet import metrics
from napari_unet._widgets import EvaluateWidget
from napari_unet._widgets._evaluate import (
    SEGMENT,
    SUMMARY_ROWS,
    THRESHOLD_COLUMNS,
    pick_roles,
)
from napari_unet._widgets._outputs import is_prediction, prediction_metadata
from napari_unet._widgets._registry import REGISTRY
from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig
from napari_unet.model import build_model
from napari_unet.prediction import predict
from napari_unet.synthetic import nuclei_volume
from napari_unet.tuning import tune
from test_tuning import blobs_with_specks

TIMEOUT_MS = 60_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def truth_and_prediction(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth with four discs; a prediction that shifts one, merges none, misses one."""
    truth = np.zeros((size, size), np.uint16)
    prediction = np.zeros_like(truth)
    for index, (row, col) in enumerate([(12, 12), (12, 45), (45, 12), (45, 45)], start=1):
        truth[disk((row, col), 8, shape=truth.shape)] = index
    prediction[disk((12, 12), 8, shape=truth.shape)] = 3
    prediction[disk((15, 45), 8, shape=truth.shape)] = 1  # shifted: IoU ~0.6
    prediction[disk((45, 12), 6, shape=truth.shape)] = 7  # too small: IoU ~0.56
    prediction[disk((30, 30), 3, shape=truth.shape)] = 9  # a false positive
    return truth, prediction


def dock(viewer) -> EvaluateWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Evaluate")
    return widget


def table_values(widget: EvaluateWidget) -> dict[str, str]:
    return {
        widget.table.item(row, 0).text(): widget.table.item(row, 1).text()
        for row in range(widget.table.rowCount())
    }


def test_evaluate_shows_the_metrics_module_numbers_and_exports_csv(
    make_napari_viewer, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    truth, prediction = truth_and_prediction()
    viewer.add_labels(prediction, name="prediction")
    viewer.add_labels(truth, name="truth")
    widget = dock(viewer)
    widget.prediction.set_layer(viewer.layers["prediction"])
    widget.truth.set_layer(viewer.layers["truth"])
    assert widget.update_state() is None
    assert not widget.export_button.isEnabled()

    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    pixel = metrics.pixel_metrics(truth, prediction)
    instance = metrics.instance_metrics(truth, prediction)
    expected = {**{f"pixel_{k}": v for k, v in pixel.items()}, **instance}
    shown = table_values(widget)
    for label, section, key in SUMMARY_ROWS:
        value = pixel[key] if section == "pixel" else instance.get(key, 1)
        assert float(shown[label]) == pytest.approx(value, abs=5e-5), label
    assert 0 < instance["dsb_score"] < 1  # a case with hits and misses
    assert widget.thresholds.rowCount() == len(metrics.THRESHOLDS)
    tp_column = THRESHOLD_COLUMNS.index("TP")
    assert [int(widget.thresholds.item(r, tp_column).text()) for r in range(10)] == instance["tp"]

    assert widget.export_button.isEnabled()
    path = widget.export_csv(tmp_path / "scores.csv")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["metric", "value"]
    exported = {name: float(value) for name, value in rows[1:]}
    for key in ("pixel_f1", "pixel_jaccard", "dsb_score", "ap50", "ap75", "f1_50", "pq"):
        assert exported[key] == pytest.approx(expected[key])
    assert exported["tp@0.50"] == instance["tp"][0]
    # Nothing was added or changed in the viewer.
    assert [layer.name for layer in viewer.layers] == ["prediction", "truth"]
    np.testing.assert_array_equal(viewer.layers["truth"].data, truth)


def test_stacks_are_scored_plane_by_plane_on_request(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    truth, prediction = truth_and_prediction()
    viewer.add_labels(np.stack([truth, truth]), name="truth")
    viewer.add_labels(np.stack([prediction, truth]), name="prediction")
    widget = dock(viewer)
    assert widget.prediction.layer().name == "prediction"  # the newest
    widget.stack.setCurrentIndex(widget.stack.findData("planes"))
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    expected = metrics.mean_instance_metrics([(truth, prediction), (truth, truth)])
    assert widget.scores["instance"]["dsb_score"] == pytest.approx(expected["dsb_score"])
    assert widget.scores["instance"]["n_images"] == 2
    assert widget.progress.value() == widget.progress.maximum()


def test_a_3d_pair_is_scored_in_3d_with_objects_counted_once(make_napari_viewer, qtbot):
    image, truth = nuclei_volume((16, 48, 48), 3, diameter=(10.0, 14.0), seed=4)
    prediction = truth.copy()
    prediction[:, :, 24:] = 0  # objects cut, some lost
    viewer = make_napari_viewer()
    viewer.add_labels(truth, name="truth")
    viewer.add_labels(prediction, name="prediction")
    widget = dock(viewer)
    assert widget.stack.currentData() == "volume"  # 3D objects by default
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    expected = metrics.instance_metrics(truth, prediction)
    assert widget.scores["instance"]["n_true"] == 3  # nuclei, not their sections
    assert widget.scores["instance"]["n_pred"] == expected["n_pred"]
    assert widget.scores["instance"]["dsb_score"] == pytest.approx(expected["dsb_score"])
    assert widget.scores["pixel"]["f1"] == pytest.approx(
        metrics.pixel_metrics(truth > 0, prediction > 0)["f1"]
    )


def test_a_3d_model_segments_and_scores_a_volume_in_3d(make_napari_viewer, qtbot):
    REGISTRY.clear()
    image, truth = nuclei_volume((20, 64, 64), 6, anisotropy=2.0, diameter=(12.0, 18.0), seed=1)
    entry = REGISTRY.add(make_threshold_model(ndim=3, anisotropy=2.0), "threshold 3D")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei", scale=(2.0, 1.0, 1.0))
    viewer.add_labels(truth, name="truth", scale=(2.0, 1.0, 1.0))
    widget = dock(viewer)
    widget.mode.setCurrentText(SEGMENT)
    widget.model.select(entry.name)
    assert widget.update_state() is None
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    REGISTRY.clear()
    output = viewer.layers["nuclei segmentation"]
    assert output.data.shape == image.shape and tuple(output.scale) == (2.0, 1.0, 1.0)
    expected = predict(image, entry.model, anisotropy=2.0).labels
    np.testing.assert_array_equal(output.data, expected)
    instance = metrics.instance_metrics(truth, expected)
    assert widget.scores["instance"]["n_true"] == 6
    assert widget.scores["instance"]["n_pred"] == instance["n_pred"]


def test_invalid_choices_disable_evaluate(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    assert "ground-truth" in widget.update_state()
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="only")
    assert widget.truth.layer() is viewer.layers["only"]  # a loaded layer is ground truth
    assert "Add the predicted Labels layer" in widget.update_state()
    widget.prediction.set_layer(viewer.layers["only"])
    assert "same layer" in widget.update_state()
    viewer.add_labels(np.zeros((12, 10), np.uint8), name="other")
    widget.prediction.set_layer(viewer.layers["only"])
    widget.truth.set_layer(viewer.layers["other"])
    assert "must match" in widget.update_state()
    assert not widget.run_button.isEnabled()
    with pytest.raises(Exception, match="nothing to export"):
        widget.export_csv("never.csv")


def test_segment_with_a_model_then_score(make_napari_viewer, qtbot):
    REGISTRY.clear()
    config = ModelConfig(in_channels=1, base_filters=4, depth=2)
    entry = REGISTRY.add(TrainedModel(build_model(config).eval(), config), "untrained")
    viewer = make_napari_viewer()
    truth, _ = truth_and_prediction()
    viewer.add_image((truth > 0).astype(np.float32), name="cells")
    viewer.add_labels(truth, name="truth")
    widget = dock(viewer)
    widget.mode.setCurrentText(SEGMENT)
    assert not widget.prediction.isVisibleTo(widget) and widget.image.isVisibleTo(widget)
    widget.model.select(entry.name)
    assert widget.update_state() is None
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    REGISTRY.clear()

    predicted = viewer.layers["cells segmentation"].data
    assert predicted.shape == truth.shape
    expected = metrics.instance_metrics(truth, predicted)
    assert widget.scores["instance"]["dsb_score"] == pytest.approx(expected["dsb_score"])
    pixel = metrics.pixel_metrics(truth, predicted)
    assert widget.scores["pixel"]["f1"] == pytest.approx(pixel["f1"])


def test_tune_adds_a_copy_of_the_model_with_the_best_post_processing(make_napari_viewer, qtbot):
    REGISTRY.clear()
    model = make_threshold_model()
    entry = REGISTRY.add(model, "blobs")
    images, labels = blobs_with_specks()
    viewer = make_napari_viewer()
    viewer.add_image(np.stack(images), name="cells")
    viewer.add_labels(np.stack(labels), name="truth")
    widget = dock(viewer)
    assert not widget.tune_button.isVisibleTo(widget)  # the compare mode has no model
    widget.mode.setCurrentText(SEGMENT)
    widget.model.select(entry.name)
    assert widget.tune_button.isEnabled()
    widget.tune_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    entries = REGISTRY.entries()
    assert "added model 'blobs #1 tuned #2'" in widget.status.text()

    # ground truth without objects: the run fails with the reason, and adds no model
    viewer.add_labels(np.zeros_like(np.stack(labels)), name="empty")
    widget.truth.set_layer(viewer.layers["empty"])
    widget.model.select(entry.name)
    widget.tune_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.status.text().startswith("Tuning failed: the labels hold no object")
    assert len(REGISTRY.entries()) == 2
    REGISTRY.clear()

    assert [e.name for e in entries] == ["blobs #1", "blobs #1 tuned #2"]
    tuned = entries[1].model.metadata["postprocess"]
    expected = tune(images, labels, model).best  # the same grid, run headless
    assert {key: tuned[key] for key in expected} == expected
    assert "3 plane(s) of 'cells'" in tuned["tuned_on"]
    assert "postprocess" not in model.metadata  # the chosen model is left as it was


def test_model_mode_applies_test_time_augmentation(make_napari_viewer, qtbot):
    REGISTRY.clear()
    torch.manual_seed(1)
    config = ModelConfig(in_channels=1, base_filters=4, depth=2)
    model = TrainedModel(build_model(config).eval(), config)
    truth, _ = truth_and_prediction()
    image = (truth > 0).astype(np.float32)
    with torch.no_grad():  # centre the logits so that about half the pixels are foreground
        probabilities = predict(image, model, return_probabilities=True).probabilities[0]
        logit = np.log(probabilities / (1 - probabilities))
        model.network.head.bias -= float(np.median(logit))
    entry = REGISTRY.add(model, "untrained")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(truth, name="truth")
    widget = dock(viewer)
    widget.mode.setCurrentText(SEGMENT)
    assert widget.tta.isVisibleTo(widget)
    widget.model.select(entry.name)
    widget.tta.setChecked(True)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    REGISTRY.clear()
    # An untrained network is not flip-invariant, so the averaged result is its own.
    expected = predict(image, model, tta=True).labels
    assert not np.array_equal(expected, predict(image, model).labels)
    np.testing.assert_array_equal(viewer.layers["cells segmentation"].data, expected)
    widget.mode.setCurrentIndex(0)
    assert not widget.tta.isVisibleTo(widget)


def test_roles_follow_the_stated_rule_as_layers_come_and_go(make_napari_viewer, qtbot):
    """Issue 18: Evaluate opened after segmenting the sample, then more layers."""
    REGISTRY.clear()
    entry = REGISTRY.add(make_threshold_model(in_channels=3), "bright")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "nuclei")  # "nuclei" + "nuclei labels" (loaded)
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    segment.model.select(entry.name)
    segment.device.setCurrentText("cpu")
    segment.start()
    qtbot.waitUntil(lambda: not segment.running, timeout=TIMEOUT_MS)
    truth, produced = viewer.layers["nuclei labels"], viewer.layers["nuclei segmentation"]
    assert is_prediction(produced) and not is_prediction(truth)

    widget = dock(viewer)  # opened after segmenting: the produced layer is the prediction
    assert (widget.prediction.layer(), widget.truth.layer()) == (produced, truth)
    assert widget.roles.text() == (
        "Prediction: 'nuclei segmentation' · Ground truth: 'nuclei labels'"
    )
    # A second segmentation becomes the prediction; the truth stays on the loaded labels.
    produced.name = "first segmentation"  # kept: the next run adds a layer, not updates it
    segment.start()
    qtbot.waitUntil(lambda: not segment.running, timeout=TIMEOUT_MS)
    second = viewer.layers[-1]
    assert is_prediction(second)
    assert (widget.prediction.layer(), widget.truth.layer()) == (second, truth)
    # A painted layer is ground truth; removing it brings the loaded labels back.
    painted = viewer.add_labels(np.zeros(truth.data.shape, np.uint8), name="painted")
    assert (widget.prediction.layer(), widget.truth.layer()) == (second, painted)
    viewer.layers.remove(painted)
    viewer.layers.remove(second)
    assert (widget.prediction.layer(), widget.truth.layer()) == (produced, truth)
    # Swap exchanges the roles, and says so.
    widget.swap_button.click()
    assert (widget.prediction.layer(), widget.truth.layer()) == (truth, produced)
    assert widget.roles.text().startswith("Prediction: 'nuclei labels'")
    widget.swap_button.click()
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    REGISTRY.clear()
    pixel = metrics.pixel_metrics(truth.data, produced.data)
    assert widget.scores["pixel"]["recall"] == pytest.approx(pixel["recall"])
    assert widget.scores["pixel"]["precision"] == pytest.approx(pixel["precision"])


def test_without_produced_layers_the_newest_is_the_prediction():
    class Layer:  # only the metadata matters to the rule
        def __init__(self, produced: bool = False) -> None:
            self.metadata = prediction_metadata("m") if produced else {}

    old, new, made = Layer(), Layer(), Layer(produced=True)
    assert pick_roles([]) == (None, None)
    assert pick_roles([old]) == (None, old)
    assert pick_roles([old, new]) == (new, old)
    assert pick_roles([made, old, new]) == (made, new)
    assert pick_roles([made]) == (made, None)
    older_made = Layer(produced=True)
    assert pick_roles([older_made, made]) == (made, older_made)
