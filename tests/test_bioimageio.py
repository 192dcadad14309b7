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


def zipped(folder: Path, out: Path) -> Path:
    """Every file of ``folder`` in a new package ``out``."""
    with zipfile.ZipFile(out, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, file.name)
    return out


#: A package's architecture code that leaves a marker file when it runs.
ARCH_CODE = """
from pathlib import Path

Path({marker!r}).write_text("package code ran")

import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x)
"""


def code_package(package: Path, folder: Path, marker: Path, library: bool = False) -> Path:
    """Our package with only ``pytorch_state_dict`` weights, whose network is built by code.

    The code is ``arch.py`` shipped in the package, or (``library``) ``os.system`` with a
    shell command; either leaves ``marker`` when it runs.
    """
    folder.mkdir()
    rdf, content = unpacked(package, folder)
    for name in ("weights_torchscript.pt", "weights.onnx"):
        (folder / name).unlink()
    (folder / "arch.py").write_text(ARCH_CODE.format(marker=str(marker)))
    torch.save(
        {"conv.weight": torch.zeros(2, 3, 1, 1), "conv.bias": torch.zeros(2)}, folder / "w.pt"
    )
    architecture: dict[str, Any] = (
        {"import_from": "os", "callable": "system", "kwargs": {"command": f"touch {marker}"}}
        if library
        else {"source": "arch.py", "callable": "Net", "kwargs": {}}
    )
    content["weights"] = {
        "pytorch_state_dict": {
            "source": "w.pt",
            "architecture": architecture,
            "pytorch_version": torch.__version__.split("+")[0],
        }
    }
    write_rdf(rdf, content)
    return zipped(folder, folder.with_suffix(".zip"))


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


# ------------------------------------------------------------------ hostile and broken packages


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two RGB images with labels in images/ and labels/ folders (for the CLI)."""
    from napari_unet.io import write_png, write_tiff

    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        write_png(
            root / "images" / f"i{index}.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        )
        write_tiff(root / "labels" / f"i{index}.tif", np.eye(32, dtype=np.uint16))
    return root / "images", root / "labels"


def python_entry_points(images: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, Any]:
    import napari_unet as nu

    cpu = nu.PredictConfig(device="cpu")
    return {
        "load_model": lambda model: nu.load_model(model, device="cpu"),
        "predict": lambda model: nu.predict(images[0], model, device="cpu"),
        "evaluate": lambda model: nu.evaluate(images, labels, model, cpu),
        "tune": lambda model: nu.tune(images, labels, model, config=cpu),
        "train --init": lambda model: nu.train(images, labels, init=model),
    }


def cli_arguments(model: Path, images: Path, labels: Path, out: Path) -> dict[str, list[str]]:
    data = ["--images", str(images), "--labels", str(labels)]
    return {
        "predict": ["predict", str(images), "--model", str(model), "--out", str(out)],
        "evaluate": ["evaluate", "--model", str(model), *data],
        "tune": ["tune", "--model", str(model), *data],
        "export": ["export", "--model", str(model), "--out", str(out / "x.onnx")],
        "train --init": ["train", *data, "--init", str(model), "--out", str(out / "m.pt")],
    }


@pytest.mark.parametrize("library", [False, True], ids=["arch.py", "import_from-os"])
def test_package_code_never_runs_without_the_opt_in(
    package: Path,
    tmp_path: Path,
    labelled_folder: tuple[Path, Path],
    library: bool,
    capsys: pytest.CaptureFixture,
) -> None:
    from napari_unet.cli import main
    from napari_unet.io import read_image

    marker = tmp_path / "code-ran"
    hostile = code_package(package, tmp_path / "pkg", marker, library=library)
    images = [read_image(p) for p in sorted(labelled_folder[0].iterdir())]
    labels = [read_image(p) for p in sorted(labelled_folder[1].iterdir())]
    for name, entry in python_entry_points(images, labels).items():
        with pytest.raises(ModelFileError, match="trust_code=True") as refused:
            entry(hostile)
        assert len(str(refused.value).splitlines()) == 1, name
        assert not marker.exists(), name
    out = tmp_path / "out"
    for name, argv in cli_arguments(hostile, *labelled_folder, out).items():
        assert main(argv) == 2, name
        error = capsys.readouterr().err
        assert "--trust-package-code" in error and error.count("\n") == 1, name
        assert not marker.exists(), name
    assert not out.exists()


def test_package_code_runs_with_the_opt_in(
    package: Path, tmp_path: Path, labelled_folder: tuple[Path, Path]
) -> None:
    from napari_unet.checkpoint import TrustedPath
    from napari_unet.cli import main

    marker = tmp_path / "code-ran"
    hostile = code_package(package, tmp_path / "pkg", marker)
    loaded = load_model(hostile, device="cpu", trust_code=True)
    assert marker.exists() and isinstance(loaded.network, PackageNetwork)
    # (bioimage.io imports arch.py once per process, so the marker is not written again)
    assert load_model(TrustedPath(hostile), device="cpu").config == loaded.config
    out = tmp_path / "out"
    argv = ["predict", str(labelled_folder[0]), "--model", str(hostile), "--out", str(out)]
    assert main([*argv, "--trust-package-code"]) == 0
    assert len(list(out.glob("*_labels.tif"))) == 2


@pytest.mark.parametrize(
    "source", ["/etc/passwd", "../outside.pt", "https://example.com/weights.pt"]
)
def test_weights_outside_the_package_are_refused_unread(
    package: Path, tmp_path: Path, source: str
) -> None:
    rdf, content = unpacked(package, tmp_path / "pkg")
    (tmp_path / "outside.pt").write_bytes(
        (tmp_path / "pkg" / "weights_torchscript.pt").read_bytes()
    )
    content["weights"]["torchscript"]["source"] = source
    write_rdf(rdf, content)
    for path in (rdf, zipped(tmp_path / "pkg", tmp_path / "pkg.zip")):
        with pytest.raises(ModelFileError, match="inside the package") as refused:
            load_model(path, device="cpu")
        assert len(str(refused.value).splitlines()) == 1


def test_a_link_out_of_a_package_folder_is_refused(package: Path, tmp_path: Path) -> None:
    rdf, content = unpacked(package, tmp_path / "pkg")
    weights = tmp_path / "pkg" / "weights_torchscript.pt"
    weights.rename(tmp_path / "elsewhere.pt")
    weights.symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(ModelFileError, match="link to outside the package"):
        load_model(rdf, device="cpu")


def peak_rss_growth(action: Any) -> float:
    """Bytes by which the process's peak resident memory grew while ``action`` ran."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    action()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024.0


def test_yaml_alias_bomb_is_refused_with_bounded_memory(package: Path, tmp_path: Path) -> None:
    import tracemalloc

    rdf, _ = unpacked(package, tmp_path)
    lines = ["bomb0: &b0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"bomb{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]" for i in range(1, 12)]
    rdf.write_text(rdf.read_text() + "\n" + "\n".join(lines) + "\n")
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("a: &a [*a]\n")

    tracemalloc.start()
    for path, message in ((rdf, "alias bomb"), (recursive, "recursive")):
        with pytest.raises(ModelFileError, match=message):
            load_model(path, device="cpu")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20


def test_zip_bomb_is_refused_before_inflating(package: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(bomb, "w") as target:
        for item in source.infolist():
            if item.filename != "weights_torchscript.pt":
                target.writestr(item, source.read(item))
        # 256 MiB of zeros in about 256 KiB
        member = zipfile.ZipInfo("weights_torchscript.pt")
        member.compress_type = zipfile.ZIP_DEFLATED
        with target.open(member, "w") as f:
            chunk = bytes(2**24)
            for _ in range(16):
                f.write(chunk)
    assert bomb.stat().st_size < 4 * 2**20

    def load() -> None:
        with pytest.raises(ModelFileError, match="zip bomb") as refused:
            load_model(bomb, device="cpu")
        assert len(str(refused.value).splitlines()) == 1

    assert peak_rss_growth(load) < 256 * 2**20


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    broken = tiny_model()
    with torch.no_grad():
        next(broken.network.parameters())[0] = float("nan")
    path = export_bioimageio(broken, tmp_path / "nan.zip", test=False)
    for weights in ("auto", "torchscript", "onnx"):
        with pytest.raises(ModelFileError, match="NaN or infinite"):
            load_model(path, device="cpu", weights=weights)


@pytest.mark.parametrize("kind", ["folder", "empty", "text", "no-rdf"])
def test_broken_package_files_get_one_clear_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "package.zip"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a package")
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.md", "hello")
    expected = {
        "folder": "is a folder",
        "empty": "neither a zip",
        "text": "neither a zip",
        "no-rdf": "no rdf.yaml",
    }[kind]
    with pytest.raises(ModelFileError, match=expected) as refused:
        load_model(path, device="cpu")
    assert len(str(refused.value).splitlines()) == 1


def test_widget_model_chooser_trusts_package_code_only_when_ticked(
    package: Path, tmp_path: Path, qtbot: Any
) -> None:
    from napari_unet._widgets._common import ModelPicker
    from napari_unet.checkpoint import TrustedPath

    marker = tmp_path / "code-ran"
    hostile = code_package(package, tmp_path / "pkg", marker)
    picker = ModelPicker()
    qtbot.addWidget(picker)
    picker.select(ModelPicker.FILE)
    picker.path_edit.setText(str(hostile))
    assert not picker.trust_code.isChecked()
    chosen = picker.value()
    assert not isinstance(chosen, TrustedPath)
    with pytest.raises(ModelFileError, match="Trust code in model packages"):
        load_model(chosen, device="cpu")
    assert not marker.exists()
    picker.trust_code.setChecked(True)
    assert isinstance(picker.value(), TrustedPath)
    assert isinstance(load_model(picker.value(), device="cpu").network, PackageNetwork)
