"""Prediction: images, stacks and dask arrays to probabilities and instance labels.

The work is a generator, :func:`predict_events`, that yields :class:`Progress`
after every batch of tiles and returns a :class:`Segmentation`; the napari widget
runs it in a worker thread, while scripts call the plain :func:`predict` or
:func:`segment`. Each 2D plane is normalised exactly as in training
(:func:`napari_unet.data.normalize`, with the model's stored settings),
predicted tile by tile with blended overlaps (:mod:`napari_unet.tiling`), passed
through a sigmoid, and turned into labels by
:func:`napari_unet.postprocess.probabilities_to_labels`.

Shapes, as :func:`napari_unet.layout.find_layout` decides them: a plane is ``(H, W)``
grey, ``(H, W, 2)`` two channels, ``(H, W, 3|4)`` RGB(A) or multichannel with a
``channel_axis``; any axes before the plane (``Z``, ``T``, ``T, Z``) are a stack,
predicted plane by plane. Labels have the image's shape without the channel axis;
probabilities are ``(C_out, *labels.shape)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from napari_unet.checkpoint import TrainedModel, load_model
from napari_unet.config import ModelConfig
from napari_unet.data import normalize
from napari_unet.errors import ConfigError, DataError
from napari_unet.layout import Layout, find_layout

# Re-exported: distributed.py imports it from here (until it imports napari_unet.layout).
from napari_unet.layout import labels_shape as labels_shape
from napari_unet.model import select_device
from napari_unet.postprocess import label_dtype, probabilities_to_labels
from napari_unet.tiling import sliding_window, sliding_window_events, tile_grid

T = TypeVar("T")

#: Largest automatic tile side: bigger tiles are not faster on a CPU and only
#: raise peak memory; a GPU gains from fewer, larger launches.
MAX_AUTO_TILE = {"cpu": 1024, "other": 2048}
MIN_AUTO_TILE = 256
#: Fraction of the free memory that the activations of one batch of tiles may use.
MEMORY_FRACTION = 0.25
#: Post-processing used when neither the caller nor the model file sets a value. A model
#: file may carry values tuned on its validation data in ``metadata["postprocess"]``.
DEFAULT_POSTPROCESS: dict[str, float | int] = {
    "threshold": 0.5,
    "min_size": 8,
    "seed_threshold": 0.5,
    # 0: no hysteresis, objects are split at ``threshold``.
    "core_threshold": 0.0,
}


@dataclass(frozen=True)
class PredictConfig:
    """Settings of a prediction, checked when built.

    Parameters
    ----------
    tile_size : int or None
        Largest tile side in pixels (tiles are shrunk to cover each image evenly).
        None picks one from the free memory of the device (256 to 1024 on a CPU).
    overlap : int
        Minimum overlap of neighbouring tiles, blended smoothly; less than half
        the tile size.
    tile_batch : int
        Tiles predicted at once (helps on a GPU).
    tta : bool
        Test-time augmentation: average the 8 flips/rotations of every tile
        (8x slower, slightly smoother and more accurate).
    compile : bool
        Compile the network with ``torch.compile`` (weights frozen into the
        graph). The first tile of each new tile shape pays a compilation of
        tens of seconds, after which every tile runs faster (see
        ``benchmarks/bench_predict.py``): worth it for large images, stacks and
        folders of same-sized images. Needs a C++ compiler on a CPU; without one
        prediction warns and runs uncompiled.
    threshold : float or None
        Foreground probability above which a pixel belongs to an object.
    separate : bool
        Split touching objects with a seeded watershed.
    min_size : int or None
        Objects with fewer pixels are removed.
    seed_threshold : float or None
        ``contour`` models: boundary probability under which a foreground pixel
        seeds an object (see :mod:`napari_unet.postprocess`).
    core_threshold : float or None
        Hysteresis: objects are found and split where the foreground probability
        is over ``core_threshold``, then grown to ``threshold``; at or below
        ``threshold`` objects are split at ``threshold`` (see
        :mod:`napari_unet.postprocess`).

    ``threshold``, ``min_size``, ``seed_threshold`` and ``core_threshold`` left at None
    take the value tuned for the model (its ``metadata["postprocess"]``), else
    :data:`DEFAULT_POSTPROCESS`; see :meth:`for_model`.
    fill_holes : bool
        Fill holes inside objects.
    labels_per_plane : bool
        On a stack, number each plane's objects from 1 (otherwise labels are
        unique across the whole stack).
    device : str
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    return_probabilities : bool
        Also return the probability maps.
    """

    tile_size: int | None = None
    overlap: int = 64
    tile_batch: int = 1
    tta: bool = False
    compile: bool = False
    threshold: float | None = None
    separate: bool = True
    min_size: int | None = None
    seed_threshold: float | None = None
    core_threshold: float | None = None
    fill_holes: bool = True
    labels_per_plane: bool = False
    device: str = "auto"
    return_probabilities: bool = False

    def __post_init__(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        check(
            self.tile_size is None
            or (isinstance(self.tile_size, int) and 32 <= self.tile_size <= 16384),
            f"tile_size must be None (automatic) or an integer from 32 to 16384, got "
            f"{self.tile_size!r}; 512 is a good choice on a CPU.",
        )
        check(
            isinstance(self.overlap, int) and 0 <= self.overlap <= 256,
            f"overlap must be an integer from 0 to 256 pixels, got {self.overlap!r}; try 64.",
        )
        check(
            self.tile_size is None or 2 * self.overlap < self.tile_size,
            f"overlap ({self.overlap}) must be less than half of tile_size ({self.tile_size}); "
            f"use overlap={self.tile_size // 8 if self.tile_size else 0} or a larger tile.",
        )
        check(
            isinstance(self.tile_batch, int) and 1 <= self.tile_batch <= 256,
            f"tile_batch must be an integer from 1 to 256, got {self.tile_batch!r}.",
        )
        for name in ("threshold", "seed_threshold"):
            value = getattr(self, name)
            check(
                value is None or (isinstance(value, (int, float)) and 0.0 < value < 1.0),
                f"{name} must be a probability strictly between 0 and 1 (or None for the "
                f"model's tuned value), got {value!r}; the reference threshold is 0.5.",
            )
        check(
            self.core_threshold is None
            or (isinstance(self.core_threshold, (int, float)) and 0.0 <= self.core_threshold < 1.0),
            f"core_threshold must be a probability from 0 (no hysteresis) to under 1 (or None "
            f"for the model's tuned value), got {self.core_threshold!r}.",
        )
        check(
            self.min_size is None or (isinstance(self.min_size, int) and self.min_size >= 0),
            f"min_size must be a non-negative number of pixels, got {self.min_size!r}.",
        )
        check(
            isinstance(self.device, str) and _is_device_name(self.device),
            f"device {self.device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps.",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (for JSON)."""
        return dataclasses.asdict(self)

    def for_model(self, model: TrainedModel) -> PredictConfig:
        """This config with unset post-processing values filled in for ``model``.

        Order: the value given here, then the model's ``metadata["postprocess"]``
        (tuned on its validation data), then :data:`DEFAULT_POSTPROCESS`.
        """
        if all(getattr(self, name) is not None for name in DEFAULT_POSTPROCESS):
            return self
        tuned = model.metadata.get("postprocess", {})
        fix = (
            f"the post-processing stored in the model file {model.source} is invalid ({{}}); "
            "give every setting explicitly (threshold, seed_threshold, core_threshold, "
            "min_size) or re-tune the model (napari-unet tune --out)."
        )
        if not isinstance(tuned, dict):
            raise ConfigError(fix.format(f"not a table of settings but {type(tuned).__name__}"))
        filled = {
            name: tuned.get(name, default) if getattr(self, name) is None else getattr(self, name)
            for name, default in DEFAULT_POSTPROCESS.items()
        }
        try:
            return dataclasses.replace(self, **filled)
        except ConfigError as error:
            raise ConfigError(fix.format(error)) from error

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown prediction setting(s) {unknown}; valid settings are {sorted(known)}."
            )
        return cls(**data)


def default_overlap(tile_size: int | None) -> int:
    """The default overlap: 64 pixels, or a quarter of a smaller tile."""
    return 64 if tile_size is None else min(64, tile_size // 4)


def _is_device_name(name: str) -> bool:
    if name == "auto":
        return True
    try:
        torch.device(name)
    except RuntimeError:
        return False
    return True


@dataclass
class Progress:
    """Progress of a prediction: ``done`` of ``total`` tiles, and what is happening."""

    done: int
    total: int
    message: str = ""


@dataclass
class Segmentation:
    """Result of a prediction.

    Attributes
    ----------
    labels : np.ndarray or dask.array.Array
        Instance labels, the image's shape without its channel axis; 0 is background.
    probabilities : np.ndarray or dask.array.Array or None
        ``(C_out, *labels.shape)`` sigmoid outputs, if asked for.
    cancelled : bool
        True if ``stop`` was set; planes not reached are left 0.
    """

    labels: Any
    probabilities: Any = None
    cancelled: bool = False


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    """distributed.py's view of a :class:`napari_unet.layout.Layout`.

    Kept until the block-wise code imports :mod:`napari_unet.layout` (issue #16).
    """

    leading: tuple[int, ...]
    height: int
    width: int
    channel_axis: int | None
    channels: int | None
    drop_alpha: bool

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return (*self.leading, self.height, self.width)


def _layout(
    shape: tuple[int, ...], in_channels: int, rgb: bool | None, channel_axis: int | None
) -> _Layout:
    """:func:`napari_unet.layout.find_layout` as distributed.py reads it (see :class:`_Layout`)."""
    layout = find_layout(shape, in_channels, rgb, channel_axis)
    channels = None if layout.channel_axis is None else layout.model_channels
    return _Layout(
        layout.stack_shape,
        layout.height,
        layout.width,
        layout.channel_axis,
        channels,
        layout.drop_alpha,
    )


def _network_input(plane: np.ndarray, config: ModelConfig, layout: Layout) -> np.ndarray:
    """``(C, H, W)`` float32 network input of one arranged plane, normalised like in training."""
    return normalize(layout.network_input(plane), config.normalization)


# --------------------------------------------------------------------------- network


#: Fast inference copies, keyed by the network they were made from; the key also
#: holds the parameters' versions, so a network trained further is rebuilt.
_FAST: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], dict[bool, nn.Module]]] = (
    weakref.WeakKeyDictionary()
)


def _fold_batchnorm(network: nn.Module) -> nn.Module:
    """A copy of ``network`` in eval mode with every (Conv2d, BatchNorm2d) pair folded.

    Folding removes one full pass over every activation map; the result is
    numerically the same network.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = nn.Identity()
    return folded


def inference_network(
    network: nn.Module, device: torch.device, compiled: bool = False
) -> nn.Module:
    """The fastest equivalent of ``network`` for inference on ``device`` (cached).

    BatchNorm is folded into the convolutions and, on a CPU, weights and
    activations use the channels-last layout, which oneDNN's convolutions run
    fastest (see ``benchmarks/bench_predict.py``). With ``compiled`` that network
    is wrapped in ``torch.compile`` with frozen weights, which fuses the
    element-wise work (ReLU, concatenation) into the convolutions; compilation
    happens at the first call of each input shape. The original network is not
    modified.
    """
    tensors = [*network.parameters(), *network.buffers()]
    key = (str(device), *((t.data_ptr(), t._version) for t in tensors))
    cached = _FAST.get(network)
    if cached is None or cached[0] != key:
        fast = _fold_batchnorm(network).to(device)
        if device.type == "cpu":
            fast = fast.to(memory_format=torch.channels_last)
        cached = (key, {False: fast})
        _FAST[network] = cached
    versions = cached[1]
    if compiled and True not in versions:
        # Freezing turns the weights into constants of the graph (inference only),
        # which lets inductor pre-pack them for oneDNN; one graph per tile shape.
        versions[True] = torch.compile(versions[False], dynamic=False, options={"freezing": True})
    return versions[compiled]


Transform = Callable[[torch.Tensor], torch.Tensor]


def _d4() -> list[tuple[Transform, Transform]]:
    """The 8 symmetries of a tile (4 rotations, each with and without a flip).

    Returned as ``(forward, inverse)`` pairs acting on the last two axes.
    """
    pairs = []
    for flip in (False, True):
        for k in range(4):

            def forward(t: torch.Tensor, k: int = k, flip: bool = flip) -> torch.Tensor:
                return torch.rot90(t.flip(-1) if flip else t, k, dims=(-2, -1))

            def inverse(t: torch.Tensor, k: int = k, flip: bool = flip) -> torch.Tensor:
                t = torch.rot90(t, -k, dims=(-2, -1))
                return t.flip(-1) if flip else t

            pairs.append((forward, inverse))
    return pairs


class TilePredictor:
    """Sigmoid probabilities of a batch of tiles: the predictor of :func:`sliding_window`.

    Parameters
    ----------
    model : TrainedModel
        The model; its network is wrapped by :func:`inference_network`.
    tta : bool
        Average the predictions of the 8 flips/rotations of each tile.
    compile : bool
        Use the ``torch.compile`` version of the network (see :class:`PredictConfig`);
        if compiling fails, warn once and predict with the uncompiled network.
    """

    def __init__(self, model: TrainedModel, tta: bool = False, compile: bool = False) -> None:
        self.model = model
        self.eager = inference_network(model.network, model.device)
        self.network = (
            inference_network(model.network, model.device, compiled=True) if compile else self.eager
        )
        self.transforms = _d4() if tta else None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.network is self.eager:
            return self.network(x)
        try:
            return self.network(x)
        except Exception as error:  # torch.compile's errors have no common base class
            warnings.warn(
                f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); "
                "predicting without compiling. Install a C++ compiler (e.g. apt-get install "
                "g++) or leave compile off.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.network = self.eager
            return self.network(x)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self._logits(x))

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, C_in, h, w)`` float32 -> ``(N, C_out, h, w)`` float32 probabilities."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))
            x = x.to(self.model.device)
            if self.transforms is None:
                out = self._probabilities(x)
            else:
                out = sum(
                    inverse(self._probabilities(forward(x))) for forward, inverse in self.transforms
                )
                out = out / len(self.transforms)
            return out.float().cpu().contiguous().numpy()


def _free_memory(device: torch.device) -> int:
    """Bytes of memory free for activations on ``device``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        # Linux and macOS without psutil; free pages undercount the cache, erring small.
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def activation_bytes_per_pixel(config: ModelConfig) -> int:
    """Rough peak bytes of activations per input pixel during inference.

    Measured peaks (CPU, BatchNorm folded) are 7-7.5 float32 values per base
    filter per pixel for a U-Net (the full-resolution decoder step holds skip,
    upsampled, concatenated and convolved maps at once) and 15 for a depth-4
    U-Net++, which keeps every nested node; the estimate rounds them up.
    """
    per_filter = 8 if config.architecture == "unet" else 8 + 2 * config.depth
    return 4 * per_filter * config.base_filters


def auto_tile_size(
    config: ModelConfig, device: torch.device, tile_batch: int = 1, overlap: int = 64
) -> int:
    """Largest tile side whose activations fit in a fraction of the free memory.

    The result is a multiple of the network's size step, between 256 (or four
    times the overlap) and 1024 on a CPU / 2048 on a GPU.
    """
    budget = _free_memory(device) * MEMORY_FRACTION / tile_batch
    side = int(math.sqrt(budget / activation_bytes_per_pixel(config)))
    largest = MAX_AUTO_TILE["cpu" if device.type == "cpu" else "other"]
    side = max(min(side, largest), MIN_AUTO_TILE, 4 * overlap)
    return side // config.size_multiple * config.size_multiple


# --------------------------------------------------------------------------- prediction


def resolve_model(model: str | os.PathLike[str] | TrainedModel, device: str) -> TrainedModel:
    """Load ``model`` (path, ``"default"`` or TrainedModel) on ``device`` for prediction.

    ``device="auto"`` keeps a loaded model where it is. A device that is not
    available raises :class:`~napari_unet.config.ConfigError`.
    """
    try:
        torch_device = None if device == "auto" else select_device(device)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return load_model(model, device="auto" if torch_device is None else torch_device)


def _is_dask(image: Any) -> bool:
    return type(image).__module__.startswith("dask.")


def _plane_to_labels(probabilities: np.ndarray, target: str, config: PredictConfig) -> np.ndarray:
    return probabilities_to_labels(
        probabilities,
        target=target,
        threshold=config.threshold,
        separate=config.separate,
        min_size=config.min_size,
        fill_holes=config.fill_holes,
        seed_threshold=config.seed_threshold,
        core_threshold=config.core_threshold,
    )


def predict_events(
    image: Any,
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    stop: threading.Event | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Predict instance labels of an image or stack, yielding progress.

    Parameters
    ----------
    image : array_like or dask.array.Array
        ``(H, W)``, ``(H, W, 3|4)``, multichannel with ``channel_axis``, or a stack
        of those with up to two leading axes (``Z``, ``T``, ``T, Z``).
    model : str, Path or TrainedModel
        A model file, ``"default"`` (the bundled model) or a loaded model.
    config : PredictConfig, optional
        Tiling, augmentation and post-processing settings.
    rgb : bool, optional
        Whether the last axis is colour (napari's ``layer.rgb``); inferred if None
        (last axis of 3 or 4).
    channel_axis : int, optional
        Axis holding the channels of a multichannel image.
    stop : threading.Event, optional
        When set, the prediction ends after the current batch of tiles.

    Yields
    ------
    Progress
        Tiles done / total after every batch (one event for a lazy dask result).

    Returns
    -------
    Segmentation
        Labels (and probabilities). For a dask input both are lazy dask arrays,
        computed plane by plane when read (see :func:`_predict_dask`).

    Raises
    ------
    DataError
        If the image's shape or channels do not suit the model.
    ConfigError
        If a setting is invalid or the device is not available.
    ModelFileError
        If the model file cannot be loaded.
    """
    config = config or PredictConfig()
    trained = resolve_model(model, config.device)
    config = config.for_model(trained)
    model_config = trained.config
    lazy = _is_dask(image)
    image = image if lazy else np.asarray(image)
    layout = find_layout(image.shape, model_config.in_channels, rgb, channel_axis)
    arranged = layout.channels_last(image)
    tile = config.tile_size or auto_tile_size(
        model_config, trained.device, config.tile_batch, config.overlap
    )
    predictor = TilePredictor(trained, config.tta, config.compile)
    if lazy:
        yield Progress(1, 1, "lazy result: planes are predicted when they are read")
        return _predict_dask(arranged, layout, predictor, config, tile)

    n_tiles = len(tile_grid((layout.height, layout.width), tile, config.overlap))
    total = layout.n_planes * n_tiles
    labels = np.zeros(layout.labels_shape, dtype=np.uint32)
    probabilities = (
        np.zeros((model_config.out_channels, *labels.shape), dtype=np.float32)
        if config.return_probabilities
        else None
    )
    offset = 0
    for plane_number, index in enumerate(np.ndindex(*layout.stack_shape)):
        x = _network_input(arranged[index], model_config, layout)
        events = sliding_window_events(
            x, predictor, tile, config.overlap, config.tile_batch, model_config.size_multiple
        )
        while True:
            if stop is not None and stop.is_set():
                return Segmentation(_narrow(labels), probabilities, cancelled=True)
            try:
                done = next(events)
            except StopIteration as finished:
                plane_probabilities = finished.value
                break
            where = f"plane {plane_number + 1}/{layout.n_planes}, " if layout.stack_shape else ""
            yield Progress(plane_number * n_tiles + done, total, f"{where}tile {done}/{n_tiles}")
        plane_labels = _plane_to_labels(plane_probabilities, model_config.target, config)
        count = int(plane_labels.max(initial=0))
        if not config.labels_per_plane:
            if offset + count > np.iinfo(labels.dtype).max:
                labels = labels.astype(np.uint64)
            plane_labels = np.where(plane_labels > 0, plane_labels.astype(labels.dtype) + offset, 0)
            offset += count
        labels[index] = plane_labels
        if probabilities is not None:
            probabilities[(slice(None), *index)] = plane_probabilities
    return Segmentation(_narrow(labels), probabilities)


def _narrow(labels: np.ndarray) -> np.ndarray:
    """``labels`` in the narrowest dtype of :func:`label_dtype` for its largest label."""
    return labels.astype(label_dtype(int(labels.max(initial=0))), copy=False)


def _dask_label_stride(n_planes: int) -> tuple[int, np.dtype]:
    """Label offset between planes of a lazy stack, and the labels' dtype.

    A lazy result cannot know how many objects earlier planes hold, so plane ``p``
    numbers its objects from ``p * stride + 1``: unique across the stack but not
    sequential. uint32 leaves at least 2**20 labels per plane up to 4,096 planes;
    longer stacks use uint64 with 2**32 labels per plane.
    """
    if n_planes <= 4096:
        return (2**32 - 1) // n_planes, np.dtype(np.uint32)
    return 2**32, np.dtype(np.uint64)


def _predict_dask(
    image: Any, layout: Layout, predictor: TilePredictor, config: PredictConfig, tile: int
) -> Segmentation:
    """Lazy prediction of a dask image: one task per plane.

    Every chunk is one whole plane (the stack axes are rechunked to 1, the plane
    axes to full size), so a chunk needs no overlap with its neighbours: its own
    tiles overlap inside it, and normalisation sees the whole plane exactly as
    the numpy path does. Memory is bounded by a few planes at a time, whatever
    the length of the stack.
    """
    import dask.array as da

    model_config = predictor.model.config
    n_lead = len(layout.stack_shape)
    plane_axes = image.ndim - n_lead
    image = image.rechunk((1,) * n_lead + (-1,) * plane_axes)
    out_channels = model_config.out_channels

    def plane_probabilities(block: np.ndarray) -> np.ndarray:
        x = _network_input(block.reshape(block.shape[n_lead:]), model_config, layout)
        probabilities = sliding_window(
            x, predictor, tile, config.overlap, config.tile_batch, model_config.size_multiple
        )
        return probabilities.reshape((out_channels,) + (1,) * n_lead + probabilities.shape[1:])

    # Axes a0, a1, ... of the input; the channel axis (if any) is contracted away
    # and a new first axis "k" holds the output channels.
    in_index = tuple(f"a{i}" for i in range(image.ndim))
    out_index = ("k", *in_index[: n_lead + 2])
    probabilities = da.blockwise(
        plane_probabilities,
        out_index,
        image,
        in_index,
        new_axes={"k": out_channels},
        dtype=np.float32,
        concatenate=True,
    )
    stride, dtype = _dask_label_stride(layout.n_planes)

    def plane_labels(block: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        labels = _plane_to_labels(
            block.reshape(block.shape[:1] + block.shape[-2:]), model_config.target, config
        )
        labels = labels.astype(dtype).reshape(block.shape[1:])
        if config.labels_per_plane:
            return labels
        count = int(labels.max(initial=0))
        if count >= stride:
            raise DataError(
                f"a plane holds {count} objects, more than the {stride} a lazy stack of "
                f"{layout.n_planes} planes can number uniquely; use labels_per_plane=True."
            )
        location = block_info[None]["chunk-location"][:n_lead] if block_info else ()
        plane = int(np.ravel_multi_index(location, layout.stack_shape)) if n_lead else 0
        return np.where(labels > 0, labels + dtype.type(plane * stride), labels)

    labels = probabilities.map_blocks(plane_labels, drop_axis=0, dtype=dtype)
    return Segmentation(labels, probabilities if config.return_probabilities else None)


def run_to_end(events: Generator[Any, None, T]) -> T:
    """Drive a generator of progress events to its end and return its value.

    The plain-function forms (``predict``, ``evaluate``, ``tune``, ``train``) of the
    ``*_events`` generators are this call.
    """
    while True:
        try:
            next(events)
        except StopIteration as finished:
            return finished.value


def _split_options(
    config: PredictConfig | None, options: dict[str, Any]
) -> tuple[PredictConfig, dict[str, Any]]:
    """Apply keyword settings of :class:`PredictConfig` to ``config``; return the rest."""
    fields = {f.name for f in dataclasses.fields(PredictConfig)}
    settings = {k: v for k, v in options.items() if k in fields}
    rest = {k: v for k, v in options.items() if k not in fields}
    unknown = sorted(set(rest) - {"rgb", "channel_axis", "stop"})
    if unknown:
        raise TypeError(
            f"unexpected argument(s) {unknown}; prediction settings are {sorted(fields)}"
        )
    return dataclasses.replace(config or PredictConfig(), **settings), rest


def predict(
    image: Any,
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    **options: Any,
) -> Segmentation:
    """Predict labels (and probabilities) of an image or stack; see :func:`predict_events`.

    ``options`` are :class:`PredictConfig` fields overriding ``config`` (e.g.
    ``tta=True``) and ``rgb``/``channel_axis``/``stop``.
    """
    config, rest = _split_options(config, options)
    return run_to_end(predict_events(image, model, config, **rest))


def segment(
    image: Any,
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    **options: Any,
) -> Any:
    """Instance labels of an image or stack (numpy in, numpy out; dask in, lazy dask out).

    Examples
    --------
    >>> labels = segment(image, "default", min_size=20)  # doctest: +SKIP
    """
    return predict(image, model, config, **options).labels
