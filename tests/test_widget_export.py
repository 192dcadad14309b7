"""The Segment widget's Export button: the selected model to ONNX / bioimage.io."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.checkpoint import load_model
from napari_unet.data import prepare_plane
from napari_unet.io import SAMPLES_DIR, list_images, read_image

TIMEOUT_MS = 120_000


def test_export_button_writes_an_onnx_file_that_matches_the_model(
    make_napari_viewer, qtbot, tmp_path
):
    onnxruntime = pytest.importorskip("onnxruntime")
    import torch

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert widget.export_button.isEnabled()
    out = tmp_path / "nuclei.onnx"
    widget.export_model(out)
    qtbot.waitUntil(lambda: widget.export_worker is None, timeout=TIMEOUT_MS)
    assert "Exported" in widget.status.text(), widget.status.text()

    model = load_model(widget.model.value(), device="cpu")
    image = read_image(list_images(SAMPLES_DIR / "images")[0])[:96, :80]
    x = prepare_plane(image, model.config.in_channels, model.config.normalization)[None]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        torch_logits = model.network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_a_failed_export_is_reported_and_the_button_comes_back(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.export_model(tmp_path / "model.txt")  # neither .zip nor .onnx
    qtbot.waitUntil(lambda: widget.export_worker is None, timeout=TIMEOUT_MS)
    assert "Export failed" in widget.status.text()
    assert widget.export_button.isEnabled()
