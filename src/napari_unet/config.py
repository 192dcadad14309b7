"""Validated settings for the model, its input normalisation and its targets.

Every setting is checked when the object is built, before any worker thread or
training run starts, and every error message says what to change. The objects
serialise to plain JSON-compatible dictionaries so that a model file can carry
the exact configuration that built it (see :mod:`napari_unet.checkpoint`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from napari_unet.errors import ConfigError

Architecture = Literal["unet", "unetpp"]
Target = Literal["foreground", "contour", "distance"]

#: Presets of :func:`napari_unet.model.build_model`: base filter count and depth.
PRESETS: dict[str, dict[str, Any]] = {
    # The original recipe: 64-128-256-512 encoder, 1024-filter bottleneck.
    "reference": {"architecture": "unet", "base_filters": 64, "depth": 4},
    "fast": {"architecture": "unet", "base_filters": 32, "depth": 4},
    "tiny": {"architecture": "unet", "base_filters": 16, "depth": 4},
    "unetpp": {"architecture": "unetpp", "base_filters": 32, "depth": 4},
}

#: Number of network output channels each target needs.
TARGET_CHANNELS: dict[str, int] = {
    # foreground probability only (the reference)
    "foreground": 1,
    # foreground probability + probability of a pixel lying on an object's boundary
    "contour": 2,
    # foreground probability + distance to the background, scaled to [0, 1] per object
    "distance": 2,
}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from ``data``, refusing unknown keys with a clear message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    _check(
        not unknown,
        f"Unknown {where} setting(s) {unknown}; valid settings are {sorted(known)}.",
    )
    return cls(**data)


@dataclass(frozen=True)
class NormalizationConfig:
    """Per-image intensity normalisation, repeated identically at prediction time.

    Parameters
    ----------
    mode : {"percentile", "minmax", "none"}
        ``percentile`` maps the ``low`` and ``high`` percentiles of each image
        (over all channels) to 0 and 1; ``minmax`` maps min/max to 0/1; ``none``
        only casts to float32.
    low, high : float
        Percentiles used by the ``percentile`` mode, ``0 <= low < high <= 100``.
    """

    mode: Literal["percentile", "minmax", "none"] = "percentile"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        _check(
            self.mode in ("percentile", "minmax", "none"),
            f"normalization mode {self.mode!r} is unknown; use 'percentile', 'minmax' or 'none'.",
        )
        _check(
            0.0 <= self.low < self.high <= 100.0,
            f"normalization percentiles need 0 <= low < high <= 100, got low={self.low}, "
            f"high={self.high}; try low=1, high=99.8.",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary for JSON / model files."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationConfig:
        """Inverse of :meth:`to_dict`."""
        return _from_dict(cls, data, "normalization")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network and to feed it like it was trained.

    Parameters
    ----------
    architecture : {"unet", "unetpp"}
        Plain U-Net (Ronneberger et al. 2015) or U-Net++ (nested dense skips).
    in_channels : int
        Image channels the network takes (3 for RGB, 1 for grey).
    base_filters : int
        Filters of the first encoder level; level ``i`` has ``base_filters * 2**i``.
    depth : int
        Number of 2x2 max-pool steps (4 in the reference: 64-128-256-512 + 1024).
    target : {"foreground", "contour", "distance"}
        What the network learns; sets :attr:`out_channels` (see ``TARGET_CHANNELS``).
    deep_supervision : bool
        U-Net++ only: return one output per nested level while training.
    normalization : NormalizationConfig
        Input normalisation the model was trained with.
    preset : str or None
        Name of the preset it was built from, for display only.
    """

    architecture: Architecture = "unet"
    in_channels: int = 3
    base_filters: int = 64
    depth: int = 4
    target: Target = "foreground"
    deep_supervision: bool = False
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    preset: str | None = None

    def __post_init__(self) -> None:
        _check(
            self.architecture in ("unet", "unetpp"),
            f"architecture {self.architecture!r} is unknown; use 'unet' or 'unetpp'.",
        )
        _check(
            isinstance(self.in_channels, int) and 1 <= self.in_channels <= 64,
            f"in_channels must be an integer from 1 to 64, got {self.in_channels!r}.",
        )
        _check(
            isinstance(self.base_filters, int) and 1 <= self.base_filters <= 256,
            f"base_filters must be an integer from 1 to 256, got {self.base_filters!r}; "
            "presets use 16 (tiny), 32 (fast) or 64 (reference).",
        )
        _check(
            isinstance(self.depth, int) and 1 <= self.depth <= 6,
            f"depth must be an integer from 1 to 6, got {self.depth!r}; the reference uses 4.",
        )
        _check(
            self.target in TARGET_CHANNELS,
            f"target {self.target!r} is unknown; use one of {sorted(TARGET_CHANNELS)}.",
        )
        _check(
            not self.deep_supervision or self.architecture == "unetpp",
            "deep_supervision needs architecture='unetpp'; switch it off for a plain U-Net.",
        )
        if isinstance(self.normalization, dict):
            object.__setattr__(
                self, "normalization", NormalizationConfig.from_dict(self.normalization)
            )
        _check(
            isinstance(self.normalization, NormalizationConfig),
            f"normalization must be a NormalizationConfig or a mapping, got "
            f"{type(self.normalization).__name__}.",
        )

    @property
    def out_channels(self) -> int:
        """Output channels the network produces for :attr:`target`."""
        return TARGET_CHANNELS[self.target]

    @property
    def size_multiple(self) -> int:
        """Spatial size the network needs internally (inputs are padded to it)."""
        return 2**self.depth

    @classmethod
    def from_preset(cls, preset: str = "reference", **overrides: Any) -> ModelConfig:
        """Build a config from a named preset, then apply ``overrides``.

        Raises
        ------
        ConfigError
            If the preset is unknown or an override is invalid.
        """
        _check(
            preset in PRESETS,
            f"preset {preset!r} is unknown; use one of {sorted(PRESETS)}.",
        )
        values = {**PRESETS[preset], "preset": preset, **overrides}
        return _from_dict(cls, values, "model")

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary for JSON / model files."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        return _from_dict(cls, dict(data), "model")
