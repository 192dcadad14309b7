"""Save a screenshot of each napari-unet widget docked in napari to ``docs/images/``.

Run it under a display (a virtual one on a headless machine)::

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/make_screenshots.py
    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/make_screenshots.py --docked
    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/make_screenshots.py --volume

``--volume`` saves only ``volume_3d.png``: napari's 3D view of a generated Z-stack
(anisotropy 2) segmented as 3D objects by the bundled 2D model (:func:`shoot_volume`).
``--docked`` saves only ``widgets_docked_1280x800.png``: the three widgets docked
together in a 1280x800 window, as on a laptop, after segmenting and scoring the sample
(:func:`shoot_docked`, also run by ``tests/test_widget_screenshot.py``, which saves it in a
temporary folder: the committed picture changes only when this script runs). Without it, it
also opens the bundled nuclei sample, trains a small model for a few epochs with the
Train widget (so the live curves have something to show), segments the image
with it in the Segment widget, scores the result in the Evaluate widget, and
grabs the whole window after each step. The bundled default model is used for
segmentation when it is installed, the freshly trained one otherwise.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    # Fresh napari settings in a temporary file: the screenshots do not depend on (or
    # change) the user's preferences, and only errors pop up as notifications.
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp()) / "settings.yaml")

import napari
from napari.settings import get_settings
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).parent / "images"
SIZE = (1500, 1000)
#: A laptop screen: the three docks must fit it with every control reachable.
DOCKED_SIZE = (1280, 800)


def wait_for(widget: object, timeout_s: float = 900.0) -> None:
    """Process Qt events until ``widget.running`` is False."""
    app = QApplication.instance()
    end = time.monotonic() + timeout_s
    while widget.running:  # type: ignore[attr-defined]
        if time.monotonic() > end:
            raise TimeoutError(f"{type(widget).__name__} still running after {timeout_s} s")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the last repaints land
        app.processEvents()
        time.sleep(0.01)


def segment_sample(viewer: napari.Viewer, segment: object) -> None:
    """Segment the sample image with the bundled model and wait for the result."""
    if segment.model.DEFAULT in segment.model.choices():
        segment.model.select(segment.model.DEFAULT)
    segment.image.set_layer(viewer.layers["nuclei"])
    segment.update_state()
    segment.start()
    wait_for(segment)


def shoot(viewer: napari.Viewer, name: str, out: Path = OUT) -> Path:
    """Save the whole window (canvas, layer list and docks) as ``<out>/<name>.png``."""
    path = out / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")
    return path


def shoot_docked(viewer: napari.Viewer, out: Path = OUT) -> Path:
    """Dock Train, Segment and Evaluate together at 1280x800, segment and score, and shoot.

    ``viewer`` must be shown; the picture goes to ``out`` (``docs/images/`` by default,
    a temporary folder in the test). Segment uses the bundled model (the newest session
    model when it is not installed); the sample's ground truth is the Evaluate widget's truth.
    """
    out.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.resize(*DOCKED_SIZE)
    viewer.open_sample("napari-unet", "nuclei")
    widgets = [
        viewer.window.add_plugin_dock_widget("napari-unet", name)[1]
        for name in ("Train", "Segment", "Evaluate")
    ]
    train, segment, evaluate = widgets
    segment_sample(viewer, segment)
    evaluate.update_state()  # prediction: the segmentation; truth: the loaded labels
    evaluate.start()
    wait_for(evaluate)
    train.update_state()
    return shoot(viewer, "widgets_docked_1280x800", out)


def shoot_volume(viewer: napari.Viewer) -> Path:
    """Segment a generated nuclei Z-stack in 3D and shoot napari's 3D view of it.

    The stack (24 x 128 x 128, Z step twice the XY pixel) holds 12 sparse nuclei; the
    bundled 2D model segments it in the default ``volume`` mode, and both layers carry
    the voxel size as their scale, so the 3D view shows the nuclei with their true shape.
    """
    from napari_unet import segment
    from napari_unet.synthetic import nuclei_volume

    anisotropy = 2.0
    image, _ = nuclei_volume((24, 128, 128), 12, anisotropy=anisotropy, seed=3)
    labels = segment(image, "default", anisotropy=anisotropy)
    scale = (anisotropy, 1.0, 1.0)
    viewer.add_image(image, name="stack", scale=scale, colormap="gray", opacity=0.6)
    viewer.add_labels(labels, name="3D objects", scale=scale)
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    # Tilted so that the Z extent (and one colour per nucleus through it) shows.
    viewer.scene.camera.angles = (0.0, 40.0, 60.0)
    viewer.scene.camera.zoom *= 0.85
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "volume_3d.png"
    viewer.screenshot(str(path), canvas_only=True, size=(700, 700))
    print(f"wrote {path} ({int(labels.max())} objects)")
    return path


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    get_settings().application.gui_notification_level = "error"
    if "--docked" in sys.argv[1:]:
        viewer = napari.Viewer(title="napari-unet")
        shoot_docked(viewer)
        viewer.close()
        return 0
    if "--volume" in sys.argv[1:]:
        viewer = napari.Viewer(title="napari-unet")
        shoot_volume(viewer)
        viewer.close()
        return 0
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(*SIZE)
    viewer.open_sample("napari-unet", "nuclei")

    train_dock, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    train.preset.setCurrentText("tiny")
    train.target.setCurrentText("contour")  # learned boundaries split touching nuclei
    train.epochs.setValue(12)
    train.batch_size.setValue(4)
    train.patch_size.setValue(128)
    train.steps_per_epoch.setValue(8)
    train.learning_rate.setText("3e-3")
    train.device.setCurrentText("cpu")
    train.update_state()
    train.start()
    wait_for(train)
    shoot(viewer, "train_widget")

    segment_dock, segment = viewer.window.add_plugin_dock_widget(
        "napari-unet", "Segment", tabify=True
    )
    segment_sample(viewer, segment)
    viewer.layers["nuclei labels"].visible = False  # the ground truth
    shoot(viewer, "segment_widget")

    evaluate_dock, evaluate = viewer.window.add_plugin_dock_widget(
        "napari-unet", "Evaluate", tabify=True
    )
    evaluate.prediction.set_layer(segment.output)
    evaluate.truth.set_layer(viewer.layers["nuclei labels"])
    evaluate.update_state()
    evaluate.start()
    wait_for(evaluate)
    shoot(viewer, "evaluate_widget")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
