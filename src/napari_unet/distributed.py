"""Scaling out: block-wise segmentation on dask / dask.distributed, and torchrun DDP helpers.

Segmentation of stacks larger than memory (:func:`segment_to_zarr`)
------------------------------------------------------------------------
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

Distributed training (``torchrun``)
------------------------------------
:func:`init_from_env` joins the process group that ``torchrun`` / ``srun`` describe in the
environment (NCCL on GPUs, gloo on CPU); :func:`napari_unet.training.train_events` calls it,
wraps the network in ``DistributedDataParallel``, gives every rank its own random patch
stream, reduces validation over ranks (:func:`validate`) and writes files on rank 0 only.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.config import NormalizationConfig
from napari_unet.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from napari_unet.checkpoint import TrainedModel
    from napari_unet.prediction import PredictConfig, TilePredictor

#: Planes with more pixels get their normalisation percentiles from a regular subsample.
MAX_STAT_PIXELS = 2**24
#: Default block side (pixels): the unit of work and the output chunk.
DEFAULT_BLOCK = 1024
#: Default halo (pixels) read around every block: objects up to about this size that
#: cross a block edge are seen whole by both blocks.
DEFAULT_HALO = 64
#: Schedulers that run on this machine without dask.distributed.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
_TIFF_SUFFIXES = (".tif", ".tiff")


# --------------------------------------------------------------------------- reading


class LazyTiff:
    """A TIFF series/level as a lazily read, picklable array (for ``dask.array.from_array``).

    The file is opened through ``tifffile``'s Zarr interface on first access in each
    process, so a task on any worker reads only the pages/tiles it slices.
    """

    def __init__(self, path: str | os.PathLike[str], series: int = 0, level: int = 0) -> None:
        self.path = str(path)
        self.series = series
        self.level = level
        array = self._array()
        self.shape: tuple[int, ...] = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks: tuple[int, ...] = tuple(array.chunks)

    def _array(self) -> Any:
        return _open_tiff_zarr(self.path, self.series, self.level)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._array()[index])


_TIFF_CACHE: dict[tuple[str, int, int], Any] = {}
_TIFF_LOCK = threading.Lock()


def _open_tiff_zarr(path: str, series: int, level: int) -> Any:
    """The TIFF as a read-only zarr array, opened once per process."""
    import tifffile
    import zarr

    key = (path, series, level)
    with _TIFF_LOCK:
        if key not in _TIFF_CACHE:
            store = tifffile.imread(path, aszarr=True, series=series, level=level)
            _TIFF_CACHE[key] = zarr.open_array(store, mode="r")
        return _TIFF_CACHE[key]


def _ome_axes(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    axes = multiscales[0].get("axes")
    if axes and isinstance(axes[0], str):  # NGFF 0.3 listed bare names
        axes = [{"name": name} for name in axes]
    return axes


def open_image(
    source: str | os.PathLike[str], *, level: int = 0, series: int = 0
) -> tuple[Any, list[dict[str, Any]] | None]:
    """Open an OME-Zarr, Zarr array/group or TIFF lazily as a dask array.

    Parameters
    ----------
    source : str or Path
        A ``*.zarr`` store (an array; a group with NGFF ``multiscales``; or a group with an
        array ``"0"``) or a TIFF (``*.tif``/``*.tiff``, including OME-TIFF and pyramids).
    level : int
        Resolution level of a multiscale image (0 = full resolution).
    series : int
        TIFF series.

    Returns
    -------
    image : dask.array.Array
        Lazy image; reading a slice reads only the chunks it covers.
    axes : list of dict or None
        The NGFF axes of an OME-Zarr (``[{"name": "z", "type": "space"}, ...]``).

    Raises
    ------
    DataError
        If the path does not exist or is not a readable Zarr/TIFF image.
    """
    import dask.array as da

    array, axes = open_array(source, level=level, series=series)
    if isinstance(array, LazyTiff):
        return da.from_array(array, chunks=array.chunks, asarray=False), None
    return da.from_zarr(array), axes


def open_array(
    source: str | os.PathLike[str], *, level: int = 0, series: int = 0
) -> tuple[Any, list[dict[str, Any]] | None]:
    """Like :func:`open_image`, but the zarr array (or :class:`LazyTiff`) itself.

    Both are picklable and read only what a slice covers, so a task on any worker can
    read its own block without a dask graph around it.
    """
    import zarr

    path = Path(source)
    if not path.exists():
        raise DataError(f"{str(path)!r} does not exist; check the path.")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        try:
            return LazyTiff(path, series, level), None
        except Exception as error:
            raise DataError(f"could not read the TIFF {str(path)!r}: {error}") from error
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise DataError(
            f"{str(path)!r} is neither a TIFF nor a readable Zarr store: {error}"
        ) from error
    axes = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        axes = _ome_axes(attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if multiscales:
            datasets = multiscales[0]["datasets"]
            if not 0 <= level < len(datasets):
                raise DataError(
                    f"{str(path)!r} has {len(datasets)} resolution level(s); level {level} "
                    "does not exist."
                )
            node = node[datasets[level]["path"]]
        elif "0" in node:
            node = node["0"]
        else:
            raise DataError(
                f"{str(path)!r} is a Zarr group without NGFF multiscales or an array '0'; "
                "give the path of the array inside it."
            )
    return node, axes


class _Reader:
    """Reads the network-ready pixels of a region of one plane from the source.

    ``source`` is anything sliceable: a zarr array, a :class:`LazyTiff`, a numpy array or a
    dask array. The channel axis (if any) comes out last, alpha dropped, as in
    :func:`napari_unet.prediction.predict`.
    """

    def __init__(self, source: Any, channel_axis: int | None, drop_alpha: bool) -> None:
        self.source = source
        self.channel_axis = channel_axis
        self.drop_alpha = drop_alpha

    def read(self, plane: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
        spatial = iter((*plane, rows, cols))
        index = tuple(
            slice(None) if axis == self.channel_axis else next(spatial)
            for axis in range(len(plane) + 2 + (self.channel_axis is not None))
        )
        region = self.source[index]
        if hasattr(region, "compute"):  # a dask source: read this region only, here
            region = region.compute(scheduler="synchronous")
        region = np.asarray(region)
        if self.channel_axis is not None:
            region = np.moveaxis(region, self.channel_axis - len(plane), -1)
            if self.drop_alpha:
                region = region[..., :3]
        return region


# --------------------------------------------------------------------------- model cache


@dataclass(frozen=True)
class ModelBlob:
    """A model serialised once in the driver and shipped to each worker once."""

    key: str
    payload: bytes


_PREDICTORS: dict[tuple[Any, ...], TilePredictor] = {}
_PREDICTOR_LOCK = threading.Lock()


def model_reference(model: str | os.PathLike[str] | TrainedModel) -> str | ModelBlob:
    """What the block tasks get to find the model: a resolved path, or a :class:`ModelBlob`."""
    import torch

    from napari_unet.checkpoint import TrainedModel, default_model_path, model_payload

    if isinstance(model, TrainedModel):
        buffer = io.BytesIO()
        torch.save(model_payload(model.network, model.config, model.metadata), buffer)
        payload = buffer.getvalue()
        return ModelBlob(hashlib.sha1(payload).hexdigest(), payload)
    path = default_model_path() if str(model) == "default" else Path(model)
    return str(Path(path).resolve())


def worker_predictor(
    reference: str | ModelBlob, device: str, tta: bool, compile: bool = False
) -> TilePredictor:
    """The tile predictor of a model, built once per process and reused by every block.

    Keyed by file path and modification time (or a blob's hash), device, TTA and
    compilation, so a worker process loads (and compiles) each model once however
    many blocks it runs.
    """
    from napari_unet.checkpoint import model_from_payload
    from napari_unet.prediction import TilePredictor, resolve_model

    if isinstance(reference, ModelBlob):
        key: tuple[Any, ...] = ("blob", reference.key, device, tta, compile)
    else:
        key = ("file", reference, os.stat(reference).st_mtime_ns, device, tta, compile)
    with _PREDICTOR_LOCK:
        if key not in _PREDICTORS:
            if isinstance(reference, ModelBlob):
                import torch

                payload = torch.load(
                    io.BytesIO(reference.payload), map_location="cpu", weights_only=True
                )
                model = resolve_model(model_from_payload(payload, "cpu"), device)
            else:
                model = resolve_model(reference, device)
            _PREDICTORS[key] = TilePredictor(model, tta, compile)
        return _PREDICTORS[key]


def loaded_models() -> int:
    """How many models this process has loaded (for tests and benchmarks)."""
    return len(_PREDICTORS)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class _Block:
    """One block of one plane: its core (written) and extended (read) rectangles."""

    number: int
    plane: tuple[int, ...]
    row: int
    col: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 in the plane
    extended: tuple[int, int, int, int]


def _starts(length: int, block: int) -> list[int]:
    return list(range(0, length, block))


def _blocks(
    leading: tuple[int, ...], height: int, width: int, block: int, halo: int
) -> list[_Block]:
    rows, cols = _starts(height, block), _starts(width, block)
    blocks = []
    for plane in np.ndindex(*leading):
        for i, y0 in enumerate(rows):
            for j, x0 in enumerate(cols):
                y1, x1 = min(y0 + block, height), min(x0 + block, width)
                extended = (
                    max(y0 - halo, 0),
                    min(y1 + halo, height),
                    max(x0 - halo, 0),
                    min(x1 + halo, width),
                )
                blocks.append(_Block(len(blocks), tuple(plane), i, j, (y0, y1, x0, x1), extended))
    return blocks


@dataclass(frozen=True)
class _BlockJob:
    """What every block task needs besides its pixels (shared, small)."""

    config: PredictConfig
    target: str
    in_channels: int
    normalization: NormalizationConfig
    colour: bool  # channels last in the arranged image
    tile: int
    multiple: int
    margin: int
    scratch: str
    strips: str


def _plane_statistics(
    reader: _Reader,
    index: tuple[int, ...],
    stride: int,
    in_channels: int,
    colour: bool,
    normalization: NormalizationConfig,
) -> tuple[float, float]:
    """``(low, high)`` of :func:`napari_unet.data.normalize` for one (subsampled) plane."""
    from napari_unet.data import to_channels_first

    plane = reader.read(index, slice(None, None, stride), slice(None, None, stride))
    x = to_channels_first(
        np.moveaxis(plane, -1, 0) if colour else plane,
        in_channels,
        channel_axis=0 if colour else None,
    )
    if not np.isfinite(x).all():
        raise DataError(
            "the image holds NaN or infinite values; replace them (e.g. numpy.nan_to_num) first."
        )
    if normalization.mode == "percentile":
        low, high = np.percentile(x, [normalization.low, normalization.high])
    elif normalization.mode == "none":
        low, high = 0.0, 1.0
    else:
        low, high = float(x.min()), float(x.max())
    return float(low), float(high)


def _network_input(
    region: np.ndarray, job: _BlockJob, statistics: tuple[float, float]
) -> np.ndarray:
    """``(C, h, w)`` float32 input of a region, normalised with its plane's statistics.

    The arithmetic is that of :func:`napari_unet.data.normalize`, so a region gives
    exactly the values the whole plane would.
    """
    from napari_unet.data import to_channels_first

    x = to_channels_first(
        np.moveaxis(region, -1, 0) if job.colour else region,
        job.in_channels,
        channel_axis=0 if job.colour else None,
    )
    if job.normalization.mode == "none":
        return x
    low, high = statistics
    scale = high - low
    if scale <= 0:
        return np.zeros_like(x)
    return (x - np.float32(low)) / np.float32(scale)


def _segment_block(
    reader: _Reader,
    statistics: tuple[float, float],
    block: _Block,
    job: _BlockJob,
    reference: str | ModelBlob,
) -> tuple[int, np.ndarray]:
    """Pass 1: labels of one block; writes its core and face strips, returns count and ids."""
    import zarr

    from napari_unet.prediction import _plane_to_labels
    from napari_unet.tiling import sliding_window

    predictor = worker_predictor(reference, job.config.device, job.config.tta, job.config.compile)
    ey0, ey1, ex0, ex1 = block.extended
    x = _network_input(reader.read(block.plane, slice(ey0, ey1), slice(ex0, ex1)), job, statistics)
    probabilities = sliding_window(
        x, predictor, job.tile, job.config.overlap, job.config.tile_batch, job.multiple
    )
    labels = _plane_to_labels(probabilities, job.target, job.config).astype(np.uint32)
    y0, y1, x0, x1 = block.core
    core = labels[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]
    scratch = zarr.open_array(job.scratch, mode="r+")
    scratch[(block.number, slice(None, y1 - y0), slice(None, x1 - x0))] = core
    m = job.margin
    # Labels across each face: rows/columns [edge - m, edge + m) of the plane, core extent
    # along the face. Neighbours cut the same rectangle, so the strips align pixel for pixel.
    rows, cols = slice(y0 - ey0, y1 - ey0), slice(x0 - ex0, x1 - ex0)
    strips = {}
    if block.row > 0:
        strips["top"] = labels[y0 - m - ey0 : y0 + m - ey0, cols]
    if y1 - ey0 < labels.shape[0]:
        strips["bottom"] = labels[y1 - m - ey0 : y1 + m - ey0, cols]
    if block.col > 0:
        strips["left"] = labels[rows, x0 - m - ex0 : x0 + m - ex0]
    if x1 - ex0 < labels.shape[1]:
        strips["right"] = labels[rows, x1 - m - ex0 : x1 + m - ex0]
    for side, strip in strips.items():
        np.save(_strip_path(job.strips, block.number, side), strip)
    return int(labels.max(initial=0)), np.unique(core[core > 0])


def _strip_path(folder: str, block: int, side: str) -> str:
    return os.path.join(folder, f"{block}-{side}.npy")


def match_strips(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pairs ``(a, b)`` of labels that two labellings of the same strip give one object.

    ``a`` and ``b`` are matched when more than half of the pixels of the smaller of the
    two (within the strip) lie in the other. Distinct touching objects share no pixel and
    never match; an object split differently by the two blocks is merged rather than cut.

    Returns
    -------
    np.ndarray
        ``(K, 2)`` uint64 pairs.
    """
    first, second = np.asarray(first).ravel(), np.asarray(second).ravel()
    both = (first > 0) & (second > 0)
    if not both.any():
        return np.zeros((0, 2), np.uint64)
    pairs, overlap = np.unique(np.stack([first[both], second[both]], 1), axis=0, return_counts=True)
    ids_a, size_a = np.unique(first[first > 0], return_counts=True)
    ids_b, size_b = np.unique(second[second > 0], return_counts=True)
    smaller = np.minimum(
        size_a[np.searchsorted(ids_a, pairs[:, 0])], size_b[np.searchsorted(ids_b, pairs[:, 1])]
    )
    return pairs[2 * overlap > smaller].astype(np.uint64)


def _face_pairs(folder: str, face: tuple[int, str, int, str], *after: Any) -> np.ndarray:
    """Pass 2: the matches across the face between two blocks, from their strips.

    ``after`` are the two block results, passed only so that this runs after both. Each
    strip serves one face, so its file is removed once read.
    """
    block_a, side_a, block_b, side_b = face
    strips = []
    for block, side in ((block_a, side_a), (block_b, side_b)):
        path = _strip_path(folder, block, side)
        strips.append(np.load(path))
        os.remove(path)
    return match_strips(*strips)


def relabel_tables(
    counts: Sequence[int],
    present: Sequence[np.ndarray],
    matches: Sequence[tuple[int, int, np.ndarray]],
    planes: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], int]:
    """Union-find of the matched block-local labels and the final lookup table per block.

    Parameters
    ----------
    counts : sequence of int
        Largest local label of each block (block ``k``'s ids are ``1..counts[k]``).
    present : sequence of np.ndarray
        Local ids present in each block's core (only these get a final label).
    matches : sequence of (int, int, np.ndarray)
        ``(block_a, block_b, pairs)``: local ids of ``a`` and ``b`` that are one object.
    planes : sequence of int, optional
        Plane number of each block: objects are numbered from 1 in every plane.

    Returns
    -------
    tables : list of np.ndarray
        Per block, ``table[local_id]`` = final label (0 stays 0).
    largest : int
        Largest final label.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    total = int(offsets[-1])
    edges = [
        np.stack(
            [
                pairs[:, 0].astype(np.int64) + offsets[a] - 1,
                pairs[:, 1].astype(np.int64) + offsets[b] - 1,
            ]
        )
        for a, b, pairs in matches
        if len(pairs)
    ]
    edges_array = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
    graph = coo_matrix(
        (np.ones(edges_array.shape[1], np.int8), (edges_array[0], edges_array[1])),
        shape=(total, total),
    )
    _, component = connected_components(graph, directed=False)
    final = np.zeros(total, np.int64)
    # Number the components present in some core in block order (plane by plane on request).
    plane_of = np.zeros(len(counts), np.int64) if planes is None else np.asarray(planes)
    largest = 0
    for plane in np.unique(plane_of):
        nodes = np.concatenate(
            [
                present[k].astype(np.int64) + offsets[k] - 1
                for k in np.flatnonzero(plane_of == plane)
            ]
            + [np.zeros(0, np.int64)]
        )
        if not len(nodes):
            continue
        roots = component[nodes]
        unique_roots, first = np.unique(roots, return_index=True)
        order = np.argsort(first)
        number = np.empty(len(unique_roots), np.int64)
        number[order] = np.arange(1, len(unique_roots) + 1)
        final[nodes] = number[np.searchsorted(unique_roots, roots)]
        largest = max(largest, len(unique_roots))
    tables = [np.concatenate([[0], final[offsets[k] : offsets[k + 1]]]) for k in range(len(counts))]
    return tables, largest


def _write_final(block: _Block, table: np.ndarray, scratch: str, out: str) -> int:
    """Pass 3: one block's chunk through its lookup table into the final array."""
    import zarr

    y0, y1, x0, x1 = block.core
    local = zarr.open_array(scratch, mode="r")[block.number, : y1 - y0, : x1 - x0]
    target = zarr.open_array(out, mode="r+")
    target[(*block.plane, slice(y0, y1), slice(x0, x1))] = table.astype(target.dtype)[local]
    return 1


# --------------------------------------------------------------------------- schedulers


@contextlib.contextmanager
def scheduler(name: str | None = None, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Keyword arguments for ``dask.compute`` that run on the requested scheduler.

    Parameters
    ----------
    name : str, optional
        ``"threads"`` (default), ``"processes"``, ``"synchronous"``, or the address of a
        running ``dask.distributed`` scheduler (``tcp://host:8786``, e.g. of a
        ``dask_jobqueue.SLURMCluster``).
    workers : int, optional
        With ``threads``/``processes``: the number of workers. With no name: start a
        ``dask.distributed.LocalCluster`` of this many single-threaded worker processes
        for the duration of the block.

    Yields
    ------
    dict
        ``{"scheduler": ...}`` and, for local schedulers, ``num_workers``.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}.")
    if name is not None and name not in LOCAL_SCHEDULERS and ":" not in name:
        raise ConfigError(
            f"scheduler {name!r} is unknown; use one of {LOCAL_SCHEDULERS} or the address of "
            "a dask.distributed scheduler (tcp://host:8786)."
        )
    if name == "processes":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # One pool for all passes, so each process loads the model once (dask would
        # otherwise start a fresh pool, and reload the model, for every compute call).
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            yield {"scheduler": "processes", "pool": pool}
        return
    if name in LOCAL_SCHEDULERS or (name is None and workers is None):
        kwargs: dict[str, Any] = {"scheduler": name or "threads"}
        if workers is not None:
            kwargs["num_workers"] = workers
        yield kwargs
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ConfigError(
            "a dask.distributed scheduler needs the 'distributed' package: "
            "pip install 'napari-unet[distributed]'."
        ) from error
    if name is None:
        assert workers is not None  # no name and no workers is the threads case above
        import dask

        # One task thread per worker process; torch uses the worker's share of the cores.
        threads = max(1, (os.cpu_count() or 1) // workers)
        # distributed sets MALLOC_TRIM_THRESHOLD_ in its workers to hand memory back to the
        # OS sooner; then every large numpy temporary is a fresh mmap and page-faults, which
        # measured 1.5x slower per block here (benchmarks/bench_scale.py). Memory stays
        # bounded by the blocks in flight either way.
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))},
            ) as cluster,
            Client(cluster) as client,
        ):
            yield {"scheduler": client}
        return
    try:
        client = Client(name, timeout="30s")
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"could not reach the dask scheduler at {name!r}: {error}; start it (e.g. "
            "dask_jobqueue.SLURMCluster(...).scheduler_address) or use --scheduler threads."
        ) from error
    with client:
        yield {"scheduler": client}


# --------------------------------------------------------------------------- output


def _default_axes(ndim: int) -> list[dict[str, Any]]:
    names = ["t", "z", "y", "x"][-ndim:]
    return [{"name": n, "type": "time" if n == "t" else "space"} for n in names]


def _ome_label_attrs(
    name: str, axes: list[dict[str, Any]], source_image: str | None
) -> dict[str, Any]:
    """NGFF 0.4 attributes of a one-level label image (``multiscales`` + ``image-label``)."""
    image_label: dict[str, Any] = {"version": "0.4"}
    if source_image is not None:
        image_label["source"] = {"image": source_image}
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0] * len(axes)}
                        ],
                    }
                ],
            }
        ],
        "image-label": image_label,
    }


def _parent_ome_image(out: Path) -> Path | None:
    """The OME-Zarr image that ``out`` (``<image>/labels/<name>``) labels, if any."""
    image = out.parent.parent
    if out.parent.name != "labels" or not (image / ".zattrs").is_file():
        return None
    attrs = json.loads((image / ".zattrs").read_text())
    return image if "multiscales" in attrs else None


# --------------------------------------------------------------------------- driver


@dataclass
class ScaleResult:
    """Outcome of :func:`segment_to_zarr`.

    Attributes
    ----------
    path : Path
        The labels: a Zarr array (``ome=False``) or an NGFF label image whose level 0
        is ``path / "0"``.
    shape : tuple of int
    dtype : np.dtype
    n_objects : int
        Largest label (the number of objects, or of the fullest plane per plane).
    n_blocks : int
    merged : int
        Label pairs matched across block faces (objects cut by a block edge).
    elapsed_s : float
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    n_objects: int
    n_blocks: int
    merged: int
    elapsed_s: float

    def open(self) -> Any:
        """The labels as a lazy dask array."""
        import dask.array as da

        return da.from_zarr(str(self.path / "0") if (self.path / "0").exists() else str(self.path))


def segment_to_zarr(
    source: Any,
    out: str | os.PathLike[str],
    model: str | os.PathLike[str] | TrainedModel = "default",
    config: PredictConfig | None = None,
    *,
    block: int = DEFAULT_BLOCK,
    halo: int | None = None,
    scheduler_name: str | None = None,
    workers: int | None = None,
    ome: bool = True,
    name: str = "labels",
    rgb: bool | None = None,
    channel_axis: int | None = None,
    level: int = 0,
    progress: bool = False,
) -> ScaleResult:
    """Segment an image or stack of any size block by block into a Zarr of instance labels.

    Parameters
    ----------
    source : str, Path, numpy or dask array
        An OME-Zarr / Zarr / TIFF path (read lazily, see :func:`open_image`) or an array.
    out : str or Path
        The ``*.zarr`` to write (replaced if it exists). Inside an OME-Zarr image as
        ``<image>.zarr/labels/<name>``, it is registered in the image's ``labels`` group,
        so napari-ome-zarr shows image and labels together.
    model : str, Path or TrainedModel
        Model file, ``"default"`` or a loaded model.
    config : PredictConfig, optional
        Tiling and post-processing settings (as :func:`napari_unet.prediction.predict`).
    block : int
        Block side in pixels: the unit of work and the output chunk side.
    halo : int, optional
        Context read around each block (default :data:`DEFAULT_HALO`, at least the tile
        overlap); objects larger than about the halo that cross a block edge may be
        segmented slightly differently by the two blocks, but keep one label.
    scheduler_name : str, optional
        ``threads`` (default), ``processes``, ``synchronous`` or a dask.distributed
        scheduler address; see :func:`scheduler`.
    workers : int, optional
        Number of local workers; alone, it starts a ``LocalCluster`` of that many processes.
    ome : bool
        Write an NGFF 0.4 label image (zarr v2 group with ``multiscales``/``image-label``
        and level ``0``); otherwise a bare Zarr array.
    name : str
        Name of the label image in the OME metadata.
    rgb, channel_axis : optional
        Colour / channel layout as in :func:`napari_unet.prediction.predict`.
    level : int
        Resolution level of a multiscale input.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    ScaleResult

    Raises
    ------
    DataError, ConfigError, ModelFileError
        Unreadable input, bad layout or settings, unusable model (before writing).
    """
    import uuid

    import dask
    import zarr

    from napari_unet.postprocess import label_dtype
    from napari_unet.prediction import PredictConfig, _layout, auto_tile_size, resolve_model

    started = time.perf_counter()
    config = config or PredictConfig()
    if not isinstance(block, int) or block < 32:
        raise ConfigError(f"block must be a whole number of pixels >= 32, got {block!r}.")
    halo = max(DEFAULT_HALO if halo is None else halo, 0)
    if halo < 2:
        raise ConfigError(
            f"halo must be at least 2 pixels (objects cut by block edges are matched in it), "
            f"got {halo}; try {DEFAULT_HALO}."
        )
    trained = resolve_model(model, config.device)
    config = config.for_model(trained)
    model_config = trained.config
    axes = None
    if isinstance(source, (str, os.PathLike)):
        image, axes = open_array(source, level=level)
    elif hasattr(source, "__getitem__") and hasattr(source, "shape") and hasattr(source, "dtype"):
        image = source  # zarr, dask or numpy: sliced block by block, never loaded whole
    else:
        image = np.asarray(source)
    if channel_axis is None and axes is not None:
        channels = [i for i, axis in enumerate(axes) if axis.get("type") == "channel"]
        channel_axis = channels[0] if channels else None
    layout = _layout(tuple(image.shape), model_config.in_channels, rgb, channel_axis)
    colour = layout.channel_axis is not None
    label_axes = (
        [axis for i, axis in enumerate(axes) if i != layout.channel_axis]
        if axes is not None and len(axes) == len(image.shape)
        else _default_axes(len(layout.labels_shape))
    )
    # One graph key each: every worker receives the reader and the model once.
    reader = dask.delayed(
        _Reader(image, layout.channel_axis, layout.drop_alpha), name=f"reader-{uuid.uuid4()}"
    )
    tile = config.tile_size or auto_tile_size(
        model_config, trained.device, config.tile_batch, config.overlap
    )
    halo = max(halo, config.overlap)
    margin = max(1, min(halo // 2, 32))
    blocks = _blocks(layout.leading, layout.height, layout.width, block, halo)
    reference = model_reference(model)
    reference_key: Any = (
        dask.delayed(reference, name=f"model-{reference.key}")
        if isinstance(reference, ModelBlob)
        else reference
    )

    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    with scheduler(scheduler_name, workers) as compute_kwargs:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            scratch = str(tmp / "scratch")
            zarr.create_array(
                scratch,
                shape=(len(blocks), min(block, layout.height), min(block, layout.width)),
                chunks=(1, min(block, layout.height), min(block, layout.width)),
                dtype=np.uint32,
                fill_value=0,
                zarr_format=2,
            )
            job = _BlockJob(
                config,
                model_config.target,
                model_config.in_channels,
                model_config.normalization,
                colour,
                tile,
                model_config.size_multiple,
                margin,
                scratch,
                str(tmp / "strips"),
            )
            os.mkdir(job.strips)

            # Pass 0: normalisation statistics per plane.
            stride = max(1, math.ceil(math.sqrt(layout.height * layout.width / MAX_STAT_PIXELS)))
            stat_tasks = [
                dask.delayed(_plane_statistics)(
                    reader,
                    plane,
                    stride,
                    model_config.in_channels,
                    colour,
                    model_config.normalization,
                )
                for plane in np.ndindex(*layout.leading)
            ]
            statistics = _compute(stat_tasks, compute_kwargs, progress)
            plane_number = {plane: k for k, plane in enumerate(np.ndindex(*layout.leading))}

            # Passes 1 and 2: block labels (written to the scratch) and face matches.
            results = {}
            for b in blocks:
                results[b.plane, b.row, b.col] = dask.delayed(_segment_block, pure=False)(
                    reader, statistics[plane_number[b.plane]], b, job, reference_key
                )
            number = {(b.plane, b.row, b.col): b.number for b in blocks}
            face_tasks, face_blocks = [], []
            for (plane, row, col), result in results.items():
                for side_a, side_b, other in (
                    ("bottom", "top", (plane, row + 1, col)),
                    ("right", "left", (plane, row, col + 1)),
                ):
                    if other in results:
                        face = (number[plane, row, col], side_a, number[other], side_b)
                        face_tasks.append(
                            dask.delayed(_face_pairs, pure=False)(
                                job.strips, face, result, results[other]
                            )
                        )
                        face_blocks.append((number[plane, row, col], number[other]))
            summaries = [results[b.plane, b.row, b.col] for b in blocks]
            done = _compute(summaries + face_tasks, compute_kwargs, progress)
            summaries, pairs = done[: len(summaries)], done[len(summaries) :]
            counts = [count for count, _ in summaries]
            present = [ids for _, ids in summaries]
            matches = [(a, b, p) for (a, b), p in zip(face_blocks, pairs)]
            tables, largest = relabel_tables(
                counts,
                present,
                matches,
                [plane_number[b.plane] for b in blocks] if config.labels_per_plane else None,
            )

            # Pass 3: the final labels, chunk by chunk.
            final_path = _create_output(
                tmp / "labels",
                layout.labels_shape,
                block,
                label_dtype(largest),
                ome,
                _ome_label_attrs(name, label_axes, "../../" if _parent_ome_image(out) else None),
            )
            writes = [
                dask.delayed(_write_final)(b, tables[b.number], scratch, final_path) for b in blocks
            ]
            _compute(writes, compute_kwargs, progress)

            if out.exists():
                shutil.rmtree(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "labels", out)
            if ome and _parent_ome_image(out) is not None:
                _register_label(out.parent, out.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ScaleResult(
        out,
        layout.labels_shape,
        label_dtype(largest),
        largest,
        len(blocks),
        int(sum(len(p) for p in pairs)),
        time.perf_counter() - started,
    )


def _create_output(
    path: Path,
    shape: tuple[int, ...],
    block: int,
    dtype: np.dtype,
    ome: bool,
    attrs: dict[str, Any],
) -> str:
    """Create the empty labels (chunks of one block) and return the path of the array.

    ``ome``: a zarr v2 group with NGFF ``attrs`` and the array ``0`` ("/"-separated chunk
    keys, as NGFF 0.4 asks); otherwise a bare zarr v2 array.
    """
    import zarr

    chunks = (1,) * (len(shape) - 2) + (min(block, shape[-2]), min(block, shape[-1]))
    if not ome:
        zarr.create_array(
            str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=2
        )
        return str(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(attrs)
    group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    return str(path / "0")


def _register_label(labels_dir: Path, name: str) -> None:
    """Add ``name`` to the NGFF ``labels`` group of an OME-Zarr image."""
    import zarr

    group = zarr.open_group(str(labels_dir), mode="a", zarr_format=2)
    names = list(group.attrs.get("labels", []))
    if name not in names:
        group.attrs["labels"] = [*names, name]


def _compute(tasks: list[Any], compute_kwargs: dict[str, Any], progress: bool) -> list[Any]:
    """The results of ``tasks`` (dask delayed objects), computed where ``compute_kwargs`` says.

    With ``progress`` a text bar goes to stderr: dask's for the local schedulers, and
    dask.distributed's (which follows the cluster's tasks) for a ``Client``.
    """
    import sys

    import dask

    scheduler = compute_kwargs["scheduler"]
    if isinstance(scheduler, str):
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
        with bar:
            return list(dask.compute(*tasks, **compute_kwargs))
    futures = scheduler.compute(tasks)
    if progress:
        from distributed import progress as show_progress

        # The console bar of dask.distributed writes to stdout, which is for results.
        with contextlib.redirect_stdout(sys.stderr):
            show_progress(futures, notebook=False)
    return list(scheduler.gather(futures))


# --------------------------------------------------------------------------- torchrun


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in a ``torchrun`` job (``world_size == 1``: not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment_group() -> ProcessGroup:
    """Rank and world size from the environment (``torchrun`` or Slurm's ``srun``)."""
    env = os.environ
    if "WORLD_SIZE" in env:
        return ProcessGroup(
            int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
        )
    return ProcessGroup()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed run (which writes nothing)."""
    return environment_group().is_main


def init_from_env(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """Join the process group described by the environment, if any.

    Uses NCCL when training on CUDA (each rank on ``cuda:LOCAL_RANK``) and gloo on a CPU.
    A no-op returning ``(ProcessGroup(), device)`` outside ``torchrun``.
    """
    import torch
    import torch.distributed as dist

    group = environment_group()
    if not group.active:
        return group, device
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=group.rank,
            world_size=group.world_size,
        )
        atexit.register(_destroy)
    return group, device


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` in ``DistributedDataParallel`` (gradients averaged over ranks).

    Buffers (BatchNorm statistics) are broadcast from rank 0 at every forward pass.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids)


def rank_rng(rng: np.random.Generator, seed: int, group: ProcessGroup, epoch: int = 0) -> None:
    """Give this rank its own random stream in place (patches and augmentation).

    ``(seed, rank, epoch)`` seeds it, so ranks never draw the same patches and a resumed
    run (``epoch`` > 0) does not replay the first epochs' streams.
    """
    if group.active:
        fresh = np.random.default_rng([seed, group.rank, epoch])
        rng.bit_generator.state = fresh.bit_generator.state


def validate(
    run: Any, planes: Sequence[Any], group: ProcessGroup
) -> tuple[float, dict[str, float]]:
    """Validation of a training run, shared out over ranks and reduced.

    Every rank scores its share of the planes with the run's own ``validate`` (one plane
    at a time) and the sums are all-reduced, so every rank gets the single-process means
    (loss over planes, Dice/IoU over scored planes) and takes the same decisions (best
    model, learning-rate drop, early stop). BatchNorm buffers are first taken from rank 0.
    """
    import torch
    import torch.distributed as dist

    if not group.active:
        return run.validate(planes)
    for buffer in run.network.buffers():
        dist.broadcast(buffer.data, src=0)
    sums = torch.zeros(5, dtype=torch.float64)
    for plane in list(planes)[group.rank :: group.world_size]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of no score: unscored plane
            loss, metrics = run.validate([plane])
        sums[0] += loss
        sums[1] += 1
        if math.isfinite(metrics["dice"]):
            sums[2] += metrics["dice"]
            sums[3] += metrics["iou"]
            sums[4] += 1
    dist.all_reduce(sums)
    loss_sum, n, dice_sum, iou_sum, scored = sums.tolist()
    nan = float("nan")
    return (loss_sum / n if n else nan), {
        "dice": dice_sum / scored if scored else nan,
        "iou": iou_sum / scored if scored else nan,
    }


def all_mean(value: float, group: ProcessGroup) -> float:
    """Mean of ``value`` over ranks (the value itself outside a distributed run)."""
    import torch
    import torch.distributed as dist

    if not group.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor[0]) / group.world_size


def quiet_unless_main() -> bool:
    """Silence stdout on non-zero ranks (one progress line per run); True on rank 0."""
    import sys

    if is_main_process():
        return True
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return False


# --------------------------------------------------------------------------- CLI


def add_scale_arguments(parser: Any) -> None:
    """Options of ``napari-unet predict`` that route inputs through :func:`segment_to_zarr`."""
    group = parser.add_argument_group(
        "scaling out (any of these writes <name>_labels.zarr, block by block)"
    )
    group.add_argument(
        "--scheduler",
        metavar="NAME|ADDRESS",
        help="dask scheduler: threads (default), processes, or the address of a "
        "dask.distributed scheduler (e.g. tcp://host:8786 of a dask-jobqueue cluster)",
    )
    group.add_argument(
        "--workers",
        type=int,
        help="number of local workers; without --scheduler, starts a dask.distributed "
        "LocalCluster of N processes",
    )
    group.add_argument(
        "--zarr",
        action="store_true",
        help="write an OME-Zarr label image (NGFF 0.4) instead of a TIFF",
    )
    group.add_argument(
        "--block",
        type=int,
        default=DEFAULT_BLOCK,
        help=f"block (and output chunk) side in pixels (default {DEFAULT_BLOCK})",
    )
    group.add_argument(
        "--halo",
        type=int,
        default=DEFAULT_HALO,
        help="context read around each block, about the largest object size "
        f"(default {DEFAULT_HALO})",
    )


def wants_scale(args: Any) -> bool:
    """True when ``napari-unet predict`` was asked for the block-wise Zarr path."""
    return bool(
        getattr(args, "zarr", False)
        or getattr(args, "scheduler", None) is not None
        or getattr(args, "workers", None) is not None
    )


def run_cli(args: Any) -> int:
    """``napari-unet predict`` with ``--zarr``/``--scheduler``/``--workers``.

    Every input is opened lazily and checked before anything is written; each is then
    segmented into ``OUT/<name>_labels.zarr``.
    """
    from napari_unet.cli._options import prediction_config
    from napari_unet.cli.predict import _stem, collect_inputs
    from napari_unet.io import read_image
    from napari_unet.prediction import labels_shape, resolve_model

    if args.return_probabilities:
        raise ConfigError(
            "--save-probabilities is not available with --zarr/--scheduler/--workers; "
            "drop it, or segment without those options."
        )
    config = prediction_config(args, labels_per_plane=args.labels_per_plane)
    model = resolve_model(args.model, config.device)
    sources = collect_inputs(args.inputs)
    stems = [_stem(path) for path in sources]
    if len(set(stems)) < len(stems):
        raise DataError(
            "several inputs have the same name; their outputs would overwrite each other. "
            "Segment them into different --out folders."
        )

    def lazy(path: Path) -> Any:
        if path.is_dir() or path.suffix.lower() in _TIFF_SUFFIXES:
            return open_image(path)[0]
        return read_image(path)

    for path in sources:  # check everything before writing anything
        labels_shape(lazy(path).shape, model.config.in_channels, None, args.channel_axis)
    for path, stem in zip(sources, stems):
        result = segment_to_zarr(
            path if path.is_dir() or path.suffix.lower() in _TIFF_SUFFIXES else lazy(path),
            args.out / f"{stem}_labels.zarr",
            args.model,
            config,
            block=args.block,
            halo=args.halo,
            scheduler_name=args.scheduler,
            workers=args.workers,
            name=f"{stem}_labels",
            channel_axis=args.channel_axis,
            progress=not args.quiet,
        )
        print(
            f"{path} -> {result.path} ({result.n_objects} objects, {result.n_blocks} blocks, "
            f"{result.elapsed_s:.1f}s)"
        )
    return 0


__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_HALO",
    "LazyTiff",
    "ModelBlob",
    "ProcessGroup",
    "ScaleResult",
    "add_scale_arguments",
    "all_mean",
    "environment_group",
    "init_from_env",
    "is_main_process",
    "loaded_models",
    "match_strips",
    "model_reference",
    "open_array",
    "open_image",
    "quiet_unless_main",
    "rank_rng",
    "relabel_tables",
    "run_cli",
    "scheduler",
    "segment_to_zarr",
    "validate",
    "wants_scale",
    "worker_predictor",
    "wrap_model",
]
