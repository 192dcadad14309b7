"""napari reader: image files, label files and training-set folders.

What opens, and as what:

* **A training folder** holding ``images/`` and ``labels/`` (or ``masks/``) with
  files matched by stem, as written by the napari-unet writer and read by
  ``napari-unet train --images --labels``, or **a DSB 2018 folder**
  (``<id>/images/<id>.png`` + ``<id>/masks/*.png``, each sample's masks merged into
  instance labels), or one such ``<id>`` sample folder. Its pairs open as few layers
  as napari can show at once (each layer costs napari about a second to add):

  - pairs of 2D planes of one shape (and dtype): one Image stack named after the
    folder and one Labels stack ``"<folder> labels"``, a plane per pair;
  - planes of several shapes: one such stack per shape, named ``"<folder> HxW"``,
    and a pair alone in its shape as two layers named by its file stem (cut to
    :data:`SHORT_NAME` characters: DSB stems are 64-character hashes);
  - only the first stack or pair is visible; the others are listed, hidden;
  - images are read when napari shows them (dask arrays; only their headers and the
    first file of each shape are read on opening), labels at once (the brush paints
    numpy arrays): the DSB 2018 ``val`` folder (106 pairs) opens in seconds.

  A stack's layer metadata lists its planes' file stems under ``"files"``.
* **A TIFF, PNG or JPEG file** (or a list of them): an Image layer, or a Labels
  layer when the file is a label image. The rule, in order:

  1. a TIFF written by the napari-unet Labels writer carries a marker in its
     metadata and always opens as Labels;
  2. otherwise a file opens as Labels when its pixels are integers or booleans
     (no colour or channel axis, not float) **and** a name says so: the file name contains one
     of the words ``label(s)``, ``mask(s)``, ``seg``, ``segmentation``,
     ``annotation(s)``, ``gt``, ``ground_truth``, ``instances`` (names are split
     into words on any character that is not a letter or digit; case-insensitive),
     e.g. ``cells_labels.tif``, ``nuclei-mask.png``; or the parent folder's name
     ends with one of them, e.g. ``labels/cells.png``, ``train_masks/cells.tif``;
  3. everything else opens as an Image layer, laid out by :mod:`napari_unet.layout`:
     RGB/RGBA as colour, a grey+alpha file as grey (:func:`napari_unet.io.read_image`
     drops the alpha), and other channels, such as a 2-channel TIFF ``(H, W, 2)``,
     as one layer with the channels first, ``(2, H, W)``.

  Pixel values alone cannot tell a 16-bit microscope image from a label image,
  so the rule asks the name or the marker to say so, and the dtype to agree.

``get_reader`` returns ``None`` for anything else (other suffixes, folders
without pairs, unreadable headers) and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet import io
from napari_unet.errors import DataError
from napari_unet.layout import Layout, find_layout
from napari_unet.metadata import ImageMetadata, image_metadata, tiff_notes

PathOrPaths = str | Sequence[str]
LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[PathOrPaths], list[LayerData]]

#: Words in a file or folder name that mark an integer image as labels.
LABEL_WORDS = frozenset(
    {
        "label",
        "labels",
        "mask",
        "masks",
        "seg",
        "segmentation",
        "annotation",
        "annotations",
        "gt",
        "ground",  # "ground_truth" splits into "ground" + "truth"
        "truth",
        "instances",
    }
)
#: Key written into the TIFF metadata of files saved by the Labels writer.
LABELS_MARKER = "napari_unet_layer_type"
#: Sub-folder names that hold the label files of a training folder, in order of preference.
LABEL_FOLDERS = ("labels", "masks")
#: Longest layer name taken from a file stem; longer stems are cut (hashes are unique early).
SHORT_NAME = 12


def get_reader(path: PathOrPaths) -> ReaderFunction | None:
    """Return a reader function for ``path`` if napari-unet can open it, else None.

    Parameters
    ----------
    path : str or list of str
        A file, a folder, or a list of files.

    Returns
    -------
    callable or None
        ``read(path) -> list of (data, metadata, layer_type)``; None when the
        path is not something this plugin reads. Never raises.
    """
    try:
        if isinstance(path, (list, tuple)):
            paths = [Path(p) for p in path]
            if paths and all(io.is_image_file(p) for p in paths):
                return read_files
            return None
        target = Path(path)
        if target.is_dir():
            if _training_folder_pairs(target) or _dsb_samples(target):
                return read_folder
            return None
        if io.is_image_file(target):
            return read_files
    except (OSError, ValueError):
        # A permission error or an odd path: not ours to open.
        return None
    return None


def read_files(path: PathOrPaths) -> list[LayerData]:
    """Read one or more image/label files, one layer each (see the module rule)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [read_file(Path(p)) for p in paths]


def read_file(path: Path) -> LayerData:
    """Read one file as an Image or a Labels layer (see the module docstring).

    The layer gets the file's voxel size, units and origin (ImageJ or OME metadata) as
    its ``scale``, ``units`` and ``translate``, and its metadata axes as ``axis_labels``.
    """
    data = io.read_image(path)
    name = path.stem
    metadata = _file_metadata(path, data)
    if is_label_file(path, data, metadata.axes):
        return data, {"name": name, **_placement(metadata)}, "labels"
    return _image_layer(name, data, metadata)


def read_folder(path: PathOrPaths) -> list[LayerData]:
    """Read a training folder or a DSB folder as Image + Labels stacks or pairs (module rule)."""
    folder = Path(path if isinstance(path, (str, Path)) else path[0])
    pairs: list[tuple[str, LayerData, np.ndarray]] = []
    training_pairs = _training_folder_pairs(folder)
    if training_pairs:
        images = _lazy_images([image_path for image_path, _ in training_pairs])
        for (image_path, labels_path), data in zip(training_pairs, images, strict=True):
            image = _image_layer(image_path.stem, data)
            labels = _as_label_array(io.read_image(labels_path), labels_path)
            pairs.append((image_path.stem, image, labels))
    else:
        for sample in _dsb_samples(folder):
            image, labels = io.read_dsb_sample(sample)
            pairs.append((sample.name, _image_layer(sample.name, image), labels))
    return _stacked_layers(folder.name, pairs)


def _lazy_images(paths: Sequence[Path]) -> list[Any]:
    """The images of ``paths``, each read only when napari shows it (dask).

    Only headers are read now, and the first file of each header whole: files declaring
    the same shape and dtype read alike (:func:`_read_as` checks it on reading). The
    labels stay numpy arrays, which the brush paints.
    """
    import dask
    import dask.array as da

    known: dict[tuple[str, Any], tuple[tuple[int, ...], np.dtype]] = {}
    arrays: list[Any] = []
    for path in paths:
        header = (path.suffix.lower(), io.image_header(path))
        if header not in known:
            first = io.read_image(path)
            known[header] = first.shape, first.dtype
            arrays.append(first)
            continue
        shape, dtype = known[header]
        arrays.append(da.from_delayed(dask.delayed(_read_as)(path, shape, dtype), shape, dtype))
    return arrays


def _read_as(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The image of ``path``, which must still have ``shape`` and ``dtype``."""
    image = io.read_image(path)
    if image.shape != shape or image.dtype != dtype:
        raise DataError(
            f"{str(path)!r} is now {image.shape} {image.dtype}, not {shape} {dtype} as when "
            "its folder was opened; open the folder again."
        )
    return image


def _stack(planes: Sequence[Any]) -> Any:
    """``planes`` as one stack: lazy (dask) when any plane is."""
    if any(io.is_lazy(plane) for plane in planes):
        import dask.array as da

        return da.stack(planes)
    return np.stack(planes)


def _stacked_layers(
    folder_name: str, pairs: list[tuple[str, LayerData, np.ndarray]]
) -> list[LayerData]:
    """The pairs as stacks of same-shaped planes, else as pairs; the first one visible."""
    groups: dict[tuple[Any, ...], list[tuple[str, LayerData, np.ndarray]]] = {}
    for stem, image, labels in pairs:
        data, meta, _ = image
        single_plane = labels.ndim == 2 and len(pairs) > 1
        key = (data.shape, data.dtype.str, meta["rgb"], labels.dtype.str) if single_plane else stem
        groups.setdefault(key, []).append((stem, image, labels))
    layers: list[LayerData] = []
    for members in groups.values():
        visible = not layers
        if len(members) == 1:
            stem, (data, meta, _), labels = members[0]
            name = stem[:SHORT_NAME]
            layers.append((data, {**meta, "name": name, "visible": visible}, "image"))
            layers.append((labels, {"name": f"{name} labels", "visible": visible}, "labels"))
            continue
        height, width = members[0][2].shape
        name = folder_name if len(groups) == 1 else f"{folder_name} {height}x{width}"
        image_meta = {
            "name": name,
            "rgb": members[0][1][1]["rgb"],
            "visible": visible,
            "metadata": {"files": [stem for stem, _, _ in members]},
        }
        layers.append((_stack([image[0] for _, image, _ in members]), image_meta, "image"))
        labels_meta = {**image_meta, "name": f"{name} labels"}
        del labels_meta["rgb"]
        layers.append((np.stack([labels for _, _, labels in members]), labels_meta, "labels"))
    return layers


def is_label_file(path: Path, data: np.ndarray, axes: str | None = None) -> bool:
    """True if ``data`` read from ``path`` should open as a Labels layer (module rule).

    ``axes``: the file's metadata axes, if any (a ``C`` axis makes it an image).
    """
    if _has_labels_marker(path):
        return True
    integer = np.issubdtype(data.dtype, np.integer) or data.dtype == bool
    if not integer or _channel_axis(data, axes) is not None:
        return False
    folder_words = _words(path.parent.name)
    return bool(set(_words(path.stem)) & LABEL_WORDS) or (
        bool(folder_words) and folder_words[-1] in LABEL_WORDS
    )


def _words(name: str) -> list[str]:
    return [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]


def _layout(data: np.ndarray, axes: str | None = None) -> Layout | None:
    """The layout of a file's pixels; None for what is no image (napari shows it as is).

    ``axes`` (the file's metadata axes) say which axis is channel, Z or T; metadata that
    contradicts the shape is ignored, and the shape decides.
    """
    if data.dtype == bool:  # masks: a last axis of 2-4 is never colour or channels
        return None
    for known in (axes, None) if axes is not None else (None,):
        try:
            return find_layout(data.shape, axes=known)
        except DataError:
            continue
    return None


def _channel_axis(data: np.ndarray, axes: str | None = None) -> int | None:
    layout = _layout(data, axes)
    return None if layout is None else layout.channel_axis


def _file_metadata(path: Path, data: np.ndarray) -> ImageMetadata:
    """The file's metadata for the array read from it (alpha dropped: its axis too)."""
    metadata = image_metadata(path)
    if metadata.axes is not None and len(metadata.axes) == data.ndim + 1:
        metadata = metadata.without_axis(-1)  # io.read_image dropped grey+alpha's alpha
    if metadata.axes is not None and len(metadata.axes) != data.ndim:
        return ImageMetadata()
    return metadata


def _placement(metadata: ImageMetadata) -> dict[str, Any]:
    """Layer keyword arguments that place the data: scale, translate, units, axis labels."""
    placement: dict[str, Any] = {}
    if metadata.scale is not None:
        placement["scale"] = metadata.scale
    if metadata.translate is not None:
        placement["translate"] = metadata.translate
    if metadata.units is not None and any(metadata.units):
        placement["units"] = tuple(unit or "pixel" for unit in metadata.units)
    if metadata.axes is not None and len(set(metadata.axes)) == len(metadata.axes):
        placement["axis_labels"] = tuple(metadata.axes.lower())
    return placement


def _image_layer(name: str, data: np.ndarray, metadata: ImageMetadata | None = None) -> LayerData:
    """An Image layer: RGB(A) as colour, other channels first (one plane per channel).

    napari shows a last axis of channels as a stack of 2-pixel-wide planes, so the
    channels of a ``(H, W, 2)`` image become its first axis, ``(2, H, W)``. ``metadata``
    (one entry per axis of ``data``) places the layer; a colour axis has no place.
    """
    metadata = metadata or ImageMetadata()
    layout = _layout(data, metadata.axes)
    rgb = layout is not None and layout.rgb
    if layout is not None and layout.channel_axis is not None:
        if rgb:
            metadata = metadata.without_axis(layout.channel_axis)
        else:
            data = np.moveaxis(data, layout.channel_axis, 0)
            metadata = metadata.moved_to_front(layout.channel_axis)
    return data, {"name": name, "rgb": rgb, **_placement(metadata)}, "image"


def _has_labels_marker(path: Path) -> bool:
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    return tiff_notes(path).get(LABELS_MARKER) == "labels"


def _as_label_array(labels: np.ndarray, path: Path) -> np.ndarray:
    """Labels as an integer array: RGB masks keep their first channel, bool becomes uint8."""
    if labels.ndim == 3 and labels.shape[-1] in (3, 4):
        labels = labels[..., 0]
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{str(path)!r} holds {labels.dtype} values; label images must be integers."
        )
    return labels


def _training_folder_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Matched (image, labels) files of an ``images/`` + ``labels/`` folder, else []."""
    images_dir = folder / "images"
    if not images_dir.is_dir():
        return []
    for name in LABEL_FOLDERS:
        labels_dir = folder / name
        if labels_dir.is_dir() and io.list_images(labels_dir):
            try:
                return io.find_pairs(images_dir, labels_dir)
            except DataError:
                return []
    return []


def _dsb_samples(folder: Path) -> list[Path]:
    """DSB sample folders under ``folder``, or ``[folder]`` if it is one sample; else []."""
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return [folder]
    if not io.is_dsb_folder(folder):
        return []
    return [
        sample
        for sample in io.find_dsb_samples(folder)
        if (sample / "masks").is_dir() and len(io.list_images(sample / "images")) == 1
    ]
