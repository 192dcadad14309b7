"""What runs on the workers: the model cache, the blocks and the three block tasks.

Every function here is a dask task (or called by one) and gets only picklable arguments:
the :class:`~napari_unet.blockwise.reading.PlaneReader`, a :class:`Block`, the shared
:class:`BlockJob` and a model reference (a path or a :class:`ModelBlob`).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.blockwise.reading import PlaneReader
from napari_unet.blockwise.stitching import match_strips
from napari_unet.config import NormalizationConfig
from napari_unet.data import apply_intensity_range, intensity_range
from napari_unet.layout import Layout

if TYPE_CHECKING:
    from napari_unet.checkpoint import TrainedModel
    from napari_unet.prediction import PredictConfig, TilePredictor


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
class Block:
    """One block of one plane: its core (written) and extended (read) rectangles."""

    number: int
    plane: tuple[int, ...]
    row: int
    col: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 in the plane
    extended: tuple[int, int, int, int]


def plane_blocks(
    leading: tuple[int, ...], height: int, width: int, block: int, halo: int
) -> list[Block]:
    """The blocks of every plane, plane by plane, row by row."""
    rows, cols = range(0, height, block), range(0, width, block)
    blocks: list[Block] = []
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
                blocks.append(Block(len(blocks), tuple(plane), i, j, (y0, y1, x0, x1), extended))
    return blocks


@dataclass(frozen=True)
class BlockJob:
    """What every block task needs besides its pixels (shared, small)."""

    config: PredictConfig
    target: str
    layout: Layout  # checked against the model: makes the network input of a region
    normalization: NormalizationConfig
    tile: int
    multiple: int
    margin: int
    scratch: str
    strips: str
    probabilities: str | None = None  # the (C, *stack, H, W) float32 Zarr, if wanted


def plane_intensity_range(
    reader: PlaneReader, index: tuple[int, ...], stride: int, normalization: NormalizationConfig
) -> tuple[float, float]:
    """Pass 0: the normalisation range of one plane, from every ``stride``-th pixel."""
    plane = reader.read(index, slice(None, None, stride), slice(None, None, stride))
    return intensity_range(reader.layout.network_input(plane), normalization)


def segment_block(
    reader: PlaneReader,
    intensities: tuple[float, float],
    block: Block,
    job: BlockJob,
    reference: str | ModelBlob,
) -> tuple[int, np.ndarray]:
    """Pass 1: labels of one block; writes its core and face strips, returns count and ids."""
    import zarr

    from napari_unet.prediction import label_plane
    from napari_unet.tiling import sliding_window

    predictor = worker_predictor(reference, job.config.device, job.config.tta, job.config.compile)
    ey0, ey1, ex0, ex1 = block.extended
    region = reader.read(block.plane, slice(ey0, ey1), slice(ex0, ex1))
    x = apply_intensity_range(job.layout.network_input(region), *intensities)
    probabilities = sliding_window(
        x, predictor, job.tile, job.config.overlap, job.config.tile_batch, job.multiple
    )
    labels = label_plane(probabilities, job.target, job.config).astype(np.uint32)
    y0, y1, x0, x1 = block.core
    rows, cols = slice(y0 - ey0, y1 - ey0), slice(x0 - ex0, x1 - ex0)
    core = labels[rows, cols]
    scratch = zarr.open_array(job.scratch, mode="r+")
    scratch[(block.number, slice(None, y1 - y0), slice(None, x1 - x0))] = core
    if job.probabilities is not None:
        target = zarr.open_array(job.probabilities, mode="r+")
        target[(slice(None), *block.plane, slice(y0, y1), slice(x0, x1))] = probabilities[
            :, rows, cols
        ]
    for side, strip in face_strips(labels, block, job.margin).items():
        np.save(strip_path(job.strips, block.number, side), strip)
    return int(labels.max(initial=0)), np.unique(core[core > 0])


def face_strips(labels: np.ndarray, block: Block, margin: int) -> dict[str, np.ndarray]:
    """The labels across each face the block shares with a neighbour, by side.

    Rows/columns ``[edge - margin, edge + margin)`` of the plane, core extent along the
    face. Neighbours cut the same rectangle, so the strips align pixel for pixel.
    """
    ey0, _, ex0, _ = block.extended
    y0, y1, x0, x1 = block.core
    m = margin
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
    return strips


def strip_path(folder: str, block: int, side: str) -> str:
    """The file of one block's strip along one side."""
    return os.path.join(folder, f"{block}-{side}.npy")


def face_matches(folder: str, face: tuple[int, str, int, str], *after: Any) -> np.ndarray:
    """Pass 2: the matches across the face between two blocks, from their strips.

    ``after`` are the two block results, passed only so that this runs after both. Each
    strip serves one face, so its file is removed once read.
    """
    block_a, side_a, block_b, side_b = face
    strips = []
    for block, side in ((block_a, side_a), (block_b, side_b)):
        path = strip_path(folder, block, side)
        strips.append(np.load(path))
        os.remove(path)
    return match_strips(*strips)


def write_final(block: Block, table: np.ndarray, scratch: str, out: str) -> int:
    """Pass 3: one block's chunk through its lookup table into the final array."""
    import zarr

    y0, y1, x0, x1 = block.core
    local = zarr.open_array(scratch, mode="r")[block.number, : y1 - y0, : x1 - x0]
    target = zarr.open_array(out, mode="r+")
    target[(*block.plane, slice(y0, y1), slice(x0, x1))] = table.astype(target.dtype)[local]
    return 1
