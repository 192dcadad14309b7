"""Native 3D prediction: a 3D model (``ModelConfig.ndim == 3``) segments a volume as a whole.

:func:`napari_unet.prediction.predict_events` hands a 3D model's input here. The volume
(``(Z, Y, X)`` grey or ``(Z, Y, X, C)``, as :class:`~napari_unet.layout.Layout` arranges
it; :func:`check_volume_input` refuses anything else with the fix) goes through five steps:

1. **Anisotropy.** The data's Z step over its XY pixel size is ``PredictConfig.anisotropy``
   (the command line and the Segment widget read it from the file or the layer's scale);
   None means the data is like the model's training data (``ModelConfig.anisotropy``). When
   the two differ by more than :data:`RESAMPLE_TOLERANCE`, the volume is resampled
   (linearly) along Z to the model's anisotropy, as StarDist 3D and Cellpose's ``anisotropy``
   do, so the network sees nuclei of the shape it learnt; the probabilities are resampled
   back to the volume's planes afterwards.
2. **Normalisation** with one intensity range for the whole volume (percentiles of the
   volume, as training normalises a training volume), applied tile by tile.
3. **Blended 3D tiles** (:func:`napari_unet.tiling.sliding_window_events`): the tile is
   sized by :func:`napari_unet.inference.auto_tile_shape`, so memory is bounded by the
   tile; the probabilities ``(C, Z, Y, X)`` are the only volume-sized array it allocates
   (plus the resampled copy of the volume when step 1 resamples).
4. **Labels in 3D**: :func:`napari_unet.postprocess.probabilities_to_labels` on the
   ``(C, Z, Y, X)`` probabilities with ``spacing=(anisotropy, 1, 1)``: one id per object
   across the volume.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig, PredictConfig
from napari_unet.data import apply_intensity_range, intensity_range
from napari_unet.errors import ConfigError, DataError
from napari_unet.inference import TilePredictor, auto_tile_shape, tile_overlaps
from napari_unet.layout import Layout, find_layout
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.tiling import sliding_window_events, tile_grid
from napari_unet.volume import resample_z

#: Relative difference between the data's and the model's anisotropy under which the
#: volume is predicted as it is (5%: under a plane's worth of shift over 20 planes).
RESAMPLE_TOLERANCE = 0.05
#: Voxels the normalisation range is computed from at most; a larger volume is
#: subsampled in Y and X (percentiles of 16 M values are exact to the third digit).
RANGE_SAMPLES = 2**24

#: Why the block-wise path (:mod:`napari_unet.blockwise`) refuses a 3D model, and what to
#: use instead: it cuts planes into 2D blocks, with halos and stitching in Y and X only.
BLOCKWISE_3D_ERROR = (
    "block-wise prediction (Zarr output or input, --zarr, --scheduler, --workers) segments "
    "plane by plane with a 2D model; a 3D model segments a whole volume in memory: use "
    "`napari-unet predict` on a TIFF volume without those options, or predict() in Python."
)
#: ``(tiles done, tiles in all, what is happening)`` of :func:`native_volume_events`.
NativeProgress = tuple[int, int, str]


def check_volume_input(layout: Layout, stack: str | None) -> None:
    """Refuse, with the fix, an input a 3D model cannot segment.

    A 3D model takes one volume: a stack of planes along Z (or along an axis no metadata
    names), with or without channels.

    Raises
    ------
    DataError
        A 2D image, a time series (``T`` axis) or a time series of volumes (``T, Z``).
    ConfigError
        ``stack="planes"``, which segments planes on their own.
    """
    axes = layout.stack_axes
    if not axes:
        raise DataError(
            f"a 3D model segments (Z, Y, X) volumes, but this is a 2D image of shape "
            f"{layout.shape}; use a 2D model (e.g. 'default') for it, or give a volume."
        )
    if len(axes) > 1:
        raise DataError(
            f"a 3D model segments one (Z, Y, X) volume at a time, but this image has axes "
            f"{layout.axes} (a series of volumes); give one volume (e.g. image[t])."
        )
    if axes == "T":
        raise DataError(
            f"the image is a time series (axes {layout.axes}), not a Z stack; a 3D model "
            "needs a volume. Use a 2D model with stack='planes' (--stack planes) for it."
        )
    if stack == "planes":
        raise ConfigError(
            "stack='planes' segments each plane on its own, which a 3D model cannot; leave "
            "stack unset (or 'volume') to segment the volume in 3D, or use a 2D model."
        )


def check_model_input(
    model_config: ModelConfig,
    shape: Sequence[int],
    stack: str | None,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    axes: str | None = None,
) -> None:
    """For a 3D model, :func:`check_volume_input` on an image of ``shape``; a 2D model
    passes (its input is checked where it is predicted).

    Raises
    ------
    DataError, ConfigError
        See :func:`check_volume_input`; DataError also if the channels do not suit.
    """
    if model_config.ndim == 3:
        layout = find_layout(shape, model_config.in_channels, rgb, channel_axis, axes=axes)
        check_volume_input(layout, stack)


def check_scoring_inputs(
    model_config: ModelConfig, names: Sequence[str], labels: Sequence[Any], stack: str | None
) -> None:
    """Refuse, before any prediction, what a 3D model cannot score (``evaluate``, ``tune``).

    A 3D model segments and scores ``(Z, Y, X)`` volumes (matched in 3D), never 2D
    images nor planes on their own; a 2D model is not checked here.

    Raises
    ------
    DataError
        A label image that is not a volume.
    ConfigError
        ``stack="planes"``.
    """
    if model_config.ndim != 3:
        return
    flat = [name for name, truth in zip(names, labels) if np.ndim(truth) != 3]
    if flat:
        raise DataError(
            f"{flat[0]!r} is a 2D image; a 3D model segments and scores (Z, Y, X) volumes. "
            "Use a 2D model for 2D images."
        )
    if stack == "planes":
        raise ConfigError(
            "stack='planes' scores each plane on its own, which a 3D model cannot; leave "
            "stack unset to score its volumes in 3D."
        )


def data_anisotropy(config: PredictConfig, model_config: ModelConfig) -> float:
    """The data's Z step over its XY pixel size: the given one, else the model's."""
    return model_config.anisotropy if config.anisotropy is None else float(config.anisotropy)


def resampled_depth(depth: int, anisotropy: float, model_anisotropy: float) -> int:
    """Planes a volume of ``depth`` planes has at the model's anisotropy (``depth`` if close)."""
    ratio = anisotropy / model_anisotropy
    if abs(ratio - 1) <= RESAMPLE_TOLERANCE:
        return depth
    return max(1, round(depth * ratio))


class NormalizedVolume:
    """A ``(C, Z, Y, X)`` float32 view of an arranged volume, normalised when sliced.

    ``volume`` is ``(Z, Y, X)`` or ``(Z, Y, X, C)`` (a :meth:`Layout.channels_last`
    volume); slicing ``[:, z, y, x]`` builds the network input of that block only
    (channels matched by the layout, intensities mapped by ``low``/``high``), so tiled
    prediction never holds a normalised copy of the whole volume.
    """

    def __init__(self, volume: np.ndarray, layout: Layout, low: float, high: float) -> None:
        self.volume = volume
        self.layout = layout
        self.low, self.high = low, high
        channels = layout.in_channels or layout.model_channels
        self.shape = (channels, *volume.shape[:3])

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        block = np.asarray(self.volume[index[1:]])
        inputs = np.stack([self.layout.network_input(plane) for plane in block], axis=1)
        return apply_intensity_range(inputs, self.low, self.high)


def volume_intensity_range(
    volume: np.ndarray, layout: Layout, model_config: ModelConfig
) -> tuple[float, float]:
    """The normalisation range of a whole volume's network input (subsampled in Y and X
    when it has more than :data:`RANGE_SAMPLES` voxels)."""
    stride = max(1, math.ceil(math.sqrt(math.prod(volume.shape[:3]) / RANGE_SAMPLES)))
    sample = np.stack([layout.network_input(plane[::stride, ::stride]) for plane in volume], axis=1)
    return intensity_range(sample, model_config.normalization)


def native_volume_events(
    volume: Any,
    layout: Layout,
    trained: TrainedModel,
    config: PredictConfig,
    settings: dict[str, Any],
) -> Generator[NativeProgress, None, tuple[np.ndarray, np.ndarray]]:
    """Labels and probabilities of one volume by a 3D model, yielding progress.

    Parameters
    ----------
    volume : array_like
        ``(Z, Y, X)`` or ``(Z, Y, X, C)``: the image arranged by ``layout.channels_last``.
    layout : Layout
        The image's layout, checked by :func:`check_volume_input`.
    trained : TrainedModel
        A model with ``config.ndim == 3``.
    config : PredictConfig
        Tiles, overlap, TTA, compile, anisotropy; post-processing resolved for the model.
    settings : dict
        Post-processing keywords of :func:`probabilities_to_labels`.

    Yields
    ------
    tuple of (int, int, str)
        Tiles done, tiles in all, and a message, after each batch of tiles and before
        the labelling.

    Returns
    -------
    labels, probabilities : np.ndarray
        ``(Z, Y, X)`` labels (one id per object across the volume) and ``(C_out, Z, Y, X)``
        float32 probabilities.
    """
    model_config = trained.config
    volume = np.asarray(volume)  # one volume of a lazy (dask) image in memory
    anisotropy = data_anisotropy(config, model_config)
    depth = volume.shape[0]
    model_depth = resampled_depth(depth, anisotropy, model_config.anisotropy)
    low, high = volume_intensity_range(volume, layout, model_config)
    if model_depth != depth:
        volume = resample_z(volume.astype(np.float32, copy=False), model_depth, axis=0)
    inputs = NormalizedVolume(volume, layout, low, high)
    tile = auto_tile_shape(
        model_config,
        trained.device,
        inputs.shape[1:],
        config.tile_size,
        config.tile_batch,
        config.overlap,
    )
    overlaps = tile_overlaps(tile, config.overlap, model_config.anisotropy)
    multiples = model_config.size_multiples
    total = len(tile_grid(inputs.shape[1:], tile, overlaps, multiples))
    events = sliding_window_events(
        inputs,
        TilePredictor(trained, config.tta, config.compile),
        tile,
        overlaps,
        config.tile_batch,
        multiples,
    )
    while True:
        try:
            done = next(events)
        except StopIteration as finished:
            probabilities = finished.value
            break
        yield done, total, f"3D tile {done}/{total}"
    if model_depth != depth:
        probabilities = resample_z(probabilities, depth, axis=1)
    yield total, total, "3D labels"
    labels = probabilities_to_labels(
        probabilities, model_config.target, spacing=(anisotropy, 1.0, 1.0), **settings
    )
    return labels, probabilities
