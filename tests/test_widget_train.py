"""The Train widget in a real napari viewer: runs, live curves, stop, checks, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import blob_pair
from napari_unet._widgets import TrainWidget
from napari_unet._widgets._registry import POOR_DICE, REGISTRY
from napari_unet.checkpoint import TrainedModel
from napari_unet.process import PHASES
from napari_unet.training import MIN_PATCHES_PER_EPOCH

TIMEOUT_MS = 120_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(autouse=True)
def _empty_registry():
    REGISTRY.clear()
    yield
    REGISTRY.clear()


@pytest.fixture
def viewer_with_pair(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = blob_pair()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    return viewer


def dock(viewer) -> TrainWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    return widget


def tiny_settings(widget: TrainWidget, epochs: int = 2, steps: int = 2) -> None:
    widget.preset.setCurrentText("tiny")
    widget.epochs.setValue(epochs)
    widget.batch_size.setValue(2)
    widget.patch_size.setValue(32)
    widget.steps_per_epoch.setValue(steps)
    widget.device.setCurrentText("cpu")
    widget.update_state()


def test_train_two_epochs_draws_curves_and_registers_model(viewer_with_pair, qtbot, tmp_path):
    widget = dock(viewer_with_pair)
    row = widget.rows[0]
    assert row.image.layer().name == "cells"
    assert row.labels.layer().name == "cells labels"
    tiny_settings(widget)
    widget.contact_weight.setValue(10)
    widget.save_path.setText(str(tmp_path / "cells.pt"))
    assert widget.update_state() is None
    assert widget.start_button.isEnabled()

    widget.start()
    assert widget.running
    assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    result = widget.result
    assert result is not None and not result.cancelled
    assert len(result.history) == 2
    assert widget.curves.loss.series["train"].x == [1.0, 2.0]
    assert len(widget.curves.loss.series["val"].y) == 2
    assert len(widget.curves.quality.series["Dice"].y) == 2
    assert widget.progress.value() == widget.progress.maximum()
    assert (tmp_path / "cells.pt").is_file()
    assert (tmp_path / "cells_log.csv").is_file()
    entries = REGISTRY.entries()
    assert len(entries) == 1 and entries[0].model is result.model
    assert entries[0].name.startswith("cells")
    assert result.model.metadata["train_config"]["contact_weight"] == 10
    # The input layers are untouched and the widget is ready for another run.
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    assert entries[0].name in widget.status.text()  # poor or ready: see the tests below


def test_stop_mid_run_keeps_a_usable_model(viewer_with_pair, qtbot):
    widget = dock(viewer_with_pair)
    tiny_settings(widget, epochs=200, steps=2)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.curves.loss.series["train"].x) >= 1, timeout=TIMEOUT_MS)
    widget.stop()
    assert not widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    result = widget.result
    assert result.cancelled
    assert 1 <= len(result.history) < 200
    model = result.model
    assert isinstance(model, TrainedModel)
    with torch.no_grad():
        logits = model.network(torch.zeros(1, 1, 40, 40, device=model.device))
    assert logits.shape == (1, model.config.out_channels, 40, 40) and torch.isfinite(logits).all()
    assert model.config.target == "contour"  # the widget's default: separates touching nuclei
    assert REGISTRY.entries()[0].model is model
    assert widget.start_button.isEnabled()


def test_the_wait_before_the_first_step_names_each_phase_under_a_busy_bar(viewer_with_pair, qtbot):
    widget = dock(viewer_with_pair)
    tiny_settings(widget, epochs=1, steps=1)
    phases: list[str] = []
    widget.controls.step_started.connect(phases.append)
    widget.start()
    assert widget.progress.maximum() == 0  # busy, not a static 0 %
    assert widget.status.text() == PHASES["starting"]
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert phases == list(PHASES.values())
    assert widget.progress.maximum() == widget.progress.value() == 1


def test_stop_keeps_saying_stopping_and_no_step_starts_after_the_current_one(
    viewer_with_pair, qtbot
):
    widget = dock(viewer_with_pair)
    tiny_settings(widget, epochs=200, steps=50)  # stopped inside the first epoch
    seen: list[tuple[str, str]] = []

    def on_event(event) -> None:
        if event.kind == "step" and not widget.controls.stop_event.is_set():
            widget.stop()
        seen.append((event.kind, widget.status.text()))

    widget.controls.yielded.connect(on_event)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    after_stop = seen[1:]
    # The step running when Stop reached the child may finish; no other starts. Steps the
    # child finished before Stop reached it may still be on their way through the relay,
    # so the viewer can see a few more than one, never the 50 of the epoch.
    assert len([kind for kind, _ in after_stop if kind == "step"]) <= 4
    assert all(text == "Stopping after this step…" for _, text in after_stop), after_stop
    assert widget.result.cancelled
    assert widget.status.text().startswith("Stopped")


def test_a_poor_model_is_flagged_and_segment_keeps_its_model(viewer_with_pair, qtbot):
    _, segment = viewer_with_pair.window.add_plugin_dock_widget("napari-unet", "Segment")
    chosen = segment.model.combo.currentText()
    widget = dock(viewer_with_pair)
    tiny_settings(widget, epochs=1, steps=1)
    widget.learning_rate.setText("1e-7")  # one step that learns nothing
    widget.update_state()
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    dice = widget.result.model.metadata["val_metrics"]["dice"]
    assert dice < POOR_DICE
    (entry,) = REGISTRY.entries()
    assert entry.poor and entry.model is widget.result.model
    assert f"val Dice {dice:.3f}: poor" in widget.status.text()
    assert "Segment keeps its model" in widget.status.text()
    assert segment.model.combo.currentText() == chosen  # not switched to the poor model
    assert entry.name in segment.model.choices()  # but offered


def test_the_floor_on_an_epochs_patches_is_stated(make_napari_viewer):
    widget = dock(make_napari_viewer())
    assert widget.steps_per_epoch.value() == 0  # auto
    assert f"≥ {MIN_PATCHES_PER_EPOCH} patches" in widget.steps_per_epoch.specialValueText()


def test_the_time_budget_goes_into_the_config(viewer_with_pair):
    widget = dock(viewer_with_pair)
    assert widget.plan(snapshot=False).config.max_minutes is None  # "none"
    widget.max_minutes.setValue(2.5)
    assert widget.plan(snapshot=False).config.max_minutes == 2.5


def test_fine_tune_a_session_model_on_scribbles(viewer_with_pair, qtbot):
    widget = dock(viewer_with_pair)
    tiny_settings(widget, epochs=1, steps=1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    first = REGISTRY.entries()[0]

    # Scribbles: a few background (1) and object (2) strokes, the rest unannotated.
    _, labels = blob_pair()
    scribbles = np.zeros_like(labels)
    scribbles[labels > 0] = 2
    scribbles[::7, :] = np.where(labels[::7, :] == 0, 1, scribbles[::7, :])
    viewer_with_pair.layers["cells labels"].data = scribbles
    widget.label_mode.setCurrentIndex(2)
    widget.init_model.select(first.name)
    assert widget.update_state() is None
    assert not widget.preset.isEnabled()  # a fine-tuned model keeps its architecture
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.result is not None
    assert widget.result.model.metadata["init"] == "memory"
    assert len(REGISTRY.entries()) == 2


def test_invalid_settings_disable_start_before_any_thread(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    hint = widget.update_state()
    assert hint and "Add an Image layer" in hint
    assert not widget.start_button.isEnabled() and widget.hint.isVisibleTo(widget)

    image, labels = blob_pair()
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.zeros((32, 32), np.uint16), name="small labels")
    assert "shape" in widget.update_state()
    assert not widget.start_button.isEnabled()

    viewer.add_labels(np.zeros_like(labels), name="cells labels")
    widget.rows[0].match_labels()
    assert widget.rows[0].labels.layer().name == "cells labels"
    assert "empty" in widget.update_state()

    viewer.layers["cells labels"].data = labels
    tiny_settings(widget)
    assert widget.update_state() is None
    assert widget.start_button.isEnabled()

    widget.learning_rate.setText("fast please")
    assert "not a number" in widget.update_state()
    widget.learning_rate.setText("2")  # the core's TrainConfig refuses it
    assert "learning_rate" in widget.update_state()
    widget.learning_rate.setText("1e-3")
    widget.label_mode.setCurrentIndex(2)  # scribbles, but labels hold values up to 6
    assert "Scribble" in widget.update_state()
    viewer.layers["cells labels"].data = np.minimum(labels, 2)  # valid scribbles
    widget.contact_weight.setValue(5)  # but scribbles mark no separate objects
    assert "sparse scribbles" in widget.update_state()
    widget.contact_weight.setValue(1)
    viewer.layers["cells labels"].data = labels
    widget.label_mode.setCurrentIndex(0)
    widget.validation.setCurrentIndex(1)  # whole images need two planes
    assert "at least 2" in widget.update_state()
    widget.validation.setCurrentIndex(0)
    assert widget.update_state() is None
    assert widget.controls.worker is None  # nothing ever started


def test_error_in_the_run_is_reported_and_the_widget_recovers(viewer_with_pair, qtbot, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    widget = dock(viewer_with_pair)
    tiny_settings(widget, epochs=1, steps=1)
    widget.init_model.select(widget.init_model.FILE)
    widget.init_model.path_edit.setText(str(broken))
    assert widget.update_state() is None  # the file exists; reading it happens in the run
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.result is None
    assert "Training failed" in widget.status.text()
    assert widget.start_button.isEnabled()
    assert REGISTRY.entries() == []


@pytest.fixture
def viewer_with_volume(make_napari_viewer):
    from napari_unet.synthetic import nuclei_volume

    viewer = make_napari_viewer()
    image, labels = nuclei_volume((8, 32, 32), 3, anisotropy=2.0, diameter=(8, 10), seed=0)
    viewer.add_image(image, name="nuclei", scale=(2.0, 1.0, 1.0))
    viewer.add_labels(labels, name="nuclei labels", scale=(2.0, 1.0, 1.0))
    return viewer


def test_a_3d_model_trains_on_volume_layers_until_the_time_budget(viewer_with_volume, qtbot):
    widget = dock(viewer_with_volume)
    assert widget.dimensions.currentText() == "3D model"  # a volume without a time axis
    assert widget.patch_size.value() == 64  # not the 2D default of 256
    # The 3D recipe that splits crowded nuclei (README *Volumes*).
    assert (widget.target.currentText(), widget.contact_weight.value()) == ("distance", 5)
    tiny_settings(widget, epochs=5, steps=100_000)  # the budget ends the first epoch
    widget.patch_size.setValue(16)
    widget.max_minutes.setValue(0.1)  # 6 s, then one validation
    plan = widget.plan(snapshot=False)
    assert plan.config.model.ndim == 3 and plan.config.model.anisotropy == 2.0  # the scale
    assert (plan.config.model.target, plan.config.contact_weight) == ("distance", 5)
    assert plan.config.max_minutes == pytest.approx(0.1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    result = widget.result
    assert result is not None and result.stop_reason == "time budget"
    assert len(result.history) == 1  # validated once
    assert result.model.config.ndim == 3 and "time budget" in widget.status.text()
    assert REGISTRY.entries()[0].model is result.model
    # A 2D model on the planes stays possible; a 2D layer calls for a 2D model.
    widget.init_model.select(widget.init_model.DEFAULT)  # the bundled model is 2D
    assert "The model to start from is 2D" in widget.update_state()
    widget.dimensions.setCurrentText("2D model on the planes")
    assert widget.plan(snapshot=False).config.model.ndim == 2
    assert widget.patch_size.value() == 16  # a size the user chose stays
    assert (widget.target.currentText(), widget.contact_weight.value()) == ("contour", 1)
    viewer_with_volume.add_image(np.zeros((32, 32)), name="plane")
    viewer_with_volume.add_labels(np.zeros((32, 32), np.uint16), name="plane labels")
    widget.rows[0].image.set_layer(viewer_with_volume.layers["plane"])
    assert widget.dimensions.currentText() == "2D model on the planes"
    widget.dimensions.setCurrentText("3D model")
    assert "a 3D model trains on volumes" in widget.update_state()
