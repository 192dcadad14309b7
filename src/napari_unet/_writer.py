"""napari writers: Labels layers to TIFF/PNG, Image + Labels pairs to a training folder.

Every file is written through :func:`napari_unet.io.atomic_write`, so a failed or
interrupted save never leaves a truncated file nor replaces a good one. A refusal
(a 3D layer as PNG, float labels, unpaired layers) is raised as
:class:`~napari_unet.errors.SaveError`, which napari passes on to the user with its
message (it hides a writer's ``ValueError`` behind a generic warning).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from napari_unet import io
from napari_unet._pairs import match_pairs, spatial_shape
from napari_unet._reader import LABELS_MARKER
from napari_unet.errors import DataError, SaveError
from napari_unet.metadata import ImageMetadata, labels_axes, tiff_metadata, unit_name

LayerData = tuple[Any, dict[str, Any], str]
Writer = TypeVar("Writer", bound=Callable[..., list[str]])


def _refusals_reach_the_user(writer: Writer) -> Writer:
    """Raise the writer's DataError as a SaveError (with the same message) for napari."""

    @functools.wraps(writer)
    def write(*args: Any, **kwargs: Any) -> list[str]:
        try:
            return writer(*args, **kwargs)
        except DataError as error:
            raise SaveError(str(error)) from error

    return write  # type: ignore[return-value]


@_refusals_reach_the_user
def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to ``.tif``/``.tiff`` (dtype kept) or ``.png``.

    TIFFs are zlib-compressed and carry a marker that makes the napari-unet
    reader open them as Labels again, whatever their name. PNG holds one 2D
    plane with values from 0 to 65,535, always 16-bit (it reopens as uint16 labels).

    Raises
    ------
    SaveError
        If the labels are not integers, or do not fit a PNG (save as TIFF then).
    """
    labels = np.asarray(data)
    target = Path(path)
    if target.suffix.lower() == ".png":
        if labels.ndim != 2:
            raise DataError(
                f"a PNG holds one 2D plane, the labels have shape {labels.shape}; save as .tif."
            )
        return [str(io.write_labels(target, labels))]
    return [str(write_labels_tiff(target, labels, layer_metadata(meta, labels.ndim)))]


def layer_metadata(meta: dict[str, Any], ndim: int) -> ImageMetadata:
    """A layer's ``scale``, ``translate`` and ``units`` as file metadata.

    The axes are the layer's ``axis_labels`` when they are axis letters (``z, y, x``),
    else ``..., Z, Y, X`` (a 3D layer whose first unit is a time: ``T, Y, X``).
    """
    units = meta.get("units")
    unit_names = None if units is None else tuple(unit_name(str(unit)) for unit in units)
    labels = "".join(str(label) for label in meta.get("axis_labels") or ()).upper()
    if len(labels) != ndim or not set(labels) <= set("TCZYX") or len(set(labels)) != ndim:
        labels = labels_axes(ndim, unit_names)
    scale, translate = meta.get("scale"), meta.get("translate")
    return ImageMetadata(
        labels,
        None if scale is None else tuple(float(step) for step in scale),
        unit_names,
        None if translate is None else tuple(float(origin) for origin in translate),
    )


def write_labels_tiff(
    path: str | Path, labels: np.ndarray, metadata: ImageMetadata | None = None
) -> Path:
    """Write integer ``labels`` to a compressed TIFF that reopens as a Labels layer.

    ``metadata`` (the layer's voxel size, units and origin) makes it an OME-TIFF that
    keeps them (see :func:`napari_unet.metadata.tiff_metadata`).
    """
    import tifffile

    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got {labels.dtype}; round or cast them.")
    path = Path(path)
    with io.atomic_write(path) as tmp:
        tifffile.imwrite(
            tmp,
            labels,
            compression="zlib",
            photometric="minisblack",
            **tiff_metadata(metadata, labels.shape, notes={LABELS_MARKER: "labels"}),
        )
    return path


@_refusals_reach_the_user
def write_training_folder(path: str, layer_data: Sequence[LayerData]) -> list[str]:
    """Write Image + Labels layer pairs to ``path/images/*.tif`` + ``path/labels/*.tif``.

    Pairs are matched by shape and name (see :mod:`napari_unet._pairs`); each pair
    is saved under the image layer's name, so ``napari-unet train --images
    path/images --labels path/labels`` and the napari-unet reader read the folder
    back. Files of the same name already in the folder are replaced (this is how
    corrected labels are re-exported).

    Raises
    ------
    SaveError
        If a layer has no partner of the same shape, or the path names a file.
    """
    folder = Path(path)
    if folder.suffix.lower() in io.IMAGE_SUFFIXES or folder.is_file():
        raise DataError(
            f"{str(folder)!r} looks like a file; a training set is saved to a folder name."
        )
    images = [(d, m) for d, m, kind in layer_data if kind == "image"]
    labels = [(d, m) for d, m, kind in layer_data if kind == "labels"]
    pairs = match_pairs(
        [(m["name"], spatial_shape(np.shape(d), bool(m.get("rgb")))) for d, m in images],
        [(m["name"], tuple(np.shape(d))) for d, m in labels],
    )
    unpaired = [m["name"] for i, (_, m) in enumerate(images) if i not in {p[0] for p in pairs}]
    unpaired += [m["name"] for j, (_, m) in enumerate(labels) if j not in {p[1] for p in pairs}]
    if not pairs or unpaired:
        raise DataError(
            "every Image layer needs a Labels layer of the same shape to save a training set; "
            f"unpaired: {unpaired or 'all layers'}."
        )
    written: list[str] = []
    stems: set[str] = set()
    for i, j in pairs:
        image, image_meta = np.asarray(images[i][0]), images[i][1]
        stem = _unique(_safe_stem(image_meta["name"]), stems)
        rgb = bool(image_meta.get("rgb"))
        written.append(
            str(
                io.write_tiff(
                    folder / "images" / f"{stem}.tif",
                    image,
                    rgb,
                    _image_metadata(image_meta, image),
                )
            )
        )
        label_data, label_meta = np.asarray(labels[j][0]), labels[j][1]
        written.append(
            str(
                write_labels_tiff(
                    folder / "labels" / f"{stem}.tif",
                    label_data,
                    layer_metadata(label_meta, label_data.ndim),
                )
            )
        )
    return written


def _image_metadata(meta: dict[str, Any], image: np.ndarray) -> ImageMetadata:
    """An Image layer's placement as file metadata; a colour axis (no place) gets step 1."""
    if not meta.get("rgb"):
        return layer_metadata(meta, image.ndim)
    plane = layer_metadata(meta, image.ndim - 1)
    return ImageMetadata(
        f"{plane.axes}S",
        None if plane.scale is None else (*plane.scale, 1.0),
        None if plane.units is None else (*plane.units, None),
        None if plane.translate is None else (*plane.translate, 0.0),
    )


def _safe_stem(name: str) -> str:
    """A file-name-safe version of a layer name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def _unique(stem: str, taken: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}"
    taken.add(candidate)
    return candidate
