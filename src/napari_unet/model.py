"""U-Net and U-Net++ networks built from small blocks, for planes (2D) and volumes (3D).

Shape contract of every network here: a 2D network (``config.ndim == 2``) takes
``(N, C_in, H, W)`` float32 and returns ``(N, C_out, H, W)`` logits; a 3D network
(``config.ndim == 3``) takes ``(N, C_in, Z, Y, X)`` and returns ``(N, C_out, Z, Y, X)``,
for *any* sizes ``>= 1``. Inputs are padded along each axis to the multiple that axis
needs (:attr:`~napari_unet.config.ModelConfig.size_multiples`: ``2**depth`` in Y and X,
less in Z where a 3D network leaves Z unpooled) and the output is cropped back, so odd
sizes need no care from the caller. A 3D network is the same block design with
Conv3d/BatchNorm3d, max-pooling with each level's kernel of
:attr:`~napari_unet.config.ModelConfig.pool_kernels` and transposed convolutions whose
kernel and stride are that kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_unet.config import ModelConfig
from napari_unet.errors import ConfigError, ModelFileError

#: Most parameters a network may have (4 GB as float32); the reference U-Net has 31 M.
#: Checked from the config before anything is allocated.
MAX_PARAMETERS = 1_000_000_000

#: The layers of a network of planes and of volumes.
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_UP = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
#: How the input of a network of ``ndim`` is described in messages.
_AXES = {2: "(batch, channels, height, width)", 3: "(batch, channels, Z, Y, X)"}


class ConvBlock(nn.Sequential):
    """Two (3x3[x3] conv, BatchNorm, ReLU) layers: ``(N, C_in, *S) -> (N, C_out, *S)``."""

    def __init__(self, in_channels: int, out_channels: int, ndim: int = 2) -> None:
        conv, norm = _CONV[ndim], _NORM[ndim]
        super().__init__(
            conv(in_channels, out_channels, kernel_size=3, padding=1),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, kernel_size=3, padding=1),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed conv (kernel = stride = the level's pooling), concatenation, conv block.

    ``forward(x, skips)``: ``x`` is ``(N, C_low, *S / kernel)``, each skip is
    ``(N, C_skip, *S)``; returns ``(N, out_channels, *S)``. 2D: ``kernel`` (2, 2).
    """

    def __init__(
        self,
        low_channels: int,
        skip_channels: int,
        out_channels: int,
        kernel: tuple[int, ...] = (2, 2),
    ) -> None:
        super().__init__()
        ndim = len(kernel)
        # A 2D kernel stays the int 2 of the original layer (same repr, same weights).
        size: int | tuple[int, ...] = 2 if ndim == 2 else kernel
        self.up = _UP[ndim](low_channels, out_channels, kernel_size=size, stride=size)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels, ndim)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat([*skips, self.up(x)], dim=1))


def _pools(config: ModelConfig) -> nn.ModuleList:
    """One max-pooling per level, with that level's kernel (no weights)."""
    pool = _POOL[config.ndim]
    return nn.ModuleList(pool(2 if config.ndim == 2 else kernel) for kernel in config.pool_kernels)


class _PaddedNet(nn.Module):
    """Pads inputs per axis to the multiple it needs, checks shapes, crops outputs back."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def _check_input(self, x: torch.Tensor) -> None:
        ndim = self.config.ndim
        if x.ndim != ndim + 2:
            fixes = {
                (2, 3): "add a batch axis with x[None] for a single image",
                (2, 5): "use a 3D model (ndim=3) for volumes",
                (3, 4): "add a batch axis with x[None] for a single volume, or use a 2D model "
                "for a batch of planes",
            }
            fix = fixes.get((ndim, x.ndim), f"give {_AXES[ndim]}")
            raise ValueError(
                f"the {ndim}D network takes a {_AXES[ndim]} tensor, got shape "
                f"{tuple(x.shape)}; {fix}."
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"the network was built for {self.config.in_channels} input channel(s), got "
                f"{x.shape[1]}; convert the image (e.g. RGB vs grey) or build/train a model "
                f"with in_channels={x.shape[1]}."
            )

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        sizes = tuple(x.shape[2:])
        pads = [(-size) % multiple for size, multiple in zip(sizes, self.config.size_multiples)]
        if not any(pads):
            return x, sizes
        # Reflect padding keeps image statistics at the border; it needs pad < size.
        mode = "reflect" if all(pad < size for pad, size in zip(pads, sizes)) else "replicate"
        # F.pad takes (before, after) pairs from the last axis backwards.
        widths = [width for pad in reversed(pads) for width in (0, pad)]
        return F.pad(x, widths, mode=mode), sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        padded, sizes = self._pad(x)
        out = self._forward_padded(padded)
        crop = (..., *(slice(0, size) for size in sizes))
        if isinstance(out, list):
            return [o[crop] for o in out]
        return out[crop]

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        raise NotImplementedError


class UNet(_PaddedNet):
    """The reference U-Net: ``depth`` encoder blocks, a bottleneck, ``depth`` decoder blocks.

    With ``base_filters=64, depth=4`` the encoder has 64-128-256-512 filters and the
    bottleneck 1024, exactly as Ronneberger et al. (2015) and the reference recipe.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        ndim, kernels = config.ndim, config.pool_kernels
        widths = [config.base_filters * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        in_ch = config.in_channels
        for width in widths[:-1]:
            self.encoders.append(ConvBlock(in_ch, width, ndim))
            in_ch = width
        self.pools = _pools(config)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], ndim)
        self.decoders = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], widths[level], kernels[level])
            for level in reversed(range(config.depth))
        )
        self.head = _CONV[ndim](widths[0], config.out_channels, kernel_size=1)

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, [skip])
        return self.head(x)


class UNetPlusPlus(_PaddedNet):
    """U-Net++ (Zhou et al. 2018): nested, dense skip pathways.

    Node ``X[i][j]`` (level ``i``, column ``j``) sees all earlier nodes of its level
    and the upsampled ``X[i+1][j-1]``. With ``deep_supervision`` the network returns,
    in training mode, a list of ``depth`` full-resolution outputs (one per nested
    column ``X[0][1..depth]``); in eval mode it returns the deepest one.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        depth, ndim, kernels = config.depth, config.ndim, config.pool_kernels
        widths = [config.base_filters * 2**level for level in range(depth + 1)]
        self.pools = _pools(config)
        self.encoders = nn.ModuleList()
        in_ch = config.in_channels
        for width in widths:
            self.encoders.append(ConvBlock(in_ch, width, ndim))
            in_ch = width
        # nested[i][j - 1] builds X[i][j] for j = 1 .. depth - i
        self.nested = nn.ModuleList(
            nn.ModuleList(
                UpBlock(widths[level + 1], widths[level] * column, widths[level], kernels[level])
                for column in range(1, depth - level + 1)
            )
            for level in range(depth)
        )
        n_heads = depth if config.deep_supervision else 1
        self.heads = nn.ModuleList(
            _CONV[ndim](widths[0], config.out_channels, kernel_size=1) for _ in range(n_heads)
        )

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        depth = self.config.depth
        nodes: list[list[torch.Tensor]] = [[] for _ in range(depth + 1)]
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pools[level - 1](x))
            nodes[level].append(x)
        # Fill columns left to right; X[i][j] needs X[i+1][j-1], already built.
        for column in range(1, depth + 1):
            for level in range(depth - column + 1):
                block = self.nested[level][column - 1]
                nodes[level].append(block(nodes[level + 1][column - 1], nodes[level][:column]))
        if self.config.deep_supervision and self.training:
            return [head(node) for head, node in zip(self.heads, nodes[0][1:])]
        return self.heads[-1](nodes[0][depth])


def build_model(
    config: ModelConfig | None = None, preset: str = "reference", **overrides: Any
) -> UNet | UNetPlusPlus:
    """Build a network from a config, or from a preset plus overrides.

    Parameters
    ----------
    config : ModelConfig, optional
        Full configuration; when given, ``preset`` and ``overrides`` must be empty.
    preset : {"reference", "fast", "tiny", "unetpp"}
        Named starting point (see :data:`napari_unet.config.PRESETS`).
    **overrides
        Any :class:`~napari_unet.config.ModelConfig` field, e.g. ``in_channels=1``.

    Returns
    -------
    UNet or UNetPlusPlus
        The network, returning logits. ``model.config`` holds its configuration.

    Examples
    --------
    >>> net = build_model(preset="tiny", in_channels=1)
    >>> net(torch.zeros(1, 1, 37, 50)).shape
    torch.Size([1, 1, 37, 50])
    >>> net3d = build_model(preset="tiny", in_channels=1, ndim=3, anisotropy=2)
    >>> net3d(torch.zeros(1, 1, 9, 20, 21)).shape
    torch.Size([1, 1, 9, 20, 21])
    """
    if config is None:
        config = ModelConfig.from_preset(preset, **overrides)
    elif overrides:
        raise TypeError("give either a config or preset/overrides, not both")
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"a {config.ndim}D {config.architecture} with base_filters {config.base_filters} and "
            f"depth "
            f"{config.depth} has {count / 1e6:,.0f} M parameters ({count * 4 / 2**30:.1f} GiB), "
            f"over the {MAX_PARAMETERS / 1e6:,.0f} M napari-unet builds; lower base_filters or "
            "depth."
        )
    return _network_class(config)(config)


def _network_class(config: ModelConfig) -> type[UNet | UNetPlusPlus]:
    return UNetPlusPlus if config.architecture == "unetpp" else UNet


def _meta_network(config: ModelConfig) -> UNet | UNetPlusPlus:
    """The network of ``config`` on the meta device: shapes only, no memory allocated."""
    with torch.device("meta"):
        return _network_class(config)(config)


def parameter_count(config: ModelConfig) -> int:
    """Number of parameters of the network ``config`` describes, computed without building it.

    The network is made on the meta device, so even a config of billions of
    parameters costs milliseconds and no memory.
    """
    return sum(p.numel() for p in _meta_network(config).parameters())


def check_weights(config: ModelConfig, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights that do not fit ``config`` or are not finite, before a network is built.

    The expected names and shapes come from the meta device, so a small file whose
    config describes a huge network is refused without allocating it.

    Raises
    ------
    ModelFileError
        One line naming the first problems: missing, unexpected or misshapen weights,
        weights of the wrong kind, or NaN/infinite values.
    """
    expected = _meta_network(config).state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    misshapen = [
        name for name in expected if name in state and state[name].shape != expected[name].shape
    ]
    if missing or unexpected or misshapen:
        problems = [
            f"{len(found)} {what} (e.g. {found[0]})"
            for what, found in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", misshapen),
            )
            if found
        ]
        if misshapen:
            name = misshapen[0]
            problems[-1] = (
                f"{len(misshapen)} of another shape (e.g. {name}: {tuple(state[name].shape)} in "
                f"the file, {tuple(expected[name].shape)} for the config)"
            )
        raise ModelFileError(
            f"{source!r}: its weights do not fit its config ({config.ndim}D "
            f"{config.architecture}, base_filters "
            f"{config.base_filters}, depth {config.depth}): {', '.join(problems)}; re-save the "
            "model with napari-unet."
        )
    for name, value in state.items():
        if value.is_floating_point() != expected[name].is_floating_point() or value.is_complex():
            raise ModelFileError(
                f"{source!r}: weight {name} is stored as {value.dtype}, not as "
                f"{expected[name].dtype}; re-save the model with napari-unet."
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(
                f"{source!r}: weight {name} holds NaN or infinite values (training diverged or "
                "the file is damaged); use an earlier checkpoint or retrain."
            )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def select_device(preference: str = "auto") -> torch.device:
    """Pick the compute device: CUDA, then Apple MPS, then CPU, unless overridden.

    Parameters
    ----------
    preference : str
        ``"auto"`` or any torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises
    ------
    ValueError
        If the requested device is not available on this machine.
    """
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as error:
        raise ValueError(
            f"device {preference!r} is not a device name; use auto, cpu, cuda or mps."
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS was requested but is not available here; use --device cpu.")
    return device
