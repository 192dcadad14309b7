"""Image and label files: reading, atomic writing, and finding training pairs.

Everything written here goes to a temporary file in the destination folder first
and is renamed into place only when complete, so an interrupted or failed write
never leaves a truncated file and never replaces a good one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import DataError
from napari_unet.layout import without_alpha

#: File suffixes read as 2D images (or stacks, for TIFF).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff")
#: The DSB 2018 sample images shipped in the package (``images/`` + ``labels/``, CC0).
SAMPLES_DIR = Path(__file__).parent / "samples" / "dsb2018"


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent
    )
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file owner-only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_image_file(path: str | Path) -> bool:
    """True for a file whose suffix is one this package reads."""
    path = Path(path)
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF (any rank), PNG or JPEG file into a numpy array.

    Grey+alpha pixels (a PNG of two channels, a TIFF with an alpha extra sample) lose
    their alpha and read as grey; RGBA keeps it.

    Raises
    ------
    DataError
        If the file is missing, of an unsupported type, or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{str(path)!r} is not a supported image ({', '.join(IMAGE_SUFFIXES)}); "
            "convert it to TIFF or PNG."
        )
    try:
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                image = tif.asarray()
                alpha = _tiff_grey_alpha(tif)
        else:
            import imageio.v3 as iio

            image = np.asarray(iio.imread(path))
            # PNG's only two-channel colour type is grey+alpha (JPEG has none).
            alpha = suffix == ".png" and image.ndim == 3 and image.shape[-1] == 2
    except Exception as error:
        raise DataError(f"could not read {str(path)!r}: {error}; is the file corrupt?") from error
    # Grey+alpha reads as grey everywhere: alpha holds no intensity and napari cannot show
    # it (RGBA is kept, napari shows it; the layout drops alpha before the network).
    return without_alpha(image) if alpha else image


def _tiff_grey_alpha(tif: Any) -> bool:
    """True for a TIFF of grey+alpha pixels (two samples, the second one alpha)."""
    page = tif.pages[0]
    return bool(
        page.samplesperpixel == 2
        and page.extrasamples
        and page.extrasamples[-1] in (1, 2)  # associated or unassociated alpha
    )


def write_tiff(path: str | Path, data: np.ndarray, rgb: bool = False) -> Path:
    """Write ``data`` to a zlib-compressed TIFF atomically, keeping its dtype and shape.

    ``rgb`` marks a last axis of 3/4 as colour. Otherwise every axis is a plane axis:
    without this, tifffile would store a 3-plane stack ``(3, H, W)`` as one RGB image.
    """
    import tifffile

    path = Path(path)
    with atomic_write(path) as tmp:
        tifffile.imwrite(
            tmp, np.asarray(data), compression="zlib", photometric="rgb" if rgb else "minisblack"
        )
    return path


def write_png(path: str | Path, data: np.ndarray, bit_depth: int | None = None) -> Path:
    """Write a 2D (or RGB/RGBA) uint8/uint16 array to PNG atomically.

    ``bit_depth`` 8 or 16 fixes the sample size; by default it is 8 when the values
    fit, else 16.

    Raises
    ------
    DataError
        If the values do not fit PNG's 8/16-bit unsigned range.
    """
    import imageio.v3 as iio

    data = np.asarray(data)
    if data.size and (data.min() < 0 or data.max() > np.iinfo(np.uint16).max):
        raise DataError(
            f"values from {data.min()} to {data.max()} do not fit a 16-bit PNG; save as TIFF."
        )
    if bit_depth is None:
        bit_depth = 8 if data.size == 0 or data.max() <= 255 else 16
    out_dtype = np.uint8 if bit_depth == 8 else np.uint16
    path = Path(path)
    with atomic_write(path) as tmp:
        iio.imwrite(tmp, data.astype(out_dtype), extension=".png")
    return path


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write an integer label image to ``.tif``/``.tiff`` (any count) or ``.png`` (< 65,536 labels).

    A PNG is always 16-bit, so that labels read back as labels (uint16), not as an
    8-bit image, whatever their count.

    Raises
    ------
    DataError
        If ``labels`` is not an integer array or does not fit the chosen format.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got {labels.dtype}; round or cast them first.")
    suffix = Path(path).suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        return write_tiff(path, labels)
    if suffix == ".png":
        return write_png(path, labels, bit_depth=16)
    raise DataError(f"cannot write labels to {suffix!r}; use .tif or .png.")


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{str(folder)!r} is not a folder; check the path.")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _by_stem(files: list[Path]) -> dict[str, Path]:
    """Files keyed by stem; two files with one stem (``a.png``, ``a.tif``) are refused."""
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise DataError(
                f"{by_stem[path.stem].name!r} and {path.name!r} in {str(path.parent)!r} share a "
                "name; keep one file per image."
            )
        by_stem[path.stem] = path
    return by_stem


def find_pairs(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """Match images to labels by file stem (``a.png`` <-> ``a.tif`` is a pair).

    Raises
    ------
    DataError
        If a folder is missing or empty, or an image has no label file (or vice versa).
    """
    images = _by_stem(list_images(images_dir))
    labels = _by_stem(list_images(labels_dir))
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {str(images_dir)!r}.")
    missing_labels = sorted(set(images) - set(labels))
    missing_images = sorted(set(labels) - set(images))
    if missing_labels or missing_images:
        raise DataError(
            "image and label file names must match by stem; "
            + (f"no labels for {missing_labels[:5]} " if missing_labels else "")
            + (f"no images for {missing_images[:5]} " if missing_images else "")
            + f"(in {str(images_dir)!r} / {str(labels_dir)!r})."
        )
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def is_dsb_folder(folder: str | Path) -> bool:
    """True if ``folder`` has the DSB 2018 layout (``<id>/images/<id>.png``, ``<id>/masks/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return any(
        (sample / "images").is_dir() and (sample / "masks").is_dir()
        for sample in folder.iterdir()
        if sample.is_dir()
    )


def read_dsb_sample(sample_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one DSB sample folder: its image and its masks merged into instance labels.

    Overlapping mask pixels keep the later mask's label.
    """
    sample_dir = Path(sample_dir)
    image_files = list_images(sample_dir / "images")
    if len(image_files) != 1:
        raise DataError(
            f"{str(sample_dir / 'images')!r} must hold exactly one image, found {len(image_files)}."
        )
    image = read_image(image_files[0])
    mask_files = list_images(sample_dir / "masks") if (sample_dir / "masks").is_dir() else []
    dtype = np.uint16 if len(mask_files) <= np.iinfo(np.uint16).max else np.uint32
    labels = np.zeros(image.shape[:2], dtype=dtype)
    for index, mask_file in enumerate(mask_files, start=1):
        mask = read_image(mask_file)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != labels.shape:
            raise DataError(
                f"mask {str(mask_file)!r} has shape {mask.shape}, the image {labels.shape}; "
                "masks must match their image."
            )
        labels[mask > 0] = index
    return image, labels


def find_dsb_samples(folder: str | Path) -> list[Path]:
    """Sorted DSB sample folders (those with ``images/`` inside) under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{str(folder)!r} is not a folder; check the path.")
    samples = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "images").is_dir())
    if not samples:
        raise DataError(
            f"no DSB samples (<id>/images/<id>.png + <id>/masks/*.png) found in {str(folder)!r}."
        )
    return samples
