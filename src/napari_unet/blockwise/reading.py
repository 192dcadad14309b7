"""Lazy reading: OME-Zarr, Zarr and TIFF opened without loading, and regions of one plane.

Everything here is picklable and reads only what a slice covers, so a task on any worker
reads its own block without a dask graph around it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import DataError
from napari_unet.io import is_lazy
from napari_unet.layout import Layout

#: File suffixes read through ``tifffile``'s Zarr interface.
TIFF_SUFFIXES = (".tif", ".tiff")


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


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    return attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")


def _ome_axes(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    multiscales = _multiscales(attrs)
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
    """Like :func:`open_image`, but the zarr array (or :class:`LazyTiff`) itself."""
    import zarr

    path = Path(source)
    if not path.exists():
        raise DataError(f"{str(path)!r} does not exist; check the path.")
    if path.suffix.lower() in TIFF_SUFFIXES:
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
    if not isinstance(node, zarr.Group):
        return node, None
    attrs = dict(node.attrs)
    multiscales = _multiscales(attrs)
    if multiscales:
        datasets = multiscales[0]["datasets"]
        if not 0 <= level < len(datasets):
            raise DataError(
                f"{str(path)!r} has {len(datasets)} resolution level(s); level {level} "
                "does not exist."
            )
        return node[datasets[level]["path"]], _ome_axes(attrs)
    if "0" in node:
        return node["0"], None
    raise DataError(
        f"{str(path)!r} is a Zarr group without NGFF multiscales or an array '0'; "
        "give the path of the array inside it."
    )


class PlaneReader:
    """Reads regions of one plane from the source, arranged as the layout says.

    ``source`` is anything sliceable: a zarr array, a :class:`LazyTiff`, a numpy array or a
    dask array. A region comes out as :meth:`napari_unet.layout.Layout.channels_last`
    arranges a plane: channels (if any) last, alpha dropped where the layout drops it.
    """

    def __init__(self, source: Any, layout: Layout) -> None:
        self.source = source
        self.layout = layout

    def read(self, plane: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
        """The pixels ``[rows, cols]`` of the plane at stack index ``plane``."""
        channel_axis = self.layout.channel_axis
        # Stack axes as length-1 slices, so that the region keeps the image's axes.
        spatial = iter((*(slice(p, p + 1) for p in plane), rows, cols))
        index = tuple(
            slice(None) if axis == channel_axis else next(spatial)
            for axis in range(len(self.layout.shape))
        )
        region = self.source[index]
        if is_lazy(region):  # a dask source: read this region only, here
            region = region.compute(scheduler="synchronous")
        return np.asarray(self.layout.channels_last(np.asarray(region)))[(0,) * len(plane)]
