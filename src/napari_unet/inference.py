"""Fast inference of a trained network: folded BatchNorm, channels-last, optional
``torch.compile``, test-time augmentation, and the automatic tile size.

:class:`TilePredictor` is the predictor that :mod:`napari_unet.tiling` and
:mod:`napari_unet.prediction` pass tiles (or whole planes) to; :func:`auto_tile_size`
sizes tiles from the free memory of the device.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig
from napari_unet.io import available_memory

#: Largest automatic tile side: bigger tiles are not faster on a CPU and only
#: raise peak memory; a GPU gains from fewer, larger launches.
MAX_AUTO_TILE = {"cpu": 1024, "other": 2048}
MIN_AUTO_TILE = 256
#: Fraction of the free memory that the activations of one batch of tiles may use.
MEMORY_FRACTION = 0.25


#: Fast inference copies, keyed by the network they were made from; the key also
#: holds the parameters' versions, so a network trained further is rebuilt.
_FAST: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], dict[bool, nn.Module]]] = (
    weakref.WeakKeyDictionary()
)


def _fold_batchnorm(network: nn.Module) -> nn.Module:
    """A copy of ``network`` in eval mode with every (Conv, BatchNorm) pair folded (2D or 3D).

    Folding removes one full pass over every activation map; the result is
    numerically the same network.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(
                    norm, (nn.BatchNorm2d, nn.BatchNorm3d)
                ):
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = nn.Identity()
    return folded


def inference_network(
    network: nn.Module, device: torch.device, compiled: bool = False
) -> nn.Module:
    """The fastest equivalent of ``network`` for inference on ``device`` (cached).

    BatchNorm is folded into the convolutions and, on a CPU, weights and
    activations use the channels-last layout, which oneDNN's convolutions run
    fastest (see ``benchmarks/bench_predict.py``; ``channels_last_3d`` for a 3D
    network: a 32 x 128 x 128 volume ran 10% (``tiny``) to 22% (``fast``) faster than in
    the default layout on 2 shared CPU cores). With ``compiled`` that network
    is wrapped in ``torch.compile`` with frozen weights, which fuses the
    element-wise work (ReLU, concatenation) into the convolutions; compilation
    happens at the first call of each input shape. The original network is not
    modified.
    """
    tensors = [*network.parameters(), *network.buffers()]
    key = (str(device), *((t.data_ptr(), t._version) for t in tensors))
    cached = _FAST.get(network)
    if cached is None or cached[0] != key:
        fast = _fold_batchnorm(network).to(device)
        if device.type == "cpu":
            fast = fast.to(memory_format=_channels_last(network))
        cached = (key, {False: fast})
        _FAST[network] = cached
    versions = cached[1]
    if compiled and True not in versions:
        # Freezing turns the weights into constants of the graph (inference only),
        # which lets inductor pre-pack them for oneDNN; one graph per tile shape.
        versions[True] = torch.compile(versions[False], dynamic=False, options={"freezing": True})
    return versions[compiled]


def _channels_last(network: nn.Module) -> torch.memory_format:
    """The channels-last layout of the network's inputs: 4-D for planes, 5-D for volumes."""
    config = getattr(network, "config", None)
    return torch.channels_last_3d if getattr(config, "ndim", 2) == 3 else torch.channels_last


Transform = Callable[[torch.Tensor], torch.Tensor]


def _d4() -> list[tuple[Transform, Transform]]:
    """The 8 symmetries of a tile (4 rotations, each with and without a flip).

    Returned as ``(forward, inverse)`` pairs acting on the last two axes.
    """
    pairs = []
    for flip in (False, True):
        for k in range(4):

            def forward(t: torch.Tensor, k: int = k, flip: bool = flip) -> torch.Tensor:
                return torch.rot90(t.flip(-1) if flip else t, k, dims=(-2, -1))

            def inverse(t: torch.Tensor, k: int = k, flip: bool = flip) -> torch.Tensor:
                t = torch.rot90(t, -k, dims=(-2, -1))
                return t.flip(-1) if flip else t

            pairs.append((forward, inverse))
    return pairs


def _d4_with_z_flips() -> list[tuple[Transform, Transform]]:
    """The 16 symmetries of a volume tile: the 8 of its XY planes, each with and without a
    Z flip (Z is never swapped with Y or X, whose steps differ in anisotropic volumes)."""
    pairs = []
    for forward_xy, inverse_xy in _d4():
        for flip_z in (False, True):

            def forward(
                t: torch.Tensor, f: Transform = forward_xy, z: bool = flip_z
            ) -> torch.Tensor:
                return f(t.flip(-3) if z else t)

            def inverse(
                t: torch.Tensor, i: Transform = inverse_xy, z: bool = flip_z
            ) -> torch.Tensor:
                t = i(t)
                return t.flip(-3) if z else t

            pairs.append((forward, inverse))
    return pairs


class TilePredictor:
    """Sigmoid probabilities of a batch of tiles: the predictor of :func:`sliding_window`.

    Tiles are ``(N, C, h, w)`` for a 2D model and ``(N, C, d, h, w)`` for a 3D one.

    Parameters
    ----------
    model : TrainedModel
        The model; its network is wrapped by :func:`inference_network`.
    tta : bool
        Average the predictions of the 8 flips/rotations of each tile (of its XY planes),
        and for a 3D model of each of those flipped along Z too (16).
    compile : bool
        Use the ``torch.compile`` version of the network (see :class:`PredictConfig`);
        if compiling fails, warn once and predict with the uncompiled network.
    """

    def __init__(self, model: TrainedModel, tta: bool = False, compile: bool = False) -> None:
        self.model = model
        self.eager = inference_network(model.network, model.device)
        self.network = (
            inference_network(model.network, model.device, compiled=True) if compile else self.eager
        )
        volumes = model.config.ndim == 3
        self.memory_format = torch.channels_last_3d if volumes else torch.channels_last
        self.transforms = (_d4_with_z_flips() if volumes else _d4()) if tta else None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.network is self.eager:
            return self.network(x)
        try:
            return self.network(x)
        except Exception as error:  # torch.compile's errors have no common base class
            warnings.warn(
                f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); "
                "predicting without compiling. Install a C++ compiler (e.g. apt-get install "
                "g++) or leave compile off.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.network = self.eager
            return self.network(x)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.device.type == "cpu":
            x = x.contiguous(memory_format=self.memory_format)
        return torch.sigmoid(self._logits(x))

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, C_in, *tile)`` float32 -> ``(N, C_out, *tile)`` float32 probabilities."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))
            x = x.to(self.model.device)
            if self.transforms is None:
                out = self._probabilities(x)
            else:
                out = sum(
                    inverse(self._probabilities(forward(x))) for forward, inverse in self.transforms
                )
                out = out / len(self.transforms)
            return out.float().cpu().contiguous().numpy()


def _free_memory(device: torch.device) -> int:
    """Bytes of memory free for activations on ``device``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory()


def activation_bytes_per_pixel(config: ModelConfig) -> int:
    """Rough peak bytes of activations per input pixel (voxel, for a 3D model) in inference.

    Measured peaks (CPU, BatchNorm folded) are 7-7.5 float32 values per base
    filter per pixel for a U-Net (the full-resolution decoder step holds skip,
    upsampled, concatenated and convolved maps at once) and 15 for a depth-4
    U-Net++, which keeps every nested node; the estimate rounds them up. The
    full-resolution level dominates in 3D as in 2D, so the same figure holds per voxel.
    """
    per_filter = 8 if config.architecture == "unet" else 8 + 2 * config.depth
    return 4 * per_filter * config.base_filters


def auto_tile_size(
    config: ModelConfig, device: torch.device, tile_batch: int = 1, overlap: int = 64
) -> int:
    """Largest tile side whose activations fit in a fraction of the free memory.

    The result is a multiple of the network's size step, between 256 (or four
    times the overlap) and 1024 on a CPU / 2048 on a GPU.
    """
    budget = _free_memory(device) * MEMORY_FRACTION / tile_batch
    side = int(math.sqrt(budget / activation_bytes_per_pixel(config)))
    largest = MAX_AUTO_TILE["cpu" if device.type == "cpu" else "other"]
    side = max(min(side, largest), MIN_AUTO_TILE, 4 * overlap)
    return side // config.size_multiple * config.size_multiple


def auto_tile_shape(
    config: ModelConfig,
    device: torch.device,
    volume_shape: tuple[int, int, int],
    tile_size: int | None = None,
    tile_batch: int = 1,
    overlap: int = 64,
) -> tuple[int, int, int]:
    """Largest ``(Z, Y, X)`` tile of a 3D model for a volume of ``volume_shape``.

    The tile is as close to a cube in space as the volume allows (Z side = XY side over
    the model's anisotropy) and holds as many voxels as :func:`auto_tile_size` allows
    pixels in a plane (its squared side): one tile costs about what one 2D tile costs, so
    memory stays bounded by the tile. A volume thinner than that tile is covered in Z by
    one tile and its XY side grows to keep the voxel count. ``tile_size`` given: the
    largest XY side, and Z side = that over the anisotropy. Sides are multiples of the
    network's size step per axis, and never larger than the volume needs.
    """
    z_multiple, xy_multiple = config.size_multiples[0], config.size_multiples[1]
    depth = volume_shape[0]
    anisotropy = config.anisotropy
    if tile_size is not None:
        side = tile_size
        z_side = max(1, round(side / anisotropy))
    else:
        voxels = auto_tile_size(config, device, tile_batch, overlap) ** 2
        side = round((voxels * anisotropy) ** (1 / 3))
        z_side = max(1, round(side / anisotropy))
        if z_side >= depth:
            z_side = depth
            side = int(math.sqrt(voxels / depth))
        side = max(side // xy_multiple * xy_multiple, xy_multiple)
    z_side = min(math.ceil(z_side / z_multiple) * z_multiple, max(depth, z_multiple))
    return z_side, side, side


def tile_overlaps(tile: tuple[int, ...], overlap: int, anisotropy: float = 1.0) -> tuple[int, ...]:
    """Overlap per axis of 3D tiles: ``overlap`` in XY (Z: over the anisotropy), at most a
    quarter of the tile's side so that neighbouring tiles still advance."""
    wanted = (round(overlap / anisotropy), overlap, overlap)[-len(tile) :]
    return tuple(min(o, side // 4) for o, side in zip(wanted, tile))
