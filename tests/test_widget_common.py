"""Shared widget parts in a real viewer: docks that scroll and fit a laptop screen; run
controls whose busy bar waits before it animates."""

from __future__ import annotations

from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

from napari_unet._widgets._common import RunControls, ScrollingDock

CONTROLS = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit)


def test_three_docks_fit_a_1280x800_window_with_every_control_reachable(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    viewer.open_sample("napari-unet", "nuclei")
    docks = [
        viewer.window.add_plugin_dock_widget("napari-unet", name)
        for name in ("Train", "Segment", "Evaluate")
    ]
    qtbot.wait(200)  # let the layouts settle
    assert window.width() <= 1280 and window.height() <= 800
    for dock, widget in docks:
        assert isinstance(widget, ScrollingDock)
        assert dock.height() >= ScrollingDock.MIN_HEIGHT, widget
        viewport = widget.scroll_area.viewport()
        controls = [c for c in widget.content.findChildren(CONTROLS) if c.isVisibleTo(widget)]
        assert len(controls) > 5
        for control in controls:
            widget.scroll_area.ensureWidgetVisible(control, 0, 0)
            seen = QRect(viewport.mapTo(window, QPoint(0, 0)), viewport.size())
            where = QRect(control.mapTo(window, QPoint(0, 0)), control.size())
            assert seen.contains(where.center()), (type(widget).__name__, control)
            assert window.rect().contains(where.center())


def quick_run(stop):
    """A run that yields one count at once, then ends."""
    yield 1
    return "done"


def test_a_busy_bar_with_a_delay_shows_the_name_at_once_and_animates_only_if_the_wait_lasts(
    qtbot,
):
    controls = RunControls("Run", "Failed", busy_delay_ms=50)
    qtbot.addWidget(controls)
    controls.show_busy("Loading the model…")
    # The name at once, over a still bar (an animated one repaints the window all along).
    assert controls.status.text() == "Loading the model…"
    assert controls.progress.maximum() == 1 and controls.progress.value() == 0
    qtbot.waitUntil(lambda: controls.progress.maximum() == 0, timeout=5_000)
    controls.show_busy("Preparing…")  # busy already: stays busy
    assert controls.progress.maximum() == 0
    controls.show_progress(1, 4)  # a count ends the wait
    assert (controls.progress.value(), controls.progress.maximum()) == (1, 4)


def test_a_run_shorter_than_the_busy_delay_never_animates_the_bar(qtbot):
    controls = RunControls("Run", "Failed", busy_delay_ms=60_000)
    qtbot.addWidget(controls)
    maxima: list[int] = []
    results: list[str] = []

    def ended() -> bool:
        maxima.append(controls.progress.maximum())
        return not controls.running

    controls.run(quick_run, message="Working…", on_yielded=print, on_returned=results.append)
    assert controls.status.text() == "Working…"
    qtbot.waitUntil(ended, timeout=10_000)
    assert results == ["done"] and 0 not in maxima
    assert controls.progress.maximum() == controls.progress.value() == 1


def test_without_a_delay_the_bar_is_busy_at_once(qtbot):
    controls = RunControls("Run", "Failed")
    qtbot.addWidget(controls)
    controls.show_busy("Starting…")
    assert controls.progress.maximum() == 0
