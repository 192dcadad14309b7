"""Tests of ``napari-unet export`` (napari_unet.cli.export) through the real command line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core")
onnxruntime = pytest.importorskip("onnxruntime")

from napari_unet.checkpoint import load_model, save_model  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.io import write_png  # noqa: E402
from napari_unet.model import build_model  # noqa: E402


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    network = build_model(preset="tiny", base_filters=4, depth=2, in_channels=1).eval()
    return save_model(tmp_path / "tiny.pt", network, network.config, {"epochs": 1})


def test_export_onnx(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--model", str(model_file), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    x = np.random.default_rng(0).random((1, 1, 40, 52)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = load_model(model_file, device="cpu").network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-4, rtol=0)


def test_export_bioimageio_then_use_it_as_model(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sample = tmp_path / "sample.png"
    write_png(sample, (np.random.default_rng(1).random((70, 90)) * 255).astype(np.uint8))
    out = tmp_path / "tiny.zip"
    argv = [
        "export",
        "--model",
        str(model_file),
        "--format",
        "bioimageio",
        "--out",
        str(out),
        "--name",
        "tiny test model",
        "--author",
        "A. Person",
        "--sample",
        str(sample),
        "--tag",
        "nuclei",
    ]
    assert main(argv) == 0  # includes bioimage.io's own test of the package
    assert "passed bioimage.io's test" in capsys.readouterr().out
    with zipfile.ZipFile(out) as archive:
        assert np.load(archive.open("test_input.npy")).shape == (1, 1, 68, 68)
    # The package is a model wherever one is accepted, including `export` itself.
    assert main(["export", "--model", str(out), "--out", str(tmp_path / "again.onnx")]) == 0


def test_bad_model_and_format_are_user_errors(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(["export", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")])
        == 2
    )
    assert "error:" in capsys.readouterr().err
    assert main(["export", "--model", str(model_file), "--out", str(tmp_path / "x.bin")]) == 2
    assert "cannot tell the export format" in capsys.readouterr().err
    assert not list(tmp_path.glob("x.*"))


def test_export_checks_out_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    missing = str(tmp_path / "nope.pt")  # loading it would fail: never reached
    for out, message in [(tmp_path, "is a folder"), (a_file / "m.zip", "is a file, not a folder")]:
        assert main(["export", "--model", missing, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --out") and message in error
