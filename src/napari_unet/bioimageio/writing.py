"""Writing a trained model as a BioImage Model Zoo (bioimage.io) package.

A package holds:

- TorchScript weights (the original entry) and ONNX weights converted from them
  (see :mod:`napari_unet.bioimageio.weights`);
- the input normalisation as pre-processing (``scale_range`` with the model's
  percentiles, over all channels of a sample, as napari-unet normalises) and a
  sigmoid as post-processing;
- a test input (raw intensities, ``.npy``) and the output our model computes for it;
- a model card (``samples/model_card.md`` inside the package for the bundled model, a
  file you give, or one generated from the model's training metadata), authors,
  licence, citations, tags and a cover image made from the test input and output;
- the napari-unet configuration and metadata under ``config.napari_unet``, so that
  :func:`napari_unet.bioimageio.reading.read_package` rebuilds the exact network.

Before the package is renamed into place, ``bioimageio.core`` tests it (the same
test ``bioimageio test`` runs); a package that fails is never written.
:func:`bioimageio_events` is the progress generator (with ``stop``);
:func:`export_bioimageio` runs it to the end.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet import __version__
from napari_unet.bioimageio.card import default_card, model_card
from napari_unet.bioimageio.reading import CONFIG_KEY
from napari_unet.bioimageio.weights import (
    INPUT_ID,
    ONNX_OPSET,
    OUTPUT_CHANNEL_NAMES,
    OUTPUT_ID,
    export_network,
    onnx_metadata,
    require_modules,
    trace,
    write_onnx,
)
from napari_unet.checkpoint import TrainedModel, load_model
from napari_unet.config import ModelConfig
from napari_unet.data import normalize
from napari_unet.errors import ConfigError, DataError, ModelFileError
from napari_unet.events import plain_form
from napari_unet.io import SAMPLES_DIR, atomic_write, list_images, read_image, write_png, write_tiff
from napari_unet.layout import to_channels_first
from napari_unet.prediction import Progress

#: Side of the square test input (cropped from the sample image), at most.
TEST_SIZE = 128

_UNET_CITATION = (
    "Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015.",
    "10.1007/978-3-319-24574-4_28",
)
_UNETPP_CITATION = (
    "Zhou, Z., Rahman Siddiquee, M. M., Tajbakhsh, N., Liang, J. UNet++: A Nested U-Net "
    "Architecture for Medical Image Segmentation. DLMIA 2018.",
    "10.1007/978-3-030-00889-5_1",
)


def _sample_plane(sample: np.ndarray | str | Path | None) -> np.ndarray:
    """The image the test tensors are made from: given, or the first bundled sample."""
    if sample is None:
        images = list_images(SAMPLES_DIR / "images")
        if not images:
            raise DataError("no bundled sample image found; pass sample= (an image or a path).")
        sample = images[0]
    if isinstance(sample, (str, Path)):
        sample = read_image(sample)
    return np.asarray(sample)


def make_test_input(
    config: ModelConfig,
    sample: np.ndarray | str | Path | None = None,
    channel_axis: int | None = None,
) -> np.ndarray:
    """A square ``(1, C, S, S)`` float32 crop of ``sample`` in raw intensities.

    ``S`` is the largest multiple of ``2**depth`` that fits the image, at most
    :data:`TEST_SIZE`, so that it is a valid size of the package's input.

    Raises
    ------
    DataError
        If the sample is smaller than ``2**depth`` or its channels do not fit the model.
    """
    plane = to_channels_first(_sample_plane(sample), config.in_channels, channel_axis)
    multiple = config.size_multiple
    side = min(TEST_SIZE, *plane.shape[1:]) // multiple * multiple
    if side < multiple:
        raise DataError(
            f"the sample image {plane.shape[1:]} is smaller than the model's minimum input "
            f"size {multiple}; pass a larger sample."
        )
    top = (plane.shape[1] - side) // 2
    left = (plane.shape[2] - side) // 2
    return np.ascontiguousarray(plane[None, :, top : top + side, left : left + side])


def _probabilities(model: TrainedModel, raw: np.ndarray) -> np.ndarray:
    """Our model's output for ``raw`` ``(1, C, H, W)``: normalised, network, sigmoid."""
    network = copy.deepcopy(model.network).cpu().eval()
    x = torch.from_numpy(normalize(raw[0], model.config.normalization)[None])
    with torch.no_grad():
        return torch.sigmoid(network(x)).numpy().astype(np.float32)


def _cover(raw: np.ndarray, probabilities: np.ndarray, config: ModelConfig, path: Path) -> None:
    """A 2:1 PNG: the (normalised) test input left, the foreground probability right."""
    image = normalize(raw[0], config.normalization)
    image = np.clip(image, 0.0, 1.0)
    rgb = np.repeat(image[:1], 3, axis=0) if image.shape[0] != 3 else image
    left = np.moveaxis(rgb, 0, -1)
    foreground = probabilities[0, 0]
    # Probability as a green-magenta map: green objects on a dark background.
    right = np.stack([foreground * 0.8, foreground, foreground * 0.8], axis=-1)
    write_png(path, (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8))


def _plain(value: Any) -> Any:
    """``value`` reduced to what YAML/JSON hold (metadata is plain already; be safe)."""
    return json.loads(json.dumps(value, default=str))


def _project_url() -> str:
    """The project's home page from the installed metadata, else its PyPI page."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        for entry in metadata("napari-unet").get_all("Project-URL") or []:
            return entry.split(",", 1)[1].strip()
    except PackageNotFoundError:
        pass
    return "https://pypi.org/project/napari-unet/"


def _safe_name(name: str) -> str:
    """``name`` with only the characters bioimage.io allows, 5 to 128 of them."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_+- ()") else " " for c in name)
    cleaned = " ".join(cleaned.split())[:128]
    if len(cleaned) < 5:
        raise ConfigError(
            f"model name {name!r} needs at least 5 letters, digits, spaces or _+-() characters."
        )
    return cleaned


def _preprocessing(config: ModelConfig) -> list[Any]:
    from bioimageio.spec.model.v0_5 import AxisId, ScaleRangeDescr, ScaleRangeKwargs

    norm = config.normalization
    if norm.mode == "none":
        return []
    low, high = (norm.low, norm.high) if norm.mode == "percentile" else (0.0, 100.0)
    if high <= 1.0:
        raise ConfigError(
            f"bioimage.io cannot express an upper percentile of {high} (it must be above 1); "
            "use a model trained with a higher normalization percentile."
        )
    axes = [AxisId("channel"), AxisId("y"), AxisId("x")]  # one range per sample, all channels
    return [
        ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=axes, min_percentile=low, max_percentile=high))
    ]


def _input_tensors(config: ModelConfig, folder: Path) -> list[Any]:
    """The input tensor: raw float32 intensities, channels named, Y/X multiples of 2**depth."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        ParameterizedSize,
        SpaceInputAxis,
        TensorId,
    )

    in_names = (
        ["red", "green", "blue"]
        if config.in_channels == 3
        else [f"channel{i}" for i in range(config.in_channels)]
    )
    size = ParameterizedSize(min=config.size_multiple, step=config.size_multiple)
    return [
        InputTensorDescr(
            id=TensorId(INPUT_ID),
            description="raw image intensities as float32",
            axes=[
                BatchAxis(),
                ChannelAxis(channel_names=[Identifier(n) for n in in_names]),
                SpaceInputAxis(id=AxisId("y"), size=size),
                SpaceInputAxis(id=AxisId("x"), size=size),
            ],
            test_tensor=FileDescr(source=folder / "test_input.npy"),
            sample_tensor=FileDescr(source=folder / "sample_input.tif"),
            data=IntervalOrRatioDataDescr(type="float32"),
            preprocessing=_preprocessing(config),
        )
    ]


def _output_tensors(config: ModelConfig, folder: Path) -> list[Any]:
    """The output tensor: the target's probabilities, the input's Y/X size."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        FileDescr,
        Identifier,
        IntervalOrRatioDataDescr,
        OutputTensorDescr,
        SigmoidDescr,
        SizeReference,
        SpaceOutputAxis,
        TensorId,
    )

    def same_as_input(axis: str) -> Any:
        size = SizeReference(tensor_id=TensorId(INPUT_ID), axis_id=AxisId(axis))
        return SpaceOutputAxis(id=AxisId(axis), size=size)

    channel_names = [Identifier(n) for n in OUTPUT_CHANNEL_NAMES[config.target]]
    return [
        OutputTensorDescr(
            id=TensorId(OUTPUT_ID),
            description=f"probabilities for the {config.target} target",
            axes=[
                BatchAxis(),
                ChannelAxis(channel_names=channel_names),
                same_as_input("y"),
                same_as_input("x"),
            ],
            test_tensor=FileDescr(source=folder / "test_output.npy"),
            sample_tensor=FileDescr(source=folder / "sample_output.tif"),
            data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[SigmoidDescr()],
        )
    ]


def _weights(folder: Path, opset: int) -> Any:
    """TorchScript weights, and ONNX weights exported from the same module."""
    from bioimageio.spec.model.v0_5 import (
        OnnxWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    return WeightsDescr(
        torchscript=TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt",
            pytorch_version=Version(torch.__version__.split("+")[0]),
            comment="traced with napari-unet; pads inputs to a multiple of 2**depth internally",
        ),
        onnx=OnnxWeightsDescr(
            source=folder / "weights.onnx",
            opset_version=opset,
            parent="torchscript",
            comment="exported from the same module with torch.onnx",
        ),
    )


def _citations(config: ModelConfig) -> list[Any]:
    """U-Net (and U-Net++ for that architecture), then this project."""
    from bioimageio.spec.model.v0_5 import CiteEntry, Doi, HttpUrl

    citations = [CiteEntry(text=_UNET_CITATION[0], doi=Doi(_UNET_CITATION[1]))]
    if config.architecture == "unetpp":
        citations.append(CiteEntry(text=_UNETPP_CITATION[0], doi=Doi(_UNETPP_CITATION[1])))
    citations.append(
        CiteEntry(
            text="napari-unet: train U-Net models on your microscopy images in napari.",
            url=HttpUrl(_project_url()),
        )
    )
    return citations


def _model_description(
    model: TrainedModel,
    folder: Path,
    *,
    name: str,
    description: str,
    authors: Sequence[str],
    license: str,
    documentation: Path,
    tags: Sequence[str],
    opset: int,
) -> Any:
    """The v0.5 ``ModelDescr`` for files already written to ``folder``."""
    from bioimageio.spec.model.v0_5 import Author, FileDescr, LicenseId, ModelDescr, Version

    return ModelDescr(
        name=name,
        description=description,
        authors=[Author(name=author) for author in authors],
        cite=_citations(model.config),
        license=LicenseId(license),
        documentation=FileDescr(source=documentation),
        covers=[FileDescr(source=folder / "cover.png")],
        tags=list(tags),
        inputs=_input_tensors(model.config, folder),
        outputs=_output_tensors(model.config, folder),
        weights=_weights(folder, opset),
        version=Version(__version__),
        config={
            CONFIG_KEY: {
                "version": __version__,
                "model": model.config.to_dict(),
                "metadata": _plain(model.metadata),
            }
        },
    )


def _summary_text(summary: Any) -> str:
    """The failed checks of a bioimage.io validation summary, one line each."""
    lines = []
    for detail in summary.details:
        if detail.status != "passed":
            for error in detail.errors or []:
                lines.append(f"{detail.name}: {'.'.join(map(str, error.loc))}: {error.msg}")
            if not detail.errors:
                lines.append(f"{detail.name}: {detail.status}")
    return "; ".join(lines[:8]) or str(summary.status)


#: Steps :func:`bioimageio_events` reports.
_STEPS = ("test data", "TorchScript", "ONNX", "package", "bioimage.io test")


def bioimageio_events(
    model: TrainedModel | str | Path,
    path: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("napari-unet developers",),
    license: str = "BSD-3-Clause",
    documentation: str | Path | None = None,
    sample: np.ndarray | str | Path | None = None,
    channel_axis: int | None = None,
    tags: Sequence[str] = (),
    test: bool = True,
    stop: threading.Event | None = None,
) -> Generator[Progress, None, Path | None]:
    """Write ``model`` as a bioimage.io model package (a ``.zip``), yielding progress.

    Parameters
    ----------
    model : TrainedModel, str or Path
        A loaded model, a model file, or ``"default"``.
    path : str or Path
        Destination ``.zip``, written atomically.
    name, description : str, optional
        Package name (letters, digits, spaces, ``_+-()``) and one-paragraph summary;
        generated from the config when not given.
    authors : sequence of str
        Author names.
    license : str
        SPDX licence id of the weights.
    documentation : str or Path, optional
        Markdown model card; default ``docs/model_card.md`` for the bundled model,
        else one generated from the training metadata.
    sample : array, str or Path, optional
        Image the test input is cropped from (default: the first bundled sample).
    channel_axis : int, optional
        Channel axis of a multichannel ``sample``.
    tags : sequence of str
        Extra tags, added to napari-unet's own.
    test : bool
        Run ``bioimageio.core``'s test of the package before writing it.
    stop : threading.Event, optional
        When set, the export ends at the next step with nothing written.

    Yields
    ------
    Progress
        Before each step: test data, TorchScript, ONNX, package and (with ``test``) the
        bioimage.io test.

    Returns
    -------
    Path or None
        The written package; None if stopped.

    Raises
    ------
    ModelFileError
        If the export packages are missing, the model is not a napari-unet network,
        or the package fails bioimage.io's validation or test.
    DataError, ConfigError
        If the sample image or a setting cannot be used, or the model is 3D (export
        those to ONNX).

    Examples
    --------
    >>> path = export_bioimageio("default", "nuclei.zip")  # doctest: +SKIP
    """
    require_modules("bioimageio.core", "onnx", "onnxruntime")
    from bioimageio.spec import save_bioimageio_package

    model = load_model(model, device="cpu") if not isinstance(model, TrainedModel) else model
    if model.config.ndim == 3:
        raise ConfigError(
            f"{model.source!r} is a 3D model; bioimage.io packages of napari-unet describe 2D "
            "models (axes b, c, y, x) only. Export it to ONNX instead (a *.onnx file, axes "
            "b, c, z, y, x)."
        )
    network = export_network(model)
    config = model.config
    name = _safe_name(name or f"napari-unet {config.architecture} {config.target} segmentation")
    kind = "U-Net++" if config.architecture == "unetpp" else "U-Net"
    description = (
        description
        or f"2D {kind} for {config.target} segmentation of microscopy images, trained with "
        "napari-unet. "
        f"Outputs per-pixel probabilities ({', '.join(OUTPUT_CHANNEL_NAMES[config.target])})."
    )
    card = Path(documentation) if documentation is not None else default_card(model)
    if card is not None and not card.is_file():
        raise DataError(f"model card {str(card)!r} does not exist; check the path.")
    steps = _STEPS if test else _STEPS[:-1]

    def step(index: int) -> Progress:
        return Progress(index, len(steps), f"bioimage.io export: {steps[index]}")

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp_name:
        folder = Path(tmp_name)
        yield step(0)
        raw = make_test_input(config, sample, channel_axis)
        probabilities = _probabilities(model, raw)
        _write_test_data(model, raw, probabilities, folder)
        card_path = folder / "README.md"
        card_path.write_text(
            card.read_text(encoding="utf-8") if card else model_card(model, name, description),
            encoding="utf-8",
        )
        example = torch.from_numpy(normalize(raw[0], config.normalization)[None])
        yield step(1)
        if stop is not None and stop.is_set():
            return None
        trace(network, example).save(str(folder / "weights_torchscript.pt"))
        yield step(2)
        if stop is not None and stop.is_set():
            return None
        write_onnx(network, example, folder / "weights.onnx", onnx_metadata(model))
        yield step(3)
        if stop is not None and stop.is_set():
            return None
        descr = _build(
            model,
            folder,
            name=name,
            description=description,
            authors=authors,
            license=license,
            documentation=card_path,
            tags=_tags(tags),
        )
        # Built and tested in the scratch folder, then copied into place atomically.
        package = folder / "package.zip"
        save_bioimageio_package(descr, output_path=package)
        if test:
            yield step(4)
            if stop is not None and stop.is_set():
                return None
            check_package(package)
        with atomic_write(path) as target:
            shutil.copyfile(package, target)
    return path


export_bioimageio = plain_form(
    bioimageio_events,
    "export_bioimageio",
    "Write ``model`` as a bioimage.io model package (a ``.zip``).",
)


def _tags(extra: Sequence[str]) -> list[str]:
    """napari-unet's tags, then ``extra`` (lower-cased), each once."""
    own = ["segmentation", "unet", "2d", "pytorch", "onnx", "napari", "napari-unet"]
    return list(dict.fromkeys([*own, *(tag.lower() for tag in extra)]))


def _write_test_data(
    model: TrainedModel, raw: np.ndarray, probabilities: np.ndarray, folder: Path
) -> None:
    """Test tensors (``.npy``), the same pair as TIFF, and the cover image."""
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", probabilities)
    # The same pair as TIFF, for people and tools that do not read .npy.
    write_tiff(folder / "sample_input.tif", raw[0])
    write_tiff(folder / "sample_output.tif", probabilities[0])
    _cover(raw, probabilities, model.config, folder / "cover.png")


def _build(model: TrainedModel, folder: Path, **fields: Any) -> Any:
    """:func:`_model_description`, with spec validation errors turned into ModelFileError."""
    from pydantic import ValidationError

    try:
        return _model_description(model, folder, opset=ONNX_OPSET, **fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:8]
        )
        raise ModelFileError(f"the bioimage.io description is invalid: {problems}") from error


def check_package(path: str | Path) -> None:
    """Run ``bioimageio.core``'s test of a package (what ``bioimageio test`` runs).

    Raises
    ------
    ModelFileError
        With the failed checks, if the package does not pass.
    """
    require_modules("bioimageio.core")
    from bioimageio.core import test_model

    summary = test_model(str(path))
    if summary.status != "passed":
        raise ModelFileError(
            f"the bioimage.io package {str(path)!r} fails bioimage.io's test: "
            f"{_summary_text(summary)}"
        )
