"""The documentation's screenshot of the three widgets docked in a 1280x800 window."""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def test_the_three_docked_widgets_are_saved_at_1280x800(make_napari_viewer, monkeypatch, tmp_path):
    # The committed docs/images picture is left alone (docs/make_screenshots.py --docked
    # regenerates it); the test shoots into tmp_path.
    committed = DOCS / "images" / "widgets_docked_1280x800.png"
    before = committed.stat().st_mtime_ns if committed.exists() else None
    monkeypatch.syspath_prepend(str(DOCS))
    make_screenshots = pytest.importorskip("make_screenshots")
    viewer = make_napari_viewer(show=True)
    path = make_screenshots.shoot_docked(viewer, tmp_path)
    assert path == tmp_path / "widgets_docked_1280x800.png"
    picture = iio.imread(path)
    assert picture.shape[:2] == (800, 1280)
    assert picture[..., :3].std() > 10  # drawn, not blank
    segmentation = [layer for layer in viewer.layers if layer.name == "nuclei segmentation"]
    assert len(segmentation) == 1 and segmentation[0].data.max() > 10
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == before
    sys.modules.pop("make_screenshots", None)
