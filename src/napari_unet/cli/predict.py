"""``napari-unet predict``: segment images, folders and TIFF/Zarr stacks into label TIFFs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.blockwise import DEFAULT_BLOCK, DEFAULT_HALO
from napari_unet.cli._options import (
    add_model_arguments,
    add_overwrite_argument,
    add_prediction_arguments,
    prediction_config,
    run_record,
    run_with_progress_bar,
    trusted_model,
)
from napari_unet.config import ModelConfig, PredictConfig
from napari_unet.errors import ConfigError, DataError
from napari_unet.io import (
    IMAGE_SUFFIXES,
    atomic_write,
    check_finite,
    check_memory,
    check_output,
    check_run_record,
    image_header,
    list_images,
    read_image,
    write_run_record,
)
from napari_unet.metadata import (
    ImageMetadata,
    anisotropy_from,
    image_metadata,
    labels_metadata,
    tiff_metadata,
)

HELP = "segment images, folders or TIFF/Zarr stacks with a model and write label TIFFs"

_ZARR_SUFFIX = ".zarr"
#: Rough peak bytes per pixel of predicting one plane in memory: network input,
#: blended tile outputs, probabilities, labels and the watershed's working arrays.
PLANE_BYTES_PER_PIXEL = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet predict``."""
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="image file (TIFF, PNG, JPEG), folder of images, or TIFF/Zarr stack",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for <name>_labels.tif (created)"
    )
    # --return-probabilities (alias --save-probabilities) writes
    # <name>_probabilities.tif (float32, channels first)
    add_prediction_arguments(parser)
    parser.add_argument(
        "--channel-axis", type=int, help="channel axis of multichannel images (RGB needs none)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_argument(parser)
    add_scale_arguments(parser)


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of block-wise segmentation (:func:`napari_unet.blockwise.segment_to_zarr`)."""
    group = parser.add_argument_group(
        "scaling out (--zarr, --scheduler or --workers write <name>_labels.zarr, block by block)"
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
        help=f"block (and output chunk) side in pixels, also for Zarr inputs "
        f"(default {DEFAULT_BLOCK})",
    )
    group.add_argument(
        "--halo",
        type=int,
        default=DEFAULT_HALO,
        help="context read around each block, about the largest object size "
        f"(default {DEFAULT_HALO})",
    )


def wants_zarr(args: argparse.Namespace) -> bool:
    """True when the outputs are to be block-wise Zarr label images."""
    return bool(args.zarr or args.scheduler is not None or args.workers is not None)


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == _ZARR_SUFFIX and path.is_dir()


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Expand folders into their images; keep files and Zarr stores.

    Raises
    ------
    DataError
        If a path does not exist, is not an image, or a folder holds no image.
    """
    found: list[Path] = []
    for path in inputs:
        if _is_zarr(path):
            found.append(path)
        elif path.is_dir():
            images = list_images(path)
            if not images:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {str(path)!r}.")
            found.extend(images)
        elif not path.exists():
            raise DataError(f"{str(path)!r} does not exist; check the path.")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{str(path)!r} is not a supported image ({', '.join(IMAGE_SUFFIXES)}) or "
                "Zarr store (*.zarr)."
            )
        else:
            found.append(path)
    return found


def open_input(path: Path) -> Any:
    """A Zarr store as a lazy dask array (see :func:`napari_unet.blockwise.open_image`);
    any other image read into memory.

    Raises
    ------
    DataError
        If the file or store cannot be read.
    """
    if not _is_zarr(path):
        return read_image(path)
    from napari_unet.blockwise import open_image

    return open_image(path)[0]


def check_input(path: Path, in_channels: int, out_channels: int, args: argparse.Namespace) -> None:
    """Check one input's memory need (from its header), layout and values (no NaN).

    Raises
    ------
    DataError
        If the image would not fit in memory, does not suit the model, or holds NaN/inf.
    """
    from napari_unet.layout import labels_shape

    lazy = _is_zarr(path)
    image = open_input(path) if lazy else None
    declared = image.shape if lazy else image_header(path)[0]
    # The two longest axes bound a plane from above, whichever axes the channels are.
    plane = math.prod(sorted(declared)[-2:])
    needed = plane * PLANE_BYTES_PER_PIXEL
    if not lazy:
        # the whole stack's labels (and probabilities) are held until written
        needed += math.prod(declared) * 4 * (1 + (out_channels if args.return_probabilities else 0))
    check_memory(
        needed,
        f"segmenting {str(path)!r} (shape {tuple(declared)})",
        hint="crop it, or segment it block by block with --zarr",
    )
    image = open_input(path) if image is None else image
    labels_shape(image.shape, in_channels, None, args.channel_axis)
    check_finite(image, repr(str(path)))


def _stem(path: Path) -> str:
    return path.name[: -len(_ZARR_SUFFIX)] if _is_zarr(path) else path.stem


def _write_planes(
    path: Path,
    planes: Iterator[np.ndarray],
    shape: tuple[int, ...],
    dtype: Any,
    metadata: ImageMetadata | None = None,
) -> None:
    """Write 2D planes one by one to a compressed TIFF of ``shape``, atomically.

    Planes are separate grey pages (never read as RGB), and only one is in
    memory at a time. ``metadata`` (voxel size, units, origin) makes it an OME-TIFF.
    """
    import tifffile

    with atomic_write(path) as tmp:
        tifffile.imwrite(
            tmp,
            data=planes,
            shape=shape,
            dtype=dtype,
            compression="zlib",
            photometric="minisblack",
            **tiff_metadata(metadata, shape),
        )


def run(args: argparse.Namespace) -> int:
    """Validate every input first, then segment and write; returns the exit code."""
    from napari_unet.prediction import predict_events, resolve_model

    args.model = trusted_model(args.model, args.trust_package_code)
    check_output(args.out, "folder", "--out")
    config = prediction_config(args)
    model = resolve_model(args.model, config.device)
    sources = collect_inputs(args.inputs)
    stems = [_stem(path) for path in sources]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise DataError(
            f"several inputs are named {repeated[:5]}; their outputs would overwrite each "
            "other. Segment them into different --out folders."
        )
    record = run_record("predict", model, config, channel_axis=args.channel_axis)
    check_run_record(args.out, record, args.overwrite, "--out")
    # Check every input before writing anything: a bad file in a batch leaves no output.
    settings = {}
    for path in sources:
        check_input(path, model.config.in_channels, model.config.out_channels, args)
        settings[path] = file_settings(path, config, args, model.config)
    write_run_record(args.out, record)
    for path, stem in zip(sources, stems):
        if wants_zarr(args):
            _segment_to_zarr(path, stem, config, args)
            continue
        image = open_input(path)
        labels_path = args.out / f"{stem}_labels.tif"
        if isinstance(image, np.ndarray):
            file_config, axes = settings[path]
            axes = axes if axes is not None and len(axes) == image.ndim else None
            events = predict_events(
                image, model, file_config, channel_axis=args.channel_axis, axes=axes
            )
            result = run_with_progress_bar(events, args.quiet, unit="tile", desc=path.name)
            _write_stack(labels_path, result.labels, _voxels(path, result.labels.ndim))
            if config.return_probabilities:
                _write_stack(args.out / f"{stem}_probabilities.tif", result.probabilities)
        else:
            _segment_lazy(path, stem, config, args)
        print(f"{path} -> {labels_path}")
    return 0


def file_settings(
    path: Path,
    config: PredictConfig,
    args: argparse.Namespace,
    model_config: ModelConfig | None = None,
) -> tuple[PredictConfig, str | None]:
    """The settings and axes of one input, checked: ``config`` with the file's anisotropy
    when ``--anisotropy`` is not given, and the file's axes (a ``T`` makes it a time
    series, segmented plane by plane).

    Raises
    ------
    ConfigError
        If ``--stack volume`` is asked for a time series, or for a Zarr store or
        block-wise run (segmented plane by plane), or the file's voxel size gives no
        valid anisotropy; if a 3D ``model_config`` is given a Zarr store, a block-wise
        run or ``--stack planes``.
    DataError
        If a 3D ``model_config`` is given a 2D image or a time series.
    """
    from napari_unet.layout import find_layout
    from napari_unet.native3d import BLOCKWISE_3D_ERROR, check_model_input
    from napari_unet.prediction import stack_mode

    lazy = wants_zarr(args) or _is_zarr(path)
    volumes = model_config is not None and model_config.ndim == 3
    if volumes and lazy:
        raise ConfigError(f"{str(path)!r}: {BLOCKWISE_3D_ERROR}")
    if lazy and config.stack == "volume":
        raise ConfigError(
            f"{str(path)!r}: block-wise prediction (Zarr, --zarr, --scheduler, --workers) "
            "segments plane by plane; use --stack planes, or a TIFF for 3D objects."
        )
    metadata = image_metadata(path)
    shape = image_header(path)[0] if not lazy else ()
    axes = metadata.axes if args.channel_axis is None else None
    if axes is None or len(axes) != len(shape):
        axes = None  # what the reader keeps no longer matches the file's axes
    if config.anisotropy is None and (anisotropy := anisotropy_from(metadata)) is not None:
        try:
            config = config.replace(anisotropy=anisotropy)
        except ConfigError as error:
            raise ConfigError(
                f"{str(path)!r}: its voxel size gives no valid anisotropy ({error}); "
                "give --anisotropy."
            ) from error
    if volumes:
        try:
            header = image_header(path)[0]
            check_model_input(model_config, header, config.stack, None, args.channel_axis, axes)
        except (ConfigError, DataError) as error:
            raise type(error)(f"{str(path)!r}: {error}") from error
    if axes is not None:  # a time series is known from the file's axes only
        # Channels were checked on the image as read (alpha dropped) by check_input.
        stack_mode(find_layout(shape, None, None, None, axes=axes), config.stack)
    return config, axes


def _write_stack(path: Path, array: Any, metadata: ImageMetadata | None = None) -> None:
    """Write a numpy or Zarr array plane by plane to a TIFF (one plane in memory)."""
    planes = (array[index] for index in np.ndindex(*array.shape[:-2]))
    _write_planes(path, planes, array.shape, array.dtype, metadata)


def _voxels(path: Path, labels_ndim: int) -> ImageMetadata | None:
    """The input's voxel size, units and origin for its labels of ``labels_ndim`` axes."""
    return labels_metadata(image_metadata(path), labels_ndim)


def _segment_lazy(path: Path, stem: str, config: Any, args: argparse.Namespace) -> None:
    """Segment a Zarr stack block by block into label (and probability) TIFFs.

    The stack goes through :func:`napari_unet.blockwise.segment_to_zarr_events` into a
    scratch folder in ``--out`` (removed however the run ends), then plane by plane into
    the TIFFs: labels numbered as for an image in memory, one plane in memory at a time.
    """
    import tempfile

    import zarr

    from napari_unet.blockwise import segment_to_zarr_events

    with tempfile.TemporaryDirectory(dir=args.out, prefix=".scratch-") as scratch:
        probabilities = Path(scratch) / "probabilities.zarr"
        events = segment_to_zarr_events(
            path,
            Path(scratch) / "labels.zarr",
            args.model,
            config,
            block=args.block,
            halo=args.halo,
            ome=False,
            channel_axis=args.channel_axis,
            probabilities_out=probabilities if config.return_probabilities else None,
        )
        result = run_with_progress_bar(events, args.quiet, unit="task", desc=path.name)
        labels = zarr.open_array(str(result.path), mode="r")
        _write_stack(args.out / f"{stem}_labels.tif", labels, _voxels(path, labels.ndim))
        if config.return_probabilities:
            _write_stack(
                args.out / f"{stem}_probabilities.tif",
                zarr.open_array(str(probabilities), mode="r"),
            )


def _segment_to_zarr(path: Path, stem: str, config: Any, args: argparse.Namespace) -> None:
    """Segment one input block by block into ``OUT/<stem>_labels.zarr`` (OME-Zarr)."""
    from napari_unet.blockwise import segment_to_zarr_events

    lazy = _is_zarr(path) or path.suffix.lower() in (".tif", ".tiff")
    events = segment_to_zarr_events(
        path if lazy else read_image(path),
        args.out / f"{stem}_labels.zarr",
        args.model,
        config,
        block=args.block,
        halo=args.halo,
        scheduler_name=args.scheduler,
        workers=args.workers,
        name=f"{stem}_labels",
        channel_axis=args.channel_axis,
        probabilities_out=(
            args.out / f"{stem}_probabilities.zarr" if config.return_probabilities else None
        ),
    )
    result = run_with_progress_bar(events, args.quiet, unit="task", desc=path.name)
    print(
        f"{path} -> {result.path} ({result.n_objects} objects, {result.n_blocks} blocks, "
        f"{result.elapsed_s:.1f}s)"
    )
