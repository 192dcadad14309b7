"""Voxel size, units, origin and axes of image files: read from and written to their metadata.

One home for what a file says about its pixels beyond their values:

* :func:`image_metadata` reads ImageJ TIFF (``XResolution``/``YResolution``, ``spacing``,
  ``finterval``, ``unit``), OME-TIFF (``PhysicalSize*``, ``TimeIncrement``, the first
  plane's ``Position*``) and OME-Zarr (NGFF ``multiscales`` axes and the first dataset's
  ``coordinateTransformations``) into one :class:`ImageMetadata`;
* :func:`tiff_metadata` and :func:`ngff_multiscale` write it back (OME-TIFF, NGFF 0.4);
* :func:`anisotropy_from` gives the Z step over the XY step of a volume.

Only axes that metadata names count: tifffile calls the pages of a plain multi-page TIFF
``"Q"``, which says nothing about depth or time, so such a file has ``axes=None``.
Units are pint/NGFF names (``"micrometer"``, ``"second"``), which napari takes as layer
``units``; OME's symbols (``"µm"``) and ImageJ's ``"micron"`` are translated.
"""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: OME / ImageJ unit symbols -> the pint/NGFF names used here.
_UNIT_NAMES = {
    "µm": "micrometer",
    "\u03bcm": "micrometer",  # Greek mu, as some writers spell it
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "\\u00b5m": "micrometer",  # ImageJ escapes the micro sign
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "pm": "picometer",
    "Å": "angstrom",
    "s": "second",
    "sec": "second",
    "ms": "millisecond",
    "µs": "microsecond",
    "min": "minute",
    "h": "hour",
}
#: pint/NGFF length names -> metres, to compare steps given in different units.
_METRES = {
    "angstrom": 1e-10,
    "picometer": 1e-12,
    "nanometer": 1e-9,
    "micrometer": 1e-6,
    "millimeter": 1e-3,
    "centimeter": 1e-2,
    "meter": 1.0,
}
_TIME_UNITS = frozenset({"second", "millisecond", "microsecond", "minute", "hour"})
#: pint/NGFF names -> the OME symbols OME-TIFF stores.
_OME_SYMBOLS = {
    "micrometer": "µm",
    "nanometer": "nm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "picometer": "pm",
    "angstrom": "Å",
    "second": "s",
    "millisecond": "ms",
    "microsecond": "µs",
    "minute": "min",
    "hour": "h",
}
#: The axis letters OME-TIFF can hold, and their NGFF types.
_NGFF_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


@dataclass(frozen=True)
class ImageMetadata:
    """What a file's metadata says about its axes: one entry per axis of its array.

    Attributes
    ----------
    axes : str or None
        One letter per axis (``"ZYX"``, ``"TCZYX"``, ``"YXS"``); None when no metadata
        names them (plain TIFF, PNG, JPEG).
    scale : tuple of float or None
        Step between pixels along each axis (1.0 where the file gives none).
    units : tuple of (str or None) or None
        pint/NGFF unit of each axis (``"micrometer"``); None for unitless axes.
    translate : tuple of float or None
        Position of the first pixel along each axis (0.0 where the file gives none).
    """

    axes: str | None = None
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    translate: tuple[float, ...] | None = None

    @property
    def plain(self) -> bool:
        """True when it says nothing beyond pixel units: steps 1, origin 0, no units."""
        return (
            all(step == 1 for step in self.scale or ())
            and not any(self.translate or ())
            and not any(self.units or ())
        )

    def moved_to_front(self, index: int) -> ImageMetadata:
        """The metadata of the array with axis ``index`` moved first (``numpy.moveaxis``)."""
        if not self.ndim:
            return self  # nothing known, nothing to move
        index %= self.ndim
        return self._taken([index, *(axis for axis in range(self.ndim) if axis != index)])

    def without_axis(self, index: int) -> ImageMetadata:
        """The metadata of the array without axis ``index`` (a channel or colour axis)."""
        if not self.ndim:
            return self
        index %= self.ndim
        return self._taken([axis for axis in range(self.ndim) if axis != index])

    @property
    def ndim(self) -> int:
        """Axes described (0 when nothing is known)."""
        known = [f for f in (self.axes, self.scale, self.units, self.translate) if f is not None]
        return len(known[0]) if known else 0

    def step(self, letter: str) -> tuple[float, str | None] | None:
        """The ``(step, unit)`` of the axis ``letter`` (``"Z"``), or None if unknown."""
        if self.axes is None or self.scale is None or letter not in self.axes:
            return None
        index = self.axes.index(letter)
        return self.scale[index], None if self.units is None else self.units[index]

    def _taken(self, order: list[int]) -> ImageMetadata:
        """The metadata of the axes ``order``, in that order."""

        def take(values: tuple[Any, ...] | str | None) -> Any:
            if values is None:
                return None
            taken = [values[axis] for axis in order]
            return "".join(taken) if isinstance(values, str) else tuple(taken)

        return ImageMetadata(
            take(self.axes), take(self.scale), take(self.units), take(self.translate)
        )


def labels_metadata(metadata: ImageMetadata, labels_ndim: int) -> ImageMetadata | None:
    """An image's metadata for its labels: without the channel axis (``C`` or ``S``).

    None when the image's metadata names no axes or does not match ``labels_ndim``.
    """
    if metadata.axes is None:
        return None
    for letter in "CS":
        if letter in metadata.axes:
            metadata = metadata.without_axis(metadata.axes.index(letter))
    return metadata if len(metadata.axes or "") == labels_ndim else None


def unit_name(unit: str | None) -> str | None:
    """``unit`` as a pint/NGFF name (``"µm"`` -> ``"micrometer"``).

    None for no unit, pixels, and units other than the lengths and times of microscopy
    (napari would refuse a layer with a unit it does not know).
    """
    if unit is None:
        return None
    unit = str(unit).strip()
    name = _UNIT_NAMES.get(unit, _UNIT_NAMES.get(unit.lower(), unit.lower()))
    return name if name in _METRES or name in _TIME_UNITS else None


def image_metadata(path: str | Path) -> ImageMetadata:
    """Read the axes, voxel size, units and origin of an image file or OME-Zarr store.

    Never raises for a file that has no metadata or unreadable metadata: the answer is
    then ``ImageMetadata()`` (nothing known), and reading the pixels reports the file.

    Parameters
    ----------
    path : str or Path
        A TIFF (ImageJ, OME or plain), PNG, JPEG, or ``*.zarr`` store.

    Returns
    -------
    ImageMetadata
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _zarr_metadata(path)
        if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
            return _tiff_metadata(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError, ElementTree.ParseError):
        pass  # metadata we cannot understand is metadata we do not have
    except Exception as error:  # tifffile raises its own TiffFileError on corrupt files
        if type(error).__name__ != "TiffFileError":
            raise
    return ImageMetadata()


def _tiff_metadata(path: Path) -> ImageMetadata:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            return ImageMetadata()
        axes = tif.series[0].axes.upper()
        if tif.is_ome and tif.ome_metadata:
            return _ome_tiff_metadata(tif.ome_metadata, axes)
        if tif.is_imagej and tif.imagej_metadata is not None:
            return _imagej_metadata(tif.imagej_metadata, tif.pages[0].tags, axes)
    return ImageMetadata()


def _imagej_metadata(info: dict[str, Any], tags: Any, axes: str) -> ImageMetadata:
    """ImageJ: X/Y steps are 1/resolution, Z ``spacing``, T ``finterval``, one ``unit``.

    Like ImageJ, a file without a length unit is uncalibrated: its resolution (often a
    print resolution such as 72 dpi) is no voxel size.
    """
    length = unit_name(info.get("unit"))
    steps: dict[str, tuple[float, str | None]] = {}
    for letter, tag in (("X", "XResolution"), ("Y", "YResolution")):
        if length is not None and tag in tags:
            numerator, denominator = tags[tag].value
            if numerator > 0 and denominator > 0:
                steps[letter] = (denominator / numerator, length)
    if length is not None and _positive(info.get("spacing")):
        steps["Z"] = (float(info["spacing"]), length)
    if _positive(info.get("finterval")):
        steps["T"] = (float(info["finterval"]), unit_name(info.get("tunit", "sec")))
    origin = {"X": info.get("xorigin"), "Y": info.get("yorigin"), "Z": info.get("zorigin")}
    # ImageJ stores the origin in pixels, counted towards the image from its first pixel.
    translate = {
        letter: -float(value) * steps[letter][0]
        for letter, value in origin.items()
        if letter in steps and _number(value)
    }
    return _assemble(axes, steps, translate)


def _ome_tiff_metadata(xml: str, axes: str) -> ImageMetadata:
    """OME-XML: the first image's ``PhysicalSize*``, ``TimeIncrement`` and plane position."""
    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels")), None)
    if pixels is None:
        return ImageMetadata(axes=axes)
    steps: dict[str, tuple[float, str | None]] = {}
    for letter in "XYZ":
        value = pixels.get(f"PhysicalSize{letter}")
        if _positive(value):
            steps[letter] = (float(value), unit_name(pixels.get(f"PhysicalSize{letter}Unit", "µm")))
    if _positive(pixels.get("TimeIncrement")):
        unit = unit_name(pixels.get("TimeIncrementUnit", "s"))
        steps["T"] = (float(pixels.get("TimeIncrement")), unit)
    plane = next((e for e in pixels if e.tag.endswith("}Plane")), None)
    translate = {}
    if plane is not None:
        for letter in "XYZ":
            value = plane.get(f"Position{letter}")
            if _number(value):
                translate[letter] = float(value)
    return _assemble(axes, steps, translate)


def _zarr_metadata(path: Path) -> ImageMetadata:
    """NGFF 0.4/0.5: ``multiscales[0]`` axes and the first dataset's transformations."""
    for name in (".zattrs", "zarr.json"):
        if (path / name).is_file():
            attrs = json.loads((path / name).read_text(encoding="utf-8"))
            break
    else:
        return ImageMetadata()
    attrs = attrs.get("attributes", attrs)  # zarr v3 keeps them under "attributes"
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return ImageMetadata()
    multiscale = multiscales[0]
    axes = [{"name": a} if isinstance(a, str) else a for a in multiscale.get("axes", [])]
    if not axes:
        return ImageMetadata()
    letters = "".join(str(axis.get("name", "?"))[:1].upper() for axis in axes)
    units = tuple(unit_name(axis.get("unit")) for axis in axes)
    scale = [1.0] * len(axes)
    translate = [0.0] * len(axes)
    # The dataset's transformations, then the multiscale's own (applied after them).
    transformations = [
        *multiscale["datasets"][0].get("coordinateTransformations", []),
        *multiscale.get("coordinateTransformations", []),
    ]
    for transformation in transformations:
        if transformation.get("type") == "scale" and len(transformation["scale"]) == len(axes):
            scale = [s * float(v) for s, v in zip(scale, transformation["scale"])]
            translate = [t * float(v) for t, v in zip(translate, transformation["scale"])]
        elif transformation.get("type") == "translation":
            values = transformation["translation"]
            if len(values) == len(axes):
                translate = [t + float(v) for t, v in zip(translate, values)]
    return ImageMetadata(letters, tuple(scale), units, tuple(translate))


def _assemble(
    axes: str,
    steps: dict[str, tuple[float, str | None]],
    translate: dict[str, float],
) -> ImageMetadata:
    """Per-axis tuples from per-letter steps (1.0, no unit and 0.0 where none is given)."""
    if not steps and not translate:
        return ImageMetadata(axes=axes)
    return ImageMetadata(
        axes,
        tuple(steps.get(letter, (1.0, None))[0] for letter in axes),
        tuple(steps.get(letter, (1.0, None))[1] for letter in axes),
        tuple(translate.get(letter, 0.0) for letter in axes),
    )


def _number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _positive(value: Any) -> bool:
    return _number(value) and float(value) > 0


def anisotropy_from(metadata: ImageMetadata) -> float | None:
    """The Z step over the XY step (mean of Y and X) of a volume; None when not known.

    Steps in different length units are compared in metres; a missing unit on one
    side only (or a unit that is not a length) makes the ratio unknown.
    """
    steps = [metadata.step(letter) for letter in "ZYX"]
    if any(step is None for step in steps):
        return None
    (z, z_unit), (y, y_unit), (x, x_unit) = steps  # type: ignore[misc]
    if {z_unit, y_unit, x_unit} == {None}:
        return z / ((y + x) / 2)
    if any(unit not in _METRES for unit in (z_unit, y_unit, x_unit)):
        return None
    z, y, x = z * _METRES[z_unit], y * _METRES[y_unit], x * _METRES[x_unit]
    return z / ((y + x) / 2)


def labels_axes(ndim: int, units: Sequence[str | None] | None = None) -> str:
    """Axis letters of a layer of ``ndim`` axes that names none: ``(T,) (Z,) Y, X``.

    A 3D layer whose first axis has a time unit (``"second"``) is ``TYX``, else ``ZYX``.
    """
    if ndim == 3 and units is not None and units[0] in _TIME_UNITS:
        return "TYX"
    return "?" * max(ndim - 4, 0) + "TZYX"[-ndim:] if ndim else ""


def tiff_metadata(
    metadata: ImageMetadata | None, shape: Sequence[int], notes: dict[str, str] | None = None
) -> dict[str, Any]:
    """``tifffile.imwrite`` keyword arguments that store ``metadata`` as OME-TIFF.

    ``notes`` (such as the Labels writer's marker) go into the OME image description as
    JSON, or into tifffile's own JSON description when there is no OME metadata; read
    them back with :func:`tiff_notes`. Without voxel metadata (none given, or axes OME
    cannot hold, such as two stack axes of one kind) the file is a plain TIFF.
    """
    ome = _ome_fields(metadata, shape)
    if ome is None:
        return {"metadata": dict(notes)} if notes else {}
    if notes:
        ome["Description"] = json.dumps(notes)
    return {"ome": True, "metadata": ome}


def tiff_notes(path: str | Path) -> dict[str, Any]:
    """The notes :func:`tiff_metadata` stored in a TIFF; {} when none or unreadable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                root = ElementTree.fromstring(tif.ome_metadata)
                description = next((e for e in root.iter() if e.tag.endswith("}Description")), None)
                notes = json.loads(description.text or "") if description is not None else {}
            else:
                shaped = tif.shaped_metadata
                notes = shaped[0] if shaped else {}
    except Exception:  # any unreadable file simply carries no notes
        return {}
    return notes if isinstance(notes, dict) else {}


def _ome_fields(metadata: ImageMetadata | None, shape: Sequence[int]) -> dict[str, Any] | None:
    """tifffile's OME metadata fields for ``metadata``; None when OME cannot hold it."""
    if metadata is None or metadata.axes is None or len(metadata.axes) != len(shape):
        return None
    if metadata.plain:
        return None  # nothing beyond pixels: keep the file as it always was
    axes = metadata.axes.replace("S", "C")
    if any(letter not in _NGFF_TYPES for letter in axes) or len(set(axes)) != len(axes):
        return None
    ome: dict[str, Any] = {"axes": axes}
    scale = metadata.scale or (1.0,) * len(axes)
    units = metadata.units or (None,) * len(axes)
    for letter, step, unit in zip(axes, scale, units):
        if letter in "XYZ":
            ome[f"PhysicalSize{letter}"] = float(step)
            if unit in _OME_SYMBOLS:
                ome[f"PhysicalSize{letter}Unit"] = _OME_SYMBOLS[unit]
        elif letter == "T":
            ome["TimeIncrement"] = float(step)
            if unit in _OME_SYMBOLS:
                ome["TimeIncrementUnit"] = _OME_SYMBOLS[unit]
    if metadata.translate is not None and any(metadata.translate):
        ome["Plane"] = _plane_positions(axes, shape, scale, metadata.translate)
    return ome


def _plane_positions(
    axes: str, shape: Sequence[int], scale: Sequence[float], translate: Sequence[float]
) -> dict[str, list[float]]:
    """OME ``Plane`` positions: the origin, moved one Z step per plane along Z."""
    origin = dict(zip(axes, translate))
    # One plane per index of the axes before Y, X (channels included), in their order.
    stack = [(letter, n) for letter, n in zip(axes, shape) if letter not in "YX"]
    z_step = dict(zip(axes, scale)).get("Z", 0.0)
    z_at = [letter for letter, _ in stack].index("Z") if "Z" in axes else None
    planes = list(itertools.product(*(range(n) for _, n in stack)))
    return {
        "PositionX": [origin.get("X", 0.0)] * len(planes),
        "PositionY": [origin.get("Y", 0.0)] * len(planes),
        "PositionZ": [
            origin.get("Z", 0.0) + (0 if z_at is None else plane[z_at]) * z_step for plane in planes
        ],
    }


def ngff_axes(metadata: ImageMetadata | None, ndim: int) -> list[dict[str, Any]]:
    """NGFF axes for an array of ``ndim`` axes (``..., z, y, x`` where metadata names none)."""
    if metadata is None or metadata.axes is None or len(metadata.axes) != ndim:
        letters = labels_axes(ndim, None if metadata is None else metadata.units)
    else:
        letters = metadata.axes
    units = None if metadata is None else metadata.units
    axes = []
    for index, letter in enumerate(letters):
        axis: dict[str, Any] = {"name": letter.lower()}
        if letter in _NGFF_TYPES:
            axis["type"] = _NGFF_TYPES[letter]
        if units is not None and len(units) == ndim and units[index] is not None:
            axis["unit"] = units[index]
        axes.append(axis)
    return axes


def ngff_transformations(metadata: ImageMetadata | None, ndim: int) -> list[dict[str, Any]]:
    """NGFF ``coordinateTransformations`` of a dataset: its scale, and translation if any."""
    scale = [1.0] * ndim
    if metadata is not None and metadata.scale is not None and len(metadata.scale) == ndim:
        scale = [float(step) for step in metadata.scale]
    transformations: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    translate = None if metadata is None else metadata.translate
    if translate is not None and len(translate) == ndim and any(translate):
        transformations.append(
            {"type": "translation", "translation": [float(t) for t in translate]}
        )
    return transformations
