"""Every validated settings class: model, normalisation, training, prediction, tuning grid.

Each setting is a dataclass field whose :class:`~napari_unet.settings.Rule` says what
values it takes; :class:`~napari_unet.settings.Settings`, the base of every class here,
checks the rules when an object is built, before any worker thread or training run
starts, and every error message says what to change. The same rules give the command
line its options (:mod:`napari_unet.cli`, one flag per field, named after it), so the
two cannot drift.

The objects serialise to plain JSON-compatible dictionaries so that a model file can
carry the exact configuration that built it (see :mod:`napari_unet.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from napari_unet.errors import ConfigError
from napari_unet.modality import postprocess_for_modality
from napari_unet.settings import Settings, check, setting

if TYPE_CHECKING:
    import torch

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
#: The same presets for a 3D network (``ndim=3``): a 3x3x3 convolution has three times
#: the weights of a 3x3 one and a volume patch many times the voxels of a plane, so 3D
#: nets start narrower and one level shallower, as in Cicek et al.'s 3D U-Net (32 filters,
#: 3 poolings). ``tiny`` trains on 2 CPU cores in minutes.
PRESETS_3D: dict[str, dict[str, Any]] = {
    "reference": {"architecture": "unet", "base_filters": 32, "depth": 3},
    "fast": {"architecture": "unet", "base_filters": 16, "depth": 3},
    "tiny": {"architecture": "unet", "base_filters": 8, "depth": 3},
    "unetpp": {"architecture": "unetpp", "base_filters": 16, "depth": 3},
}
#: A 3D network leaves Z unpooled at a level while the Z step is at least this many
#: times the XY step there (see :func:`pool_kernels`).
Z_POOL_RATIO = 2**0.5

#: Number of network output channels each target needs.
TARGET_CHANNELS: dict[str, int] = {
    # foreground probability only (the reference)
    "foreground": 1,
    # foreground probability + probability of a pixel lying on an object's boundary
    "contour": 2,
    # foreground probability + distance to the background, scaled to [0, 1] per object
    "distance": 2,
}

#: Losses :func:`napari_unet.losses.compute_loss` knows.
LOSSES = ("bce", "dice", "bce+dice")
#: How label values are read: ``instance`` (0 = background, 1..N objects), ``binary``
#: (0 = background, anything else = object; objects are the connected components) and
#: ``sparse`` scribbles (0 = not annotated, ignored by the loss; 1 = background; 2 = object).
LABEL_MODES = ("instance", "binary", "sparse")
SCHEDULES = ("plateau", "onecycle", "cosine")
SAMPLINGS = ("area", "image", "modality")
#: What a fine-tune can keep fixed (``TrainConfig.freeze``).
FREEZE_CHOICES = ("encoder+bottleneck", "encoder", "none")
#: How prediction treats the planes of a stack: one 3D volume, or each plane on its own.
STACK_MODES = ("volume", "planes")
#: The ways :mod:`napari_unet.volume` turns a 2D model's planes into 3D objects.
VOLUME_METHODS = ("link", "watershed", "orthogonal")
#: Why a contact weight and sparse scribbles do not go together (the config's check and
#: :func:`napari_unet.data.make_targets` say it alike).
SPARSE_CONTACT_WEIGHT_ERROR = (
    "contact_weight needs instance or binary labels: sparse scribbles mark no separate "
    "objects. Leave contact_weight at 1."
)
#: Post-processing used when neither the caller nor the model file sets a value. A model
#: file may carry values tuned on its validation data in ``metadata["postprocess"]``.
DEFAULT_POSTPROCESS: dict[str, float | int] = {
    "threshold": 0.5,
    "min_size": 8,
    "seed_threshold": 0.5,
    # 0: no hysteresis, objects are split at ``threshold``.
    "core_threshold": 0.0,
}
#: ``seed_threshold`` by target, where it differs from :data:`DEFAULT_POSTPROCESS`'s:
#: for ``distance`` it is the height a peak of the predicted distance (0..1 per object)
#: must rise above the saddle to a higher peak to seed an object of its own.
DEFAULT_SEED_THRESHOLDS: dict[str, float] = {"distance": 0.2}
#: Tuning grids' seed values by target (see :class:`PostprocessGrid`).
GRID_SEED_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "contour": (0.4, 0.5, 0.6),
    "distance": (0.1, 0.2, 0.3),
}
#: The settings a :class:`PostprocessGrid` varies, in table order.
GRID_SETTINGS = ("threshold", "seed_threshold", "core_threshold", "min_size")
#: Most combinations one grid may hold (each costs one post-processing of every image).
MAX_COMBINATIONS = 2000
#: Bounds of a probability strictly between 0 and 1, and of one from 0 to under 1.
OPEN_UNIT = {"low": 0, "high": 1, "open_low": True, "open_high": True}
HALF_OPEN_UNIT = {"low": 0, "high": 1, "open_high": True}


@dataclass(frozen=True)
class NormalizationConfig(Settings):
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

    WHAT: ClassVar[str] = "normalization"
    LABEL: ClassVar[str] = "normalization "

    mode: Literal["percentile", "minmax", "none"] = setting(
        "percentile",
        kind="choice",
        choices=("percentile", "minmax", "none"),
        aliases=("--normalization",),
        help="per-image intensity normalisation: percentile (low-high), minmax or none",
    )
    low: float = setting(1.0, kind="float", help="percentile mapped to 0")
    high: float = setting(99.8, kind="float", help="percentile mapped to 1")

    def _check_together(self) -> None:
        check(
            0.0 <= self.low < self.high <= 100.0,
            f"normalization percentiles need 0 <= low < high <= 100, got low={self.low}, "
            f"high={self.high}; try low=1, high=99.8.",
        )


@dataclass(frozen=True)
class ModelConfig(Settings):
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
    ndim : {2, 3}
        Spatial dimensions: 2, a network of planes ``(N, C, Y, X)``; 3, a network of
        volumes ``(N, C, Z, Y, X)`` (Conv3d, pooling from :attr:`pool_kernels`). Model
        files from before this setting are 2D.
    anisotropy : float
        3D only: the Z step over the XY pixel size of the volumes the model is made for
        (2 when planes are twice as far apart as pixels); sets which levels pool Z
        (:func:`pool_kernels`) and the Z step prediction resamples volumes to. 1 for 2D.
    """

    WHAT: ClassVar[str] = "model"

    architecture: Architecture = setting(
        "unet", kind="choice", choices=("unet", "unetpp"), help="plain U-Net or U-Net++"
    )
    in_channels: int = setting(
        3, kind="int", low=1, high=64, help="image channels (3 for RGB, 1 for grey)"
    )
    base_filters: int = setting(
        64,
        kind="int",
        low=1,
        high=256,
        hint="presets use 16 (tiny), 32 (fast) or 64 (reference)",
        help="filters of the first encoder level",
    )
    depth: int = setting(
        4, kind="int", low=1, high=6, hint="the reference uses 4", help="number of 2x2 poolings"
    )
    target: Target = setting(
        "foreground",
        kind="choice",
        choices=tuple(TARGET_CHANNELS),
        help="what the network learns",
    )
    deep_supervision: bool = setting(
        False, kind="bool", help="U-Net++ only: one loss per nested level"
    )
    normalization: NormalizationConfig = setting(
        factory=NormalizationConfig,
        kind="config",
        config=NormalizationConfig,
        prefix="normalization_",
        help="input normalisation",
    )
    # any name (for display; model files may carry others), the command line offers PRESETS
    preset: str | None = setting(
        None,
        kind="str",
        choices=tuple(PRESETS),
        none="no preset",
        help="network size: base filters and depth",
    )
    ndim: int = setting(
        2,
        kind="int",
        low=2,
        high=3,
        hint="use 2 for a network of planes or 3 for a network of volumes",
        help="2 (a network of planes) or 3 (a native 3D network of volumes)",
    )
    anisotropy: float = setting(
        1.0,
        kind="float",
        low=0,
        high=1000,
        open_low=True,
        hint="use 1 for cubic voxels",
        help="3D models: Z step / XY pixel size of the volumes the model is made for",
    )

    def _check_together(self) -> None:
        check(
            not self.deep_supervision or self.architecture == "unetpp",
            "deep_supervision needs architecture='unetpp'; switch it off for a plain U-Net.",
        )
        check(
            self.ndim == 3 or self.anisotropy == 1.0,
            f"anisotropy ({self.anisotropy:g}) is for 3D models; use ndim=3, or leave "
            "anisotropy at 1 for a 2D model (prediction takes a volume's anisotropy from "
            "PredictConfig.anisotropy).",
        )

    @property
    def out_channels(self) -> int:
        """Output channels the network produces for :attr:`target`."""
        return TARGET_CHANNELS[self.target]

    @property
    def size_multiple(self) -> int:
        """Y and X size the network needs internally (inputs are padded to it)."""
        return 2**self.depth

    @property
    def pool_kernels(self) -> tuple[tuple[int, ...], ...]:
        """Pooling kernel of each level, one size per spatial axis (see :func:`pool_kernels`)."""
        return pool_kernels(self.depth, self.ndim, self.anisotropy)

    @property
    def size_multiples(self) -> tuple[int, ...]:
        """Size each spatial axis (``(Y, X)`` or ``(Z, Y, X)``) is padded to a multiple of."""
        kernels = self.pool_kernels
        return tuple(math.prod(kernel[axis] for kernel in kernels) for axis in range(self.ndim))

    @classmethod
    def from_preset(cls, preset: str = "reference", **overrides: Any) -> ModelConfig:
        """Build a config from a named preset, then apply ``overrides``.

        ``ndim=3`` among the overrides takes the preset's 3D values (:data:`PRESETS_3D`).

        Raises
        ------
        ConfigError
            If the preset is unknown or an override is invalid.
        """
        return cls.from_dict({**preset_values(preset, overrides.get("ndim", 2)), **overrides})

    @classmethod
    def from_options(cls, **options: Any) -> ModelConfig:
        """Build from option names; None leaves a setting to the preset (or the default)."""
        given = {name: value for name, value in options.items() if value is not None}
        preset = given.get("preset")
        if preset:
            given = {**preset_values(preset, given.get("ndim", 2)), **given}
        return super().from_options(**given)


def preset_values(preset: str, ndim: int = 2) -> dict[str, Any]:
    """The settings of a named preset (with its name) for ``ndim``; ConfigError if unknown."""
    check(preset in PRESETS, f"preset {preset!r} is unknown; use one of {sorted(PRESETS)}.")
    return {**(PRESETS_3D if ndim == 3 else PRESETS)[preset], "preset": preset}


def pool_kernels(depth: int, ndim: int = 2, anisotropy: float = 1.0) -> tuple[tuple[int, ...], ...]:
    """The max-pooling kernel (= stride) of each of a U-Net's ``depth`` levels.

    A 2D network pools ``(2, 2)`` at every level. A 3D network of volumes whose Z step
    is ``anisotropy`` times the XY step pools ``(1, 2, 2)``, leaving Z alone, at a level
    where the Z step is still at least :data:`Z_POOL_RATIO` (about 1.41) times the XY
    step there, and ``(2, 2, 2)`` otherwise, as StarDist 3D and nnU-Net do. Each level
    then sees voxels as close to cubic as halving allows: skipping Z halves the ratio,
    and the threshold is where that brings it closer to 1 than pooling Z would (in log
    scale). With ``anisotropy`` 1 a 3D net pools ``(2, 2, 2)`` throughout; with 2 its
    first level pools ``(1, 2, 2)``, with 3 or 4 its first two.

    Parameters
    ----------
    depth : int
        Number of poolings.
    ndim : {2, 3}
        Spatial dimensions of the network.
    anisotropy : float
        Z step over XY pixel size of the data, > 0 (3D only).

    Returns
    -------
    tuple of tuple of int
        ``depth`` kernels, each ``(2, 2)`` or ``(kz, 2, 2)`` with ``kz`` 1 or 2.
    """
    if ndim == 2:
        return ((2, 2),) * depth
    kernels = []
    z_over_xy = anisotropy
    for _ in range(depth):
        pool_z = z_over_xy < Z_POOL_RATIO
        kernels.append((2 if pool_z else 1, 2, 2))
        # XY doubles its step at every level; Z only where it is pooled.
        z_over_xy = z_over_xy if pool_z else z_over_xy / 2
    return tuple(kernels)


def _reference_model() -> ModelConfig:
    return ModelConfig.from_preset("reference")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Validated training settings (defaults: the reference recipe).

    Parameters
    ----------
    model : ModelConfig
        Network to build (ignored when fine-tuning with ``init`` or resuming: the
        model file's config is used then).
    epochs : int
        Number of epochs (validation rounds).
    batch_size : int
        Patches per optimisation step.
    learning_rate : float
        Adam learning rate (the peak rate for ``onecycle``).
    patch_size : int
        Side of the square training patches (in Y and X for a 3D model); smaller images
        are reflect-padded.
    patch_depth : int or None
        3D models (``model.ndim == 3``): planes (Z) of each training patch. None: the
        same physical extent as ``patch_size`` (``patch_size`` over the model's
        anisotropy), at most the depth of the deepest training volume.
    augment : bool
        Random flips, 90-degree rotations, intensity and noise changes
        (see :func:`napari_unet.patches.augment_patch`).
    loss : {"bce", "dice", "bce+dice"}
        Training loss (see :mod:`napari_unet.losses`).
    label_mode : {"instance", "binary", "sparse"}
        How label values are read (see :data:`LABEL_MODES`).
    val_fraction : float
        Share of the planes held out for validation when no validation data is given
        (seeded). With 0, or a single plane, validation runs on the training data.
    seed : int
        Seeds weights, split, patch sampling and augmentation (reproducible on CPU).
    early_stopping_patience : int or None
        Stop after this many epochs without a better validation loss; None = never.
    plateau_patience : int
        ``plateau`` schedule: epochs without improvement before the rate drops x0.1.
    min_lr : float
        Floor of the learning rate for ``plateau`` and ``cosine``.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
    steps_per_epoch : int or None
        Batches per epoch; None = enough patches to cover the training area about once.
    schedule : {"plateau", "onecycle", "cosine"}
        ``plateau`` (reference): x0.1 after ``plateau_patience`` epochs without
        improvement. ``onecycle``: warm-up to ``learning_rate`` then anneal to ~0 over the
        run, per step. ``cosine``: cosine decay from ``learning_rate`` to ``min_lr``, per step.
    sampling : {"area", "image", "modality"}
        How patches pick their image (see :class:`napari_unet.patches.PatchSampler`);
        ``modality``: every imaging modality equally often, then its images equally
        (:class:`napari_unet.colour_augment.ModalitySampler`).
    colour_augment : bool
        With ``augment``, also stain jitter, grey conversion and inversion
        (:func:`napari_unet.colour_augment.modality_augment`).
    scale_augment : bool
        With ``augment``, also zoom patches by 0.75-1.33.
    half_precision : bool
        Save weights as float16 (half the file size).
    loader_threads : int or None
        Threads that prepare batches ahead of the training step
        (:meth:`napari_unet.patches.PatchSampler.epoch_batches`). None chooses: 0 on a CPU,
        where the step itself uses every core, and up to 4 on a GPU: on an H200 the
        ``fast`` preset's step (256 px, batch 8) takes 11.5 ms, but a training run without
        threads took 57-66 ms per step, the rest being batch preparation on one core (30 ms
        for such a batch on a 2-core EPYC; 2 threads there make one every 17 ms). 0 and > 0
        draw different (equally random) patches; every value > 0 draws the same ones.
    contact_weight : int
        Loss weight, in the training patches, of the pixels between touching objects
        (:func:`napari_unet.data.contact_pixels`), from 1 (none) to 100; the U-Net paper
        weighted such gaps up to about 10 so that touching cells come out separated.
        Validation stays unweighted, so its loss and Dice compare across runs. Instance
        or binary labels only. On the DSB 2018 val split a fine-tune of the bundled model
        with 10 split single nuclei too and lowered F1 at IoU 0.5 (see the model card).
    max_minutes : float or None
        Wall-clock budget of the run in minutes (from the call, data preparation included),
        checked between steps: when it is spent the current step finishes, validation runs
        once so that the best model is kept and saved, and the run ends (before ``epochs``
        are done). A resumed run gets the budget afresh. None: no limit. A ``cosine`` or
        ``onecycle`` schedule runs over the budget as well as the epochs: it is kept at
        least as far along as the share of the budget used, so that the rate has come
        down when the time is up (a native 3D ``tiny`` model trained for 400 steps: AP50
        0.75 with ``cosine`` against 0.34 with ``plateau``, see the README's *Volumes*).
    replay_samples : int
        When fine-tuning (``init``), this many of the bundled DSB 2018 samples (0-4,
        ``napari_unet.io.SAMPLES_DIR``, instance labels) train alongside the given images,
        so that a fine-tune on a few images of one kind does not forget the others; none
        for ``sparse`` labels. Fine-tuning the bundled model on 2 H&E images of DSB 2018
        for 10 steps (``benchmarks/bench_hitl.py --score-on selection``; 12 H&E and 12
        fluorescence images of ``train``, bundled model 0.368 and 0.654): with the 4
        samples, DSB 0.371 on H&E and 0.661 on fluorescence, without 0.371 and 0.646 (lr
        1e-4); 0.346 and 0.644 with, 0.335 and 0.575 without (lr 3e-4). The samples are
        drawn from like the given images (by area, see ``sampling``): there they were about
        70% of the training area, and they outweigh small annotations more. No effect when
        training from scratch.
    freeze_batchnorm : bool
        When fine-tuning (``init``), BatchNorm layers keep the init model's running
        statistics (they stay in eval mode; their scale and shift still train). Off by
        default: fine-tuning the bundled model on 2 H&E images of DSB 2018 for 10 steps
        (``benchmarks/bench_hitl.py --score-on selection``) scored DSB 0.266 on H&E and
        0.604 on fluorescence with it, 0.371 and 0.646 without (bundled: 0.368, 0.654).
        No effect when training from scratch.
    freeze : {"encoder+bottleneck", "encoder", "none"}
        When fine-tuning (``init``), the parts of the network that keep the init model's
        weights and BatchNorm statistics (U-Net: ``encoders``, ``bottleneck``; U-Net++
        has no bottleneck). No gradient flows through a frozen encoder, so a step costs
        less. Fine-tuning the bundled model on 2 H&E images of DSB 2018 for 10 steps
        (``benchmarks/bench_hitl.py --score-on selection``; 12 H&E and 12 fluorescence
        images of ``train``, bundled model 0.374 and 0.663) scored DSB 0.374 and 0.661
        with the encoder and bottleneck frozen, 0.377 and 0.663 with the encoder, 0.368
        and 0.671 with nothing frozen, in 34, 47 and 63 CPU seconds. No effect when
        training from scratch.
    """

    WHAT: ClassVar[str] = "training"

    model: ModelConfig = setting(
        factory=_reference_model, kind="config", config=ModelConfig, help="network to build"
    )
    epochs: int = setting(10, kind="int", low=1, help="epochs (validation rounds)")
    batch_size: int = setting(8, kind="int", low=1, help="patches per step")
    learning_rate: float = setting(
        1e-4,
        kind="float",
        **OPEN_UNIT,
        hint="the reference uses 1e-4",
        aliases=("--lr",),
        help="Adam learning rate (the peak rate of onecycle)",
    )
    patch_size: int = setting(
        256,
        kind="int",
        low=8,
        high=4096,
        hint="multiples of 16 (e.g. 128 or 256) train fastest",
        help="side of the square training patches",
    )
    patch_depth: int | None = setting(
        None,
        kind="int",
        low=1,
        high=4096,
        none="patch-size over the anisotropy, at most the volumes' depth",
        hint="e.g. 16",
        help="3D models: planes (Z) of each training patch",
    )
    augment: bool = setting(True, kind="bool", help="random flips, rotations, intensity, noise")
    loss: Literal["bce", "dice", "bce+dice"] = setting(
        "bce", kind="choice", choices=LOSSES, help="training loss"
    )
    label_mode: Literal["instance", "binary", "sparse"] = setting(
        "instance",
        kind="choice",
        choices=LABEL_MODES,
        help="instance labels, binary masks, or sparse scribbles "
        "(0 = unannotated, 1 = background, 2 = object)",
    )
    val_fraction: float = setting(
        0.1,
        kind="float",
        **HALF_OPEN_UNIT,
        hint="try 0.1",
        help="share of the training planes held out for validation when no validation "
        "data is given",
    )
    seed: int = setting(0, kind="int", help="seeds weights, split, patches and augmentation")
    early_stopping_patience: int | None = setting(
        10,
        kind="int",
        low=1,
        none="never stop early",
        none_words=("0",),
        aliases=("--early-stopping",),
        help="stop after this many epochs without improvement (0 or none = never)",
    )
    plateau_patience: int = setting(
        5, kind="int", low=1, help="plateau schedule: epochs without improvement before x0.1"
    )
    min_lr: float = setting(
        1e-7, kind="float", low=0, help="floor of the learning rate (plateau and cosine)"
    )
    device: str = setting("auto", kind="device", help="auto, cpu, cuda, cuda:N or mps")
    steps_per_epoch: int | None = setting(
        None,
        kind="int",
        low=1,
        none="cover the training data about once",
        help="batches per epoch",
    )
    schedule: Literal["plateau", "onecycle", "cosine"] = setting(
        "plateau",
        kind="choice",
        choices=SCHEDULES,
        help="learning-rate schedule: plateau (x0.1 after plateau-patience epochs), "
        "onecycle or cosine",
    )
    sampling: Literal["area", "image", "modality"] = setting(
        "area",
        kind="choice",
        choices=SAMPLINGS,
        help="pick patch images by area, uniformly, or each modality equally often",
    )
    colour_augment: bool = setting(
        False, kind="bool", help="also stain (HED) jitter, grey conversion and inversion"
    )
    scale_augment: bool = setting(False, kind="bool", help="also zoom patches by 0.75-1.33")
    half_precision: bool = setting(
        False, kind="bool", aliases=("--half",), help="save the weights as float16"
    )
    loader_threads: int | None = setting(
        None,
        kind="int",
        low=0,
        high=64,
        none="0 on a CPU, up to 4 on a GPU",
        help="threads preparing batches ahead of the step",
    )
    contact_weight: int = setting(
        1,
        kind="int",
        low=1,
        high=100,
        help="loss weight of the pixels between touching objects, 1 (off) to 100; higher "
        "values split touching objects more, and single ones too",
    )
    max_minutes: float | None = setting(
        None,
        kind="float",
        low=0,
        high=1e6,
        open_low=True,
        none="no time limit",
        hint="e.g. 12",
        help="stop after this many minutes of wall-clock time, keeping the best model "
        "(the current step finishes and validation runs once)",
    )
    replay_samples: int = setting(
        4,
        kind="int",
        low=0,
        high=4,
        help="bundled DSB 2018 samples mixed into a fine-tune's training data (init), so "
        "the model keeps what it knew (0 = none)",
    )
    freeze_batchnorm: bool = setting(
        False,
        kind="bool",
        help="when fine-tuning (init), keep the model's BatchNorm statistics rather than "
        "re-estimate them from the few new images",
    )
    freeze: Literal["encoder+bottleneck", "encoder", "none"] = setting(
        "encoder+bottleneck",
        kind="choice",
        choices=FREEZE_CHOICES,
        help="when fine-tuning (init), parts of the network that keep their weights",
    )

    def _check_together(self) -> None:
        check(
            self.min_lr <= self.learning_rate,
            f"min_lr must lie from 0 to learning_rate, got {self.min_lr!r}.",
        )
        check(self.contact_weight == 1 or self.label_mode != "sparse", SPARSE_CONTACT_WEIGHT_ERROR)

    def resolved_loader_threads(self, device: torch.device) -> int:
        """``loader_threads``, with None resolved for ``device`` (see the class docstring)."""
        if self.loader_threads is not None:
            return self.loader_threads
        if device.type == "cpu":
            return 0
        return min(4, max(1, (os.cpu_count() or 2) - 1))


_TUNED = "the model's tuned value, else the default"


class TunedModel(Protocol):
    """What :meth:`PredictConfig.for_model` reads of a model (a ``TrainedModel``).

    A protocol, not the class, so that this module never imports
    :mod:`napari_unet.checkpoint` (which imports it).
    """

    metadata: dict[str, Any]
    source: str
    config: ModelConfig


def default_postprocess(target: str) -> dict[str, float | int]:
    """:data:`DEFAULT_POSTPROCESS` with the ``seed_threshold`` of ``target``."""
    seed = DEFAULT_SEED_THRESHOLDS.get(target, DEFAULT_POSTPROCESS["seed_threshold"])
    return {**DEFAULT_POSTPROCESS, "seed_threshold": seed}


@dataclass(frozen=True)
class PredictConfig(Settings):
    """Settings of a prediction, checked when built.

    Parameters
    ----------
    tile_size : int or None
        Largest tile side in pixels (tiles are shrunk to cover each image evenly).
        None picks one from the free memory of the device (256 to 1024 on a CPU).
    overlap : int
        Minimum overlap of neighbouring tiles, blended smoothly; less than half
        the tile size.
    tile_batch : int
        Tiles predicted at once (helps on a GPU).
    tta : bool
        Test-time augmentation: average the 8 flips/rotations of every tile
        (8x slower, slightly smoother and more accurate).
    compile : bool
        Compile the network with ``torch.compile`` (weights frozen into the graph). The
        first tile of each new tile shape pays a compilation of tens of seconds, after
        which every tile runs faster (see ``benchmarks/bench_predict.py``): worth it for
        large images, stacks and folders of same-sized images. Needs a C++ compiler on a
        CPU; without one prediction warns and runs uncompiled.
    threshold : float or None
        Foreground probability above which a pixel belongs to an object.
    separate : bool
        Split touching objects with a seeded watershed.
    min_size : int or None
        Objects with fewer pixels are removed.
    seed_threshold : float or None
        ``contour`` models: boundary probability under which a foreground pixel
        seeds an object; ``distance`` models: how far a peak of the predicted distance
        must rise above the saddle to a higher one to seed an object (see
        :mod:`napari_unet.postprocess`).
    core_threshold : float or None
        Hysteresis: objects are found and split where the foreground probability
        is over ``core_threshold``, then grown to ``threshold``; at or below
        ``threshold`` objects are split at ``threshold`` (see
        :mod:`napari_unet.postprocess`).
    fill_holes : bool
        Fill holes inside objects.
    labels_per_plane : bool
        On a stack, number each plane's objects from 1 (otherwise labels are
        unique across the whole stack); in ``volume`` mode, each volume's (of a
        ``T, Z`` stack).
    device : str
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    return_probabilities : bool
        Also return the probability maps.
    stack : {"volume", "planes"} or None
        A stack's planes as one volume of 3D objects (one id per object across Z) or
        each plane on its own. None: ``volume`` unless the stack is a time series (a
        ``T`` axis, from file metadata, right before the plane). ``volume`` on a 2D
        image has nothing to do and segments the image.
    anisotropy : float or None
        Z step over XY pixel size of a volume (2 when planes are twice as far apart as
        pixels), > 0; None: 1, or a 3D model's own anisotropy (the command line reads it
        from the file's voxel size). A 3D model resamples a volume of another anisotropy
        to its own (see :mod:`napari_unet.native3d`).
    volume_method : {"link", "watershed", "orthogonal"}
        How a 2D model's planes become 3D objects (see :mod:`napari_unet.volume`).

    ``threshold``, ``min_size``, ``seed_threshold`` and ``core_threshold`` left at None
    take the value tuned for the model (its ``metadata["postprocess"]``), else
    :func:`default_postprocess` of its target; see :meth:`for_model`.
    """

    WHAT: ClassVar[str] = "prediction"

    tile_size: int | None = setting(
        None,
        kind="int",
        low=32,
        high=16384,
        none="chosen from the free memory",
        hint="512 is a good choice on a CPU",
        aliases=("--tile",),
        help="largest tile side",
    )
    overlap: int = setting(
        64,
        kind="int",
        low=0,
        high=256,
        hint="try 64",
        help="tile overlap in pixels, less than half the tile (default 64, at most a quarter "
        "of the tile on the command line)",
    )
    tile_batch: int = setting(1, kind="int", low=1, high=256, help="tiles per batch")
    tta: bool = setting(False, kind="bool", help="average the 8 flips/rotations of each tile")
    compile: bool = setting(
        False,
        kind="bool",
        help="torch.compile the network: tens of seconds once per tile shape, then faster "
        "tiles (for large images and stacks)",
    )
    threshold: float | None = setting(
        None,
        kind="float",
        **OPEN_UNIT,
        none=_TUNED + " 0.5",
        hint="the reference threshold is 0.5",
        help="foreground probability of object pixels",
    )
    separate: bool = setting(True, kind="bool", help="split touching objects (watershed)")
    min_size: int | None = setting(
        None, kind="int", low=0, none=_TUNED + " 8", help="remove objects under N pixels"
    )
    seed_threshold: float | None = setting(
        None,
        kind="float",
        **OPEN_UNIT,
        none=_TUNED + " 0.5 (distance models: 0.2)",
        help="contour models: boundary probability under which pixels seed objects; "
        "distance models: height of a distance peak that seeds an object",
    )
    core_threshold: float | None = setting(
        None,
        kind="float",
        **HALF_OPEN_UNIT,
        none=_TUNED + " 0",
        hint="0 turns hysteresis off",
        help="hysteresis: split objects where the foreground probability is over this, "
        "then grow them to the threshold",
    )
    fill_holes: bool = setting(True, kind="bool", help="fill holes inside objects")
    labels_per_plane: bool = setting(False, kind="bool", help="number each plane of a stack from 1")
    device: str = setting("auto", kind="device", help="auto, cpu, cuda, cuda:N or mps")
    return_probabilities: bool = setting(
        False,
        kind="bool",
        aliases=("--save-probabilities",),
        help="also return the probability maps (predict writes <name>_probabilities.tif)",
    )
    stack: str | None = setting(
        None,
        kind="choice",
        choices=STACK_MODES,
        none="volume, or planes for a time series",
        help="a stack as one volume of 3D objects, or each plane on its own",
    )
    anisotropy: float | None = setting(
        None,
        kind="float",
        low=0,
        high=1000,
        open_low=True,
        none="1 (a 3D model: its own), or the file's voxel size on the command line",
        hint="use 1 for cubic voxels",
        help="Z step / XY pixel size of a volume",
    )
    volume_method: str = setting(
        "orthogonal",
        kind="choice",
        choices=VOLUME_METHODS,
        help="how planes become 3D objects: link (IoU across Z), watershed (3D watershed "
        "of the planes' probabilities), orthogonal (XY, XZ, YZ views averaged, then 3D "
        "watershed; best, 2-4x the time)",
    )

    def _check_together(self) -> None:
        check(
            self.tile_size is None or 2 * self.overlap < self.tile_size,
            f"overlap ({self.overlap}) must be less than half of tile_size ({self.tile_size}); "
            f"use overlap={self.tile_size // 8 if self.tile_size else 0} or a larger tile.",
        )

    def for_model(self, model: TunedModel, modality: str | None = None) -> PredictConfig:
        """This config with unset post-processing values filled in for ``model``.

        Order: the value given here, then the model's ``metadata["postprocess"]``
        (tuned on its validation data; its ``per_modality`` values for ``modality``
        when it holds them, see :func:`napari_unet.modality.postprocess_for_modality`),
        then :func:`default_postprocess` of its target.
        """
        if all(getattr(self, name) is not None for name in DEFAULT_POSTPROCESS):
            return self
        tuned = model.metadata.get("postprocess", {})
        fix = (
            f"the post-processing stored in the model file {model.source} is invalid ({{}}); "
            "give every setting explicitly (threshold, seed_threshold, core_threshold, "
            "min_size) or re-tune the model (napari-unet tune --out)."
        )
        if not isinstance(tuned, dict):
            raise ConfigError(fix.format(f"not a table of settings but {type(tuned).__name__}"))
        tuned = postprocess_for_modality(tuned, modality)
        filled = {
            name: tuned.get(name, default) if getattr(self, name) is None else getattr(self, name)
            for name, default in default_postprocess(model.config.target).items()
        }
        try:
            return dataclasses.replace(self, **filled)
        except ConfigError as error:
            raise ConfigError(fix.format(error)) from error


def default_overlap(tile_size: int | None) -> int:
    """The default overlap: 64 pixels, or a quarter of a smaller tile."""
    return 64 if tile_size is None else min(64, tile_size // 4)


@dataclass(frozen=True)
class PostprocessGrid(Settings):
    """The values to try for each post-processing setting, checked when built.

    Parameters
    ----------
    thresholds : tuple of float
        Foreground probabilities, each strictly between 0 and 1.
    seed_thresholds : tuple of float or None
        ``seed_threshold`` values (``contour`` and ``distance`` models; ``foreground``
        ones ignore it). None: :data:`GRID_SEED_THRESHOLDS` of the model's target.
    core_thresholds : tuple of float
        Hysteresis thresholds, from 0 (off) to under 1.
    min_sizes : tuple of int
        Minimum object sizes in pixels, at least 0.
    """

    WHAT: ClassVar[str] = "tuning grid"

    thresholds: tuple[float, ...] = setting(
        (0.5, 0.6, 0.7),
        kind="floats",
        **OPEN_UNIT,
        help="foreground probabilities to try",
    )
    seed_thresholds: tuple[float, ...] | None = setting(
        None,
        kind="floats",
        **OPEN_UNIT,
        none=", ".join(
            f"{' '.join(map(str, seeds))} for {target} models"
            for target, seeds in GRID_SEED_THRESHOLDS.items()
        ),
        help="seed thresholds to try (contour and distance models)",
    )
    core_thresholds: tuple[float, ...] = setting(
        (0.0, 0.85, 0.9),
        kind="floats",
        **HALF_OPEN_UNIT,
        help="hysteresis thresholds to try; 0 = off",
    )
    min_sizes: tuple[int, ...] = setting(
        (8, 16, 32), kind="ints", low=0, help="minimum object sizes to try"
    )

    def _check_together(self) -> None:
        count = len(self.combinations("contour"))
        check(
            count <= MAX_COMBINATIONS,
            f"the grid holds {count} combinations, more than {MAX_COMBINATIONS}; "
            "give fewer values per setting.",
        )

    def combinations(self, target: str) -> list[dict[str, Any]]:
        """Every combination of settings, as ``probabilities_to_labels`` keywords."""
        if target in GRID_SEED_THRESHOLDS:
            seeds = self.seed_thresholds or GRID_SEED_THRESHOLDS[target]
        else:
            # The seed threshold means nothing to this target: one value, any.
            seeds = (default_postprocess(target)["seed_threshold"],)
        return [
            dict(zip(GRID_SETTINGS, values))
            for values in itertools.product(
                self.thresholds, seeds, self.core_thresholds, self.min_sizes
            )
        ]
