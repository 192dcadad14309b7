"""Block-wise segmentation of images and stacks of any size, on dask or dask.distributed.

The input (OME-Zarr, Zarr, a TIFF read through ``tifffile``'s Zarr interface, or any
numpy/dask array) is read lazily and cut, plane by plane, into square *blocks* that are
also the chunks of the output Zarr. Four passes, in three dask computations, so the same
code runs on dask's local threads or processes or on a ``dask.distributed`` cluster:

0. Normalisation statistics per plane (percentiles as in training), from the whole plane
   up to :data:`MAX_STAT_PIXELS`, from a regular subsample above: a block normalised on
   its own would see other intensities than the network saw in training.
1. One task per block reads the block plus a ``halo`` on every side, predicts it with the
   tiled predictor of :mod:`napari_unet.prediction` and turns it into labels with the same
   post-processing, so an object near the block edge is seen whole. The block's own
   pixels (its *core*) are written, with block-local label ids, to a scratch Zarr, and
   the labels of thin *strips* (``2 * margin`` wide) across each face it shares with a
   neighbour to scratch files; the task returns only its label count and the ids present
   in its core, so nothing of a block waits in memory for its neighbours.
2. One small task per face pairs the labels that two neighbours gave the same object: in
   the strip both blocks labelled the same pixels, each with context on both sides, and
   labels are matched when most pixels of the smaller one lie in the other. Block-local
   ids get a global offset (the cumulative label count); the matches are merged by a
   union-find (connected components of the match graph, :mod:`scipy.sparse.csgraph`),
   and the objects present are numbered 1..N in block order, so labels are unique across
   the volume (or per plane on request) and an object cut by a block edge has one label.
3. One task per block rewrites its chunk through its lookup table into the final Zarr.

Memory is a few blocks per worker plus the lookup tables (4-8 bytes per object), never
the stack. The model is loaded once per worker process (:func:`worker_predictor` caches it
by file and modification time), not once per block; a model given as an object is shipped
to every worker once as a single graph key.

Modules: :mod:`~napari_unet.blockwise.reading` (lazy input),
:mod:`~napari_unet.blockwise.stitching` (pure numpy: matching and the stack-labelling
policy), :mod:`~napari_unet.blockwise.workers` (the model cache and the block tasks),
:mod:`~napari_unet.blockwise.schedulers`, :mod:`~napari_unet.blockwise.output` (Zarr /
NGFF) and :mod:`~napari_unet.blockwise.driver` (:func:`segment_to_zarr_events`). Names are
imported lazily, so that :mod:`napari_unet.prediction` can use the pure-numpy stitching
without importing the driver (which imports prediction).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Default block side (pixels): the unit of work and the output chunk.
DEFAULT_BLOCK = 1024
#: Default halo (pixels) read around every block: objects up to about this size that
#: cross a block edge are seen whole by both blocks.
DEFAULT_HALO = 64
#: Planes with more pixels get their normalisation range from a regular subsample.
MAX_STAT_PIXELS = 2**24

# public name -> module of this package that defines it
_API = {
    "ScaleResult": "driver",
    "segment_to_zarr": "driver",
    "segment_to_zarr_events": "driver",
    "LazyTiff": "reading",
    "open_array": "reading",
    "open_image": "reading",
    "match_strips": "stitching",
    "relabel_tables": "stitching",
    "LOCAL_SCHEDULERS": "schedulers",
    "scheduler": "schedulers",
    "ModelBlob": "workers",
    "loaded_models": "workers",
    "model_reference": "workers",
    "worker_predictor": "workers",
}

__all__ = sorted(["DEFAULT_BLOCK", "DEFAULT_HALO", "MAX_STAT_PIXELS", *_API])


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
