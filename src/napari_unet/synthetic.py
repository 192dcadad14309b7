"""Synthetic 3D nuclei volumes with exact instance labels, for tests and benchmarks.

No labelled 3D nuclei set ships with napari-unet, so :func:`nuclei_volume` draws
one from a seed. It imitates a fluorescence (DAPI/Hoechst) stack like the 2018 Data
Science Bowl images the bundled 2D model learned from: bright nuclei on a dark
background, 10-30 pixels across in XY.

How a volume is made:

* **Nuclei** are ellipsoids of random size (the equivalent diameter drawn from
  ``diameter``), elongation and 3D orientation, placed in physical units where one
  unit is the XY pixel; plane ``z`` lies at height ``z * anisotropy``.
* **Layout**: ``sparse`` keeps every pair of nuclei a few pixels apart; ``crowded``
  places most nuclei against one already placed, so clusters of touching nuclei
  form. Where two ellipsoids overlap, the voxels stay with the nucleus placed
  first; a nucleus that would lose too much of itself, or be cut in two, is
  placed elsewhere. Every nucleus lies wholly inside the volume, so each label
  is exactly one 6-connected object.
* **Image**: each nucleus has its own brightness and a smooth chromatin texture;
  the stain is blurred by a Gaussian point spread function that is wider along Z
  (in physical units) than in XY, out-of-focus light adds a faint haze around
  nuclei, a smooth uneven background lies under everything, and photon (Poisson)
  plus camera read (Gaussian) noise complete it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
from skimage.transform import resize

from napari_unet.errors import ConfigError

#: Layouts :func:`nuclei_volume` knows.
LAYOUTS: tuple[str, ...] = ("sparse", "crowded")

#: Smallest gap between the bounding spheres of two nuclei in a ``sparse`` layout (pixels).
SPARSE_GAP = 3.0
#: Share of its own ellipsoid a crowded nucleus must keep after earlier ones took theirs.
MIN_KEPT_FRACTION = 0.75
#: Placement attempts per nucleus before giving up.
ATTEMPTS_PER_NUCLEUS = 300

#: Point spread function: Gaussian sigmas in physical units (XY pixels). Widefield and
#: confocal PSFs are 2-3x longer along the optical axis than across it.
PSF_SIGMA_XY = 1.0
PSF_SIGMA_Z = 2.5
#: Expected photons: background level, and the brightest nucleus's stain.
BACKGROUND_PHOTONS = 20.0
NUCLEUS_PHOTONS = 220.0
#: Standard deviation of the camera's read noise (photo-electrons).
READ_NOISE = 4.0


@dataclass(frozen=True)
class _Nucleus:
    """One ellipsoid in physical units: centre ``(z, y, x)``, shape matrix, bounding radius."""

    centre: np.ndarray
    #: ``x^T shape x <= 1`` is inside, for ``x`` the offset from the centre.
    shape: np.ndarray
    radius: float

    @property
    def half_extent(self) -> np.ndarray:
        """Half the ellipsoid's extent along z, y and x."""
        return np.sqrt(np.diag(np.linalg.inv(self.shape)))

    def radius_along(self, direction: np.ndarray) -> float:
        """Distance from the centre to the surface along the unit vector ``direction``."""
        return float(1.0 / np.sqrt(direction @ self.shape @ direction))


def _random_nucleus(rng: np.random.Generator, diameter: tuple[float, float]) -> _Nucleus:
    """An ellipsoid of random size, elongation and orientation, centred at the origin."""
    equivalent_radius = rng.uniform(*diameter) / 2
    ratios = np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.6, 1.0)])
    # Same volume as the sphere of the drawn diameter.
    semi_axes = equivalent_radius * ratios / np.cbrt(ratios.prod())
    rotation = Rotation.random(random_state=rng).as_matrix()
    shape = rotation @ np.diag(1.0 / semi_axes**2) @ rotation.T
    return _Nucleus(np.zeros(3), shape, float(semi_axes.max()))


def _inside(
    nucleus: _Nucleus, anisotropy: float, grid_shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The nucleus's bounding box in voxels and its boolean mask there."""
    spacing = np.array([anisotropy, 1.0, 1.0])
    low = np.floor((nucleus.centre - nucleus.half_extent) / spacing).astype(int)
    high = np.ceil((nucleus.centre + nucleus.half_extent) / spacing).astype(int) + 1
    low, high = np.maximum(low, 0), np.minimum(high, grid_shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    offsets = np.stack(
        np.meshgrid(
            *(np.arange(a, b) * s - c for a, b, s, c in zip(low, high, spacing, nucleus.centre)),
            indexing="ij",
        ),
        axis=-1,
    )
    quadratic = np.einsum("...i,ij,...j->...", offsets, nucleus.shape, offsets)
    return box, quadratic <= 1.0


def _place(
    rng: np.random.Generator,
    nuclei: list[_Nucleus],
    candidate: _Nucleus,
    extent: np.ndarray,
    spacing: np.ndarray,
    layout: str,
) -> _Nucleus | None:
    """``candidate`` moved to a random free position, or None if that one collides.

    ``extent`` is the physical position of the last voxel; the nucleus keeps one
    voxel away from every face of the volume.
    """
    margin = candidate.half_extent + spacing
    if np.any(extent <= 2 * margin):
        return None
    if layout == "crowded" and nuclei and rng.random() < 0.85:
        # Against a random earlier nucleus, overlapping it a little so that they touch.
        neighbour = nuclei[rng.integers(len(nuclei))]
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        reach = neighbour.radius_along(direction) + candidate.radius_along(-direction)
        centre = neighbour.centre + direction * reach * rng.uniform(0.8, 0.95)
    else:
        centre = rng.uniform(margin, extent - margin)
    if np.any(centre < margin) or np.any(centre > extent - margin):
        return None
    placed = _Nucleus(centre, candidate.shape, candidate.radius)
    for other in nuclei:
        offset = placed.centre - other.centre
        distance = float(np.linalg.norm(offset))
        if layout == "sparse":
            if distance < placed.radius + other.radius + SPARSE_GAP:
                return None
        else:
            # Touching, but no nucleus swallowing much of another.
            direction = offset / max(distance, 1e-9)
            reach = other.radius_along(direction) + placed.radius_along(-direction)
            if distance < 0.75 * reach:
                return None
    return placed


def _nuclei_labels(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    n_nuclei: int,
    layout: str,
    anisotropy: float,
    diameter: tuple[float, float],
) -> np.ndarray:
    """Instance labels ``1..n_nuclei`` of the placed ellipsoids (uint16)."""
    spacing = np.array([anisotropy, 1.0, 1.0])
    extent = (np.array(shape) - 1) * spacing
    labels = np.zeros(shape, dtype=np.uint16)
    nuclei: list[_Nucleus] = []
    attempts = 0
    while len(nuclei) < n_nuclei:
        attempts += 1
        if attempts > ATTEMPTS_PER_NUCLEUS * n_nuclei:
            raise ConfigError(
                f"could not fit {n_nuclei} nuclei of diameter {diameter[0]:g}-{diameter[1]:g} "
                f"({layout}) into a volume of shape {shape} at anisotropy {anisotropy:g}; ask "
                "for fewer or smaller nuclei, or a larger volume."
            )
        placed = _place(rng, nuclei, _random_nucleus(rng, diameter), extent, spacing, layout)
        if placed is None:
            continue
        box, mask = _inside(placed, anisotropy, shape)
        free = mask & (labels[box] == 0)
        kept = np.count_nonzero(free)
        # Thin ellipsoids on a coarse Z grid, or wedges between earlier nuclei, can come
        # out in pieces: place those elsewhere so that each label is one object.
        if kept < MIN_KEPT_FRACTION * np.count_nonzero(mask) or ndi.label(free)[1] != 1:
            continue
        labels[box][free] = len(nuclei) + 1
        nuclei.append(placed)
    return labels


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]
) -> np.ndarray:
    """A smooth random field of ``shape``, values in ``[0, 1]``: cubic upsampled noise."""
    field = resize(rng.random(coarse), shape, order=3, mode="reflect", anti_aliasing=False)
    low, high = field.min(), field.max()
    return ((field - low) / max(high - low, 1e-9)).astype(np.float32)


def _render(rng: np.random.Generator, labels: np.ndarray, anisotropy: float) -> np.ndarray:
    """Photon counts of a fluorescence stack showing the nuclei of ``labels``."""
    n_nuclei = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, n_nuclei)]).astype(np.float32)
    # Chromatin texture: smooth noise, a little finer than the nuclei.
    texture = ndi.gaussian_filter(
        rng.standard_normal(labels.shape).astype(np.float32),
        sigma=(1.5 / anisotropy, 1.5, 1.5),
    )
    texture /= max(float(texture.std()), 1e-9)
    stain = brightness[labels] * np.clip(1.0 + 0.25 * texture, 0.3, None)
    blurred = ndi.gaussian_filter(
        stain, sigma=(PSF_SIGMA_Z / anisotropy, PSF_SIGMA_XY, PSF_SIGMA_XY)
    )
    # Out-of-focus light: a wide, faint copy of the stain.
    haze = ndi.gaussian_filter(stain, sigma=(3 * PSF_SIGMA_Z / anisotropy, 6.0, 6.0))
    coarse = tuple(max(2, n // 48) for n in labels.shape)
    background = BACKGROUND_PHOTONS * (0.5 + _smooth_field(rng, labels.shape, coarse))
    expected = background + NUCLEUS_PHOTONS * (blurred + 0.15 * haze)
    counts = rng.poisson(expected).astype(np.float32)
    counts += rng.normal(0.0, READ_NOISE, labels.shape).astype(np.float32)
    return np.clip(counts, 0.0, None)


def nuclei_volume(
    shape: tuple[int, int, int] = (32, 256, 256),
    n_nuclei: int = 20,
    *,
    layout: Literal["sparse", "crowded"] = "sparse",
    anisotropy: float = 1.0,
    diameter: tuple[float, float] = (12.0, 28.0),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence stack of nuclei and its exact instance labels.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` voxels of the volume.
    n_nuclei : int
        Number of nuclei, exactly.
    layout : {"sparse", "crowded"}
        ``sparse``: nuclei apart from each other; ``crowded``: clusters of touching
        nuclei (see the module notes).
    anisotropy : float
        Z step over XY pixel size (``> 0``); at 2, a nucleus spans half as many
        planes as it spans pixels in XY.
    diameter : tuple of float
        Range of the nuclei's equivalent diameters, in XY pixels.
    seed : int
        Seed of the random generator: the same arguments give the same volume.

    Returns
    -------
    image : np.ndarray
        ``(Z, Y, X)`` float32 photon counts, ``>= 0``.
    labels : np.ndarray
        ``(Z, Y, X)`` uint16 labels ``1..n_nuclei`` (0 = background); each label is
        one 6-connected object.

    Raises
    ------
    ConfigError
        If an argument is out of range or the nuclei do not fit into the volume.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"shape must be (Z, Y, X) with positive sizes, got {shape}.")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is unknown; use one of {list(LAYOUTS)}.")
    if not anisotropy > 0:
        raise ConfigError(f"anisotropy must be > 0 (Z step / XY pixel size), got {anisotropy}.")
    if not 0 < diameter[0] <= diameter[1]:
        raise ConfigError(
            f"diameter must be a range (low, high) with 0 < low <= high, got {diameter}."
        )
    if not 0 <= n_nuclei < np.iinfo(np.uint16).max:
        raise ConfigError(f"n_nuclei must be from 0 to 65534, got {n_nuclei}.")
    rng = np.random.default_rng(seed)
    labels = _nuclei_labels(rng, shape, n_nuclei, layout, float(anisotropy), diameter)
    return _render(rng, labels, float(anisotropy)), labels
