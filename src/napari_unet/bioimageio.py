"""Use bioimage.io model packages wherever napari-unet takes a model.

:func:`load_bioimageio` turns a bioimage.io package (a ``.zip`` or an ``rdf.yaml``
with its files) of a 2D, single-input, single-output segmentation model into a
:class:`~napari_unet.checkpoint.TrainedModel`, so prediction, evaluation and the
widgets use it like a model file. It needs ``bioimageio.core`` (the ``export``
extra); :func:`napari_unet.checkpoint.load_model` calls it for ``.zip`` and
``.yaml`` paths.

Two ways in:

- **Packages napari-unet exported** carry its configuration under
  ``config.napari_unet``; the network is rebuilt natively from the weights of the
  TorchScript entry, so it is the exact original (it can be fine-tuned and re-saved).
- **Any other package** is wrapped in :class:`PackageNetwork`, an ``nn.Module``
  that runs the package's TorchScript, ONNX or PyTorch state-dict weights (in that
  order of preference) and returns **logits** like every napari-unet network:

  * a sigmoid post-processing step is dropped (the raw weights output logits);
  * with no sigmoid, an output that is a probability (declared range within
    [0, 1], or a test output within [0, 1]) is turned back into logits with
    ``logit(p)``; anything else is taken as logits already;
  * inputs are padded to a size the package accepts (its ``min`` + ``n * step``)
    and the output cropped back, so any height and width work;
  * the package's ``scale_range`` pre-processing becomes the model's
    :class:`~napari_unet.config.NormalizationConfig` (percentile mode; 0/100 is
    min-max), a following fixed ``clip`` is applied inside the wrapper.

  The derived :class:`~napari_unet.config.ModelConfig` has the package's input
  channels, target ``foreground``, that normalisation, and a ``depth`` matching the
  package's size step; its architecture and filter fields are placeholders, so a
  wrapped model cannot be re-saved as a napari-unet model file.

Packages that cannot be used this way (3D or time axes, several inputs or
outputs, several output channels, pre-processing other than ``scale_range`` /
``clip`` / ``ensure_dtype``, no usable weights, fixed input sizes) are refused
with a :class:`~napari_unet.checkpoint.ModelFileError` that says why. Loading
PyTorch state-dict weights of a foreign package runs the Python architecture
code it ships; TorchScript and ONNX weights are preferred for that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig, NormalizationConfig
from napari_unet.errors import ConfigError, ModelFileError
from napari_unet.model import build_model, select_device

#: Weight formats this module runs, in order of preference for foreign packages.
WEIGHT_FORMATS = ("torchscript", "onnx", "pytorch_state_dict")
WeightsChoice = Literal["auto", "native", "torchscript", "onnx", "pytorch_state_dict"]
#: Key under the package's ``config`` where napari-unet stores its own settings.
CONFIG_KEY = "napari_unet"
_EXTRA_HINT = "install the export extra: pip install 'napari-unet[export]'"
# Probabilities are clamped away from 0 and 1 before logit() so outputs stay finite.
_PROBABILITY_EPS = 1e-6
_NCHW = ("batch", "channel", "y", "x")


@dataclass(frozen=True)
class _Layout:
    """How a package's tensor is laid out, relative to napari-unet's ``(N, C, H, W)``."""

    axes: tuple[str, ...]  # axis ids in package order, e.g. ("batch", "channel", "y", "x")

    def to_package(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> the package's axis order (a missing axis must have size 1)."""
        if "channel" not in self.axes:
            x = x[:, 0]
        if "batch" not in self.axes:
            x = x[0]
        names = [name for name in _NCHW if name in self.axes]
        return x.permute(*[names.index(name) for name in self.axes])

    def from_package(self, y: torch.Tensor) -> torch.Tensor:
        """The package's axis order -> ``(N, C, H, W)``."""
        axes = list(self.axes)
        if "batch" not in axes:
            y, axes = y.unsqueeze(0), ["batch", *axes]
        if "channel" not in axes:
            y = y.unsqueeze(1)
            axes.insert(1, "channel")
        return y.permute(*[axes.index(name) for name in _NCHW])


class _OnnxRunner(nn.Module):
    """Runs an ONNX graph with ONNX Runtime on CPU, torch tensors in and out."""

    def __init__(self, model_bytes: bytes) -> None:
        super().__init__()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __deepcopy__(self, memo: dict[int, Any]) -> _OnnxRunner:
        # A session cannot be copied; sharing it is safe (run() is thread-safe, no parameters).
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device)


class PackageNetwork(nn.Module):
    """A bioimage.io model's weights behind napari-unet's network interface.

    ``forward`` takes ``(N, C, H, W)`` float32 (already normalised) of any size and
    returns ``(N, C_out, H, W)`` logits.

    Parameters
    ----------
    runner : nn.Module
        The package's weights (TorchScript module, ONNX runner or PyTorch module).
    input_layout, output_layout : _Layout
        Axis orders of the package's input and output tensors.
    min_size, step : tuple of int
        Valid input sizes per spatial axis ``(y, x)``: ``min + n * step``.
    clip : tuple of float or None
        Fixed ``(min, max)`` clip applied after normalisation (package pre-processing).
    probabilities : bool
        True if the raw output is a probability, to be turned into logits.
    """

    def __init__(
        self,
        runner: nn.Module,
        input_layout: _Layout,
        output_layout: _Layout,
        min_size: tuple[int, int],
        step: tuple[int, int],
        clip: tuple[float | None, float | None] | None,
        probabilities: bool,
    ) -> None:
        super().__init__()
        self.runner = runner
        self.input_layout = input_layout
        self.output_layout = output_layout
        self.min_size = min_size
        self.step = step
        self.clip = clip
        self.probabilities = probabilities

    def _valid(self, size: int, axis: int) -> int:
        low, step = self.min_size[axis], self.step[axis]
        return low if size <= low else low + math.ceil((size - low) / step) * step

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if "batch" not in self.input_layout.axes:
            # No batch axis in the package: run the images one by one.
            return torch.cat([self._run_batched(x[i : i + 1]) for i in range(x.shape[0])])
        return self._run_batched(x)

    def _run_batched(self, x: torch.Tensor) -> torch.Tensor:
        out = self.runner(self.input_layout.to_package(x))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return self.output_layout.from_package(out).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = self._valid(height, 0) - height
        pad_w = self._valid(width, 1) - width
        if pad_h or pad_w:
            # Reflect keeps image statistics at the border; it needs pad < size.
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        if self.clip is not None:
            x = x.clamp(self.clip[0], self.clip[1])
        out = self._run(x.float())[..., :height, :width]
        if self.probabilities:
            out = torch.logit(out.clamp(_PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS))
        return out


def _require() -> None:
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as error:
        raise ModelFileError(
            f"reading bioimage.io packages needs bioimageio.core; {_EXTRA_HINT}"
        ) from error


def _load_description(path: Path) -> Any:
    """The package's model description (latest format), or ModelFileError saying what is wrong."""
    from bioimageio.spec import InvalidDescr, load_description

    if not path.exists():
        raise ModelFileError(f"bioimage.io package {str(path)!r} does not exist; check the path.")
    try:
        descr = load_description(str(path), format_version="latest")
    except Exception as error:
        raise ModelFileError(
            f"{str(path)!r} is not a readable bioimage.io package ({error})."
        ) from error
    if isinstance(descr, InvalidDescr):
        missing = _unreadable_files(path)
        if missing:
            raise ModelFileError(
                f"bioimage.io package {str(path)!r} is invalid: files it names are missing or "
                f"unreadable: {', '.join(missing)}."
            )
        reason = (descr.get_reason() or "it does not follow the bioimage.io specification").replace(
            "\n- ", "; "
        )
        raise ModelFileError(f"bioimage.io package {str(path)!r} is invalid: {reason}")
    if descr.type != "model":
        raise ModelFileError(f"{str(path)!r} describes a bioimage.io {descr.type!r}, not a model.")
    return descr


def _unreadable_files(path: Path) -> list[str]:
    """Weights and test tensors a description names but that cannot be read.

    bioimage.io's own message for a file missing from a package is a bare
    ``TypeError``; this names the files instead.
    """
    from bioimageio.spec import InvalidDescr, load_description

    try:
        descr = load_description(str(path), format_version="latest", perform_io_checks=False)
    except Exception:
        return []
    if isinstance(descr, InvalidDescr) or descr.type != "model":
        return []
    files = [(f"{name} weights", entry) for name, entry in descr.weights if entry is not None]
    files += [
        (f"test tensor of {tensor.id!s}", tensor.test_tensor)
        for tensor in (*descr.inputs, *descr.outputs)
        if tensor.test_tensor is not None
    ]
    missing = []
    for what, entry in files:
        try:
            entry.get_reader()
        except Exception:
            missing.append(f"{what} ({str(entry.source).rsplit('/', 1)[-1]})")
    return missing


def _layout(tensor: Any, kind: str, where: str) -> _Layout:
    """Check a tensor's axes are 2D (batch, channel, y, x in any order) and return its layout."""
    axes = []
    for axis in tensor.axes:
        axis_id = str(axis.id)
        if axis.type == "batch":
            axes.append("batch")
        elif axis.type == "channel":
            axes.append("channel")
        elif axis.type == "space" and axis_id in ("y", "x"):
            axes.append(axis_id)
        else:
            raise ModelFileError(
                f"{where}: the {kind} has a {axis.type} axis {axis_id!r}; napari-unet runs 2D "
                "models whose tensors have batch, channel, y and x axes only (no z, time or "
                "index axes)."
            )
    if "y" not in axes or "x" not in axes:
        raise ModelFileError(
            f"{where}: the {kind} lacks a y or x axis (it has {axes}); napari-unet runs 2D "
            "image models."
        )
    return _Layout(tuple(axes))


def _channels(tensor: Any) -> int:
    for axis in tensor.axes:
        if axis.type == "channel":
            return int(axis.size)
    return 1


def _spatial_sizes(tensor: Any, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(min_y, min_x), (step_y, step_x)`` of the input's parameterized y/x sizes."""
    from bioimageio.spec.model.v0_5 import ParameterizedSize

    sizes = {}
    for axis in tensor.axes:
        if axis.type == "space":
            size = axis.size
            if not isinstance(size, ParameterizedSize):
                raise ModelFileError(
                    f"{where}: the input's {axis.id} axis has the fixed size {size}; napari-unet "
                    "needs models that take variable image sizes (min + n * step)."
                )
            sizes[str(axis.id)] = (int(size.min), int(size.step))
    return (sizes["y"][0], sizes["x"][0]), (sizes["y"][1], sizes["x"][1])


def _check_output_size(output: Any, input_id: str, where: str) -> None:
    """The output's y/x must follow the input's, one to one."""
    from bioimageio.spec.model.v0_5 import SizeReference

    for axis in output.axes:
        if axis.type != "space":
            continue
        size = axis.size
        if not (
            isinstance(size, SizeReference)
            and str(size.tensor_id) == input_id
            and str(size.axis_id) == str(axis.id)
            and size.offset == 0
        ):
            raise ModelFileError(
                f"{where}: the output's {axis.id} size ({size}) is not the input's; napari-unet "
                "needs outputs of the same height and width as the input."
            )


def _normalization(
    tensor: Any, in_channels: int, where: str
) -> tuple[NormalizationConfig, tuple[float | None, float | None] | None]:
    """The package's pre-processing as a NormalizationConfig plus an optional fixed clip."""
    normalization = NormalizationConfig(mode="none")
    clip = None
    seen_scale = False
    for step in tensor.preprocessing:
        kind = step.id
        if kind == "ensure_dtype":
            if not str(step.kwargs.dtype).startswith("float"):
                raise ModelFileError(
                    f"{where}: pre-processing casts the input to {step.kwargs.dtype}; napari-unet "
                    "feeds float32 and cannot repeat that cast."
                )
        elif kind == "scale_range" and not seen_scale and clip is None:
            kwargs = step.kwargs
            axes = (
                {str(a) for a in kwargs.axes} if kwargs.axes is not None else {"channel", "y", "x"}
            )
            if not {"y", "x"} <= axes:
                raise ModelFileError(
                    f"{where}: scale_range normalises along axes {sorted(axes)}; napari-unet "
                    "normalises whole images and needs y and x among them."
                )
            if in_channels > 1 and "channel" not in axes:
                raise ModelFileError(
                    f"{where}: scale_range normalises each channel separately; napari-unet "
                    "normalises all channels of an image together."
                )
            if kwargs.reference_tensor not in (None, tensor.id):
                raise ModelFileError(
                    f"{where}: scale_range takes its range from tensor "
                    f"{kwargs.reference_tensor!r}, which napari-unet cannot repeat."
                )
            low, high = float(kwargs.min_percentile), float(kwargs.max_percentile)
            try:
                normalization = (
                    NormalizationConfig(mode="minmax")
                    if (low, high) == (0.0, 100.0)
                    else NormalizationConfig(mode="percentile", low=low, high=high)
                )
            except ConfigError as error:
                raise ModelFileError(
                    f"{where}: unusable scale_range percentiles: {error}"
                ) from error
            seen_scale = True
        elif (
            kind == "clip"
            and clip is None
            and step.kwargs.min_percentile is None
            and step.kwargs.max_percentile is None
        ):
            clip = (step.kwargs.min, step.kwargs.max)
        else:
            raise ModelFileError(
                f"{where}: the input pre-processing step {kind!r} is not supported here; "
                "napari-unet repeats scale_range (percentile normalisation, once), a following "
                "fixed clip, and ensure_dtype to float."
            )
    return normalization, clip


def _outputs_probabilities(descr: Any, output: Any, where: str) -> bool:
    """Whether the raw weights output probabilities (True) or logits (False)."""
    steps = [step.id for step in output.postprocessing if step.id != "ensure_dtype"]
    if steps == ["sigmoid"]:
        return False  # the package applies the sigmoid: its weights return logits
    if steps:
        raise ModelFileError(
            f"{where}: the output post-processing {steps} is not supported; napari-unet uses "
            "models whose output is a foreground probability (optionally after a sigmoid step)."
        )
    data = output.data[0] if isinstance(output.data, (list, tuple)) else output.data
    declared = getattr(data, "range", (None, None))
    if declared[0] is not None and declared[1] is not None:
        return declared[0] >= 0.0 and declared[1] <= 1.0
    test = descr.get_output_test_arrays()[0] if output.test_tensor is not None else None
    return test is not None and float(np.min(test)) >= 0.0 and float(np.max(test)) <= 1.0


def _package_config(descr: Any) -> dict[str, Any] | None:
    """napari-unet's own settings in the package's ``config``, if it made the package."""
    config = descr.config
    extra = getattr(config, "model_extra", None) or {}
    value = extra.get(CONFIG_KEY)
    return value if isinstance(value, dict) and "model" in value else None


def _runner(descr: Any, weights: str, where: str) -> tuple[nn.Module, str]:
    """Load the chosen (or the preferred available) weights as an nn.Module."""
    available = [fmt for fmt in WEIGHT_FORMATS if getattr(descr.weights, fmt) is not None]
    if weights in WEIGHT_FORMATS:
        if weights not in available:
            raise ModelFileError(f"{where} has no {weights} weights; it has {_formats(descr)}.")
        chosen = weights
    elif available:
        chosen = available[0]
    else:
        raise ModelFileError(
            f"{where} has only {_formats(descr)} weights; napari-unet runs torchscript, onnx "
            "or pytorch_state_dict weights."
        )
    entry = getattr(descr.weights, chosen)
    try:
        if chosen == "torchscript":
            return torch.jit.load(entry.get_reader(), map_location="cpu"), chosen
        if chosen == "onnx":
            if getattr(entry, "external_data", None) is not None:
                raise ModelFileError(f"{where}: ONNX weights with external data are not supported.")
            return _OnnxRunner(entry.get_reader().read()), chosen
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        return load_torch_model(entry, load_state=True, devices=["cpu"]), chosen
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(
            f"{where}: its {chosen} weights could not be loaded ({error})."
        ) from error


def _formats(descr: Any) -> str:
    present = [name for name, entry in descr.weights if entry is not None]
    return ", ".join(present) or "no"


def _native(descr: Any, ours: dict[str, Any], where: str) -> nn.Module:
    """Rebuild napari-unet's own network from the TorchScript weights it exported."""
    entry = descr.weights.torchscript
    if entry is None:
        raise ModelFileError(f"{where} has no torchscript weights to rebuild the network from.")
    config = _own_config(ours, where)
    try:
        traced = torch.jit.load(entry.get_reader(), map_location="cpu")
        # export.py traces a wrapper whose U-Net sits under "network."
        state = {
            key.removeprefix("network."): value
            for key, value in traced.state_dict().items()
            if key.startswith("network.")
        }
        network = build_model(config)
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(
            f"{where}: its napari-unet configuration does not match its weights ({error})."
        ) from error
    return network


def _own_config(ours: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(ours["model"])
    except (ConfigError, TypeError) as error:
        raise ModelFileError(
            f"{where}: its napari-unet configuration is invalid ({error})."
        ) from error


def _foreign_config(
    in_channels: int,
    out_channels: int,
    step: tuple[int, int],
    normalization: NormalizationConfig,
    where: str,
) -> ModelConfig:
    """The ModelConfig of a package napari-unet did not make (see the module notes)."""
    if out_channels != 1:
        raise ModelFileError(
            f"{where}: the output has {out_channels} channels; napari-unet uses packages "
            "with a single foreground-probability channel (or packages it exported)."
        )
    multiple = min(step)
    # depth only sets napari-unet's preferred tile multiple; PackageNetwork pads anyway.
    depth = int(math.log2(multiple)) if multiple & (multiple - 1) == 0 else 0
    try:
        return ModelConfig(
            in_channels=in_channels,
            depth=min(6, max(1, depth)),
            target="foreground",
            normalization=normalization,
        )
    except ConfigError as error:
        raise ModelFileError(f"{where}: {error}") from error


def load_bioimageio(
    path: str | Path, device: str | torch.device = "auto", weights: WeightsChoice = "auto"
) -> TrainedModel:
    """Load a bioimage.io model package as a :class:`~napari_unet.checkpoint.TrainedModel`.

    Parameters
    ----------
    path : str or Path
        A package ``.zip``, or an ``rdf.yaml`` / ``bioimageio.yaml`` next to its files.
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU) or a torch device. ONNX weights run on the CPU.
    weights : {"auto", "native", "torchscript", "onnx", "pytorch_state_dict"}
        ``auto``: napari-unet's own network for packages it exported, else the first
        of torchscript, onnx, pytorch_state_dict present. ``native`` insists on the
        former; a format name wraps that format's weights in :class:`PackageNetwork`.

    Returns
    -------
    TrainedModel
        Network returning logits, config, metadata (``metadata["bioimageio"]``
        describes the package), device and ``source=str(path)``.

    Raises
    ------
    ModelFileError
        If ``bioimageio.core`` is missing, or the package is invalid or unusable
        (the message says why).
    """
    _require()
    path = Path(path)
    where = f"bioimage.io package {str(path)!r}"
    descr = _load_description(path)
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ModelFileError(
            f"{where} has {len(descr.inputs)} input(s) and {len(descr.outputs)} output(s); "
            "napari-unet uses models with exactly one input and one output."
        )
    tensor_in, tensor_out = descr.inputs[0], descr.outputs[0]
    input_layout = _layout(tensor_in, "input", where)
    output_layout = _layout(tensor_out, "output", where)
    min_size, step = _spatial_sizes(tensor_in, where)
    _check_output_size(tensor_out, str(tensor_in.id), where)
    in_channels, out_channels = _channels(tensor_in), _channels(tensor_out)
    normalization, clip = _normalization(tensor_in, in_channels, where)
    probabilities = _outputs_probabilities(descr, tensor_out, where)
    ours = _package_config(descr)

    info: dict[str, Any] = {
        "name": descr.name,
        "description": descr.description,
        "authors": [author.name for author in descr.authors],
        "license": str(descr.license) if descr.license is not None else None,
        "source": str(path),
    }
    if weights == "native" and ours is None:
        raise ModelFileError(
            f"{where} was not exported by napari-unet; load it with weights='auto'."
        )
    # Our own packages are rebuilt natively unless a format is asked for (or TorchScript is gone).
    native = ours is not None and (
        weights == "native" or (weights == "auto" and descr.weights.torchscript is not None)
    )
    if native:
        network: nn.Module = _native(descr, ours, where)
        config = network.config
        info["weights_format"] = "native (from torchscript)"
    else:
        if ours is not None:
            config = _own_config(ours, where)
        else:
            config = _foreign_config(in_channels, out_channels, step, normalization, where)
        runner, chosen = _runner(descr, weights, where)
        network = PackageNetwork(
            runner, input_layout, output_layout, min_size, step, clip, probabilities
        )
        info["weights_format"] = chosen
        info["output"] = "probabilities (converted to logits)" if probabilities else "logits"
    metadata = dict(ours.get("metadata", {})) if ours is not None else {}
    metadata["bioimageio"] = info
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    network.to(torch_device).eval()
    return TrainedModel(network, config, metadata, torch_device, source=str(path))
