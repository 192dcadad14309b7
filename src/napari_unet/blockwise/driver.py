"""The block-wise driver: :func:`segment_to_zarr_events` and its plain form."""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.blockwise import DEFAULT_BLOCK, DEFAULT_HALO, MAX_STAT_PIXELS
from napari_unet.blockwise.output import (
    create_labels,
    default_axes,
    ome_label_attrs,
    parent_ome_image,
    register_label,
)
from napari_unet.blockwise.reading import PlaneReader, open_array
from napari_unet.blockwise.schedulers import compute_events, scheduler
from napari_unet.blockwise.stitching import relabel_tables
from napari_unet.blockwise.workers import (
    Block,
    BlockJob,
    ModelBlob,
    face_matches,
    model_reference,
    plane_blocks,
    plane_intensity_range,
    segment_block,
    write_final,
)
from napari_unet.checkpoint import TrainedModel
from napari_unet.errors import ConfigError
from napari_unet.events import plain_form
from napari_unet.layout import find_layout
from napari_unet.metadata import ImageMetadata, image_metadata, labels_metadata
from napari_unet.native3d import BLOCKWISE_3D_ERROR
from napari_unet.postprocess import label_dtype
from napari_unet.prediction import (
    PredictConfig,
    Progress,
    auto_tile_size,
    resolve_model,
)


@dataclass
class ScaleResult:
    """Outcome of :func:`segment_to_zarr`.

    Attributes
    ----------
    path : Path
        The labels: a Zarr array (``ome=False``) or an NGFF label image whose level 0
        is ``path / "0"``. Not written when ``cancelled``.
    shape : tuple of int
    dtype : np.dtype
    n_objects : int
        Largest label (the number of objects, or of the fullest plane per plane).
    n_blocks : int
    merged : int
        Label pairs matched across block faces (objects cut by a block edge).
    elapsed_s : float
    cancelled : bool
        True when ``stop`` ended the run: nothing was written.
    probabilities : Path or None
        The probabilities Zarr array, if asked for.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    n_objects: int
    n_blocks: int
    merged: int
    elapsed_s: float
    cancelled: bool = False
    probabilities: Path | None = None

    def open(self) -> Any:
        """The labels as a lazy dask array."""
        import dask.array as da

        return da.from_zarr(str(self.path / "0") if (self.path / "0").exists() else str(self.path))


@dataclass(frozen=True)
class _Plan:
    """Everything decided before the first pixel is read."""

    job: BlockJob
    reader: Any  # a dask.delayed PlaneReader: one graph key, sent to each worker once
    reference: Any  # a model path, or a delayed ModelBlob
    blocks: list[Block]
    block: int  # block side: also the output chunk side
    leading: tuple[int, ...]
    shape: tuple[int, ...]
    label_axes: list[dict[str, Any]]
    label_metadata: ImageMetadata | None  # the input's voxel size, for the labels
    stride: int  # pass 0 reads every stride-th pixel of a plane
    out_channels: int


def _plan(
    source: Any,
    model: str | os.PathLike[str] | TrainedModel,
    config: PredictConfig,
    block: int,
    halo: int | None,
    rgb: bool | None,
    channel_axis: int | None,
    level: int,
) -> _Plan:
    """Check the settings, the model and the input's layout; cut the planes into blocks."""
    import dask

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
    if model_config.ndim == 3:
        raise ConfigError(BLOCKWISE_3D_ERROR)
    axes = None
    metadata = ImageMetadata()
    if isinstance(source, (str, os.PathLike)):
        image, axes = open_array(source, level=level)
        if level == 0:  # the metadata gives the voxel size of the full resolution
            metadata = image_metadata(source)
    elif hasattr(source, "__getitem__") and hasattr(source, "shape") and hasattr(source, "dtype"):
        image = source  # zarr, dask or numpy: sliced block by block, never loaded whole
    else:
        image = np.asarray(source)
    if channel_axis is None and axes is not None:
        channels = [i for i, axis in enumerate(axes) if axis.get("type") == "channel"]
        channel_axis = channels[0] if channels else None
    layout = find_layout(image.shape, model_config.in_channels, rgb, channel_axis)
    label_axes = (
        [axis for i, axis in enumerate(axes) if i != layout.channel_axis]
        if axes is not None and len(axes) == len(image.shape)
        else default_axes(len(layout.labels_shape))
    )
    halo = max(halo, config.overlap)
    reference = model_reference(model)
    job = BlockJob(
        config=config,
        target=model_config.target,
        layout=layout,
        normalization=model_config.normalization,
        tile=config.tile_size
        or auto_tile_size(model_config, trained.device, config.tile_batch, config.overlap),
        multiple=model_config.size_multiple,
        margin=max(1, min(halo // 2, 32)),
        scratch="",  # set once the scratch folder exists
        strips="",
    )
    return _Plan(
        job=job,
        reader=dask.delayed(
            PlaneReader(image, layout),
            name=f"reader-{uuid.uuid4()}",
        ),
        reference=(
            dask.delayed(reference, name=f"model-{reference.key}")
            if isinstance(reference, ModelBlob)
            else reference
        ),
        blocks=plane_blocks(layout.stack_shape, layout.height, layout.width, block, halo),
        block=block,
        leading=layout.stack_shape,
        shape=layout.labels_shape,
        label_axes=label_axes,
        label_metadata=labels_metadata(metadata, len(layout.labels_shape)),
        stride=max(1, math.ceil(math.sqrt(layout.height * layout.width / MAX_STAT_PIXELS))),
        out_channels=model_config.out_channels,
    )


def _scratch_job(plan: _Plan, tmp: Path, probabilities: bool) -> BlockJob:
    """The job with its scratch arrays created in ``tmp``: block labels, strips, probabilities."""
    import dataclasses

    import zarr

    height, width = plan.shape[-2:]
    side = (min(plan.block, height), min(plan.block, width))
    scratch = str(tmp / "scratch")
    zarr.create_array(
        scratch,
        shape=(len(plan.blocks), *side),
        chunks=(1, *side),
        dtype=np.uint32,
        fill_value=0,
        zarr_format=2,
    )
    (tmp / "strips").mkdir()
    probabilities_path = None
    if probabilities:
        probabilities_path = str(tmp / "probabilities")
        zarr.create_array(
            probabilities_path,
            shape=(plan.out_channels, *plan.shape),
            chunks=(1,) * (len(plan.shape) - 1) + side,
            dtype=np.float32,
            fill_value=0,
            zarr_format=2,
        )
    return dataclasses.replace(
        plan.job, scratch=scratch, strips=str(tmp / "strips"), probabilities=probabilities_path
    )


def _faces(blocks: list[Block]) -> list[tuple[int, str, int, str]]:
    """Every face between two neighbouring blocks of a plane: ``(a, side_a, b, side_b)``."""
    where = {(b.plane, b.row, b.col): b.number for b in blocks}
    faces = []
    for b in blocks:
        for side_a, side_b, other in (
            ("bottom", "top", (b.plane, b.row + 1, b.col)),
            ("right", "left", (b.plane, b.row, b.col + 1)),
        ):
            if other in where:
                faces.append((b.number, side_a, where[other], side_b))
    return faces


def _with_progress(
    tasks: list[Any],
    compute_kwargs: dict[str, Any],
    stop: threading.Event | None,
    before: int,
    total: int,
    message: str,
) -> Generator[Progress, None, list[Any] | None]:
    """:func:`compute_events` as :class:`Progress` over the whole run (None if stopped)."""
    events = compute_events(tasks, compute_kwargs, stop)
    while True:
        try:
            done = next(events)
        except StopIteration as finished:
            return finished.value
        yield Progress(before + done, total, message)


def segment_to_zarr_events(
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
    probabilities_out: str | os.PathLike[str] | None = None,
    stop: threading.Event | None = None,
) -> Generator[Progress, None, ScaleResult]:
    """Segment an image or stack of any size block by block into a Zarr, yielding progress.

    Parameters
    ----------
    source : str, Path, numpy, zarr or dask array
        An OME-Zarr / Zarr / TIFF path (read lazily, see
        :func:`~napari_unet.blockwise.open_image`) or an array.
    out : str or Path
        The ``*.zarr`` to write (replaced if it exists). Inside an OME-Zarr image as
        ``<image>.zarr/labels/<name>``, it is registered in the image's ``labels`` group,
        so napari-ome-zarr shows image and labels together.
    model : str, Path or TrainedModel
        Model file, ``"default"`` or a loaded model.
    config : PredictConfig, optional
        Tiling and post-processing settings (as :func:`napari_unet.prediction.predict`);
        ``labels_per_plane`` numbers each plane from 1.
    block : int
        Block side in pixels: the unit of work and the output chunk side. A plane no
        larger than a block is predicted whole, exactly as :func:`~napari_unet.predict`.
    halo : int, optional
        Context read around each block (default :data:`DEFAULT_HALO`, at least the tile
        overlap); objects larger than about the halo that cross a block edge may be
        segmented slightly differently by the two blocks, but keep one label.
    scheduler_name : str, optional
        ``threads`` (default), ``processes``, ``synchronous`` or a dask.distributed
        scheduler address; see :func:`~napari_unet.blockwise.scheduler`.
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
    probabilities_out : str or Path, optional
        Also write the probabilities here: a Zarr array ``(C_out, *labels.shape)`` float32.
    stop : threading.Event, optional
        When set, the run ends after the tasks in flight; nothing is written and the
        result has ``cancelled`` set.

    Yields
    ------
    Progress
        Tasks done of all passes (normalisation ranges, blocks and faces, final writes).

    Returns
    -------
    ScaleResult

    Raises
    ------
    DataError, ConfigError, ModelFileError
        Unreadable input, bad layout or settings, unusable model (before writing).

    Examples
    --------
    >>> result = segment_to_zarr("big.ome.zarr", "big.ome.zarr/labels/cells")  # doctest: +SKIP
    >>> labels = result.open()  # doctest: +SKIP
    """
    started = time.perf_counter()
    plan = _plan(source, model, config or PredictConfig(), block, halo, rgb, channel_axis, level)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with scheduler(scheduler_name, workers) as compute_kwargs:
        tmp.mkdir(parents=True)
        try:
            job = _scratch_job(plan, tmp, probabilities_out is not None)
            summary = yield from _run_passes(plan, job, compute_kwargs, stop, tmp, ome, name, out)
            if summary is None:
                return ScaleResult(
                    out, plan.shape, np.dtype(np.uint8), 0, len(plan.blocks), 0,
                    time.perf_counter() - started, cancelled=True,
                )  # fmt: skip
            _, largest, merged = summary
            _move(tmp / "labels", out)
            if ome and parent_ome_image(out) is not None:
                register_label(out.parent, out.name)
            if probabilities_out is not None:
                _move(tmp / "probabilities", Path(probabilities_out))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ScaleResult(
        out,
        plan.shape,
        label_dtype(largest),
        largest,
        len(plan.blocks),
        merged,
        time.perf_counter() - started,
        probabilities=None if probabilities_out is None else Path(probabilities_out),
    )


def _move(source: Path, target: Path) -> None:
    """Replace ``target`` by ``source`` (a folder)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _run_passes(
    plan: _Plan,
    job: BlockJob,
    compute_kwargs: dict[str, Any],
    stop: threading.Event | None,
    tmp: Path,
    ome: bool,
    name: str,
    out: Path,
) -> Generator[Progress, None, tuple[str, int, int] | None]:
    """Passes 0-3 into ``tmp / "labels"``: (array path, largest label, merges), None if stopped."""
    import dask

    planes = list(np.ndindex(*plan.leading))
    n_blocks = len(plan.blocks)
    stat_tasks = [
        dask.delayed(plane_intensity_range)(plan.reader, plane, plan.stride, job.normalization)
        for plane in planes
    ]
    plane_number = {plane: k for k, plane in enumerate(planes)}
    faces = _faces(plan.blocks)
    total = len(planes) + 2 * n_blocks + len(faces)

    # Pass 0: the normalisation range of every plane.
    ranges = yield from _with_progress(
        stat_tasks, compute_kwargs, stop, 0, total, "normalisation ranges"
    )
    if ranges is None:
        return None
    # Passes 1 and 2: block labels (into the scratch) and the matches across faces.
    block_tasks = [
        dask.delayed(segment_block, pure=False)(
            plan.reader, ranges[plane_number[b.plane]], b, job, plan.reference
        )
        for b in plan.blocks
    ]
    face_tasks = [
        dask.delayed(face_matches, pure=False)(
            job.strips, face, block_tasks[face[0]], block_tasks[face[2]]
        )
        for face in faces
    ]
    done = yield from _with_progress(
        block_tasks + face_tasks, compute_kwargs, stop, len(planes), total, "segmenting blocks"
    )
    if done is None:
        return None
    summaries, pairs = done[:n_blocks], done[n_blocks:]
    tables, largest = relabel_tables(
        [count for count, _ in summaries],
        [ids for _, ids in summaries],
        [(face[0], face[2], p) for face, p in zip(faces, pairs)],
        [plane_number[b.plane] for b in plan.blocks] if job.config.labels_per_plane else None,
    )
    # Pass 3: the final labels, chunk by chunk.
    final = create_labels(
        tmp / "labels",
        plan.shape,
        plan.block,
        label_dtype(largest),
        ome,
        ome_label_attrs(
            name,
            plan.label_axes,
            "../../" if parent_ome_image(out) else None,
            plan.label_metadata,
        ),
    )
    writes = [
        dask.delayed(write_final)(b, tables[b.number], job.scratch, final) for b in plan.blocks
    ]
    written = yield from _with_progress(
        writes, compute_kwargs, stop, total - n_blocks, total, "writing labels"
    )
    if written is None:
        return None
    return final, largest, int(sum(len(p) for p in pairs))


segment_to_zarr = plain_form(
    segment_to_zarr_events,
    "segment_to_zarr",
    "Segment an image or stack of any size block by block into a Zarr of instance labels.",
)
