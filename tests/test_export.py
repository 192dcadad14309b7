"""Tests of napari_unet.export (and bioimageio.writing): ONNX graphs and packages of tiny models."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core")
onnxruntime = pytest.importorskip("onnxruntime")

from napari_unet.bioimageio.writing import export_bioimageio, make_test_input  # noqa: E402
from napari_unet.checkpoint import TrainedModel, save_model  # noqa: E402
from napari_unet.config import ModelConfig  # noqa: E402
from napari_unet.errors import (  # noqa: E402
    ConfigError,
    ModelFileError,
)
from napari_unet.export import export_model, export_onnx  # noqa: E402
from napari_unet.model import build_model  # noqa: E402


def tiny_model(**overrides: object) -> TrainedModel:
    """A tiny model (base_filters 4, depth 2) with non-default weights and BatchNorm statistics."""
    torch.manual_seed(0)
    settings = dict(base_filters=4, depth=2, in_channels=3) | overrides
    config = ModelConfig.from_preset("tiny", **settings)
    network = build_model(config).train()
    with torch.no_grad():
        for _ in range(3):  # move the BatchNorm running statistics away from 0/1
            network(torch.rand(2, config.in_channels, 24, 24) * 3)
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    metadata = {"epochs": 3, "best_val_loss": 0.25, "val_metrics": {"dice": 0.8, "iou": 0.7}}
    return TrainedModel(network.eval(), config, metadata)


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    return tiny_model()


@pytest.fixture(scope="module")
def package(model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # bioimage.io's test runs separately below; skipping it here keeps the fixture fast.
    return export_bioimageio(model, tmp_path_factory.mktemp("bmz") / "model.zip", test=False)


@pytest.mark.parametrize(
    "overrides",
    [{"in_channels": 1}, {"architecture": "unetpp", "target": "contour"}],
    ids=["unet-grey", "unetpp-contour"],
)
def test_onnx_matches_pytorch_at_two_sizes(overrides: dict, tmp_path: Path) -> None:
    trained = tiny_model(**overrides)
    path = export_onnx(trained, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    channels = trained.config.in_channels
    for shape in [
        (1, channels, 64, 48),
        (2, channels, 37, 61),
    ]:  # the second is not a multiple of 4
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = trained.network(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == expected.shape
        assert expected.std() > 1e-3  # a real, non-constant output
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_onnx_records_normalisation_and_postprocessing(tmp_path: Path) -> None:
    import json

    import onnx

    trained = tiny_model(in_channels=1)
    graph = onnx.load(str(export_onnx(trained, tmp_path / "model.onnx")))
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["normalization"]) == trained.config.normalization.to_dict()
    assert ModelConfig.from_dict(json.loads(props["napari_unet_config"])) == trained.config
    assert props["postprocessing"] == "sigmoid"


def test_package_passes_bioimageio_core_test(package: Path) -> None:
    from bioimageio.core import test_model

    summary = test_model(str(package))
    failed = [d.name for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


def test_package_contents(package: Path, model: TrainedModel) -> None:
    import yaml

    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        card = archive.read("README.md").decode()
        test_input = np.load(archive.open("test_input.npy"))
        test_output = np.load(archive.open("test_output.npy"))
    assert {"weights_torchscript.pt", "weights.onnx", "cover.png", "README.md"} <= names
    assert set(rdf["weights"]) == {"torchscript", "onnx"}
    steps = {step["id"]: step.get("kwargs", {}) for step in rdf["inputs"][0]["preprocessing"]}
    assert steps["scale_range"]["min_percentile"] == model.config.normalization.low
    assert steps["scale_range"]["max_percentile"] == model.config.normalization.high
    assert "sigmoid" in [step["id"] for step in rdf["outputs"][0]["postprocessing"]]
    assert any(cite.get("doi") == "10.1007/978-3-319-24574-4_28" for cite in rdf["cite"])
    assert rdf["authors"] and rdf["license"] == "BSD-3-Clause" and rdf["covers"]
    assert rdf["config"]["napari_unet"]["model"] == model.config.to_dict()
    assert "## Validation" in card and "dice" in card
    # The test output is our model's probability for the raw test input.
    assert test_input.shape == (1, 3, 128, 128) and test_output.shape == (1, 1, 128, 128)
    assert test_output.min() >= 0.0 and test_output.max() <= 1.0 and test_output.std() > 0


def test_export_runs_bioimageio_test_and_uses_a_given_card(tmp_path: Path) -> None:
    card = tmp_path / "card.md"
    card.write_text("# My nuclei model\n\n## Validation\n\nChecked by hand.\n")
    trained = tiny_model(in_channels=1, normalization={"mode": "minmax"})
    path = export_bioimageio(
        trained,
        tmp_path / "grey.zip",
        name="grey nuclei",
        authors=["A. Person"],
        documentation=card,
    )
    with zipfile.ZipFile(path) as archive:
        assert archive.read("README.md").decode() == card.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_sample_crop_is_a_valid_size() -> None:
    config = ModelConfig.from_preset("tiny", in_channels=1)  # depth 4: multiples of 16
    crop = make_test_input(config, np.random.default_rng(0).random((100, 90)))
    assert crop.shape == (1, 1, 80, 80) and crop.dtype == np.float32


def test_export_model_infers_format_and_refuses_unknown(
    model: TrainedModel, tmp_path: Path
) -> None:
    path = export_model(model, tmp_path / "m.onnx")
    assert path.is_file()
    with pytest.raises(ConfigError, match="cannot tell the export format"):
        export_model(model, tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="unknown"):
        export_model(model, tmp_path / "m.bin", format="tflite")  # type: ignore[arg-type]


def test_export_from_a_model_file(model: TrainedModel, tmp_path: Path) -> None:
    model_file = save_model(tmp_path / "m.pt", model.network, model.config, model.metadata)
    assert export_model(model_file, tmp_path / "m.onnx", "onnx").is_file()


def test_imported_foreign_network_cannot_be_exported(tmp_path: Path) -> None:
    foreign = TrainedModel(torch.nn.Identity(), ModelConfig(in_channels=1))
    with pytest.raises(ModelFileError, match="not a napari-unet network"):
        export_onnx(foreign, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_export_events_report_progress_and_stop_without_writing(
    model: TrainedModel, tmp_path: Path
) -> None:
    import threading

    from napari_unet.export import export_events

    events = export_events(model, tmp_path / "m.zip", test=False)
    seen = []
    while True:
        try:
            seen.append(next(events))
        except StopIteration as finished:
            assert finished.value == tmp_path / "m.zip" and finished.value.is_file()
            break
    assert [p.done for p in seen] == [0, 1, 2, 3] and {p.total for p in seen} == {4}

    stop = threading.Event()
    events = export_events(model, tmp_path / "stopped.zip", stop=stop, test=False)
    next(events)
    stop.set()
    with pytest.raises(StopIteration) as finished:
        while True:
            next(events)
    assert finished.value.value is None
    assert not list(tmp_path.glob("*stopped*"))


def test_the_bundled_model_card_ships_inside_the_package() -> None:
    from importlib.resources import files

    from napari_unet.bioimageio.card import DEFAULT_MODEL_CARD

    shipped = files("napari_unet") / "samples" / "model_card.md"
    assert Path(str(shipped)) == DEFAULT_MODEL_CARD and DEFAULT_MODEL_CARD.is_file()
    assert DEFAULT_MODEL_CARD.read_text().startswith("# Model card")


def test_a_3d_model_exports_to_onnx_with_zyx_axes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", in_channels=1, ndim=3, anisotropy=2.0, base_filters=4, depth=2, target="contour"
    )
    network = build_model(config).train()
    with torch.no_grad():
        network(torch.rand(2, 1, 8, 16, 16) * 3)
    trained = TrainedModel(network.eval(), config)
    path = export_onnx(trained, tmp_path / "m3d.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = [(1, 1, 8, 32, 24), (2, 1, 5, 19, 23)]  # the second: no multiple of 2 or 4
    for shape in shapes:
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = trained.network(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (shape[0], 2, *shape[2:])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    import onnx

    graph = onnx.load(str(path))
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "depth", "height", "width"]
    assert "3D unet" in graph.doc_string and "(N, 1, Z, Y, X)" in graph.doc_string


def test_a_3d_model_is_refused_by_bioimageio_export_naming_onnx(tmp_path: Path) -> None:
    config = ModelConfig.from_preset("tiny", in_channels=1, ndim=3, base_filters=2, depth=1)
    trained = TrainedModel(build_model(config).eval(), config)
    with pytest.raises(ConfigError, match="3D model.*2D models.*ONNX"):
        export_model(trained, tmp_path / "m3d.zip")
    assert not (tmp_path / "m3d.zip").exists()
