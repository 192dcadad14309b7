"""Training patches of planes and volumes: cropping, augmentation, random batches.

A :class:`PlaneData` is one prepared training sample, a plane ``(C, Y, X)`` or a volume
``(C, Z, Y, X)`` with its targets (:func:`napari_unet.data.prepare_training_planes` makes
them). :class:`PatchSampler` draws random patches of a fixed shape from a list of them,
:func:`crop_patch` cuts one (reflect-padding samples smaller than the patch) and
:func:`augment_patch` changes it at random: :func:`flip_and_rotate` (geometry, the same
for image, targets and weights) then :func:`augment_intensity` (the image only). A further
augmentation step (such as colour) goes after these in :func:`augment_patch`, or in a
sampler that extends :meth:`PatchSampler.sample`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

#: A patch: image ``(C, *S)``, targets ``(C_out, *S)`` in 0..1, weights ``(C_out, *S)``.
Patch = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class PlaneData:
    """One training plane or volume, ready for patch sampling.

    Attributes
    ----------
    image : np.ndarray
        ``(C, Y, X)`` or ``(C, Z, Y, X)`` float32, normalised.
    targets : np.ndarray
        ``(C_out, ...)`` uint8 targets (0..255 = 0..1) of the image's spatial shape, see
        :func:`napari_unet.data.make_targets`.
    weights : np.ndarray or None
        ``(C_out, ...)`` uint8 loss weights, None = all ones.
    """

    image: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape: ``(Y, X)`` of a plane, ``(Z, Y, X)`` of a volume."""
        return tuple(self.image.shape[1:])

    @property
    def size(self) -> int:
        """Number of pixels (voxels)."""
        return int(np.prod(self.shape, dtype=np.int64))

    def part(self, axis: int, start: int, stop: int) -> PlaneData:
        """The sample's slab ``start:stop`` along spatial ``axis`` (views, not copies)."""
        index = (slice(None),) * (axis + 1) + (slice(start, stop),)
        weights = None if self.weights is None else self.weights[index]
        return PlaneData(self.image[index], self.targets[index], weights)


def crop_patch(plane: PlaneData, origin: Sequence[int], size: int | Sequence[int]) -> Patch:
    """Cut a patch of ``size`` (one side, or one per spatial axis) at ``origin``.

    Samples smaller than the patch are reflect-padded (edge-padded along an axis of one
    pixel). Returns ``(image (C, *S) float32, targets (C_out, *S) float32 in 0..1,
    weights (C_out, *S) float32)``; padded pixels get weight 0 so they never enter the loss.
    """
    shape = plane.shape
    sizes = (size,) * len(shape) if isinstance(size, int) else tuple(size)
    ends = [min(start + side, extent) for start, side, extent in zip(origin, sizes, shape)]
    window = (slice(None), *(slice(start, end) for start, end in zip(origin, ends)))
    image = plane.image[window]
    targets = plane.targets[window].astype(np.float32) / 255.0
    if plane.weights is None:
        weights = np.ones(targets.shape, np.float32)
    else:
        weights = plane.weights[window].astype(np.float32)
    pads = [side - (end - start) for start, end, side in zip(origin, ends, sizes)]
    if any(pads):
        pad = ((0, 0), *((0, amount) for amount in pads))
        # Reflect keeps the image statistics; numpy reflects repeatedly for big pads.
        mode = "reflect" if min(image.shape[1:]) > 1 else "edge"
        image = np.pad(image, pad, mode=mode)
        targets = np.pad(targets, pad, mode=mode)
        weights = np.pad(weights, pad, mode="constant")
    return np.ascontiguousarray(image), np.ascontiguousarray(targets), weights


def flip_and_rotate(patch: Patch, rng: np.random.Generator) -> Patch:
    """Random flips and 90-degree rotation, the same for image, targets and weights.

    X and Y flips with probability 1/2 each, a rotation in the XY plane by a random
    multiple of 90 degrees (XY patches are square), and on a volume a Z flip with
    probability 1/2 (Z is never swapped with X or Y: its step may be coarser).
    """
    arrays = list(patch)
    if rng.random() < 0.5:
        arrays = [array[..., ::-1] for array in arrays]
    if rng.random() < 0.5:
        arrays = [array[..., ::-1, :] for array in arrays]
    turns = int(rng.integers(4))
    if turns:
        arrays = [np.rot90(array, turns, axes=(-2, -1)) for array in arrays]
    if arrays[0].ndim == 4 and rng.random() < 0.5:
        arrays = [array[:, ::-1] for array in arrays]
    image, targets, weights = arrays
    return image, targets, weights


def augment_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random intensity change of a normalised patch; returns a new float32 array.

    Gamma U(0.7, 1.4) on the positive values, contrast x U(0.75, 1.33), brightness
    + U(-0.1, 0.1), and with probability 1/2 Gaussian noise of standard deviation
    U(0, 0.05). These mirror the variation between microscopes and stains; none changes
    what is an object.
    """
    image = np.array(image, dtype=np.float32)  # own copy before in-place edits
    gamma = np.float32(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    # In place where positive: half the time of gathering and scattering those pixels.
    np.power(image, gamma, out=image, where=image > 0)
    image *= np.float32(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    image += np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.5:
        sigma = rng.uniform(0.0, 0.05)
        image += rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return image


def augment_patch(
    image: np.ndarray, targets: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> Patch:
    """Random augmentation of one patch of a plane or a volume (numpy; cheap next to a
    training step): :func:`flip_and_rotate`, then :func:`augment_intensity`."""
    image, targets, weights = flip_and_rotate((image, targets, weights), rng)
    image = augment_intensity(image, rng)
    return image, np.ascontiguousarray(targets), np.ascontiguousarray(weights)


class PatchSampler:
    """Draws random training batches of patches from a list of planes or volumes.

    Parameters
    ----------
    planes : list of PlaneData
        The training planes, or volumes (all of one kind).
    patch_size : int or tuple of int
        Side of each patch (a square or a cube), or its shape (``(Z, Y, X)`` for
        volumes); samples smaller than it are reflect-padded (and the padding is masked
        out of the loss).
    sampling : {"area", "image"}
        ``area``: a sample is picked with probability proportional to its pixel count,
        so every pixel of the set is equally likely to be seen (large images are not
        under-used). ``image``: every sample equally often, whatever its size.
    augment : bool
        Apply :func:`augment_patch`.
    rng : np.random.Generator
        Source of randomness (seeded by the caller for reproducibility).
    """

    def __init__(
        self,
        planes: Sequence[PlaneData],
        patch_size: int | Sequence[int],
        sampling: str,
        augment: bool,
        rng: np.random.Generator,
    ) -> None:
        self.planes = list(planes)
        ndim = len(self.planes[0].shape)
        self.patch_shape = (
            (patch_size,) * ndim if isinstance(patch_size, int) else tuple(patch_size)
        )
        self.augment = augment
        self.rng = rng
        sizes = np.array([plane.size for plane in self.planes], dtype=np.float64)
        weights = sizes if sampling == "area" else np.ones_like(sizes)
        self.probabilities = weights / weights.sum()

    def patches_per_epoch(self) -> int:
        """Patches that cover the set's area (volume) about once (at least one per sample)."""
        total = sum(plane.size for plane in self.planes)
        patch = int(np.prod(self.patch_shape, dtype=np.int64))
        return max(len(self.planes), int(np.ceil(total / patch)))

    def sample(self, rng: np.random.Generator | None = None) -> Patch:
        """One random patch ``(image, targets, weights)`` as float32 arrays.

        Drawn with ``rng``, or with the sampler's own generator when None.
        """
        rng = self.rng if rng is None else rng
        plane = self.planes[int(rng.choice(len(self.planes), p=self.probabilities))]
        # Y and X first (the order of a plane's draws), then Z.
        spatial = plane.shape
        order = [len(spatial) - 2, len(spatial) - 1, *range(len(spatial) - 2)]
        origin = [0] * len(spatial)
        for axis in order:
            origin[axis] = int(rng.integers(max(spatial[axis] - self.patch_shape[axis], 0) + 1))
        patch = crop_patch(plane, origin, self.patch_shape)
        if self.augment:
            patch = augment_patch(*patch, rng)
        return patch

    def batch(self, batch_size: int, rng: np.random.Generator | None = None) -> Patch:
        """A stacked batch ``(N, C, *S), (N, C_out, *S), (N, C_out, *S)`` (see :meth:`sample`)."""
        patches = [self.sample(rng) for _ in range(batch_size)]
        return tuple(np.stack(parts) for parts in zip(*patches, strict=True))  # type: ignore[return-value]

    def epoch_batches(self, batch_size: int, steps: int, threads: int = 0) -> Iterator[Patch]:
        """The ``steps`` batches of one epoch, in order.

        With ``threads=0`` each batch is drawn from the sampler's generator when it is
        asked for. With ``threads > 0`` every batch gets its own generator, seeded from the
        sampler's one at the start of the epoch, and a pool of that many threads prepares
        up to ``2 * threads`` batches ahead while the caller trains on the current one
        (numpy releases the GIL in the array work). The batches are then the same for any
        number of threads (not the same as with 0), and the sampler's generator ends the
        epoch in the same state, so a resumed run continues identically. Closing the
        iterator early drops the batches not yet started.
        """
        if threads == 0:
            for _ in range(steps):
                yield self.batch(batch_size)
            return
        seeds = iter(self.rng.integers(2**63, size=steps).tolist())
        with ThreadPoolExecutor(threads, thread_name_prefix="napari-unet-patches") as pool:
            pending: deque[Future[Patch]] = deque()

            def submit_next() -> None:
                seed = next(seeds, None)
                if seed is not None:
                    pending.append(pool.submit(self.batch, batch_size, np.random.default_rng(seed)))

            for _ in range(2 * threads):
                submit_next()
            try:
                while pending:
                    batch = pending.popleft().result()
                    submit_next()
                    yield batch
            finally:
                for future in pending:
                    future.cancel()
