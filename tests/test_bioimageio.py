"""Tests of napari_unet.bioimageio: reading our own, foreign and hostile bioimage.io packages."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core")
yaml = pytest.importorskip("yaml")

from napari_unet.bioimageio.reading import PackageNetwork, TensorLayout  # noqa: E402
from napari_unet.bioimageio.writing import export_bioimageio  # noqa: E402
from napari_unet.checkpoint import TrainedModel, load_model  # noqa: E402
from napari_unet.config import ModelConfig  # noqa: E402
from napari_unet.data import normalize  # noqa: E402
from napari_unet.errors import ModelFileError  # noqa: E402
from napari_unet.model import UNet, build_model  # noqa: E402


def tiny_model(**overrides: object) -> TrainedModel:
    """A tiny model (base_filters 4, depth 2) with non-default weights and BatchNorm statistics."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", **(dict(base_filters=4, depth=2, in_channels=3) | overrides)
    )
    network = build_model(config).train()
    with torch.no_grad():
        for _ in range(3):  # move the BatchNorm running statistics away from 0/1
            network(torch.rand(2, config.in_channels, 24, 24) * 3)
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return TrainedModel(network.eval(), config, {"epochs": 3, "note": "tiny"})


@pytest.fixture(scope="module")
def original() -> TrainedModel:
    return tiny_model(target="contour")


@pytest.fixture(scope="module")
def package(original: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bioimageio(original, tmp_path_factory.mktemp("bmz") / "model.zip", test=False)


def unpacked(package: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The package extracted to ``folder``: the rdf path and its parsed content."""
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    rdf = folder / "rdf.yaml"
    return rdf, yaml.safe_load(rdf.read_text())


def write_rdf(rdf: Path, content: dict[str, Any]) -> Path:
    """Write an edited description; file hashes are dropped since files were changed."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "sha256"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    rdf.write_text(yaml.safe_dump(strip(content), sort_keys=False))
    return rdf


def network_outputs(model: TrainedModel, image: np.ndarray) -> torch.Tensor:
    """The network's output on ``image`` normalised as ``model`` says."""
    x = torch.from_numpy(normalize(image, model.config.normalization)[None])
    with torch.no_grad():
        return model.network(x)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((3, 45, 70)) * 200).astype(np.float32)  # not a multiple of 4


def test_own_package_round_trip_is_the_native_network(
    package: Path, original: TrainedModel, image: np.ndarray
) -> None:
    imported = load_model(package, device="cpu")  # through checkpoint.load_model
    assert isinstance(imported.network, UNet)
    assert imported.config == original.config
    assert imported.metadata["note"] == "tiny"
    assert imported.metadata["bioimageio"]["weights_format"].startswith("native")
    assert imported.source == str(package)
    torch.testing.assert_close(network_outputs(imported, image), network_outputs(original, image))


@pytest.mark.parametrize("weights", ["torchscript", "onnx"])
def test_wrapped_weights_predict_like_the_original(
    package: Path, original: TrainedModel, image: np.ndarray, weights: str
) -> None:
    imported = load_model(package, device="cpu", weights=weights)
    assert isinstance(imported.network, PackageNetwork)
    assert imported.config.target == "contour" and imported.config.in_channels == 3
    expected = network_outputs(original, image)
    got = network_outputs(imported, image)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_rdf_yaml_path_is_accepted(package: Path, original: TrainedModel, tmp_path: Path) -> None:
    rdf, _ = unpacked(package, tmp_path)
    assert load_model(rdf, device="cpu").config == original.config


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_foreign_probability_package_is_converted_to_logits(
    package: Path, original: TrainedModel, image: np.ndarray, tmp_path: Path
) -> None:
    """A package not made by us whose TorchScript returns probabilities, without a sigmoid step."""
    rdf, content = unpacked(package, tmp_path)
    foreground = tiny_model(in_channels=3)
    # Its weights end in a sigmoid, as many zoo models do; the test output stays the same.
    wrapped = torch.nn.Sequential(foreground.network, torch.nn.Sigmoid()).eval()
    raw = np.load(tmp_path / "test_input.npy")
    x = torch.from_numpy(normalize(raw[0], foreground.config.normalization)[None])
    with torch.no_grad():
        np.save(tmp_path / "test_output.npy", wrapped(x).numpy())
        torch.jit.trace(wrapped, x).save(str(tmp_path / "weights_torchscript.pt"))
    del content["config"]["napari_unet"], content["weights"]["onnx"]
    output = content["outputs"][0]
    output["postprocessing"] = []
    output["axes"][1]["channel_names"] = ["foreground"]
    imported = load_model(write_rdf(rdf, content), device="cpu")
    assert isinstance(imported.network, PackageNetwork)
    assert imported.metadata["bioimageio"]["output"].startswith("probabilities")
    assert imported.config.target == "foreground"
    assert imported.config.normalization == foreground.config.normalization
    # The wrapper pads 45x70 to 48x72, a size the package accepts, and crops back.
    torch.testing.assert_close(
        torch.sigmoid(network_outputs(imported, image)),
        torch.sigmoid(network_outputs(foreground, image)),
        atol=1e-5,
        rtol=0,
    )


def test_package_without_weights_is_refused(package: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            if not item.filename.startswith("weights"):
                target.writestr(item, source.read(item))
    with pytest.raises(ModelFileError, match=r"(?s)invalid.*weights"):
        load_model(broken, device="cpu")


def test_package_with_a_z_axis_is_refused(package: Path, tmp_path: Path) -> None:
    rdf, content = unpacked(package, tmp_path)
    content["inputs"][0]["axes"].insert(
        2, {"type": "space", "id": "z", "size": {"min": 1, "step": 1}}
    )
    content["outputs"][0]["axes"].insert(
        2, {"type": "space", "id": "z", "size": {"tensor_id": "input", "axis_id": "z"}}
    )
    for name in ("test_input.npy", "test_output.npy"):
        np.save(tmp_path / name, np.load(tmp_path / name)[:, :, None])
    with pytest.raises(ModelFileError, match="space axis 'z'.*2D"):
        load_model(write_rdf(rdf, content), device="cpu")


def test_unknown_preprocessing_is_refused(package: Path, tmp_path: Path) -> None:
    rdf, content = unpacked(package, tmp_path)
    content["inputs"][0]["preprocessing"] = [
        {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"]}}
    ]
    with pytest.raises(ModelFileError, match="'zero_mean_unit_variance' is not supported"):
        load_model(write_rdf(rdf, content), device="cpu")


def test_two_outputs_are_refused(package: Path, tmp_path: Path) -> None:
    rdf, content = unpacked(package, tmp_path)
    second = dict(content["outputs"][0], id="output2")
    content["outputs"].append(second)
    with pytest.raises(ModelFileError, match="2 output"):
        load_model(write_rdf(rdf, content), device="cpu")


def test_missing_and_non_package_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nothing.zip")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="junk.zip"):
        load_model(junk)


def test_layouts_round_trip() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    layout = TensorLayout(("batch", "y", "x", "channel"))
    assert layout.to_package(x).shape == (2, 4, 5, 3)
    torch.testing.assert_close(layout.from_package(layout.to_package(x)), x)
    grey = TensorLayout(("y", "x"))
    single = x[:1, :1]
    assert grey.to_package(single).shape == (4, 5)
    torch.testing.assert_close(grey.from_package(grey.to_package(single)), single)


@pytest.mark.parametrize("weights", ["auto", "onnx"])
def test_imported_package_segments_like_the_original(
    package: Path, original: TrainedModel, weights: str
) -> None:
    from napari_unet.prediction import predict

    image = (np.random.default_rng(2).random((70, 90, 3)) * 255).astype(np.uint8)
    imported = load_model(package, device="cpu", weights=weights)
    got = predict(image, imported, device="cpu", return_probabilities=True)
    expected = predict(image, original, device="cpu", return_probabilities=True)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.labels, expected.labels)
