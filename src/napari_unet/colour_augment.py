"""Training augmentations across imaging modalities, and modality-balanced sampling.

The DSB 2018 training images are mostly fluorescence; H&E and brightfield images are
few (issue #20), and a network trained on them mostly misses what makes them differ.
These augmentations, each a pure function of a normalised ``(C, S, S)`` patch, make
one modality look like another, and change the size of the nuclei:

* :func:`hed_jitter`: scale and shift the haematoxylin, eosin and DAB optical densities
  of a colour patch (``skimage.color.rgb2hed``), the stain variation between labs;
* :func:`to_grey`: the mean of the channels in every channel (a colour image seen grey);
* :func:`invert`: ``1 - x``, which turns light nuclei on black (fluorescence) into dark
  nuclei on a light background (brightfield) and back;
* :func:`rescale_patch`: zoom in or out, with the targets and weights, so that the
  network sees nuclei of other sizes.

:func:`modality_augment` applies them at random; :class:`ModalitySampler` is the patch
sampler that calls it after the usual flips and intensity changes
(:func:`napari_unet.data.augment_patch`) and can draw every modality equally often
(``TrainConfig.sampling = "modality"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.color import hed2rgb, rgb2hed
from skimage.transform import resize

from napari_unet.modality import balanced_probabilities
from napari_unet.patches import PatchSampler, PlaneData

Patch = tuple[np.ndarray, np.ndarray, np.ndarray]

#: Probability of each augmentation per patch (a colour patch is jittered or made grey).
P_HED, P_GREY, P_INVERT, P_SCALE = 0.5, 0.2, 0.2, 0.5
#: HED jitter: optical densities x U(1 - scale, 1 + scale) + U(-shift, shift), per stain.
HED_SCALE, HED_SHIFT = 0.1, 0.03
#: Zoom factors: log-uniform between these.
ZOOM_RANGE = (0.75, 1.33)


def is_colour(image: np.ndarray) -> bool:
    """Whether a ``(C, H, W)`` patch has three channels that are not all the same."""
    return image.shape[0] == 3 and not (
        np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])
    )


def hed_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ``(3, H, W)`` RGB patch (0..1, clipped) with jittered stain optical densities."""
    rgb = np.clip(np.moveaxis(image, 0, -1), 0.0, 1.0)
    hed = rgb2hed(rgb)
    hed = hed * rng.uniform(1 - HED_SCALE, 1 + HED_SCALE, 3) + rng.uniform(-HED_SHIFT, HED_SHIFT, 3)
    jittered = np.clip(hed2rgb(hed), 0.0, 1.0)
    return np.ascontiguousarray(np.moveaxis(jittered, -1, 0), dtype=np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """The channel mean repeated in every channel of a ``(C, H, W)`` patch."""
    grey = image.mean(axis=0, dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(grey, image.shape))


def invert(image: np.ndarray) -> np.ndarray:
    """``1 - image``: light objects on dark become dark objects on light (normalised 0..1)."""
    return np.float32(1.0) - image


def rescale_patch(patch: Patch, zoom: float, rng: np.random.Generator) -> Patch:
    """A patch zoomed by ``zoom``, the same size, its objects ``zoom`` times as large.

    Zooming in (``zoom`` > 1) enlarges a random window of ``S / zoom`` pixels; zooming
    out shrinks the patch and reflect-pads it back to ``S`` (the padding gets weight 0, as
    in :func:`napari_unet.patches.crop_patch`). The image is resized linearly, the targets and
    weights by nearest neighbour, so they stay aligned and keep their values.
    """
    image, targets, weights = patch
    size = image.shape[-1]
    if zoom >= 1:
        window = max(2, round(size / zoom))
        top, left = (int(rng.integers(size - window + 1)) for _ in range(2))
        crop = (slice(None), slice(top, top + window), slice(left, left + window))
        shape = (size, size)
        image, targets, weights = image[crop], targets[crop], weights[crop]
        pad = None
    else:
        small = max(2, round(size * zoom))
        shape = (small, small)
        pad = ((0, 0), (0, size - small), (0, size - small))

    def scaled(array: np.ndarray, order: int) -> np.ndarray:
        out = resize(array, (array.shape[0], *shape), order=order, anti_aliasing=False)
        return out.astype(np.float32)

    image, targets, weights = scaled(image, 1), scaled(targets, 0), scaled(weights, 0)
    if pad is not None:
        image, targets = np.pad(image, pad, mode="reflect"), np.pad(targets, pad, mode="reflect")
        weights = np.pad(weights, pad, mode="constant")
    return image, targets, weights


def modality_augment(
    patch: Patch, rng: np.random.Generator, colour: bool = True, scale: bool = True
) -> Patch:
    """The augmentations of this module, at random, on one normalised patch.

    ``colour``: a colour patch gets :func:`hed_jitter` (probability 1/2) or
    :func:`to_grey` (1/5); a grey one (or one made grey) :func:`invert` (1/5).
    ``scale``: :func:`rescale_patch` with probability 1/2, by a log-uniform zoom in
    :data:`ZOOM_RANGE`. Targets and weights change only with the zoom.
    """
    image, targets, weights = patch
    if colour:
        if is_colour(image):
            draw = rng.random()
            if draw < P_HED:
                image = hed_jitter(image, rng)
            elif draw < P_HED + P_GREY:
                image = to_grey(image)
        if not is_colour(image) and rng.random() < P_INVERT:
            image = invert(image)
    if scale and rng.random() < P_SCALE:
        zoom = float(np.exp(rng.uniform(*np.log(ZOOM_RANGE))))
        image, targets, weights = rescale_patch((image, targets, weights), zoom, rng)
    return image, targets, weights


class ModalitySampler(PatchSampler):
    """A :class:`~napari_unet.patches.PatchSampler` with the augmentations of this module.

    Parameters
    ----------
    planes, patch_size, augment, rng
        As for :class:`~napari_unet.patches.PatchSampler` (``augment`` also switches
        :func:`modality_augment` on).
    modalities : sequence of str, optional
        Each plane's modality: planes are then drawn so that every modality is drawn
        equally often (:func:`~napari_unet.modality.balanced_probabilities`); None
        draws them as ``sampling`` says.
    colour, scale : bool
        The ``colour`` and ``scale`` switches of :func:`modality_augment`.
    sampling : {"area", "image"}
        How planes are drawn without ``modalities`` (see
        :class:`~napari_unet.patches.PatchSampler`).
    """

    def __init__(
        self,
        planes: Sequence[PlaneData],
        patch_size: int | Sequence[int],
        augment: bool,
        rng: np.random.Generator,
        modalities: Sequence[str] | None = None,
        colour: bool = False,
        scale: bool = False,
        sampling: str = "image",
    ) -> None:
        super().__init__(planes, patch_size, sampling, augment, rng)
        if modalities is not None:
            self.probabilities = balanced_probabilities(modalities)
        self.colour = colour
        self.scale = scale

    def sample(self, rng: np.random.Generator | None = None) -> Patch:
        """One random patch, as :meth:`PatchSampler.sample`, then :func:`modality_augment`."""
        rng = self.rng if rng is None else rng
        patch = super().sample(rng)
        if self.augment and (self.colour or self.scale):
            patch = modality_augment(patch, rng, self.colour, self.scale)
        return patch
