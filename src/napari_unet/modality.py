"""Imaging modality of an image: the rule, and what depends on it.

The DSB 2018 images, like the images users bring, come from three kinds of microscopy
that look very different to a network: fluorescence (light nuclei on black),
brightfield (dark nuclei on a light background) and H&E-stained tissue (purple
nuclei in pink tissue). :func:`classify_modality` tells them apart from colour and
brightness alone. Evaluation reports per modality with it, training can balance its
patches over modalities (:func:`balanced_probabilities`), and prediction picks the
post-processing a model was tuned with for the image's modality
(:func:`postprocess_for_modality`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MODALITIES = ("fluorescence", "brightfield", "H&E")
#: Mean HSV saturation (0-255) above which an image is taken as stained (H&E).
SATURATION_HE = 15.0
#: Mean intensity (0-255) above which an unstained image is taken as brightfield.
INTENSITY_BRIGHTFIELD = 100.0
#: Fewest tuning images of a modality that get their own post-processing values
#: (``napari-unet tune --per-modality``); a modality with fewer uses the overall values.
MIN_MODALITY_IMAGES = 5


def _as_uint8_scale(image: np.ndarray) -> np.ndarray:
    """``image`` as float on a 0-255 scale (integers by their dtype's range)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)
    image = image.astype(np.float32)
    return image * 255.0 if image.size and image.max() <= 1.0 else image


def classify_modality(image: np.ndarray) -> str:
    """A rough imaging modality of one plane, from its colour and brightness.

    Stained tissue is coloured: a mean HSV saturation over 15 (of 255) means
    ``"H&E"``. Otherwise a bright image (mean over 100 of 255) is
    ``"brightfield"`` (dark objects on a light background), and a dark one
    ``"fluorescence"`` (light objects on black). Grey images have no saturation.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` grey or ``(H, W, 3|4)`` colour.
    """
    scaled = _as_uint8_scale(image)
    if scaled.ndim == 3 and scaled.shape[-1] in (3, 4):
        rgb = scaled[..., :3]
        high, low = rgb.max(axis=-1), rgb.min(axis=-1)
        # HSV saturation: (max - min) / max, 0 where max is 0.
        saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
        if saturation.mean() * 255.0 > SATURATION_HE:
            return "H&E"
        intensity = rgb.mean()
    else:
        intensity = scaled.mean()
    return "brightfield" if intensity > INTENSITY_BRIGHTFIELD else "fluorescence"


def balanced_probabilities(modalities: Sequence[str]) -> np.ndarray:
    """Probability of drawing each item so that every modality present is drawn equally.

    Items of one modality share its ``1 / (modalities present)`` equally: with 370
    fluorescence and 8 brightfield images, each brightfield image is drawn about
    46 times as often as each fluorescence one.
    """
    if not modalities:
        return np.zeros(0)
    kinds, inverse, counts = np.unique(
        np.asarray(modalities), return_inverse=True, return_counts=True
    )
    return 1.0 / (len(kinds) * counts[inverse])


def postprocess_for_modality(tuned: dict[str, Any], modality: str | None) -> dict[str, Any]:
    """The post-processing a model stores for ``modality``, else its overall values.

    ``tuned`` is a model's ``metadata["postprocess"]``: the overall tuned values, and
    optionally ``per_modality`` (written by ``napari-unet tune --per-modality``), a
    table of values for each modality with enough tuning images. A modality without an
    entry (or ``modality`` None) gets the overall values; the per-modality entry
    replaces only the settings it holds.
    """
    per_modality = tuned.get("per_modality")
    if modality is None or not isinstance(per_modality, dict):
        return tuned
    chosen = per_modality.get(modality)
    if not isinstance(chosen, dict):
        return tuned
    return {**tuned, **chosen}
