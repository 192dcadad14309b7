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

import math
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.blockwise.stitching import relabel_tables
from napari_unet.checkpoint import TrainedModel, load_model
from napari_unet.config import ModelConfig, PredictConfig
from napari_unet.data import apply_intensity_range, intensity_range, normalize
from napari_unet.errors import ConfigError
from napari_unet.events import plain_form

# Re-exported: prediction's names from before napari_unet.inference.
from napari_unet.inference import TilePredictor as TilePredictor
from napari_unet.inference import activation_bytes_per_pixel as activation_bytes_per_pixel
from napari_unet.inference import auto_tile_size as auto_tile_size
from napari_unet.inference import inference_network as inference_network
from napari_unet.io import as_image
from napari_unet.layout import Layout, find_layout

# Re-exported: prediction.labels_shape was public before napari_unet.layout.
from napari_unet.layout import labels_shape as labels_shape
from napari_unet.model import select_device
from napari_unet.postprocess import label_dtype, probabilities_to_labels
from napari_unet.tiling import sliding_window_events, tile_grid


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
    return probabilities_to_labels(probabilities, target, **_postprocess_settings(config))


def stack_mode(layout: Layout, stack: str | None) -> str:
    """``"volume"`` or ``"planes"``: how :func:`predict_events` treats ``layout``'s planes.

    ``stack`` None picks ``volume`` unless the axis right before the plane is time
    (``T``, from file metadata); a 2D image is ``planes`` (nothing to join).

    Raises
    ------
    ConfigError
        If ``volume`` is asked for a time series.
    """
    if not layout.stack_axes:
        return "planes"
    if layout.stack_axes[-1] == "T":
        if stack == "volume":
            raise ConfigError(
                f"the image is a time series (axes {layout.axes}), not a volume: its planes "
                "are time points. Use stack='planes' (--stack planes)."
            )
        return "planes"
    return stack or "volume"


def plane_probabilities_events(
    read: Callable[[int], np.ndarray],
    n_planes: int,
    plane_shape: tuple[int, int],
    predictor: Callable[[np.ndarray], np.ndarray],
    tile: int,
    config: PredictConfig,
    multiple: int,
    keep: Callable[[int, np.ndarray], None],
) -> Generator[int, None, None]:
    """Probabilities of ``n_planes`` planes of one shape, yielding the tiles done.

    ``read(n)`` gives plane ``n``'s ``(C, H, W)`` network input and ``keep(n, p)``
    receives its ``(C_out, H, W)`` probabilities, in plane order. When one tile covers
    a plane, whole planes go through the network in batches of about ``tile_batch``
    tiles' pixels (each plane counts as one tile): a stack of small planes pays no
    per-plane overhead. Larger planes are tiled one by one (:func:`sliding_window_events`).
    """
    n_tiles = len(tile_grid(plane_shape, tile, config.overlap, multiple))
    if n_tiles == 1:
        per_batch = max(
            config.tile_batch, tile * tile * config.tile_batch // math.prod(plane_shape)
        )
        for begin in range(0, n_planes, per_batch):
            numbers = range(begin, min(n_planes, begin + per_batch))
            for number, probabilities in zip(
                numbers, predictor(np.stack(list(map(read, numbers))))
            ):
                keep(number, probabilities)
            yield numbers.stop
        return
    for number in range(n_planes):
        events = sliding_window_events(
            read(number), predictor, tile, config.overlap, config.tile_batch, multiple
        )
        while True:
            try:
                done = next(events)
            except StopIteration as finished:
                keep(number, finished.value)
                break
            yield number * n_tiles + done


def predict_events(
    image: Any,
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    axes: str | None = None,
    stop: threading.Event | None = None,
    **overrides: Any,
) -> Generator[Progress, None, Segmentation]:
    """Predict instance labels of an image or stack, yielding progress.

    Parameters
    ----------
    image : array_like, dask.array.Array, str or Path
        ``(H, W)``, ``(H, W, 3|4)``, multichannel with ``channel_axis``, or a stack
        of those with up to two leading axes (``Z``, ``T``, ``T, Z``); a path is read
        with :func:`napari_unet.io.read_image`. A dask stack is read one plane at a time
        in ``planes`` mode, one volume at a time in ``volume`` mode.
    model : str, Path or TrainedModel
        A model file, ``"default"`` (the bundled model) or a loaded model.
    config : PredictConfig, optional
        Tiling, augmentation, stack and post-processing settings.
    rgb : bool, optional
        Whether the last axis is colour (napari's ``layer.rgb``); inferred if None
        (last axis of 3 or 4).
    channel_axis : int, optional
        Axis holding the channels of a multichannel image.
    axes : str, optional
        The file's axis letters (``"ZYX"``, ``"TYX"``, ``"TZYX"``; see
        :func:`napari_unet.layout.find_layout`): a ``T`` right before the plane makes the
        stack a time series, segmented plane by plane.
    stop : threading.Event, optional
        When set, the prediction ends after the current batch of tiles.
    **overrides
        :class:`PredictConfig` fields overriding ``config`` (e.g. ``tta=True``); see
        :meth:`~napari_unet.settings.Settings.with_overrides`.

    Yields
    ------
    Progress
        Tiles done / total after every batch (a plane that fits one tile counts one).

    Returns
    -------
    Segmentation
        Labels (and probabilities), in memory. ``planes`` mode: see
        :func:`number_planes`. ``volume`` mode (``config.stack``, the default for a stack
        that is not a time series): the planes before each ``(Z, Y, X)`` volume are
        normalised with one intensity range for the volume, predicted, and joined into
        3D objects by ``config.volume_method`` (:func:`napari_unet.volume.volume_labels`),
        one id per object across the volume, ids unique across volumes. A 3D model
        (``model.config.ndim == 3``) segments a ``(Z, Y, X)`` volume natively, in 3D tiles,
        resampled to the model's anisotropy (:mod:`napari_unet.native3d`).

    Raises
    ------
    DataError
        If the image's shape or channels do not suit the model (a 3D model given a 2D
        image or a time series).
    ConfigError
        If a setting is invalid, the device is not available, a time series is
        asked for ``volume`` mode, or a 3D model for ``planes`` mode.
    ModelFileError
        If the model file cannot be loaded.

    Examples
    --------
    >>> result = predict(image, "default", tta=True)  # doctest: +SKIP
    >>> result.labels, result.probabilities  # doctest: +SKIP
    """
    image = as_image(image)  # a path is read; tensors, ragged lists, complex refused
    config = PredictConfig.with_overrides(config, overrides)
    trained = resolve_model(model, config.device)
    given_seed_threshold = config.seed_threshold
    config = config.for_model(trained)
    model_config = trained.config
    layout = find_layout(image.shape, model_config.in_channels, rgb, channel_axis, axes=axes)
    if model_config.ndim == 3:
        return (yield from _native_events(image, layout, trained, config, stop))
    mode = stack_mode(layout, config.stack)
    arranged = layout.channels_last(image)
    tile = config.tile_size or auto_tile_size(
        model_config, trained.device, config.tile_batch, config.overlap
    )
    run = _Run(trained, config, layout, tile, stop)
    if mode == "volume":
        labels, probabilities = yield from run.volumes(arranged, given_seed_threshold)
    else:
        labels, probabilities = yield from run.planes(arranged)
    return Segmentation(labels, probabilities, cancelled=run.cancelled)


def _native_events(
    image: Any,
    layout: Layout,
    trained: TrainedModel,
    config: PredictConfig,
    stop: threading.Event | None,
) -> Generator[Progress, None, Segmentation]:
    """A 3D model's prediction of one volume (:mod:`napari_unet.native3d`)."""
    from napari_unet.native3d import check_volume_input, native_volume_events

    check_volume_input(layout, config.stack)
    events = native_volume_events(
        layout.channels_last(image), layout, trained, config, _postprocess_settings(config)
    )
    while True:
        try:
            done, total, message = next(events)
        except StopIteration as finished:
            labels, probabilities = finished.value
            kept = probabilities if config.return_probabilities else None
            return Segmentation(labels, kept)
        yield Progress(done, total, message)
        if stop is not None and stop.is_set():
            events.close()
            return Segmentation(np.zeros(layout.labels_shape, np.uint16), None, cancelled=True)


class _Run:
    """One prediction's shared state: the network, the tiling and progress over the stack."""

    def __init__(
        self,
        trained: TrainedModel,
        config: PredictConfig,
        layout: Layout,
        tile: int,
        stop: threading.Event | None,
    ) -> None:
        self.model_config = trained.config
        self.config = config
        self.layout = layout
        self.tile = tile
        self.stop = stop
        self.predictor = TilePredictor(trained, config.tta, config.compile)
        self.n_tiles = len(
            tile_grid(layout.plane_shape, tile, config.overlap, self.model_config.size_multiple)
        )
        self.total = layout.n_planes * self.n_tiles
        self.cancelled = False
        self.probabilities = (
            np.zeros((self.model_config.out_channels, *layout.labels_shape), dtype=np.float32)
            if config.return_probabilities
            else None
        )

    def _predict(
        self,
        read: Callable[[int], np.ndarray],
        n_planes: int,
        keep: Callable[[int, np.ndarray], None],
        first_plane: int,
    ) -> Generator[Progress, None, None]:
        """Predict ``n_planes`` planes (numbered from ``first_plane`` in the stack)."""
        events = plane_probabilities_events(
            read,
            n_planes,
            self.layout.plane_shape,
            self.predictor,
            self.tile,
            self.config,
            self.model_config.size_multiple,
            keep,
        )
        for done in events:
            done_in_stack = first_plane * self.n_tiles + done
            where = ""
            if self.layout.stack_axes:
                plane = min(self.layout.n_planes, first_plane + done // self.n_tiles + 1)
                where = f"plane {plane}/{self.layout.n_planes}, "
            yield Progress(done_in_stack, self.total, f"{where}tile {done_in_stack}/{self.total}")
            if self.stop is not None and self.stop.is_set():
                self.cancelled = True
                return

    def planes(self, arranged: Any) -> Generator[Progress, None, tuple[np.ndarray, Any]]:
        """Each plane labelled on its own, numbered over the stack by :func:`number_planes`."""
        layout, model_config = self.layout, self.model_config
        # Each plane's labels from 1; numbered over the stack once all are known.
        local = np.zeros(layout.labels_shape, dtype=np.uint32)
        counts: list[int] = []
        indices = list(np.ndindex(*layout.stack_shape))

        def read(number: int) -> np.ndarray:
            # np.asarray reads one plane of a lazy (dask) image, never more.
            return _network_input(np.asarray(arranged[indices[number]]), model_config, layout)

        def keep(number: int, plane_probabilities: np.ndarray) -> None:
            plane_labels = label_plane(plane_probabilities, model_config.target, self.config)
            local[indices[number]] = plane_labels
            counts.append(int(plane_labels.max(initial=0)))
            if self.probabilities is not None:
                self.probabilities[(slice(None), *indices[number])] = plane_probabilities

        yield from self._predict(read, len(indices), keep, 0)
        return number_planes(local, counts, self.config.labels_per_plane), self.probabilities

    def volumes(
        self, arranged: Any, given_seed_threshold: float | None
    ) -> Generator[Progress, None, tuple[np.ndarray, Any]]:
        """Each ``(Z, Y, X)`` volume of the stack as 3D objects, ids unique across volumes."""
        from napari_unet.volume import ORTHOGONAL_SEED_THRESHOLD, volume_labels

        layout, model_config, config = self.layout, self.model_config, self.config
        depth = layout.stack_shape[-1]
        labels = np.zeros(layout.labels_shape, dtype=np.uint32)
        count = 0
        for number, index in enumerate(np.ndindex(*layout.stack_shape[:-1])):
            volume = np.asarray(arranged[index])  # one volume of a lazy image in memory
            inputs = np.stack([layout.network_input(plane) for plane in volume])
            # One intensity range for the whole volume: a plane above or below the
            # nuclei keeps its faint light faint instead of being stretched to 0..1.
            inputs = apply_intensity_range(
                inputs, *intensity_range(inputs, model_config.normalization)
            )
            xy = np.zeros((model_config.out_channels, depth, *layout.plane_shape), np.float32)

            def keep(z: int, plane_probabilities: np.ndarray, xy: np.ndarray = xy) -> None:
                xy[:, z] = plane_probabilities

            yield from self._predict(inputs.__getitem__, depth, keep, number * depth)
            if self.cancelled:
                break
            if config.volume_method == "orthogonal":
                yield Progress(
                    (number + 1) * depth * self.n_tiles,
                    self.total,
                    f"volume {number + 1}: XZ and YZ views",
                )
            volume_ids, used = volume_labels(
                xy,
                config.volume_method,
                model_config.target,
                config.anisotropy or 1.0,
                volume=np.moveaxis(inputs, 1, -1),
                predict_planes=self._plane_predictor(),
                orthogonal_seed_threshold=(
                    ORTHOGONAL_SEED_THRESHOLD
                    if given_seed_threshold is None
                    else given_seed_threshold
                ),
                **_postprocess_settings(config),
            )
            volume_ids = volume_ids.astype(np.uint32)
            if not config.labels_per_plane:
                volume_ids[volume_ids > 0] += count
            count = max(count, int(volume_ids.max(initial=0)))
            labels[index] = volume_ids
            if self.probabilities is not None:
                self.probabilities[(slice(None), *index)] = used
        return labels.astype(label_dtype(count)), self.probabilities

    def _plane_predictor(self) -> Callable[[np.ndarray], np.ndarray]:
        """``(N, H, W, C)`` normalised planes -> ``(C_out, N, H, W)``, in batches."""

        def predict_planes(planes: np.ndarray) -> np.ndarray:
            out = np.zeros((self.model_config.out_channels, *planes.shape[:3]), np.float32)

            def keep(number: int, plane_probabilities: np.ndarray) -> None:
                out[:, number] = plane_probabilities

            events = plane_probabilities_events(
                lambda number: np.moveaxis(planes[number], -1, 0),
                len(planes),
                planes.shape[1:3],
                self.predictor,
                self.tile,
                self.config,
                self.model_config.size_multiple,
                keep,
            )
            for _ in events:
                pass
            return out

        return predict_planes


def _postprocess_settings(config: PredictConfig) -> dict[str, Any]:
    """The post-processing keywords of :func:`probabilities_to_labels` in ``config``."""
    return {
        "threshold": config.threshold,
        "separate": config.separate,
        "min_size": config.min_size,
        "fill_holes": config.fill_holes,
        "seed_threshold": config.seed_threshold,
        "core_threshold": config.core_threshold,
    }


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


predict = plain_form(
    predict_events, "predict", "Predict labels (and probabilities) of an image or stack."
)


def segment(
    image: Any,
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    **arguments: Any,
) -> Any:
    """Instance labels of an image or stack (numpy, or dask read plane by plane).

    The labels of :func:`predict`'s result; ``arguments`` as there.

    Examples
    --------
    >>> labels = segment(image, "default", min_size=20)  # doctest: +SKIP
    """
    return predict(image, model, config, **arguments).labels
