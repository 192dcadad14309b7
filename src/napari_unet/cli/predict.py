"""``napari-unet predict``: segment images, folders and TIFF/Zarr stacks into label TIFFs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.cli._options import (
    add_prediction_arguments,
    prediction_config,
    run_with_progress_bar,
)
from napari_unet.errors import DataError
from napari_unet.io import IMAGE_SUFFIXES, atomic_write, list_images, read_image

HELP = "segment images, folders or TIFF/Zarr stacks with a model and write label TIFFs"

_ZARR_SUFFIX = ".zarr"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet predict``."""
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="image file (TIFF, PNG, JPEG), folder of images, or TIFF/Zarr stack",
    )
    parser.add_argument("--model", required=True, help="model file (*.pt) or 'default'")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for <name>_labels.tif (created)"
    )
    add_prediction_arguments(parser)
    parser.add_argument(
        "--labels-per-plane", action="store_true", help="number each plane of a stack from 1"
    )
    parser.add_argument(
        "--channel-axis", type=int, help="channel axis of multichannel images (RGB needs none)"
    )
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <name>_probabilities.tif (float32, channels first)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    from napari_unet.distributed import add_scale_arguments

    add_scale_arguments(parser)  # --scheduler/--workers/--zarr/--block/--halo (scaling out)


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
    """A Zarr store as a lazy dask array; any other image read into memory.

    Raises
    ------
    DataError
        If the file or store cannot be read.
    """
    if not _is_zarr(path):
        return read_image(path)
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise DataError(f"could not open the Zarr store {str(path)!r}: {error}") from error
    if not isinstance(node, zarr.Array):
        # An OME-Zarr group keeps its full-resolution array under "0".
        if "0" not in node:
            raise DataError(f"{str(path)!r} is a Zarr group without an array '0'; give the array.")
        node = node["0"]
    return da.from_zarr(node)


def _stem(path: Path) -> str:
    return path.name[: -len(_ZARR_SUFFIX)] if _is_zarr(path) else path.stem


def _write_planes(
    path: Path, planes: Iterator[np.ndarray], shape: tuple[int, ...], dtype: Any
) -> None:
    """Write 2D planes one by one to a compressed TIFF of ``shape``, atomically.

    Planes are separate grey pages (never read as RGB), and only one is in
    memory at a time.
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
        )


def run(args: argparse.Namespace) -> int:
    """Validate every input first, then segment and write; returns the exit code."""
    from napari_unet.distributed import run_cli, wants_scale

    if wants_scale(args):
        return run_cli(args)  # block-wise Zarr output on a dask scheduler

    from napari_unet.layout import labels_shape
    from napari_unet.prediction import predict_events, resolve_model

    config = prediction_config(
        args,
        labels_per_plane=args.labels_per_plane,
        return_probabilities=args.save_probabilities,
    )
    model = resolve_model(args.model, config.device)
    sources = collect_inputs(args.inputs)
    stems = [_stem(path) for path in sources]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise DataError(
            f"several inputs are named {repeated[:5]}; their outputs would overwrite each "
            "other. Segment them into different --out folders."
        )
    # Check every input before writing anything: a bad file in a batch leaves no output.
    for path in sources:
        image = open_input(path)
        labels_shape(image.shape, model.config.in_channels, None, args.channel_axis)
        del image

    args.out.mkdir(parents=True, exist_ok=True)
    for path, stem in zip(sources, stems):
        image = open_input(path)
        labels_path = args.out / f"{stem}_labels.tif"
        probabilities_path = args.out / f"{stem}_probabilities.tif"
        if isinstance(image, np.ndarray):
            events = predict_events(image, model, config, channel_axis=args.channel_axis)
            result = run_with_progress_bar(events, args.quiet, unit="tile", desc=path.name)
            labels = result.labels
            planes = labels.reshape((-1, *labels.shape[-2:]))
            _write_planes(labels_path, iter(planes), labels.shape, labels.dtype)
            if config.return_probabilities:
                probabilities = result.probabilities
                planes = probabilities.reshape((-1, *probabilities.shape[-2:]))
                _write_planes(probabilities_path, iter(planes), probabilities.shape, np.float32)
        else:
            _segment_lazy(image, model, config, args, labels_path, probabilities_path, path.name)
        print(f"{path} -> {labels_path}")
    return 0


def _segment_lazy(
    image: Any,
    model: Any,
    config: Any,
    args: argparse.Namespace,
    labels_path: Path,
    probabilities_path: Path,
    name: str,
) -> None:
    """Segment a dask stack plane by plane, streaming its labels to the TIFF.

    Objects are numbered per plane lazily and offset here while streaming, so the
    labels are sequential over the stack while one plane at a time is in memory.
    Probabilities, stored channel first, go through a disk-backed scratch array.
    """
    import dataclasses
    import tempfile

    import dask
    from tqdm import tqdm

    from napari_unet.prediction import predict

    per_plane = dataclasses.replace(config, labels_per_plane=True)
    result = predict(image, model, per_plane, channel_axis=args.channel_axis)
    labels, probabilities = result.labels, result.probabilities
    indices = list(np.ndindex(*labels.shape[:-2]))
    with tempfile.TemporaryDirectory(dir=args.out, prefix=".scratch-") as scratch:
        store = (
            np.lib.format.open_memmap(
                Path(scratch) / "probabilities.npy", "w+", np.float32, probabilities.shape
            )
            if probabilities is not None
            else None
        )

        def label_planes() -> Iterator[np.ndarray]:
            offset = 0
            for index in tqdm(
                indices, desc=name, unit="plane", disable=args.quiet, file=sys.stderr
            ):
                if store is None:
                    plane = labels[index].compute()
                else:
                    where = (slice(None), *index)
                    # One computation gives both: the probabilities are not predicted twice.
                    plane, plane_probabilities = dask.compute(labels[index], probabilities[where])
                    store[where] = plane_probabilities
                plane = plane.astype(np.uint32)
                if not config.labels_per_plane:
                    count = int(plane.max(initial=0))
                    plane[plane > 0] += np.uint32(offset)
                    offset += count
                yield plane

        _write_planes(labels_path, label_planes(), labels.shape, np.uint32)
        if store is not None:
            _write_planes(
                probabilities_path,
                iter(store.reshape((-1, *store.shape[-2:]))),
                store.shape,
                np.float32,
            )
            del store
