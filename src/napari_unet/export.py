"""Export a trained model to ONNX or to a BioImage Model Zoo (bioimage.io) package.

Both formats need the optional ``export`` extra (``pip install 'napari-unet[export]'``:
``bioimageio.core``, ``onnx``, ``onnxruntime``); the rest of napari-unet does not.

What is exported is the network *with its padding*: the exported graph pads any
input to a multiple of ``2**depth`` (reflect padding, as the network does for
inputs of at least ``2**depth`` pixels) and crops the output back, so ONNX and
TorchScript consumers can feed any height and width of at least ``2**depth``.
The graph returns **logits**; apply a sigmoid for probabilities (a bioimage.io
package says so in its post-processing).

A bioimage.io package holds:

- TorchScript weights (the original entry) and ONNX weights converted from them;
- the input normalisation as pre-processing (``scale_range`` with the model's
  percentiles, over all channels of a sample, as napari-unet normalises) and a
  sigmoid as post-processing;
- a test input (raw intensities, ``.npy``) and the output our model computes for it;
- a model card (``docs/model_card.md`` for the bundled model, a file you give, or one
  generated from the model's training metadata), authors, licence, citations, tags
  and a cover image made from the test input and output;
- the napari-unet configuration and metadata under ``config.napari_unet``, so that
  :func:`napari_unet.bioimageio.load_bioimageio` rebuilds the exact network.

Before the package is renamed into place, ``bioimageio.core`` tests it (the same
test ``bioimageio test`` runs); a package that fails is never written.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_unet import __version__
from napari_unet.bioimageio import CONFIG_KEY
from napari_unet.checkpoint import TrainedModel, default_model_path, load_model
from napari_unet.config import ModelConfig
from napari_unet.data import normalize
from napari_unet.errors import ConfigError, DataError, ModelFileError
from napari_unet.io import SAMPLES_DIR, atomic_write, list_images, read_image, write_png, write_tiff
from napari_unet.layout import to_channels_first
from napari_unet.model import UNet, UNetPlusPlus

ExportFormat = Literal["bioimageio", "onnx"]
#: Formats :func:`export_model` writes, and the file suffix each one gets by default.
FORMAT_SUFFIXES: dict[str, str] = {"bioimageio": ".zip", "onnx": ".onnx"}
#: ONNX opset of exported graphs: old enough for every current runtime, new enough for Pad/Slice.
ONNX_OPSET = 17
#: Metadata keys (last part) listed under "Validation" in a generated model card.
_METRIC_WORDS = ("dice", "iou", "loss", "score", "f1", "ap50", "ap75", "jaccard", "accuracy", "pq")
#: Tensor ids of the bioimage.io package.
INPUT_ID, OUTPUT_ID = "input", "output"
#: Side of the square test input (cropped from the sample image), at most.
TEST_SIZE = 128
#: Names of the output channels, per target (see the contract in CONTRACT.md).
OUTPUT_CHANNEL_NAMES: dict[str, list[str]] = {
    "foreground": ["foreground"],
    "contour": ["foreground", "boundary"],
    "distance": ["foreground", "distance"],
}
EXTRA_HINT = "install the export extra: pip install 'napari-unet[export]'"

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


class _ExportNetwork(nn.Module):
    """Pads to a multiple of ``2**depth``, runs the U-Net, crops: a trace-friendly forward.

    The network's own ``forward`` chooses its padding with Python branches on the
    input size, which a trace would freeze to the example's size; here the pad
    amounts are computed from the (traced) input shape, so the exported graph
    works for every height and width of at least ``2**depth``.
    """

    def __init__(self, network: UNet | UNetPlusPlus) -> None:
        super().__init__()
        self.network = network
        self.multiple = network.config.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.network._forward_padded(padded)[:, :, :height, :width]


def _require(*modules: str) -> None:
    """Import the optional export packages, or say how to install them."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModelFileError(f"exporting needs {', '.join(missing)}; {EXTRA_HINT}")


def _export_network(model: TrainedModel) -> _ExportNetwork:
    """A CPU copy of ``model``'s network in eval mode, wrapped for tracing."""
    if not isinstance(model.network, (UNet, UNetPlusPlus)):
        raise ModelFileError(
            f"{model.source!r} is not a napari-unet network (it wraps a "
            f"{type(model.network).__name__}); export the original model file instead."
        )
    network = copy.deepcopy(model.network).cpu().eval()
    return _ExportNetwork(network).eval()


def _trace(network: _ExportNetwork, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.13 deprecates tracing; shape-dependent branches were moved out of the trace.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.trace(network, example, check_trace=False)


def _write_onnx(
    network: _ExportNetwork, example: torch.Tensor, path: Path, metadata: dict[str, str]
) -> None:
    """Write ``network`` as ONNX with dynamic batch, height and width, plus metadata."""
    import onnx

    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # The TorchScript-based exporter handles the traced shape arithmetic of
        # _ExportNetwork and needs no extra package; its deprecation note is noise here.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                network,
                (example,),
                str(path),
                input_names=[INPUT_ID],
                output_names=[OUTPUT_ID],
                dynamic_axes={INPUT_ID: dynamic, OUTPUT_ID: dynamic},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    graph = onnx.load(str(path))
    graph.doc_string = metadata.get("description", "")
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def _check_onnx(path: Path, network: _ExportNetwork, inputs: Sequence[torch.Tensor]) -> None:
    """Refuse an ONNX file whose output differs from PyTorch's by more than 1e-4 on ``inputs``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = network(x).numpy()
        got = session.run(None, {INPUT_ID: x.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > 1e-4:
        raise ModelFileError(
            f"the ONNX export differs from PyTorch by {worst:.2g} (> 1e-4); please report this "
            "with your model's config."
        )


def _metadata_strings(model: TrainedModel) -> dict[str, str]:
    """What an ONNX file records about the model, as strings (ONNX metadata is text)."""
    norm = model.config.normalization
    return {
        "producer": f"napari-unet {__version__}",
        "description": (
            f"napari-unet {model.config.architecture} (target {model.config.target}). "
            f"Input (N, {model.config.in_channels}, H, W) float32, H and W >= "
            f"{model.config.size_multiple}, normalised: {_describe_normalization(model.config)}. "
            f"Output (N, {model.config.out_channels}, H, W) logits; apply a sigmoid."
        ),
        "napari_unet_config": json.dumps(model.config.to_dict()),
        "normalization": json.dumps(norm.to_dict()),
        "output_channels": json.dumps(OUTPUT_CHANNEL_NAMES[model.config.target]),
        "postprocessing": "sigmoid",
    }


def _describe_normalization(config: ModelConfig) -> str:
    norm = config.normalization
    if norm.mode == "percentile":
        return f"percentile {norm.low:g} -> 0 and {norm.high:g} -> 1 over all channels of an image"
    if norm.mode == "minmax":
        return "min -> 0 and max -> 1 over all channels of an image"
    return "none (raw intensities as float32)"


def export_onnx(model: TrainedModel | str | Path, path: str | Path) -> Path:
    """Write ``model`` as an ONNX graph with dynamic batch, height and width.

    Parameters
    ----------
    model : TrainedModel, str or Path
        A loaded model, a model file, a bioimage.io package of ours or ``"default"``.
    path : str or Path
        Destination ``.onnx`` file, written atomically.

    Returns
    -------
    Path
        The written file. Its input ``input`` is ``(N, C, H, W)`` float32, normalised
        as the file's ``normalization`` metadata says; its output ``output`` holds
        logits. The export is checked against PyTorch with ONNX Runtime (<= 1e-4).

    Raises
    ------
    ModelFileError
        If the export packages are missing or the model is not a napari-unet network.
    """
    _require("onnx", "onnxruntime")
    model = load_model(model, device="cpu") if not isinstance(model, TrainedModel) else model
    network = _export_network(model)
    multiple = model.config.size_multiple
    channels = model.config.in_channels
    # Two sizes, one not a multiple of 2**depth, prove the graph's shapes are dynamic.
    generator = torch.Generator().manual_seed(0)
    checks = [
        torch.rand(1, channels, 4 * multiple, 6 * multiple, generator=generator),
        torch.rand(2, channels, 3 * multiple + 5, 2 * multiple + 3, generator=generator),
    ]
    path = Path(path)
    with atomic_write(path) as tmp:
        _write_onnx(network, checks[0], tmp, _metadata_strings(model))
        _check_onnx(tmp, network, checks)
    return path


# ----------------------------------------------------------------------------- bioimage.io


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


def _flatten(metadata: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(key, value)`` rows of scalar metadata, nested keys joined by dots; long lists skipped."""
    rows: list[tuple[str, str]] = []
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            if len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value):
                rows.append((name, ", ".join(str(v) for v in value)))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        else:
            rows.append((name, str(value)))
    return rows


def model_card(model: TrainedModel, name: str, description: str) -> str:
    """Markdown model card generated from the model's config and training metadata."""
    config = model.config
    rows = _flatten(model.metadata)
    if rows:
        training = "| item | value |\n| --- | --- |\n" + "\n".join(
            f"| {key} | {value} |" for key, value in rows
        )
    else:
        training = "No training metadata was recorded."
    metrics = [
        f"- {key}: {value}"
        for key, value in rows
        if any(word in key.rsplit(".", 1)[-1].lower() for word in _METRIC_WORDS)
    ]
    validation = "\n".join(metrics) or "No validation metrics were recorded with this model."
    outputs = ", ".join(
        f"channel {i}: {channel}" for i, channel in enumerate(OUTPUT_CHANNEL_NAMES[config.target])
    )
    return f"""# {name}

{description}

## Model

- Architecture: {config.architecture} (base filters {config.base_filters}, depth {config.depth})
- Input: {config.in_channels} channel(s), height and width at least {config.size_multiple} pixels
- Pre-processing: {_describe_normalization(config)}
- Output: {outputs}; the network returns logits, the package applies a sigmoid
- Target: {config.target}
- Made with napari-unet {__version__}

## Training

{training}

## Validation

{validation}

Validate the model on a few of your own annotated images before relying on it:
`napari-unet evaluate` reports pixel and instance metrics (Dice, IoU, DSB score).

## Limitations

The model has only seen images like its training data; expect failures on other
modalities, magnifications or stains. Check its output visually.
"""


def _default_card(model: TrainedModel) -> Path | None:
    """``docs/model_card.md`` of a source checkout, for the bundled model only."""
    source = Path(model.source) if model.source not in ("memory", "default") else None
    bundled = model.source == "default" or (
        source is not None and source.resolve() == default_model_path().resolve()
    )
    card = Path(__file__).resolve().parents[2] / "docs" / "model_card.md"
    return card if bundled and card.is_file() else None


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
    from bioimageio.spec.model.v0_5 import (
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        Doi,
        FileDescr,
        HttpUrl,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OnnxWeightsDescr,
        OutputTensorDescr,
        ParameterizedSize,
        SigmoidDescr,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    config = model.config
    multiple = config.size_multiple
    in_names = (
        ["red", "green", "blue"]
        if config.in_channels == 3
        else [f"channel{i}" for i in range(config.in_channels)]
    )
    size = ParameterizedSize(min=multiple, step=multiple)
    inputs = [
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
    outputs = [
        OutputTensorDescr(
            id=TensorId(OUTPUT_ID),
            description=f"probabilities for the {config.target} target",
            axes=[
                BatchAxis(),
                ChannelAxis(
                    channel_names=[Identifier(n) for n in OUTPUT_CHANNEL_NAMES[config.target]]
                ),
                SpaceOutputAxis(
                    id=AxisId("y"),
                    size=SizeReference(tensor_id=TensorId(INPUT_ID), axis_id=AxisId("y")),
                ),
                SpaceOutputAxis(
                    id=AxisId("x"),
                    size=SizeReference(tensor_id=TensorId(INPUT_ID), axis_id=AxisId("x")),
                ),
            ],
            test_tensor=FileDescr(source=folder / "test_output.npy"),
            sample_tensor=FileDescr(source=folder / "sample_output.tif"),
            data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[SigmoidDescr()],
        )
    ]
    torch_version = Version(torch.__version__.split("+")[0])
    weights = WeightsDescr(
        torchscript=TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt",
            pytorch_version=torch_version,
            comment="traced with napari-unet; pads inputs to a multiple of 2**depth internally",
        ),
        onnx=OnnxWeightsDescr(
            source=folder / "weights.onnx",
            opset_version=opset,
            parent="torchscript",
            comment="exported from the same module with torch.onnx",
        ),
    )
    citations = [CiteEntry(text=_UNET_CITATION[0], doi=Doi(_UNET_CITATION[1]))]
    if config.architecture == "unetpp":
        citations.append(CiteEntry(text=_UNETPP_CITATION[0], doi=Doi(_UNETPP_CITATION[1])))
    citations.append(
        CiteEntry(
            text="napari-unet: train U-Net models on your microscopy images in napari.",
            url=HttpUrl(_project_url()),
        )
    )
    return ModelDescr(
        name=name,
        description=description,
        authors=[Author(name=author) for author in authors],
        cite=citations,
        license=LicenseId(license),
        documentation=FileDescr(source=documentation),
        covers=[FileDescr(source=folder / "cover.png")],
        tags=list(tags),
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        version=Version(__version__),
        config={
            CONFIG_KEY: {
                "version": __version__,
                "model": config.to_dict(),
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


def export_bioimageio(
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
) -> Path:
    """Write ``model`` as a bioimage.io model package (a ``.zip``).

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

    Returns
    -------
    Path
        The written package.

    Raises
    ------
    ModelFileError
        If the export packages are missing, the model is not a napari-unet network,
        or the package fails bioimage.io's validation or test.
    DataError, ConfigError
        If the sample image or a setting cannot be used.
    """
    _require("bioimageio.core", "onnx", "onnxruntime")
    from bioimageio.spec import save_bioimageio_package

    model = load_model(model, device="cpu") if not isinstance(model, TrainedModel) else model
    network = _export_network(model)
    config = model.config
    raw = make_test_input(config, sample, channel_axis)
    probabilities = _probabilities(model, raw)
    name = _safe_name(name or f"napari-unet {config.architecture} {config.target} segmentation")
    kind = "U-Net++" if config.architecture == "unetpp" else "U-Net"
    description = (
        description
        or f"2D {kind} for {config.target} segmentation of microscopy images, trained with "
        "napari-unet. "
        f"Outputs per-pixel probabilities ({', '.join(OUTPUT_CHANNEL_NAMES[config.target])})."
    )
    all_tags = dict.fromkeys(
        [
            "segmentation",
            "unet",
            "2d",
            "pytorch",
            "onnx",
            "napari",
            "napari-unet",
            *(t.lower() for t in tags),
        ]
    )
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp_name:
        folder = Path(tmp_name)
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", probabilities)
        # The same pair as TIFF, for people and tools that do not read .npy.
        write_tiff(folder / "sample_input.tif", raw[0])
        write_tiff(folder / "sample_output.tif", probabilities[0])
        _cover(raw, probabilities, config, folder / "cover.png")
        card = Path(documentation) if documentation is not None else _default_card(model)
        if card is not None and not card.is_file():
            raise DataError(f"model card {str(card)!r} does not exist; check the path.")
        card_path = folder / "README.md"
        card_path.write_text(
            card.read_text(encoding="utf-8") if card else model_card(model, name, description),
            encoding="utf-8",
        )
        example = torch.from_numpy(normalize(raw[0], config.normalization)[None])
        _trace(network, example).save(str(folder / "weights_torchscript.pt"))
        _write_onnx(network, example, folder / "weights.onnx", _metadata_strings(model))
        descr = _build(
            model,
            folder,
            name=name,
            description=description,
            authors=authors,
            license=license,
            documentation=card_path,
            tags=list(all_tags),
        )
        with atomic_write(path) as package:
            save_bioimageio_package(descr, output_path=package)
            if test:
                check_package(package)
    return path


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
    _require("bioimageio.core")
    from bioimageio.core import test_model

    summary = test_model(str(path))
    if summary.status != "passed":
        raise ModelFileError(
            f"the bioimage.io package {str(path)!r} fails bioimage.io's test: "
            f"{_summary_text(summary)}"
        )


def export_model(
    model: TrainedModel | str | Path,
    path: str | Path,
    format: ExportFormat | None = None,
    **options: Any,
) -> Path:
    """Export ``model`` to ``path`` as a bioimage.io package or an ONNX file.

    This is the function behind ``napari-unet export`` and the widgets' Export button.

    Parameters
    ----------
    model : TrainedModel, str or Path
        A loaded model, a model file, or ``"default"``.
    path : str or Path
        Destination file.
    format : {"bioimageio", "onnx"}, optional
        Output format; inferred from the suffix of ``path`` (``.zip``, ``.onnx``) if None.
    **options
        Passed to :func:`export_bioimageio` (name, authors, sample, ...); none for ONNX.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ConfigError
        If the format is unknown or cannot be inferred.
    ModelFileError
        See :func:`export_bioimageio` and :func:`export_onnx`.
    """
    path = Path(path)
    if format is None:
        by_suffix = {suffix: fmt for fmt, suffix in FORMAT_SUFFIXES.items()}
        format = by_suffix.get(path.suffix.lower())  # type: ignore[assignment]
        if format is None:
            raise ConfigError(
                f"cannot tell the export format from {path.name!r}; name the file *.zip "
                "(bioimage.io) or *.onnx, or give the format."
            )
    if format == "onnx":
        if options:
            raise ConfigError(f"ONNX export takes no options, got {sorted(options)}.")
        return export_onnx(model, path)
    if format == "bioimageio":
        return export_bioimageio(model, path, **options)
    raise ConfigError(f"export format {format!r} is unknown; use 'bioimageio' or 'onnx'.")
