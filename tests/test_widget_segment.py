"""The Segment widget in a real viewer: 2D, RGB, multichannel, stacks, dask, stop, errors,
and the human-in-the-loop cycle (segment, correct, fine-tune, segment again)."""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from conftest import blob_pair, make_threshold_model
from napari_unet import metrics
from napari_unet._widgets import SegmentWidget, TrainWidget, _lazy, _segment
from napari_unet._widgets._registry import REGISTRY
from napari_unet._widgets._segment import segment_layer
from napari_unet.checkpoint import TrainedModel, default_model_path, load_model
from napari_unet.config import ModelConfig
from napari_unet.errors import DataError
from napari_unet.events import run_to_end
from napari_unet.modality import classify_modality as classify
from napari_unet.model import build_model
from napari_unet.prediction import PredictConfig, segment
from napari_unet.synthetic import nuclei_volume
from napari_unet.training import TrainConfig, train

TIMEOUT_MS = 120_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def tiny_model() -> TrainedModel:
    """A 4-filter U-Net that learned 'bright disc = object' in a few seconds."""
    pairs = [blob_pair(seed=seed) for seed in range(4)]
    config = TrainConfig(
        model=ModelConfig(in_channels=1, base_filters=4, depth=2),
        epochs=12,
        batch_size=4,
        learning_rate=1e-2,
        patch_size=32,
        steps_per_epoch=6,
        val_fraction=0.25,
        early_stopping_patience=None,
        device="cpu",
    )
    return train([p[0] for p in pairs], [p[1] for p in pairs], config).model


@pytest.fixture
def viewer(make_napari_viewer, tiny_model):
    REGISTRY.clear()
    REGISTRY.add(tiny_model, "tiny test model")
    yield make_napari_viewer()
    REGISTRY.clear()


def threshold_model() -> TrainedModel:
    """The same known contour model on every call (conftest's weights are fixed)."""
    return make_threshold_model(target="contour")


def dock(viewer) -> SegmentWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.device.setCurrentText("cpu")
    widget.tile_size.setValue(64)
    return widget


def run(widget: SegmentWidget, qtbot) -> None:
    assert widget.update_state() is None, widget.hint.text()
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_segment_2d_adds_labels_and_leaves_the_input_alone(viewer, qtbot):
    image, truth = blob_pair(seed=7)
    layer = viewer.add_image(image, name="cells", scale=(0.5, 0.5), translate=(10, 20))
    widget = dock(viewer)
    assert widget.model.value() is REGISTRY.entries()[0].model  # the session model is chosen
    run(widget, qtbot)

    np.testing.assert_array_equal(layer.data, image)
    output = viewer.layers["cells segmentation"]
    assert output.name == widget.output.name
    assert type(output).__name__ == "Labels"
    assert output.data.shape == image.shape
    assert tuple(output.scale) == (0.5, 0.5) and tuple(output.translate) == (10, 20)
    n_objects = len(np.unique(output.data)) - 1
    assert n_objects >= 3
    # The objects sit on the discs: most predicted pixels are true object pixels.
    assert (truth[output.data > 0] > 0).mean() > 0.8
    assert widget.run_button.isEnabled()
    assert "objects" in widget.status.text()


def test_probabilities_and_rgb(viewer, qtbot):
    image, _ = blob_pair(seed=3)
    viewer.add_image(np.stack([image] * 3, axis=-1), name="colour", rgb=True)
    widget = dock(viewer)
    assert not widget.channel_axis.isEnabled()
    widget.probabilities.setChecked(True)
    run(widget, qtbot)
    assert viewer.layers["colour segmentation"].data.shape == image.shape
    probability = viewer.layers["colour probability"]
    assert probability.data.shape == image.shape
    assert probability.data.min() >= 0 and probability.data.max() <= 1


def test_compiled_network_gives_the_same_labels_in_the_worker_thread(viewer, qtbot):
    image, _ = blob_pair(seed=5)
    viewer.add_image(image, name="cells")
    widget = dock(viewer)
    run(widget, qtbot)
    eager = viewer.layers["cells segmentation"].data.copy()
    widget.compile.setChecked(True)
    assert widget.config().compile
    # The warnings machinery is process-wide, so this also sees the worker thread's warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(widget, qtbot)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    assert "failed" not in widget.status.text()
    # The first result, unedited, took the compiled run's labels (see test_widget_outputs).
    assert widget.status.text().startswith("Updated 'cells segmentation'")
    np.testing.assert_array_equal(viewer.layers["cells segmentation"].data, eager)


def test_stack_is_segmented_plane_by_plane_with_progress(viewer, qtbot):
    stack = np.stack([blob_pair(seed=s)[0] for s in range(3)])
    viewer.add_image(stack, name="stack")
    widget = dock(viewer)
    widget.stack.setCurrentIndex(widget.stack.findData("planes"))
    run(widget, qtbot)
    labels = viewer.layers["stack segmentation"].data
    assert labels.shape == stack.shape
    for plane in range(3):
        single = labels[plane]
        assert len(np.unique(single)) > 2
    # Labels are unique across planes (one Labels layer for the whole stack).
    ids = [set(np.unique(labels[p])) - {0} for p in range(3)]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    assert widget.progress.maximum() == widget.progress.value()


def test_a_volume_becomes_3d_objects_with_the_image_scale(viewer, qtbot):
    image, truth = nuclei_volume((16, 64, 64), 4, anisotropy=2.0, diameter=(12.0, 16.0), seed=3)
    viewer.add_image(image, name="nuclei", scale=(1.0, 0.5, 0.5), translate=(0, 5, 5))
    widget = dock(viewer)
    assert widget.stack.currentData() == "volume"  # 3D objects by default
    assert widget.config().anisotropy == 2.0  # Z step 1 over pixels of 0.5
    REGISTRY.add(threshold_model(), "threshold")
    widget.model.combo.setCurrentText("threshold")
    run(widget, qtbot)
    output = viewer.layers["nuclei segmentation"]
    assert tuple(output.scale) == (1.0, 0.5, 0.5) and tuple(output.translate) == (0, 5, 5)
    assert output.data.shape == image.shape
    assert output.data.max() == 4  # one id per nucleus across Z
    expected = segment(image, threshold_model(), anisotropy=2.0, tile_size=64, overlap=16)
    np.testing.assert_array_equal(output.data, expected)
    widget.stack.setCurrentIndex(widget.stack.findData("planes"))
    run(widget, qtbot)
    assert viewer.layers[-1].data.max() > 4 * 4  # a new id in every plane


def test_dask_stack_gives_the_numpy_result(viewer, qtbot):
    stack = np.stack([blob_pair(seed=s)[0] for s in range(3)])
    viewer.add_image(stack, name="numpy")
    viewer.add_image(da.from_array(stack, chunks=(1, 32, 32)), name="lazy")
    widget = dock(viewer)
    widget.stack.setCurrentIndex(widget.stack.findData("planes"))  # dask: plane by plane
    widget.image.set_layer(viewer.layers["numpy"])
    run(widget, qtbot)
    widget.image.set_layer(viewer.layers["lazy"])
    run(widget, qtbot)
    eager = viewer.layers["numpy segmentation"].data
    lazy = viewer.layers["lazy segmentation"].data
    assert isinstance(lazy, np.ndarray) and lazy.shape == stack.shape
    # One labelling for both: unique across planes and numbered 1..N.
    np.testing.assert_array_equal(lazy, eager)
    np.testing.assert_array_equal(np.unique(lazy), np.arange(lazy.max() + 1))


def lazy_stack() -> da.Array:
    return da.from_array(np.stack([blob_pair(seed=s)[0] for s in range(3)]), chunks=(1, 32, 32))


def scratch_folders(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith("napari-unet-")]


def test_large_dask_result_is_shown_from_disk_and_its_folder_removed(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_lazy, "IN_MEMORY_LIMIT", 0)  # every result counts as large
    config = PredictConfig(tile_size=64, overlap=16, device="cpu")
    segmentation, _ = run_to_end(
        segment_layer(lazy_stack(), tiny_model, config, False, None, threading.Event())
    )
    assert not isinstance(segmentation.labels, np.ndarray)  # read from the temporary Zarr
    labels = segmentation.labels[:]
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert len(scratch_folders(tmp_path)) == 1
    del segmentation
    gc.collect()
    assert scratch_folders(tmp_path) == []  # removed with the arrays that used it


def test_stopped_or_failed_dask_runs_leave_no_scratch(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = PredictConfig(tile_size=64, overlap=16, device="cpu")
    stop = threading.Event()
    events = segment_layer(lazy_stack(), tiny_model, config, False, None, stop)
    next(events)
    stop.set()
    segmentation, _ = run_to_end(events)
    assert segmentation.cancelled and not segmentation.labels.any()
    assert scratch_folders(tmp_path) == []
    with pytest.raises(DataError, match="RGB"):  # refused before any block runs
        run_to_end(segment_layer(lazy_stack(), tiny_model, config, True, None, threading.Event()))
    broken = lazy_stack().astype(np.float32)
    broken[1, 2, 2] = np.nan  # found by a block task, once the run has started
    with pytest.raises(DataError, match="NaN"):
        run_to_end(segment_layer(broken, tiny_model, config, False, None, threading.Event()))
    assert scratch_folders(tmp_path) == []


def test_multichannel_layer_with_a_channel_axis(viewer, qtbot):
    two_channel = TrainedModel(
        build_model(ModelConfig(in_channels=2, base_filters=4, depth=2)).eval(),
        ModelConfig(in_channels=2, base_filters=4, depth=2),
    )
    entry = REGISTRY.add(two_channel, "two channels")
    image, _ = blob_pair()
    viewer.add_image(np.stack([image, 255 - image]), name="multi", scale=(3, 0.5, 0.5))
    widget = dock(viewer)
    widget.model.select(entry.name)
    widget.channel_axis.setCurrentIndex(1)  # axis 0
    assert widget.channel_axis.currentData() == 0
    run(widget, qtbot)
    output = viewer.layers["multi segmentation"]
    assert output.data.shape == image.shape
    assert tuple(output.scale) == (0.5, 0.5)


def test_stop_mid_stack_keeps_the_planes_done(viewer, qtbot):
    stack = np.stack([blob_pair(size=128, seed=s % 4)[0] for s in range(60)])
    viewer.add_image(stack, name="long")
    widget = dock(viewer)
    widget.stack.setCurrentIndex(widget.stack.findData("planes"))
    widget.tile_size.setValue(32)  # 25 small tiles a plane, so Stop lands mid-stack
    widget.start()
    # 25 tiles a plane: wait until the first two planes are done.
    qtbot.waitUntil(lambda: widget.progress.value() > 50, timeout=TIMEOUT_MS)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    output = widget.output
    assert output.name == "long segmentation (stopped)"
    assert output.data.shape == stack.shape
    assert output.data[0].any() and not output.data[-1].any()
    assert widget.run_button.isEnabled()


def test_errors_are_reported_and_the_widget_recovers(viewer, qtbot):
    image, _ = blob_pair()
    viewer.add_image(np.stack([image, image]), name="two channels")
    widget = dock(viewer)
    widget.channel_axis.setCurrentIndex(1)  # 2 channels, but the model takes 1
    run(widget, qtbot)
    assert "failed" in widget.status.text() and "channel" in widget.status.text()
    assert widget.output is None
    assert [layer.name for layer in viewer.layers] == ["two channels"]
    assert widget.run_button.isEnabled()


def test_invalid_settings_disable_segment(make_napari_viewer, tmp_path):
    REGISTRY.clear()
    viewer = make_napari_viewer()
    widget = dock(viewer)
    assert "Add an Image layer" in widget.update_state()
    viewer.add_image(np.zeros((16, 16), np.uint8), name="img")
    if widget.model.DEFAULT not in widget.model.choices():
        assert "model file" in widget.update_state()
    widget.model.select(widget.model.FILE)
    widget.model.path_edit.setText(str(tmp_path / "missing.pt"))
    assert "does not exist" in widget.update_state()
    assert not widget.run_button.isEnabled()
    widget.model.path_edit.setText("")
    assert "Choose a model file (.pt, or a bioimage.io .zip)" in widget.update_state()


def test_the_model_dialog_offers_pt_files_and_bioimageio_packages(
    make_napari_viewer, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog, QPushButton

    package = tmp_path / "model.zip"
    package.write_bytes(b"")
    asked = []

    def pick(parent, caption, folder, filters):
        asked.append(filters)
        return str(package), filters.split(";;")[0]

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(pick))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.uint8), name="img")
    widget = dock(viewer)
    widget.model.select(widget.model.FILE)
    browse = [b for b in widget.model.findChildren(QPushButton) if b.text() == "Browse…"]
    browse[0].click()
    assert asked and asked[0].startswith("Models (*.pt *.zip)")
    assert widget.model.value() == package and widget.update_state() is None


def test_segment_correct_fine_tune_segment_again(viewer, qtbot):
    """The human-in-the-loop cycle from the widgets alone."""
    image, truth = blob_pair(seed=12)  # objects also in the held-out validation strip
    viewer.add_image(image, name="cells")
    segment = dock(viewer)
    run(segment, qtbot)
    corrected = viewer.layers["cells segmentation"]
    # "Correct" with the brush: paint the true objects in, erase what is not one.
    corrected.data = truth.astype(corrected.data.dtype)

    _, trainer = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    trainer.rows[0].image.set_layer(viewer.layers["cells"])
    trainer.rows[0].labels.set_layer(corrected)
    trainer.init_model.select(REGISTRY.entries()[0].name)
    trainer.epochs.setValue(1)
    trainer.steps_per_epoch.setValue(2)
    trainer.batch_size.setValue(2)
    trainer.patch_size.setValue(32)
    trainer.device.setCurrentText("cpu")
    assert trainer.update_state() is None, trainer.hint.text()
    trainer.start()
    qtbot.waitUntil(lambda: not trainer.running, timeout=TIMEOUT_MS)
    assert len(REGISTRY.entries()) == 2

    # The Segment widget follows the newest model; segmenting again adds a new layer.
    assert segment.model.value() is REGISTRY.entries()[-1].model
    run(segment, qtbot)
    assert segment.output.name == "cells segmentation [1]"
    np.testing.assert_array_equal(corrected.data, truth)  # the corrected layer is kept
    assert isinstance(trainer, TrainWidget)


def test_post_processing_defaults_to_the_values_tuned_for_the_model(viewer):
    widget = dock(viewer)
    config = widget.config()
    settings = ("threshold", "min_size", "seed_threshold", "core_threshold")
    assert [getattr(config, name) for name in settings] == [None] * 4
    # the session model has no tuned values: the fields show the defaults it will use
    assert widget.threshold.text() == widget.seed_threshold.text() == "tuned: 0.5"
    assert widget.min_size.text() == "tuned: 8 px" and widget.core_threshold.text() == "tuned: off"
    widget.threshold.setValue(0.3)
    widget.min_size.setValue(0)
    widget.seed_threshold.setValue(0.6)
    widget.core_threshold.setValue(0.8)
    config = widget.config()
    assert [getattr(config, name) for name in settings] == [0.3, 0, 0.6, 0.8]


@pytest.mark.skipif(not default_model_path().is_file(), reason="the bundled model is not installed")
def test_bundled_model_segments_the_nuclei_sample(make_napari_viewer, qtbot):
    REGISTRY.clear()
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "nuclei")
    widget = dock(viewer)
    widget.tile_size.setValue(0)  # automatic
    widget.image.set_layer(viewer.layers["nuclei"])
    widget.model.select(widget.model.DEFAULT)
    assert widget.model.value() == "default"
    # the values tuned for the bundled model, read in the background
    tuned = load_model("default").metadata["postprocess"]
    qtbot.waitUntil(lambda: widget.threshold.text() == f"tuned: {tuned['threshold']:g}")
    assert widget.core_threshold.text() == f"tuned: {tuned['core_threshold']:g}"
    assert widget.min_size.text() == f"tuned: {tuned['min_size']} px"
    widget.threshold.setValue(0.3)
    assert widget.threshold.text() == "0.30"
    widget.threshold.setValue(0.0)
    run(widget, qtbot)
    truth = viewer.layers["nuclei labels"].data
    predicted = viewer.layers["nuclei segmentation"].data
    assert metrics.instance_metrics(truth, predicted)["dsb_score"] > 0.5


def test_a_model_file_is_read_once_for_two_runs(viewer, qtbot, tmp_path, tiny_model, monkeypatch):
    from napari_unet._widgets import _registry

    reads = []
    real_load = _registry.load_model

    def counting_load(path, device="auto"):
        reads.append(Path(path))
        return real_load(path, device=device)

    monkeypatch.setattr(_registry, "load_model", counting_load)
    _registry.MODEL_CACHE.clear()
    path = tiny_model.save(tmp_path / "tiny.pt")
    image, _ = blob_pair(seed=3)
    viewer.add_image(image, name="cells")
    widget = dock(viewer)
    widget.model.select(widget.model.FILE)
    widget.model.path_edit.setText(str(path))
    run(widget, qtbot)
    run(widget, qtbot)
    assert reads == [path]
    # The second run updated the first, unedited result (see test_widget_outputs).
    assert len([layer for layer in viewer.layers if "segmentation" in layer.name]) == 1
    # A new version of the file is read again.
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    run(widget, qtbot)
    assert reads == [path, path]
    _registry.MODEL_CACHE.clear()


def test_loading_a_model_file_shows_a_busy_bar_with_its_name(
    viewer, qtbot, tmp_path, tiny_model, monkeypatch
):
    from napari_unet._widgets._registry import MODEL_CACHE

    MODEL_CACHE.clear()
    monkeypatch.setattr(_segment, "BUSY_DELAY_MS", 0)  # busy at once (the test is quick)
    path = tiny_model.save(tmp_path / "tiny.pt")
    image, _ = blob_pair(seed=3)
    viewer.add_image(image, name="cells")
    widget = dock(viewer)
    widget.model.select(widget.model.FILE)
    widget.model.path_edit.setText(str(path))
    widget.tile_size.setValue(32)  # several tiles: counts follow the loading step
    # Choosing the model loads it in the background (for its tuned values); forget it.
    qtbot.waitUntil(lambda: widget.threshold.specialValueText() != _segment.TUNED)
    MODEL_CACHE.clear()
    seen: list[tuple[str, int]] = []
    widget.controls.yielded.connect(
        lambda _: seen.append((widget.status.text(), widget.progress.maximum()))
    )
    widget.start()
    assert widget.status.text() == "Segmenting 'cells'…"
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert seen[0] == ("Loading the model…", 0)
    assert all(maximum > 0 for _, maximum in seen[1:])
    # The model is cached now: the next run has no loading step.
    seen.clear()
    run(widget, qtbot)
    assert seen and "Loading the model…" not in [text for text, _ in seen]


def test_a_single_tile_shows_no_count(viewer, qtbot):
    image, _ = blob_pair(seed=3)
    viewer.add_image(image, name="cells")
    widget = dock(viewer)  # 64 px tiles: the image is one tile
    texts: list[str] = []
    widget.controls.yielded.connect(lambda _: texts.append(widget.status.text()))
    run(widget, qtbot)
    assert texts and set(texts) == {"Segmenting 'cells'…"}  # "1/1" would repaint for nothing
    assert widget.status.text().startswith("Added 'cells segmentation'")


def test_an_export_shows_a_busy_bar_until_it_ends(viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(_segment, "BUSY_DELAY_MS", 0)  # busy at once (the export is quick)
    widget = dock(viewer)
    widget.export_model(tmp_path / "model.txt")  # refused by the exporter, in the worker
    assert widget.progress.maximum() == 0
    assert widget.status.text().startswith("Exporting the model to")
    qtbot.waitUntil(lambda: widget.export_worker is None, timeout=TIMEOUT_MS)
    assert widget.progress.maximum() == 1


def test_segment_follows_a_new_model_unless_it_is_flagged_poor(viewer, tiny_model):
    widget = dock(viewer)
    assert widget.model.combo.currentText() == "tiny test model #1"
    poor = REGISTRY.add(tiny_model, "one step", poor=True)
    assert widget.model.combo.currentText() == "tiny test model #1"
    assert poor.name in widget.model.choices()
    good = REGISTRY.add(tiny_model, "trained")
    assert widget.model.combo.currentText() == good.name
    # A Segment widget opened later starts on the newest model that is not poor.
    REGISTRY.add(tiny_model, "another step", poor=True)
    assert dock(viewer).model.combo.currentText() == good.name


def test_a_3d_model_segments_a_volume_layer_natively(viewer, qtbot):
    image, truth = nuclei_volume((20, 64, 64), 6, anisotropy=2.0, diameter=(12.0, 18.0), seed=1)
    viewer.add_image(image, name="nuclei", scale=(1.0, 0.5, 0.5), translate=(0, 5, 5))
    widget = dock(viewer)
    model = make_threshold_model(ndim=3, anisotropy=2.0)
    REGISTRY.add(model, "threshold 3D")
    widget.model.combo.setCurrentText("threshold 3D")
    assert widget.config().anisotropy == 2.0  # from the layer's scale
    run(widget, qtbot)
    output = viewer.layers["nuclei segmentation"]
    assert tuple(output.scale) == (1.0, 0.5, 0.5) and tuple(output.translate) == (0, 5, 5)
    assert output.data.shape == image.shape
    expected = segment(image, model, anisotropy=2.0, tile_size=64, overlap=16)
    np.testing.assert_array_equal(output.data, expected)
    # one id per nucleus across Z: each object spans several planes
    ids = np.unique(output.data)[1:]
    assert min(len(np.unique(np.nonzero(output.data == i)[0])) for i in ids) >= 3
    assert abs(len(ids) - 6) <= 2
    # the same volume as a dask layer: read into memory and segmented in 3D as well
    viewer.add_image(da.from_array(image, chunks=(4, 64, 64)), name="lazy", scale=(1, 0.5, 0.5))
    widget.image.set_layer(viewer.layers["lazy"])
    run(widget, qtbot)
    np.testing.assert_array_equal(np.asarray(viewer.layers["lazy segmentation"].data), expected)


def test_a_3d_model_with_a_2d_image_or_planes_says_what_to_do(viewer, qtbot):
    image, _ = blob_pair()
    viewer.add_image(image, name="plane")
    widget = dock(viewer)
    REGISTRY.add(make_threshold_model(ndim=3), "threshold 3D")
    widget.model.combo.setCurrentText("threshold 3D")
    hint = widget.update_state()
    assert hint is not None and "a 3D model segments (Z, Y, X) volumes" in hint
    assert not widget.run_button.isEnabled()
    viewer.add_image(np.stack([image] * 4), name="stack")
    widget.image.set_layer(viewer.layers["stack"])
    assert widget.update_state() is None
    widget.stack.setCurrentIndex(widget.stack.findData("planes"))
    assert "3D model cannot" in widget.update_state()
    widget.stack.setCurrentIndex(widget.stack.findData("volume"))
    # a 2D model takes the 2D image again
    widget.image.set_layer(viewer.layers["plane"])
    widget.model.select(REGISTRY.add(threshold_model(), "threshold 2D").name)
    assert widget.update_state() is None


def test_tuned_values_shown_are_those_of_the_chosen_images_modality(make_napari_viewer):
    from napari_unet import io

    REGISTRY.clear()
    model = threshold_model()  # a grey model; the rule reads the layer's colour
    model.metadata["postprocess"] = {
        "threshold": 0.7,
        "per_modality": {"H&E": {"threshold": 0.55}},
    }
    REGISTRY.add(model, "per-modality model")
    viewer = make_napari_viewer()
    pairs = io.find_pairs(io.SAMPLES_DIR / "images", io.SAMPLES_DIR / "labels")
    images = {classify(io.read_image(path)): io.read_image(path) for path, _ in pairs}
    viewer.add_image(images["fluorescence"][..., 0], name="fluorescence")
    viewer.add_image(images["H&E"], name="stained", rgb=True)
    widget = dock(viewer)
    widget.image.set_layer(viewer.layers["fluorescence"])
    widget.model.select("per-modality model")
    assert widget.threshold.text() == "tuned: 0.7"
    # Shown for the image chosen when the values are shown (the model chosen or reloaded).
    widget.image.set_layer(viewer.layers["stained"])
    widget.show_tuned_values()
    assert widget.threshold.text() == "tuned: 0.55"
    REGISTRY.clear()


def test_the_result_appears_with_the_run_ended(viewer, qtbot):
    """The layer, the status, the bar and the buttons change together (one window
    repaint, tens of ms under software GL, instead of two)."""
    viewer.add_image(blob_pair(seed=3)[0], name="cells")
    widget = dock(viewer)
    seen: list[tuple[bool, bool, int]] = []

    def on_inserted(event) -> None:
        bar = widget.progress
        seen.append((widget.running, widget.run_button.isEnabled(), bar.maximum() - bar.value()))

    viewer.layers.events.inserted.connect(on_inserted)
    run(widget, qtbot)
    assert seen == [(False, True, 0)]
