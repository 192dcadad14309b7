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
predicted plane by plane (a dask stack is read one plane at a time). Labels have the
image's shape without the channel axis, unique across the stack and numbered 1..N by
:func:`number_planes`; probabilities are ``(C_out, *labels.shape)``. Results are held in
memory: for stacks whose labels do not fit, :func:`napari_unet.blockwise.segment_to_zarr`
writes them to a Zarr block by block, with the same labelling.
"""

from __future__ import annotations

import copy
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

from napari_unet.blockwise.stitching import relabel_tables
from napari_unet.checkpoint import TrainedModel, load_model
from napari_unet.config import ModelConfig, PredictConfig
from napari_unet.data import normalize
from napari_unet.errors import ConfigError
from napari_unet.io import as_image, available_memory
from napari_unet.layout import Layout, find_layout

# Re-exported: prediction.labels_shape was public before napari_unet.layout.
from napari_unet.layout import labels_shape as labels_shape
from napari_unet.model import select_device
from napari_unet.postprocess import label_dtype, probabilities_to_labels
from napari_unet.tiling import sliding_window_events, tile_grid

T = TypeVar("T")

#: Largest automatic tile side: bigger tiles are not faster on a CPU and only
#: raise peak memory; a GPU gains from fewer, larger launches.
MAX_AUTO_TILE = {"cpu": 1024, "other": 2048}
MIN_AUTO_TILE = 256
#: Fraction of the free memory that the activations of one batch of tiles may use.
MEMORY_FRACTION = 0.25


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
    labels : np.ndarray
        Instance labels, the image's shape without its channel axis; 0 is background.
    probabilities : np.ndarray or None
        ``(C_out, *labels.shape)`` sigmoid outputs, if asked for.
    cancelled : bool
        True if ``stop`` was set; planes not reached are left 0.
    """

    labels: Any
    probabilities: Any = None
    cancelled: bool = False


# --------------------------------------------------------------------------- layout


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
    return available_memory()


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


def label_plane(probabilities: np.ndarray, target: str, config: PredictConfig) -> np.ndarray:
    """Instance labels of one plane's ``(C, H, W)`` probabilities, numbered from 1.

    The per-plane policy of every path (in memory, block-wise): each plane (or block) is
    labelled in 2D on its own, then :func:`~napari_unet.blockwise.stitching.relabel_tables`
    numbers the stack.
    """
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
    image : array_like, dask.array.Array, str or Path
        ``(H, W)``, ``(H, W, 3|4)``, multichannel with ``channel_axis``, or a stack
        of those with up to two leading axes (``Z``, ``T``, ``T, Z``); a path is read
        with :func:`napari_unet.io.read_image`. A dask stack is read one plane at a time.
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
        Tiles done / total after every batch.

    Returns
    -------
    Segmentation
        Labels (and probabilities), in memory; see :func:`number_planes` for the
        numbering over a stack.

    Raises
    ------
    DataError
        If the image's shape or channels do not suit the model.
    ConfigError
        If a setting is invalid or the device is not available.
    ModelFileError
        If the model file cannot be loaded.
    """
    image = as_image(image)  # a path is read; tensors, ragged lists, complex refused
    config = config or PredictConfig()
    trained = resolve_model(model, config.device)
    config = config.for_model(trained)
    model_config = trained.config
    layout = find_layout(image.shape, model_config.in_channels, rgb, channel_axis)
    arranged = layout.channels_last(image)
    tile = config.tile_size or auto_tile_size(
        model_config, trained.device, config.tile_batch, config.overlap
    )
    predictor = TilePredictor(trained, config.tta, config.compile)
    n_tiles = len(tile_grid((layout.height, layout.width), tile, config.overlap))
    total = layout.n_planes * n_tiles
    # Each plane's labels from 1; numbered over the stack once all are known.
    local = np.zeros(layout.labels_shape, dtype=np.uint32)
    probabilities = (
        np.zeros((model_config.out_channels, *local.shape), dtype=np.float32)
        if config.return_probabilities
        else None
    )
    counts: list[int] = []
    for plane_number, index in enumerate(np.ndindex(*layout.stack_shape)):
        # np.asarray reads one plane of a lazy (dask) image, never more.
        x = _network_input(np.asarray(arranged[index]), model_config, layout)
        events = sliding_window_events(
            x, predictor, tile, config.overlap, config.tile_batch, model_config.size_multiple
        )
        while True:
            if stop is not None and stop.is_set():
                labels = number_planes(local, counts, config.labels_per_plane)
                return Segmentation(labels, probabilities, cancelled=True)
            try:
                done = next(events)
            except StopIteration as finished:
                plane_probabilities = finished.value
                break
            where = f"plane {plane_number + 1}/{layout.n_planes}, " if layout.stack_shape else ""
            yield Progress(plane_number * n_tiles + done, total, f"{where}tile {done}/{n_tiles}")
        plane_labels = label_plane(plane_probabilities, model_config.target, config)
        local[index] = plane_labels
        counts.append(int(plane_labels.max(initial=0)))
        if probabilities is not None:
            probabilities[(slice(None), *index)] = plane_probabilities
    return Segmentation(number_planes(local, counts, config.labels_per_plane), probabilities)


def number_planes(local: np.ndarray, counts: list[int], per_plane: bool) -> np.ndarray:
    """Labels of a stack whose planes are each numbered from 1, numbered over the stack.

    The stack-labelling policy (:func:`~napari_unet.blockwise.stitching.relabel_tables`):
    unique across planes and sequential (1..N, no gaps) in plane order, or from 1 in
    every plane with ``per_plane``. ``counts`` holds the largest label of the first
    ``len(counts)`` planes; planes after them (not reached) stay 0. The result has the
    narrowest dtype of :func:`~napari_unet.postprocess.label_dtype` for its largest label.
    """
    leading = local.shape[:-2]
    planes = [local[index] for index in list(np.ndindex(*leading))[: len(counts)]]
    present = [
        np.flatnonzero(np.bincount(plane.ravel(), minlength=count + 1)[1:]) + 1
        for plane, count in zip(planes, counts)
    ]
    tables, largest = relabel_tables(counts, present, [], range(len(counts)) if per_plane else None)
    labels = np.zeros(local.shape, label_dtype(largest))
    for index, plane, table in zip(np.ndindex(*leading), planes, tables):
        labels[index] = table.astype(labels.dtype)[plane]
    return labels


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


def predict(
    image: Any,
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    stop: threading.Event | None = None,
    **overrides: Any,
) -> Segmentation:
    """Predict labels (and probabilities) of an image or stack; see :func:`predict_events`.

    ``overrides`` are :class:`PredictConfig` fields overriding ``config`` (e.g.
    ``tta=True``); any other name is a ConfigError naming the valid ones.
    """
    config = PredictConfig.with_overrides(config, overrides)
    events = predict_events(image, model, config, rgb=rgb, channel_axis=channel_axis, stop=stop)
    return run_to_end(events)


def segment(
    image: Any,
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    stop: threading.Event | None = None,
    **overrides: Any,
) -> Any:
    """Instance labels of an image or stack (numpy, or dask read plane by plane).

    Arguments as :func:`predict`.

    Examples
    --------
    >>> labels = segment(image, "default", min_size=20)  # doctest: +SKIP
    """
    result = predict(
        image, model, config, rgb=rgb, channel_axis=channel_axis, stop=stop, **overrides
    )
    return result.labels
