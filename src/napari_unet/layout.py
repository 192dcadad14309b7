"""Which axis of an image is channel, stack (Z, T) and plane: the one place that decides.

Training, prediction, evaluation, the block-wise path, the reader and the widgets all
ask :func:`find_layout` (or the helpers built on it) instead of guessing from shapes
themselves, so that one file is read the same way everywhere.

The rules, in order of precedence:

1. ``channel_axis`` given: that axis holds the channels.
2. ``rgb=True`` (napari's ``layer.rgb``): the last axis holds 3 or 4 colours.
3. ``axes`` given (file metadata such as ImageJ's ``"TZYX"`` or OME's ``"TCZYX"``):
   ``C`` (or tifffile's samples axis ``S``) is the channel axis, ``Z`` depth, ``T`` time,
   ``Y``/``X`` the plane; the metadata is trusted over the shape.
4. Otherwise, from the shape of an array of 3 or more axes: a last axis of 3 or 4 is
   RGB/RGBA colour (as napari guesses ``layer.rgb``; ``rgb=False`` says it is not), and a
   last axis of 2 is two channels (an image 2 pixels wide is no image), for example a
   2-channel TIFF ``(H, W, 2)``.

Every other axis before the plane ``(Y, X)`` is a stack axis: ``Z``, ``T``, or ``?`` when
no metadata names it. A last channel axis of 4 is RGBA, and ``alpha=True`` marks a known
alpha channel (grey+alpha); alpha carries no intensity, so it is dropped unless the model
takes every channel. Files decide alpha when read (:func:`napari_unet.io.read_image`):
a grey+alpha file loses its alpha there, with :func:`without_alpha`.

A model of ``in_channels`` takes ``n`` image channels (alpha dropped) when ``n`` equals
``in_channels``, when ``n`` is 1 (grey, repeated) or when the model is grey and the image
colour (``n`` of 3 or 4, averaged); anything else is refused with the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from napari_unet.errors import DataError

#: Most stack axes an image may have before its plane (``T, Z``).
MAX_STACK_AXES = 2
#: Axis letters of file metadata that name channels: ``C`` (ImageJ, OME) and ``S``
#: (tifffile's samples, e.g. RGB).
CHANNEL_LETTERS = frozenset("CS")
#: Letter of a stack axis whose meaning no metadata gives.
UNKNOWN_AXIS = "?"

StackKind = Literal["plane", "volume", "time series", "stack"]


@dataclass(frozen=True)
class Layout:
    """Where the channels, the stack axes and the plane of an image are.

    Build it with :func:`find_layout`, which checks it. Shape contract: ``shape`` is the
    image's shape; without its channel axis it is :attr:`labels_shape`, which is
    ``stack_shape + (height, width)``, with at most :data:`MAX_STACK_AXES` stack axes.
    :meth:`channels_last` arranges an image as ``(*stack_shape, height, width)`` (grey) or
    ``(*stack_shape, height, width, model_channels)``, and :meth:`network_input` turns one
    plane of that into the ``(in_channels, height, width)`` float32 a model takes.

    Attributes
    ----------
    shape : tuple of int
        The image's shape.
    channel_axis : int or None
        Index (non-negative) of the channel axis in ``shape``; None for grey images.
    stack_axes : str
        One letter per stack axis, in order: ``"Z"`` depth, ``"T"`` time, or another
        metadata letter; :data:`UNKNOWN_AXIS` when no metadata names it.
    rgb : bool
        The channel axis is a last axis of 3 or 4 colours (napari's ``layer.rgb``).
    alpha : bool
        The last channel is alpha (RGBA, grey+alpha).
    in_channels : int or None
        Channels of the model the layout was checked for; None when not checked.
    """

    shape: tuple[int, ...]
    channel_axis: int | None
    stack_axes: str
    rgb: bool = False
    alpha: bool = False
    in_channels: int | None = None

    @property
    def channels(self) -> int:
        """Channels in the image, alpha included (1 for grey)."""
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def drop_alpha(self) -> bool:
        """Whether the alpha channel is left out: always, unless the model takes it."""
        return self.alpha and self.in_channels != self.channels

    @property
    def model_channels(self) -> int:
        """Channels the network input is made from (alpha dropped where it is)."""
        return self.channels - self.drop_alpha

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """The image's shape without its channel axis: the shape of its labels."""
        return tuple(n for axis, n in enumerate(self.shape) if axis != self.channel_axis)

    @property
    def stack_shape(self) -> tuple[int, ...]:
        """Sizes of the stack axes (before the plane)."""
        return self.labels_shape[:-2]

    @property
    def height(self) -> int:
        """Plane height (Y)."""
        return self.labels_shape[-2]

    @property
    def width(self) -> int:
        """Plane width (X)."""
        return self.labels_shape[-1]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(height, width)`` of each plane."""
        return self.height, self.width

    @property
    def n_planes(self) -> int:
        """Number of 2D planes (1 for a plane)."""
        return math.prod(self.stack_shape)

    @property
    def axes(self) -> str:
        """Axis letters of ``shape``: stack letters, ``Y``, ``X`` and ``C`` where it is."""
        letters = [*self.stack_axes, "Y", "X"]
        if self.channel_axis is not None:
            letters.insert(self.channel_axis, "C")
        return "".join(letters)

    @property
    def kind(self) -> StackKind:
        """``"plane"`` (2D), ``"volume"`` (a Z axis), ``"time series"`` (a T axis, no Z)
        or ``"stack"`` (stack axes no metadata names)."""
        if not self.stack_axes:
            return "plane"
        if "Z" in self.stack_axes:
            return "volume"
        if "T" in self.stack_axes:
            return "time series"
        return "stack"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(Z, Y, X)`` sizes of a volume, ``(Y, X)`` otherwise."""
        if "Z" in self.stack_axes:
            return (self.stack_shape[self.stack_axes.index("Z")], self.height, self.width)
        return self.plane_shape

    def channels_last(self, image: Any) -> Any:
        """``image`` (numpy or dask) with its channels last and alpha dropped where it is.

        The result is ``(*stack_shape, height, width)`` for grey images and
        ``(*stack_shape, height, width, model_channels)`` otherwise.
        """
        if self.channel_axis is None:
            return image
        image = np.moveaxis(image, self.channel_axis, -1)
        return image[..., : self.model_channels] if self.drop_alpha else image

    def network_input(self, plane: np.ndarray) -> np.ndarray:
        """One plane of :meth:`channels_last`'s result as ``(in_channels, H, W)`` float32."""
        plane = np.asarray(plane)
        first = plane[None] if self.channel_axis is None else np.moveaxis(plane, -1, 0)
        return match_channels(first, self.in_channels or self.model_channels)


def find_layout(
    shape: Sequence[int],
    in_channels: int | None = None,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    *,
    axes: str | None = None,
    alpha: bool | None = None,
) -> Layout:
    """Decide and check the layout of an image of ``shape`` (rules in the module docstring).

    Parameters
    ----------
    shape : sequence of int
        The image's shape.
    in_channels : int, optional
        Channels the model takes; when given, the image's channels are checked against it.
    rgb : bool, optional
        napari's ``layer.rgb``: True, the last axis is 3 or 4 colours; False, it is not
        colour; None, guessed from the shape.
    channel_axis : int, optional
        The channel axis (negative counts from the end); overrides ``rgb`` and ``axes``.
    axes : str, optional
        File metadata: one letter per axis (``"TZYX"``, ``"ZCYX"``, ``"YXS"``, ...).
    alpha : bool, optional
        Whether the last channel is alpha; None: a last channel axis of 4 is RGBA.

    Returns
    -------
    Layout

    Raises
    ------
    DataError
        If the axes contradict the shape, the image is not a plane or a stack of up to
        :data:`MAX_STACK_AXES` axes, is empty, or its channels do not suit the model.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    letters = _check_axes(axes, shape)
    colour = False
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise DataError(
                f"channel_axis {channel_axis} does not exist in an image of shape {shape}."
            )
        channel_axis %= ndim
    elif rgb:
        if not (ndim >= 3 and shape[-1] in (3, 4)):
            raise DataError(
                f"an RGB image needs a last axis of 3 or 4 colours, got shape {shape}; give "
                "channel_axis for other layouts."
            )
        channel_axis, colour = ndim - 1, True
    elif letters is not None:
        found = [axis for axis, letter in enumerate(letters) if letter in CHANNEL_LETTERS]
        channel_axis = found[0] if found else None
        colour = channel_axis == ndim - 1 and shape[-1] in (3, 4) and rgb is None
    elif ndim >= 3 and (shape[-1] == 2 or (shape[-1] in (3, 4) and rgb is None)):
        channel_axis, colour = ndim - 1, shape[-1] != 2
    if letters is None:
        stack_letters = UNKNOWN_AXIS * (ndim - 2 - (channel_axis is not None))
    else:
        rest = "".join(letter for axis, letter in enumerate(letters) if axis != channel_axis)
        if not rest.endswith("YX") or CHANNEL_LETTERS & set(rest):
            raise DataError(
                f"channel axis {channel_axis} contradicts the file's axes {axes!r}; leave "
                "channel_axis out, or give the axis of the C letter."
            )
        stack_letters = rest[:-2]
    if alpha is None:
        alpha = channel_axis == ndim - 1 and shape[-1] == 4
    elif alpha and (channel_axis is None or shape[channel_axis] < 2):
        raise DataError(f"an image of shape {shape} has no channel axis to hold alpha.")
    layout = Layout(
        shape, channel_axis, stack_letters, rgb=colour, alpha=bool(alpha), in_channels=in_channels
    )
    _check_shape(layout)
    if in_channels is not None:
        check_channels(layout.model_channels, in_channels, layout)
    return layout


def _check_axes(axes: str | None, shape: tuple[int, ...]) -> str | None:
    """The metadata axes in upper case, checked against ``shape`` (None if not given)."""
    if axes is None:
        return None
    letters = axes.upper()
    if len(letters) != len(shape):
        raise DataError(
            f"the axes {axes!r} name {len(letters)} axes but the image has shape {shape}; "
            "give one letter per axis."
        )
    plane = "".join(letter for letter in letters if letter not in CHANNEL_LETTERS)
    channels = len(letters) - len(plane)
    if channels > 1 or not plane.endswith("YX") or "Y" in plane[:-2] or "X" in plane[:-2]:
        raise DataError(
            f"cannot read axes {axes!r}: expected at most one channel axis (C) and Y, X as "
            "the last plane axes; reorder the image (e.g. numpy.moveaxis) or give channel_axis."
        )
    return letters


def _check_shape(layout: Layout) -> None:
    """Refuse what is neither a plane nor a stack of planes, and empty images."""
    spatial = layout.labels_shape
    if not 2 <= len(spatial) <= 2 + MAX_STACK_AXES:
        raise DataError(
            f"expected a 2D image or a stack of up to {MAX_STACK_AXES} extra axes (Z, T), got "
            f"shape {layout.shape}"
            + (" with a channel axis" if layout.channel_axis is not None else "")
            + "; give rgb/channel_axis or split the data."
        )
    if min(spatial) < 1:
        raise DataError(f"the image of shape {layout.shape} is empty.")


def check_channels(n: int, in_channels: int, layout: Layout | None = None) -> None:
    """Refuse ``n`` image channels that a model of ``in_channels`` cannot take.

    Raises
    ------
    DataError
        With the fix: keep one channel, give another axis, or train a matching model.
    """
    if n == in_channels or n == 1 or (in_channels == 1 and n in (3, 4)):
        return
    where = ""
    example = "image[..., 0]"
    if layout is not None and layout.channel_axis is not None:
        where = f" (axis {layout.channel_axis} of shape {layout.shape})"
        if layout.channel_axis != len(layout.shape) - 1:
            example = f"numpy.take(image, 0, axis={layout.channel_axis})"
    # One channel suits every model (grey is repeated), so keeping one is always a fix.
    raise DataError(
        f"the image has {n} channels{where} but the model takes {in_channels}; keep one "
        f"channel (e.g. {example}), give the right channel_axis, or train a model on "
        f"{n}-channel images."
    )


def match_channels(channels_first: np.ndarray, in_channels: int) -> np.ndarray:
    """``(n, H, W)`` image channels as the ``(in_channels, H, W)`` float32 a model takes.

    A grey image is repeated for a colour model; colour is averaged (first three
    channels) for a grey model.

    Raises
    ------
    DataError
        If the model cannot take ``n`` channels (see :func:`check_channels`).
    """
    n = channels_first.shape[0]
    check_channels(n, in_channels)
    if n == in_channels:
        out = channels_first
    elif n == 1:
        out = np.repeat(channels_first, in_channels, axis=0)
    else:
        out = channels_first[:3].astype(np.float32).mean(axis=0, keepdims=True)
    return np.ascontiguousarray(out, dtype=np.float32)


def to_channels_first(
    plane: Any,
    in_channels: int,
    channel_axis: int | None = None,
    *,
    alpha: bool | None = None,
) -> np.ndarray:
    """Arrange one 2D plane as ``(in_channels, H, W)`` float32.

    Parameters
    ----------
    plane : array_like
        ``(H, W)`` grey, ``(H, W, 2)`` two channels, ``(H, W, 3|4)`` RGB/RGBA (alpha
        dropped), or any 3-axis layout with ``channel_axis``.
    in_channels : int
        Channels the model takes (see :func:`check_channels`).
    channel_axis : int, optional
        The plane's channel axis; found by :func:`find_layout`'s rules if None.
    alpha : bool, optional
        Whether the last channel is alpha (None: a last axis of 4 is RGBA).

    Raises
    ------
    DataError
        If ``plane`` is not one plane, or its channels do not suit the model.
    """
    plane = np.asarray(plane)
    layout = find_layout(plane.shape, in_channels, channel_axis=channel_axis, alpha=alpha)
    if layout.stack_axes:
        raise DataError(
            f"expected a 2D plane (H, W) or (H, W, C), got shape {plane.shape}; "
            "pass stacks plane by plane, or give channel_axis."
        )
    return layout.network_input(layout.channels_last(plane))


def labels_shape(
    shape: Sequence[int],
    in_channels: int | None = None,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    *,
    axes: str | None = None,
) -> tuple[int, ...]:
    """Shape of the labels of an image of ``shape``: the shape without its channel axis.

    With ``in_channels`` the channels are checked against the model too, without the
    pixels, so that a batch of files can be validated before any work.

    Raises
    ------
    DataError
        As :func:`find_layout`.
    """
    return find_layout(shape, in_channels, rgb, channel_axis, axes=axes).labels_shape


def layout_for_labels(image_shape: Sequence[int], label_shape: Sequence[int]) -> Layout:
    """The layout of a training image whose labels have ``label_shape``.

    The image's own layout (:func:`find_layout`) when its labels shape fits; otherwise
    the image without colour (``rgb=False``), or with its channels on the one extra axis
    of the image, last or just before ``(H, W)``.

    Raises
    ------
    DataError
        If no channel axis makes the image fit its labels.
    """
    image_shape, label_shape = tuple(image_shape), tuple(label_shape)
    attempts: list[dict[str, Any]] = [{}, {"rgb": False}]
    if len(image_shape) == len(label_shape) + 1:
        attempts += [{"channel_axis": -1}, {"channel_axis": -3}]
    for settings in attempts:
        try:
            layout = find_layout(image_shape, **settings)
        except DataError:
            continue
        if layout.labels_shape == label_shape:
            return layout
    raise DataError(
        f"image shape {image_shape} does not fit label shape {label_shape}; labels must have "
        "the image's shape (without its colour axis). Check that the right label file goes "
        "with each image."
    )


def without_alpha(image: np.ndarray) -> np.ndarray:
    """A grey+alpha ``(..., 2)`` or RGBA ``(..., 4)`` image with its alpha channel dropped.

    Grey+alpha becomes grey (the channel axis goes), RGBA becomes RGB.
    """
    layout = find_layout(image.shape, alpha=True)
    return image[..., 0] if layout.channels == 2 else layout.channels_last(image)
