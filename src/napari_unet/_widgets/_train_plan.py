"""What a Train widget run trains on: the plan, and the checks of the picked layer pairs.

The Train widget (:mod:`napari_unet._widgets._train`) builds a :class:`TrainPlan` from its
controls; the layer checks here raise the :class:`~napari_unet.errors.DataError` whose
message the widget shows as its hint, and :func:`suggested_ndim` picks the model's
dimensions a layer calls for (a 3D model for a volume without a time axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet._pairs import spatial_shape
from napari_unet._widgets._common import layer_data
from napari_unet.checkpoint import TrainedModel
from napari_unet.config import TrainConfig
from napari_unet.errors import DataError

if TYPE_CHECKING:
    from napari.layers import Image, Labels

#: The model dimensions the widget offers: its words -> ``ModelConfig.ndim``.
DIMENSIONS = {"3D model": 3, "2D model on the planes": 2}


@dataclass
class TrainPlan:
    """Everything one run needs, built and checked before a thread starts."""

    images: list[Any]
    labels: list[Any]
    config: TrainConfig
    val_images: list[Any] | None = None
    val_labels: list[Any] | None = None
    init: str | Path | TrainedModel | None = None
    out: Path | None = None
    log_csv: Path | None = None
    description: dict[str, Any] = field(default_factory=dict)


def is_time_series(layer: Image) -> bool:
    """Whether the layer names a time axis (``t``, from file metadata) among its axes."""
    return "t" in {str(label).lower() for label in getattr(layer, "axis_labels", ())}


def suggested_ndim(layer: Image | None) -> int:
    """3 for a volume layer (3 spatial axes or more) without a time axis, else 2."""
    if layer is None:
        return 2
    volume = len(spatial_shape(layer_data(layer).shape, layer.rgb)) >= 3
    return 3 if volume and not is_time_series(layer) else 2


def layer_anisotropy(layer: Image) -> float:
    """A volume layer's Z step over its X pixel size, from its ``scale`` (1 if unscaled)."""
    scale = [abs(float(step)) for step in layer.scale[-3:]]
    return scale[0] / scale[-1] if len(scale) == 3 and scale[-1] > 0 else 1.0


def check_pairs(pairs: list[tuple[Image | None, Labels | None]], ndim: int) -> float | None:
    """Refuse pairs that cannot train a ``ndim`` model; returns a 3D model's anisotropy.

    Raises
    ------
    DataError
        A pair without a layer, an image picked twice, labels of another shape, a mix of
        RGB and grey, and for a 3D model a layer that is not a volume or volumes whose
        scales give different anisotropies.
    """
    if not pairs or any(image is None or labels is None for image, labels in pairs):
        raise DataError(
            "Add an Image layer and a Labels layer to train on (paint the Labels layer "
            "with the brush), then pick them as a pair."
        )
    images = [image for image, _ in pairs]
    if len({id(image) for image in images}) != len(images):
        raise DataError("An image is picked twice; give each pair its own image.")
    for image, labels in pairs:
        shape = spatial_shape(layer_data(image).shape, image.rgb)
        if tuple(layer_data(labels).shape) != shape:
            raise DataError(
                f"Labels {labels.name!r} has shape {tuple(layer_data(labels).shape)} but image "
                f"{image.name!r} has {shape}; pick the labels painted on this image."
            )
        if ndim == 3 and len(shape) < 3:
            raise DataError(
                f"Image {image.name!r} is 2D: a 3D model trains on volumes (Z, Y, X); pick "
                "3D layers, or choose '2D model on the planes'."
            )
    if len({bool(image.rgb) for image in images}) > 1:
        raise DataError("Mix of RGB and grey images; train on one kind at a time.")
    if ndim == 2:
        return None
    anisotropies = {round(layer_anisotropy(image), 3) for image in images}
    if len(anisotropies) > 1:
        raise DataError(
            f"The images' scales give different Z steps (anisotropy {sorted(anisotropies)}); "
            "a 3D model takes one: give the layers the same scale."
        )
    return layer_anisotropy(images[0])


def copy_of_labels(data: Any) -> Any:
    """A copy of numpy labels (painting during a run must not change its data); dask as is."""
    return np.array(data) if isinstance(data, np.ndarray) else data
