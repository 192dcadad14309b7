"""TorchScript and ONNX weights of a napari-unet network, for packages and ONNX files.

What is exported is the network *with its padding*: the exported graph pads any
input to a multiple of ``2**depth`` (reflect padding, as the network does for
inputs of at least ``2**depth`` pixels) and crops the output back, so ONNX and
TorchScript consumers can feed any height and width of at least ``2**depth``. A 3D
network (``ndim=3``, ONNX only) takes ``(N, C, Z, Y, X)`` and pads each axis to the
multiple of :attr:`~napari_unet.config.ModelConfig.size_multiples`.
The graph returns **logits**; apply a sigmoid for probabilities (a bioimage.io
package says so in its post-processing).

Used by :mod:`napari_unet.bioimageio.writing` (a package's weights) and by
:func:`napari_unet.export.export_onnx` (a standalone ``.onnx`` file). Needs the
optional ``export`` extra (``onnx``, ``onnxruntime``).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_unet import __version__
from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig
from napari_unet.errors import ModelFileError
from napari_unet.model import UNet, UNetPlusPlus

#: ONNX opset of exported graphs: old enough for every current runtime, new enough for Pad/Slice.
ONNX_OPSET = 17
#: Tensor ids of exported graphs (and of a bioimage.io package's tensors).
INPUT_ID, OUTPUT_ID = "input", "output"
#: Names of the output channels, per target (see the contract in CONTRACT.md).
OUTPUT_CHANNEL_NAMES: dict[str, list[str]] = {
    "foreground": ["foreground"],
    "contour": ["foreground", "boundary"],
    "distance": ["foreground", "distance"],
}
EXTRA_HINT = "install the export extra: pip install 'napari-unet[export]'"


class ExportNetwork(nn.Module):
    """Pads each axis to its multiple, runs the U-Net, crops: a trace-friendly forward.

    The network's own ``forward`` chooses its padding with Python branches on the
    input size, which a trace would freeze to the example's size; here the pad
    amounts are computed from the (traced) input shape, so the exported graph
    works for every size of at least the axis's multiple (``2**depth`` in Y and X).
    """

    def __init__(self, network: UNet | UNetPlusPlus) -> None:
        super().__init__()
        self.network = network
        self.multiples = network.config.size_multiples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        pads = [(m - size % m) % m for size, m in zip(sizes, self.multiples)]
        # F.pad takes (before, after) pairs from the last axis backwards.
        padded = F.pad(x, [width for pad in reversed(pads) for width in (0, pad)], mode="reflect")
        out = self.network._forward_padded(padded)
        return out[(slice(None), slice(None), *(slice(0, size) for size in sizes))]


def require_modules(*modules: str) -> None:
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


def export_network(model: TrainedModel) -> ExportNetwork:
    """A CPU copy of ``model``'s network in eval mode, wrapped for tracing."""
    if not isinstance(model.network, (UNet, UNetPlusPlus)):
        raise ModelFileError(
            f"{model.source!r} is not a napari-unet network (it wraps a "
            f"{type(model.network).__name__}); export the original model file instead."
        )
    network = copy.deepcopy(model.network).cpu().eval()
    return ExportNetwork(network).eval()


def trace(network: ExportNetwork, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.13 deprecates tracing; shape-dependent branches were moved out of the trace.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.trace(network, example, check_trace=False)


def write_onnx(
    network: ExportNetwork, example: torch.Tensor, path: Path, metadata: dict[str, str]
) -> None:
    """Write ``network`` as ONNX with dynamic batch and spatial sizes, plus metadata."""
    import onnx

    spatial = ("height", "width") if example.ndim == 4 else ("depth", "height", "width")
    dynamic = {0: "batch", **{axis: name for axis, name in enumerate(spatial, start=2)}}
    with warnings.catch_warnings():
        # The TorchScript-based exporter handles the traced shape arithmetic of
        # ExportNetwork and needs no extra package; its deprecation note is noise here.
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


def check_onnx(path: Path, network: ExportNetwork, inputs: Sequence[torch.Tensor]) -> None:
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


def onnx_metadata(model: TrainedModel) -> dict[str, str]:
    """What an ONNX file records about the model, as strings (ONNX metadata is text)."""
    config = model.config
    norm = config.normalization
    axes = "H, W" if config.ndim == 2 else "Z, Y, X"
    smallest = " x ".join(str(m) for m in config.size_multiples)
    return {
        "producer": f"napari-unet {__version__}",
        "description": (
            f"napari-unet {config.ndim}D {config.architecture} (target {config.target}). "
            f"Input (N, {config.in_channels}, {axes}) float32, {axes} >= {smallest}, "
            f"normalised: {describe_normalization(config)}. "
            f"Output (N, {config.out_channels}, {axes}) logits; apply a sigmoid."
        ),
        "napari_unet_config": json.dumps(model.config.to_dict()),
        "normalization": json.dumps(norm.to_dict()),
        "output_channels": json.dumps(OUTPUT_CHANNEL_NAMES[model.config.target]),
        "postprocessing": "sigmoid",
    }


def describe_normalization(config: ModelConfig) -> str:
    norm = config.normalization
    if norm.mode == "percentile":
        return f"percentile {norm.low:g} -> 0 and {norm.high:g} -> 1 over all channels of an image"
    if norm.mode == "minmax":
        return "min -> 0 and max -> 1 over all channels of an image"
    return "none (raw intensities as float32)"
