"""The Segment widget's path for a dask layer: block by block into a temporary Zarr.

The core's block-wise run (:func:`napari_unet.blockwise.segment_to_zarr_events`) writes
into a temporary folder, so the stack is never loaded whole. A small result is read into
memory and the folder removed at once; a large one is shown from disk, and its folder is
removed when the arrays are no longer used.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.blockwise import segment_to_zarr_events
from napari_unet.checkpoint import TrainedModel
from napari_unet.prediction import PredictConfig, Progress, Segmentation

#: A dask layer's result bigger than this is shown from a temporary Zarr, not memory.
IN_MEMORY_LIMIT = 2**30


def segment_lazy(
    data: Any,
    model: TrainedModel,
    config: PredictConfig,
    rgb: bool,
    channel_axis: int | None,
    stop: threading.Event,
) -> Generator[Progress, None, Segmentation]:
    """Segment a dask layer block by block (the core's one path for large stacks).

    :func:`~napari_unet.blockwise.segment_to_zarr_events` writes into a temporary folder.
    A result under :data:`IN_MEMORY_LIMIT` is read into memory and the folder removed at
    once; a larger one is shown from disk, and its folder is removed when the arrays are
    garbage collected (their layers deleted) or at exit. Stop or an error removes it at
    once; a stopped run gives empty labels.
    """
    import zarr

    folder = Path(tempfile.mkdtemp(prefix="napari-unet-"))
    keep = False  # set once large arrays are shown from the folder
    try:
        result = yield from segment_to_zarr_events(
            data,
            folder / "labels.zarr",
            model,
            config,
            ome=False,
            rgb=rgb,
            channel_axis=channel_axis,
            probabilities_out=folder / "probabilities.zarr"
            if config.return_probabilities
            else None,
            stop=stop,
        )
        if result.cancelled:
            return Segmentation(_zeros(result.shape), cancelled=True)
        arrays = [zarr.open_array(str(result.path), mode="r")]
        if result.probabilities is not None:
            arrays.append(zarr.open_array(str(result.probabilities), mode="r"))
        if sum(array.nbytes for array in arrays) <= IN_MEMORY_LIMIT:
            return Segmentation(*(array[...] for array in arrays))
        _remove_when_collected(folder, arrays)
        keep = True
        return Segmentation(*arrays)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _zeros(shape: tuple[int, ...]) -> Any:
    """Empty labels of ``shape``: in memory, or lazy when large."""
    if math.prod(shape) <= IN_MEMORY_LIMIT:
        return np.zeros(shape, np.uint8)
    import dask.array as da

    return da.zeros(shape, dtype=np.uint8)


def _remove_when_collected(folder: Path, arrays: list[Any]) -> None:
    """Remove ``folder`` once every one of ``arrays`` is garbage collected (or at exit)."""
    remaining = [len(arrays)]

    def release() -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            shutil.rmtree(folder, ignore_errors=True)

    for array in arrays:
        weakref.finalize(array, release)
