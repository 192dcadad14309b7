"""Matching Image layers to the Labels layers that annotate them.

Shared by the training-folder writer and the Train widget, so that both pair the
same layers the same way: a Labels layer belongs to an image when its shape is
the image's labels shape (the image without its channel axis, as
:mod:`napari_unet.layout` decides), and among those the one whose name starts
with the image's name (``"cells"`` <-> ``"cells labels"``) wins; otherwise the
first unused one in layer order.
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_unet.errors import DataError
from napari_unet.layout import labels_shape


def spatial_shape(shape: Sequence[int], rgb: bool) -> tuple[int, ...]:
    """Shape of the labels of an image layer (``rgb`` as napari's ``layer.rgb``).

    The layer's shape without its channel axis (a colour axis, or a last axis of 2);
    a layer that is no image for :func:`napari_unet.layout.find_layout` (too many axes)
    keeps its shape, so that it pairs with nothing rather than raising in the GUI.
    """
    try:
        return labels_shape(shape, rgb=rgb)
    except DataError:
        return tuple(shape)


def match_pairs(
    images: Sequence[tuple[str, tuple[int, ...]]],
    labels: Sequence[tuple[str, tuple[int, ...]]],
) -> list[tuple[int, int]]:
    """Pair images with labels of the same spatial shape, preferring matching names.

    Parameters
    ----------
    images : sequence of (name, spatial shape)
    labels : sequence of (name, shape)

    Returns
    -------
    list of (image index, labels index)
        Each image and each labels entry is used at most once; images without a
        same-shaped labels entry are left out.
    """
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i, (image_name, image_shape) in enumerate(images):
        candidates = [
            j
            for j, (_, shape) in enumerate(labels)
            if j not in used and tuple(shape) == image_shape
        ]
        if not candidates:
            continue
        named = [j for j in candidates if labels[j][0].lower().startswith(image_name.lower())]
        choice = (named or candidates)[0]
        used.add(choice)
        pairs.append((i, choice))
    return pairs
