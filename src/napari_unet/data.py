"""Turning images into network input: channel layout and intensity normalisation.

These functions are shared by training and prediction so that a model sees its
inputs prepared identically in both. Shapes: a *plane* is one 2D image, either
``(H, W)`` grey, ``(H, W, 3|4)`` RGB/RGBA, or multichannel with an explicit
``channel_axis``; network input is ``(C, H, W)`` float32.
"""

from __future__ import annotations

import numpy as np

from napari_unet.config import NormalizationConfig
from napari_unet.io import DataError


def to_channels_first(
    plane: np.ndarray, in_channels: int, channel_axis: int | None = None
) -> np.ndarray:
    """Arrange one 2D plane as ``(in_channels, H, W)`` float32.

    Parameters
    ----------
    plane : np.ndarray
        ``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA (alpha dropped), or
        any layout with ``channel_axis`` naming the channel axis of a 3D array.
    in_channels : int
        Channels the model takes. A grey plane is repeated for an RGB model; an
        RGB plane is averaged to grey for a one-channel model.
    channel_axis : int, optional
        Channel axis of a 3D ``plane``; inferred (last axis of size 3/4) if None.

    Raises
    ------
    DataError
        If the plane's channels cannot be matched to ``in_channels``.
    """
    plane = np.asarray(plane)
    if plane.ndim == 2:
        channels = plane[None]
    elif plane.ndim == 3:
        if channel_axis is None:
            if plane.shape[-1] not in (3, 4):
                raise DataError(
                    f"cannot tell the channel axis of a plane of shape {plane.shape}; "
                    "give channel_axis, or pass a 2D plane."
                )
            channel_axis = -1
        channels = np.moveaxis(plane, channel_axis, 0)
        if channel_axis == -1 or channel_axis == plane.ndim - 1:
            if channels.shape[0] == 4:  # RGBA: alpha carries no intensity
                channels = channels[:3]
    else:
        raise DataError(
            f"expected a 2D plane (H, W) or (H, W, C), got shape {plane.shape}; "
            "pass stacks plane by plane."
        )
    n = channels.shape[0]
    if n == in_channels:
        out = channels
    elif n == 1:
        out = np.repeat(channels, in_channels, axis=0)
    elif in_channels == 1 and n in (3, 4):
        out = channels[:3].astype(np.float32).mean(axis=0, keepdims=True)
    else:
        raise DataError(
            f"the image has {n} channel(s) but the model takes {in_channels}; pick the right "
            "channel axis, or train a model on images with this many channels."
        )
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize(image: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    """Scale intensities of one image (all channels together) as ``config`` says.

    Returns float32 of the same shape. A constant image maps to zeros.

    Raises
    ------
    DataError
        If the image holds NaN or infinite values.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise DataError(
            "the image holds NaN or infinite values; replace them (e.g. numpy.nan_to_num) first."
        )
    if config.mode == "none" or image.size == 0:
        return image
    if config.mode == "percentile":
        low, high = np.percentile(image, [config.low, config.high])
    else:
        low, high = float(image.min()), float(image.max())
    scale = high - low
    if scale <= 0:
        return np.zeros_like(image)
    return (image - np.float32(low)) / np.float32(scale)


def prepare_plane(
    plane: np.ndarray,
    in_channels: int,
    normalization: NormalizationConfig,
    channel_axis: int | None = None,
) -> np.ndarray:
    """``to_channels_first`` then ``normalize``: the exact network input for one plane."""
    return normalize(to_channels_first(plane, in_channels, channel_axis), normalization)
