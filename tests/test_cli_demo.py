"""``napari-unet demo``: the bundled model on the bundled samples, end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import tifffile

from napari_unet import io
from napari_unet.cli import main


def test_demo_writes_labels_overlays_and_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    stems = sorted(p.stem for p in io.list_images(io.SAMPLES_DIR / "images"))
    assert sorted(p.stem for p in (out / "labels").glob("*.tif")) == stems
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == stems
    labels = tifffile.imread(out / "labels" / f"{stems[0]}.tif")
    assert labels.shape == io.read_image(io.SAMPLES_DIR / "labels" / f"{stems[0]}.png").shape
    assert labels.max() > 10  # nuclei found
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == stems
    assert all(float(row["f1"]) > 0.8 for row in rows)
    printed = capsys.readouterr().out
    assert "dsb_score" in printed and "fluorescence" in printed


def test_demo_with_a_missing_model_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


def test_demo_checks_its_outputs_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "labels").write_text("not a folder")
    missing = str(tmp_path / "nope.pt")  # loading it would fail: never reached
    for out, message in [(a_file, "is a file, not a folder"), (tmp_path / "demo", "labels'")]:
        assert main(["demo", "--out", str(out), "--model", missing]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --out") and message in error
