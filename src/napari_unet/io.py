"""Image and label files: reading, atomic writing, and finding training pairs.

Everything written here goes to a temporary file in the destination folder first
and is renamed into place only when complete, so an interrupted or failed write
never leaves a truncated file and never replaces a good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_unet.errors import DataError
from napari_unet.layout import without_alpha
from napari_unet.metadata import ImageMetadata, tiff_metadata

#: File suffixes read as 2D images (or stacks, for TIFF).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff")
#: The first bytes of each format read here, and the format each suffix promises.
_SIGNATURES = {
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
}
_SUFFIX_FORMATS = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
#: numpy dtypes of Pillow's image modes other than 8 bits per band.
_PIL_DTYPES = {"1": bool, "I": np.int32, "F": np.float32}
_PIL_DTYPES.update(dict.fromkeys(("I;16", "I;16B", "I;16L"), np.uint16))
#: Temporary files of :func:`atomic_write`: ``.<name>.<pid>-<random>.part<suffix>``.
_PART_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[^.]+\.part")
#: The record of the model and settings whose results a folder holds (see claim_output_folder).
RUN_RECORD = ".napari-unet-run.json"
#: The DSB 2018 sample images shipped in the package (``images/`` + ``labels/``, CC0).
SAMPLES_DIR = Path(__file__).parent / "samples" / "dsb2018"


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The process id in the name lets a later run remove the files of a killed one.
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}-", suffix=".part" + path.suffix, dir=path.parent
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


def check_output(path: str | Path, kind: Literal["file", "folder"], option: str) -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind``.

    A missing path is fine when its nearest existing folder is writable: the missing
    folders are created when the first file is written. Stray temporary files that a
    killed run left (see :func:`remove_stale_parts`) are removed.

    Parameters
    ----------
    path : str or Path
        The output file or folder.
    kind : {"file", "folder"}
        What ``path`` must be.
    option : str
        How the user gave the path (``"--out"``), for the messages.

    Raises
    ------
    DataError
        If ``path`` exists as the other kind or as a device, a parent is a file, or the
        folder it goes into is not writable.
    """
    path = Path(path)
    name = f"{option} {str(path)!r}"
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise DataError(f"{name} is a file, not a folder; give a folder (created if missing).")
        if kind == "file" and path.is_dir():
            raise DataError(f"{name} is a folder; give a file name inside it.")
        if kind == "file" and not path.is_file():
            raise DataError(f"{name} is not a regular file (a device or pipe); give a file path.")
        folder = path if kind == "folder" else path.parent
    else:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise DataError(f"{name} cannot be created: {str(folder)!r} is a file, not a folder.")
    try:
        # Only writing tells (root ignores permission bits; a read-only mount or /proc does not).
        handle, probe = tempfile.mkstemp(prefix=".napari-unet-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise DataError(
            f"{name} is not writable ({error.strerror or error} in {str(folder)!r}); choose "
            "another location."
        ) from error
    if kind == "folder":
        remove_stale_parts(path)
    else:
        remove_stale_parts(path.parent, path.name)
    return path


def remove_stale_parts(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files that killed runs left in ``folder``; return them.

    Only files of :func:`atomic_write` whose process has ended are removed (a running
    writer's file is kept); ``name`` limits this to the temporary files of one file.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for part in folder.glob(".*.part*"):
        match = _PART_NAME.match(part.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if part.is_file() and not _process_alive(int(match["pid"])):
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def check_run_record(
    folder: str | Path, record: dict[str, Any], overwrite: bool, option: str
) -> None:
    """Refuse a folder that holds results of another model or settings.

    A folder keeps the record (command, model, settings) of the run that wrote it in
    :data:`RUN_RECORD` (see :func:`write_run_record`). A run with the same record may
    add to it; one with another record is refused unless ``overwrite``, so that two
    runs never mix their outputs silently.

    Raises
    ------
    DataError
        If the folder's record differs from ``record`` and ``overwrite`` is False.
    """
    record_path = Path(folder) / RUN_RECORD
    if overwrite or not record_path.is_file():
        return
    try:
        previous = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    record = json.loads(json.dumps(record, default=str))  # as it reads back
    if previous != record:
        changed = sorted(
            key
            for key in set(record) | set(previous if isinstance(previous, dict) else {})
            if not isinstance(previous, dict) or previous.get(key) != record.get(key)
        )
        raise DataError(
            f"{option} {str(folder)!r} holds results of another run ({', '.join(changed)} "
            "differ); choose another folder or give --overwrite."
        )


def write_run_record(folder: str | Path, record: dict[str, Any]) -> Path:
    """Store ``record`` in ``folder`` (created if missing), for :func:`check_run_record`."""
    with atomic_write(Path(folder) / RUN_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str), encoding="utf-8")
    return Path(folder) / RUN_RECORD


def is_image_file(path: str | Path) -> bool:
    """True for a file whose suffix is one this package reads."""
    path = Path(path)
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF (any rank), PNG or JPEG file into a numpy array.

    The file's first bytes decide how it is read (a PNG named ``.tif`` still reads),
    and its declared size is compared with the free memory before any pixel is read.

    Grey+alpha pixels (a PNG of two channels, a TIFF with an alpha extra sample) lose
    their alpha and read as grey; RGBA keeps it.

    Raises
    ------
    DataError
        If the file is missing, not a regular file, empty, of an unsupported type,
        corrupt, or larger than the free memory.
    """
    path = Path(path)
    image_format = _image_format(path)
    shape, dtype = _declared(path, image_format)
    check_memory(
        int(np.prod(shape, dtype=np.float64)) * dtype.itemsize,
        f"{str(path)!r} (shape {shape}, {dtype})",
    )
    try:
        if image_format == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                image = tif.asarray()
                alpha = _tiff_grey_alpha(tif)
        else:
            import imageio.v3 as iio

            image = np.asarray(iio.imread(path))
            # PNG's only two-channel colour type is grey+alpha (JPEG has none).
            alpha = image_format == "PNG" and image.ndim == 3 and image.shape[-1] == 2
    except MemoryError as error:
        raise DataError(f"{str(path)!r} does not fit in the free memory; crop it.") from error
    except Exception as error:
        raise _unreadable(path, image_format, error) from error
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


def image_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an image file declares, read without its pixels.

    A PNG/JPEG's shape is ``(H, W)`` or ``(H, W, bands)`` as its header says (a
    palette image reads as colour). Raises :class:`DataError` like :func:`read_image`.
    """
    path = Path(path)
    return _declared(path, _image_format(path))


def _image_format(path: Path) -> str:
    """The format (TIFF, PNG, JPEG) of an image file, from its first bytes.

    Raises
    ------
    DataError
        For a missing path, a folder, a device or pipe (``/dev/zero`` never ends), an
        unsupported suffix, an empty file, or bytes of no format read here.
    """
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder, not an image file; give a file inside it.")
    if not path.exists():
        raise DataError(f"{str(path)!r} does not exist; check the path.")
    if not path.is_file():
        raise DataError(
            f"{str(path)!r} is not a regular file (a device, pipe or socket); give an image file."
        )
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{str(path)!r} is not a supported image ({', '.join(IMAGE_SUFFIXES)}); "
            "convert it to TIFF or PNG."
        )
    expected = _SUFFIX_FORMATS[suffix]
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        raise DataError(f"{str(path)!r} is empty (0 bytes), not a {expected} image; re-save it.")
    for image_format, signatures in _SIGNATURES.items():
        if head.startswith(signatures):
            return image_format
    raise DataError(
        f"{str(path)!r} is not a {expected} image (its first bytes are not a {expected} "
        "signature); re-save it as TIFF or PNG."
    )


def _declared(path: Path, image_format: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of a file of ``image_format``."""
    try:
        if image_format == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise DataError(f"{str(path)!r} holds no image; re-save it.")
                series = tif.series[0]
                return tuple(int(n) for n in series.shape), np.dtype(series.dtype)
        from PIL import Image

        with Image.open(path) as header:
            width, height = header.size
            mode = "RGBA" if header.mode == "P" else header.mode
            bands = Image.getmodebands(mode)
        shape = (height, width) if bands == 1 else (height, width, bands)
        return shape, np.dtype(_PIL_DTYPES.get(mode, np.uint8))
    except DataError:
        raise
    except Exception as error:
        raise _unreadable(path, image_format, error) from error


def _unreadable(path: Path, image_format: str, error: Exception) -> DataError:
    reason = str(error).strip().rstrip(".") or type(error).__name__
    return DataError(
        f"could not read {str(path)!r} as a {image_format} image: {reason}; is the file corrupt?"
    )


def available_memory() -> int:
    """Bytes of main memory free for new data now (psutil's ``available``)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        # Linux and macOS without psutil; free pages undercount the cache, erring small.
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_memory(nbytes: int, what: str, hint: str = "crop or downsample it first") -> None:
    """Refuse, before allocating, data of ``nbytes`` that would not fit in the free memory.

    Raises
    ------
    DataError
        Naming ``what``, the bytes it needs, the bytes free, and ``hint``.
    """
    free = available_memory()
    if nbytes > free:
        raise DataError(
            f"{what} needs {nbytes / 2**30:.1f} GiB of memory but {free / 2**30:.1f} GiB is "
            f"free; {hint}."
        )


def is_lazy(image: Any) -> bool:
    """True for a dask array (read chunk by chunk, never whole)."""
    return type(image).__module__.startswith("dask.")


def as_image(data: Any, what: str = "the image") -> Any:
    """Any image a Python caller gives, as a numeric numpy array (dask arrays stay lazy).

    A path (``str`` or ``os.PathLike``) is read with :func:`read_image`; a torch tensor
    is copied to the CPU.

    Raises
    ------
    DataError
        If ``data`` is an unreadable file, a tensor that requires grad, a ragged
        nested list, or holds complex, text or object values.
    """
    if isinstance(data, (str, os.PathLike)):
        return read_image(data)
    if is_lazy(data):
        return data
    if type(data).__module__.startswith("torch"):
        if getattr(data, "requires_grad", False):
            raise DataError(
                f"{what} is a torch tensor that requires grad; give tensor.detach() instead."
            )
        data = data.cpu().numpy()
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as error:
        raise DataError(
            f"{what} is a ragged nested list (rows of different lengths); give one "
            "rectangular numpy array."
        ) from error
    if np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{what} holds complex numbers; give numpy.abs(x) or x.real instead.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{what} holds {array.dtype} values, not numbers; give a numeric array.")
    return array


def check_finite(image: Any, what: str) -> None:
    """Refuse a float image (numpy or dask) holding NaN or infinite values.

    Raises
    ------
    DataError
        Naming ``what`` and the fix.
    """
    if not np.issubdtype(image.dtype, np.floating):
        return  # integers cannot hold NaN
    finite = np.isfinite(image).all()
    if not bool(finite.compute() if hasattr(finite, "compute") else finite):
        raise DataError(
            f"{what} holds NaN or infinite values; replace them (e.g. numpy.nan_to_num) first."
        )


def write_tiff(
    path: str | Path,
    data: np.ndarray,
    rgb: bool = False,
    metadata: ImageMetadata | None = None,
) -> Path:
    """Write ``data`` to a zlib-compressed TIFF atomically, keeping its dtype and shape.

    ``rgb`` marks a last axis of 3/4 as colour. Otherwise every axis is a plane axis:
    without this, tifffile would store a 3-plane stack ``(3, H, W)`` as one RGB image.
    ``metadata`` (axes, voxel size, units, origin; see :mod:`napari_unet.metadata`) makes
    the file an OME-TIFF that keeps them.
    """
    import tifffile

    data = np.asarray(data)
    path = Path(path)
    with atomic_write(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            compression="zlib",
            photometric="rgb" if rgb else "minisblack",
            **tiff_metadata(metadata, data.shape),
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
