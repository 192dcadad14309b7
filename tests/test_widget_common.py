"""Shared widget parts in a real viewer: docks that scroll and fit a laptop screen."""

from __future__ import annotations

from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

from napari_unet._widgets._common import ScrollingDock

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
