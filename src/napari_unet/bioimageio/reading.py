"""Reading bioimage.io model packages: a package in, a network returning logits out.

:func:`read_package` turns a bioimage.io package (a ``.zip`` or an ``rdf.yaml``
with its files) of a 2D, single-input, single-output segmentation model into a
network, config and metadata; :func:`napari_unet.checkpoint.load_model` calls it for
``.zip`` and ``.yaml`` paths, so prediction, evaluation and the widgets use packages
like model files (needs ``bioimageio.core``, the ``export`` extra), after
:mod:`napari_unet.bioimageio.package` opened it (bounded, local, code-free).

Two ways in:

- **Packages napari-unet exported** carry its configuration (``config.napari_unet``); the
  network is rebuilt from the TorchScript weights: the exact original, fine-tunable.
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

  Its :class:`~napari_unet.config.ModelConfig` (input channels, target ``foreground``,
  that normalisation, a ``depth`` for the size step) cannot be re-saved as a model file.

Packages that cannot be used this way (3D or time axes, several inputs or
outputs, several output channels, pre-processing other than ``scale_range`` /
``clip`` / ``ensure_dtype``, no usable weights, fixed input sizes) are refused
with a :class:`~napari_unet.errors.ModelFileError` that says why. PyTorch
state-dict weights need the Python architecture code a package ships or names;
they are used only with ``trust_code=True`` (TorchScript and ONNX are preferred).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_unet.bioimageio.package import open_package, refuse_code
from napari_unet.config import ModelConfig, NormalizationConfig
from napari_unet.errors import ConfigError, ModelFileError, short_reason
from napari_unet.model import build_model, check_weights

#: Weight formats this module runs, in order of preference for foreign packages.
WEIGHT_FORMATS = ("torchscript", "onnx", "pytorch_state_dict")
WeightsChoice = Literal["auto", "native", "torchscript", "onnx", "pytorch_state_dict"]
#: Key under the package's ``config`` where napari-unet stores its own settings.
CONFIG_KEY = "napari_unet"
#: Largest test tensor read (to tell probabilities from logits).
MAX_TEST_BYTES = 256 * 2**20
# Probabilities are clamped away from 0 and 1 before logit() so outputs stay finite.
_PROBABILITY_EPS = 1e-6
_NCHW = ("batch", "channel", "y", "x")


@dataclass(frozen=True)
class TensorLayout:
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
    input_layout, output_layout : TensorLayout
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
        input_layout: TensorLayout,
        output_layout: TensorLayout,
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


def _layout(tensor: Any, kind: str, where: str) -> TensorLayout:
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
    return TensorLayout(tuple(axes))


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


def _outputs_probabilities(output: Any, where: str) -> bool:
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
    if output.test_tensor is None:
        return False
    test = _test_array(output.test_tensor, where)
    return test.size > 0 and float(np.min(test)) >= 0.0 and float(np.max(test)) <= 1.0


def _test_array(file: Any, where: str) -> np.ndarray:
    """A test tensor (``.npy``), its declared shape checked against its bytes before loading."""
    try:
        data = file.get_reader().read(MAX_TEST_BYTES + 1)
        if len(data) > MAX_TEST_BYTES:
            raise ModelFileError(
                f"{where}: its test tensor is over {MAX_TEST_BYTES // 2**20} MiB; refused."
            )
        buffer = io.BytesIO(data)
        version = np.lib.format.read_magic(buffer)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(buffer)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > len(data):
            raise ValueError("its header does not match its data")
        buffer.seek(0)
        return np.asarray(np.load(buffer, allow_pickle=False), dtype=np.float64)
    except ModelFileError:
        raise
    except Exception as error:  # numpy and zip readers raise many types for damaged data
        raise ModelFileError(
            f"{where}: its test tensor is not a readable .npy file ({short_reason(error)})."
        ) from error


def _package_config(descr: Any) -> dict[str, Any] | None:
    """napari-unet's own settings in the package's ``config``, if it made the package."""
    config = descr.config
    extra = getattr(config, "model_extra", None) or {}
    value = extra.get(CONFIG_KEY)
    return value if isinstance(value, dict) and isinstance(value.get("model"), dict) else None


def _runner(descr: Any, weights: str, where: str, trust_code: bool) -> tuple[nn.Module, str]:
    """The chosen (or preferred) weights as an nn.Module; PyTorch state-dict weights run
    the package's Python code, so they are refused unless ``trust_code``."""
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
    if not trust_code:
        refuse_code(entry, where)
    try:
        if chosen == "torchscript":
            runner: nn.Module = torch.jit.load(entry.get_reader(), map_location="cpu")
        elif chosen == "onnx":
            if getattr(entry, "external_data", None) is not None:
                raise ModelFileError(f"{where}: ONNX weights with external data are not supported.")
            model_bytes = entry.get_reader().read()
            _check_onnx_finite(model_bytes, where)
            runner = _OnnxRunner(model_bytes)
        else:
            from bioimageio.core.backends.pytorch_backend import load_torch_model

            runner = load_torch_model(entry, load_state=True, devices=["cpu"])
    except ModelFileError:
        raise
    except Exception as error:  # torch, ONNX Runtime and package code raise many types
        raise ModelFileError(
            f"{where}: its {chosen} weights could not be loaded ({short_reason(error)})."
        ) from error
    _check_finite(runner.state_dict(), where)
    return runner, chosen


def _check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(
                f"{where}: weight {name} holds NaN or infinite values; the package is damaged "
                "or its training diverged."
            )


def _check_onnx_finite(model_bytes: bytes, where: str) -> None:
    """Refuse ONNX weights with NaN/infinite initialisers (checked when onnx is installed)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return
    graph = onnx.load_model_from_string(model_bytes).graph
    for initializer in graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ModelFileError(
                f"{where}: ONNX weight {initializer.name} holds NaN or infinite values; the "
                "package is damaged or its training diverged."
            )


def _formats(descr: Any) -> str:
    present = [name for name, entry in descr.weights if entry is not None]
    return ", ".join(present) or "no"


def _native(descr: Any, ours: dict[str, Any], where: str) -> nn.Module:
    """Rebuild napari-unet's own network from the TorchScript weights it exported.

    The weights are checked against the stored config on the meta device first, so
    a config describing a huge network is refused before anything is allocated.
    """
    entry = descr.weights.torchscript
    if entry is None:
        raise ModelFileError(f"{where} has no torchscript weights to rebuild the network from.")
    config = _own_config(ours, where)
    try:
        traced = torch.jit.load(entry.get_reader(), map_location="cpu")
    except Exception as error:  # TorchScript raises many types for damaged archives
        raise ModelFileError(
            f"{where}: its torchscript weights could not be loaded ({short_reason(error)})."
        ) from error
    # The exported graph wraps the U-Net under "network."
    state = {
        key.removeprefix("network."): value
        for key, value in traced.state_dict().items()
        if key.startswith("network.")
    }
    check_weights(config, state, where)
    network = build_model(config)
    network.load_state_dict(state)
    return network


def _own_config(ours: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(ours["model"])
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(
            f"{where}: its napari-unet configuration is invalid ({short_reason(error)})."
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
    depth = int(math.log2(multiple)) if multiple > 0 and multiple & (multiple - 1) == 0 else 0
    try:
        return ModelConfig(
            in_channels=in_channels,
            depth=min(6, max(1, depth)),
            target="foreground",
            normalization=normalization,
        )
    except ConfigError as error:
        raise ModelFileError(f"{where}: {error}") from error


class PackageModel(NamedTuple):
    """What a package holds for napari-unet: a CPU network in eval mode returning logits,
    its config, and metadata (``metadata["bioimageio"]`` describes the package)."""

    network: nn.Module
    config: ModelConfig
    metadata: dict[str, Any]


def read_package(
    path: str | Path, weights: WeightsChoice = "auto", trust_code: bool = False
) -> PackageModel:
    """Read a bioimage.io model package (``.zip`` or ``rdf.yaml``) into a network and config.

    :func:`napari_unet.checkpoint.load_model` calls this for ``.zip`` and ``.yaml``
    paths and wraps the result in a :class:`~napari_unet.checkpoint.TrainedModel`.

    Parameters
    ----------
    path : str or Path
        A package ``.zip``, or an ``rdf.yaml`` / ``bioimageio.yaml`` next to its files.
    weights : {"auto", "native", "torchscript", "onnx", "pytorch_state_dict"}
        ``auto``: napari-unet's own network for packages it exported, else the first
        of torchscript, onnx, pytorch_state_dict present. ``native`` insists on the
        former; a format name wraps that format's weights in :class:`PackageNetwork`.
    trust_code : bool
        Allow weights that run Python code shipped in (or named by) the package
        (``pytorch_state_dict``). Off by default: such packages are refused.

    Raises
    ------
    ModelFileError
        If ``bioimageio.core`` is missing, or the package is hostile, invalid or
        unusable (the message says why).
    """
    with open_package(path) as package:
        return _read(package.descr, package.where, str(package.path), weights, trust_code)


def _read(
    descr: Any, where: str, source: str, weights: WeightsChoice, trust_code: bool
) -> PackageModel:
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
    probabilities = _outputs_probabilities(tensor_out, where)
    ours = _package_config(descr)

    info: dict[str, Any] = {
        "name": descr.name,
        "description": descr.description,
        "authors": [author.name for author in descr.authors],
        "license": str(descr.license) if descr.license is not None else None,
        "source": source,
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
        runner, chosen = _runner(descr, weights, where, trust_code)
        network = PackageNetwork(
            runner, input_layout, output_layout, min_size, step, clip, probabilities
        )
        info["weights_format"] = chosen
        info["output"] = "probabilities (converted to logits)" if probabilities else "logits"
    stored = ours.get("metadata") if ours is not None else None
    metadata = dict(stored) if isinstance(stored, dict) else {}
    metadata["bioimageio"] = info
    return PackageModel(network.eval(), config, metadata)
