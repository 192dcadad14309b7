"""U-Net and U-Net++ networks built from small blocks.

Shape contract of every network here: input ``(N, C_in, H, W)`` float32, output
``(N, C_out, H, W)`` logits for *any* ``H, W >= 1``. Inputs whose size is not a
multiple of ``2**depth`` are padded (reflect where possible) and the output is
cropped back, so odd image sizes need no care from the caller.
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


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, BatchNorm, ReLU) layers: ``(N, C_in, H, W) -> (N, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """2x2 stride-2 transposed conv, concatenation with skip(s), conv block.

    ``forward(x, skips)``: ``x`` is ``(N, C_low, H/2, W/2)``, each skip is
    ``(N, C_skip, H, W)``; returns ``(N, out_channels, H, W)``.
    """

    def __init__(self, low_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(low_channels, out_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat([*skips, self.up(x)], dim=1))


class _PaddedNet(nn.Module):
    """Pads inputs to a multiple of ``2**depth``, checks shapes, crops outputs back."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"the network takes a (batch, channels, height, width) tensor, got shape "
                f"{tuple(x.shape)}; add a batch axis with x[None] for a single image."
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"the network was built for {self.config.in_channels} input channel(s), got "
                f"{x.shape[1]}; convert the image (e.g. RGB vs grey) or build/train a model "
                f"with in_channels={x.shape[1]}."
            )

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        height, width = x.shape[-2:]
        multiple = self.config.size_multiple
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h == 0 and pad_w == 0:
            return x, (height, width)
        # Reflect padding keeps image statistics at the border; it needs pad < size.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        padded, (height, width) = self._pad(x)
        out = self._forward_padded(padded)
        if isinstance(out, list):
            return [o[..., :height, :width] for o in out]
        return out[..., :height, :width]

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        raise NotImplementedError


class UNet(_PaddedNet):
    """The reference U-Net: ``depth`` encoder blocks, a bottleneck, ``depth`` decoder blocks.

    With ``base_filters=64, depth=4`` the encoder has 64-128-256-512 filters and the
    bottleneck 1024, exactly as Ronneberger et al. (2015) and the reference recipe.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        widths = [config.base_filters * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        in_ch = config.in_channels
        for width in widths[:-1]:
            self.encoders.append(ConvBlock(in_ch, width))
            in_ch = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1])
        self.decoders = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], widths[level])
            for level in reversed(range(config.depth))
        )
        self.head = nn.Conv2d(widths[0], config.out_channels, kernel_size=1)

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
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
        depth = config.depth
        widths = [config.base_filters * 2**level for level in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.encoders = nn.ModuleList()
        in_ch = config.in_channels
        for width in widths:
            self.encoders.append(ConvBlock(in_ch, width))
            in_ch = width
        # nested[i][j - 1] builds X[i][j] for j = 1 .. depth - i
        self.nested = nn.ModuleList(
            nn.ModuleList(
                UpBlock(widths[level + 1], widths[level] * column, widths[level])
                for column in range(1, depth - level + 1)
            )
            for level in range(depth)
        )
        n_heads = depth if config.deep_supervision else 1
        self.heads = nn.ModuleList(
            nn.Conv2d(widths[0], config.out_channels, kernel_size=1) for _ in range(n_heads)
        )

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        depth = self.config.depth
        nodes: list[list[torch.Tensor]] = [[] for _ in range(depth + 1)]
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
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
    """
    if config is None:
        config = ModelConfig.from_preset(preset, **overrides)
    elif overrides:
        raise TypeError("give either a config or preset/overrides, not both")
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"a {config.architecture} with base_filters {config.base_filters} and depth "
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
            f"{source!r}: its weights do not fit its config ({config.architecture}, base_filters "
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
