"""Result layers in a real viewer: Segment updates its previous result only while nobody
edited it (paint, fill, erase, new data), renamed it or removed it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import blob_pair, make_threshold_model
from napari_unet._widgets import SegmentWidget
from napari_unet._widgets._outputs import ResultLayers, is_prediction
from napari_unet._widgets._registry import REGISTRY

TIMEOUT_MS = 120_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture
def viewer(make_napari_viewer):
    REGISTRY.clear()
    REGISTRY.add(make_threshold_model(target="contour"), "threshold")
    viewer = make_napari_viewer()
    viewer.add_image(blob_pair(seed=4)[0], name="cells")
    yield viewer
    REGISTRY.clear()


def segment(viewer, widget: SegmentWidget | None = None, qtbot=None) -> SegmentWidget:
    """Dock the Segment widget (unless given) and run it on 'cells' to the end."""
    if widget is None:
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        widget.device.setCurrentText("cpu")
        widget.tile_size.setValue(64)
    assert widget.update_state() is None, widget.hint.text()
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    return widget


def labels_layers(viewer) -> list:
    return [layer for layer in viewer.layers if layer.name.startswith("cells segmentation")]


def test_an_unedited_result_is_updated_in_place_with_its_display_settings(viewer, qtbot):
    widget = segment(viewer, qtbot=qtbot)
    first = widget.output
    first.opacity = 0.3  # display settings are not edits
    first.visible = False
    assert first.data.max() > 0
    widget.min_size.setValue(10**5)  # other settings: every object removed
    segment(viewer, widget, qtbot)
    assert widget.output is first and labels_layers(viewer) == [first]
    assert first.data.max() == 0
    assert (first.opacity, first.visible) == (0.3, False)
    assert is_prediction(first)
    assert widget.status.text().startswith("Updated 'cells segmentation'")


def paint(layer) -> None:
    """A brush stroke, as napari's paint tool makes it."""
    layer.paint((5, 5), 99)


def fill(layer) -> None:
    """The fill bucket on the background."""
    layer.fill((0, 0), 98)


def set_data(layer) -> None:
    """New data from the console or another plugin."""
    layer.data = np.zeros_like(layer.data)


@pytest.mark.parametrize("edit", [paint, fill, set_data])
def test_an_edited_result_is_kept_and_the_run_adds_a_layer(viewer, qtbot, edit):
    widget = segment(viewer, qtbot=qtbot)
    corrected = widget.output
    edit(corrected)
    kept = corrected.data.copy()
    segment(viewer, widget, qtbot)
    assert widget.output is not corrected
    assert labels_layers(viewer) == [corrected, widget.output]
    assert widget.output.name == "cells segmentation [1]"
    np.testing.assert_array_equal(corrected.data, kept)  # the corrections are intact
    assert widget.status.text().startswith("Added 'cells segmentation [1]'")
    # The new result, unedited, is the one the next run updates; the corrected one stays.
    newest = widget.output
    segment(viewer, widget, qtbot)
    assert widget.output is newest and labels_layers(viewer) == [corrected, newest]
    np.testing.assert_array_equal(corrected.data, kept)


def test_another_models_result_is_kept_for_comparison(viewer, qtbot):
    widget = segment(viewer, qtbot=qtbot)
    first = widget.output
    entry = REGISTRY.add(make_threshold_model(target="contour"), "another threshold")
    widget.model.select(entry.name)
    segment(viewer, widget, qtbot)
    assert widget.output is not first and labels_layers(viewer) == [first, widget.output]
    assert widget.status.text().startswith("Added")


def test_a_renamed_or_removed_result_is_not_reused(viewer, qtbot):
    widget = segment(viewer, qtbot=qtbot)
    renamed = widget.output
    renamed.name = "threshold 0.5"  # kept to compare with the next run
    segment(viewer, widget, qtbot)
    assert widget.output is not renamed and widget.output.name == "cells segmentation"
    removed = widget.output
    viewer.layers.remove(removed)
    segment(viewer, widget, qtbot)
    assert widget.output is not removed and widget.output in viewer.layers


def test_a_new_scale_reaches_the_updated_result(viewer, qtbot):
    widget = segment(viewer, qtbot=qtbot)
    first = widget.output
    viewer.layers["cells"].scale = (0.5, 0.5)
    viewer.layers["cells"].translate = (3, 4)
    segment(viewer, widget, qtbot)
    assert widget.output is first
    assert tuple(first.scale) == (0.5, 0.5) and tuple(first.translate) == (3, 4)


def test_probability_layers_are_updated_with_their_labels(viewer, qtbot):
    widget = segment(viewer, qtbot=qtbot)
    widget.probabilities.setChecked(True)
    segment(viewer, widget, qtbot)  # the labels updated, the maps added
    maps = [viewer.layers["cells probability"], viewer.layers["cells boundary"]]
    segment(viewer, widget, qtbot)
    assert [viewer.layers["cells probability"], viewer.layers["cells boundary"]] == maps
    assert len(viewer.layers) == 4  # image, labels, two maps


def test_another_shape_gets_a_new_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    results = ResultLayers(viewer)
    small, replaced = results.show("labels", np.zeros((8, 8), np.uint16), "out")
    assert not replaced
    large, replaced = results.show("labels", np.ones((16, 16), np.uint16), "out")
    assert not replaced and large is not small and len(viewer.layers) == 2
    assert large.name == "out [1]"  # napari's name for a second "out"
    again, replaced = results.show("labels", np.full((16, 16), 2, np.uint16), "out")
    assert replaced and again is large and again.name == "out [1]"
    assert again.data.max() == 2 and len(viewer.layers) == 2
