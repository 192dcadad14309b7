"""Self-describing model files: weights plus the config that rebuilds the model.

A model file is written with :func:`torch.save` and holds plain types only: a
format tag, the :class:`~napari_unet.config.ModelConfig` as a dictionary, the
state dict, and free-form training metadata (numbers, strings, lists, dicts).
Loading uses ``torch.load(weights_only=True)``, which refuses any pickled object
that is not a tensor or a plain container, so a hostile file cannot run code.
Before that, the file must be a regular, non-empty file whose content does not
inflate beyond its size; after it, the weights are checked against the config's
shapes on the meta device (and for NaN/infinite values) before a network is built.
Saving is atomic: the file appears complete or not at all.

:func:`load_model` also reads bioimage.io packages (through
:mod:`napari_unet.bioimageio.reading`, which never imports this module back); their
Python code runs only with ``trust_code=True`` or a :class:`TrustedPath`.
"""

from __future__ import annotations

import io
import pickle
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_unet.bioimageio.reading import WeightsChoice, read_package
from napari_unet.config import ModelConfig
from napari_unet.errors import ConfigError, ModelFileError, short_reason
from napari_unet.io import atomic_write
from napari_unet.model import MAX_PARAMETERS, build_model, check_weights, select_device

FORMAT = "napari-unet-model"
#: 2: a ``distance`` model's ``seed_threshold`` is the height of its seeds' distance peaks
#: (format 1 ignored it; :func:`_from_format_1` drops the value those files hold).
FORMAT_VERSION = 2
#: Name accepted wherever a model path is, meaning the model shipped in the package.
DEFAULT_MODEL_NAME = "default"
#: Largest model file read: the largest network napari-unet builds, as float32, plus metadata.
MAX_MODEL_FILE_BYTES = MAX_PARAMETERS * 4 + 2**30
#: Suffixes read as bioimage.io packages (a ``.zip``, or its ``rdf.yaml``).
PACKAGE_SUFFIXES = (".zip", ".yaml", ".yml")


@dataclass
class TrainedModel:
    """A network with the configuration and metadata it was saved with.

    Attributes
    ----------
    network : torch.nn.Module
        The network in eval mode, on ``device``; it returns logits.
    config : ModelConfig
        Architecture, target and the input normalisation to repeat.
    metadata : dict
        Training information (epochs, metrics, data, timings), plain types only.
    device : torch.device
        Where ``network`` lives.
    source : str
        Where it was loaded from (a path, ``"default"``, or ``"memory"``).
    half_precision : bool
        Whether the file it was loaded from stored float16 weights.
    """

    network: nn.Module
    config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    source: str = "memory"
    half_precision: bool = False

    def save(self, path: str | Path, half_precision: bool | None = None) -> Path:
        """Write this model to ``path`` (see :func:`save_model`).

        ``half_precision=None`` keeps the precision of the file it was loaded from.
        """
        half = self.half_precision if half_precision is None else half_precision
        return save_model(path, self.network, self.config, self.metadata, half)


def default_model_path() -> Path:
    """Path of the pretrained nuclei model shipped inside the package."""
    return Path(__file__).parent / "samples" / "default_model.pt"


def _plain(value: Any, where: str = "metadata") -> Any:
    """``value`` as types that ``torch.load(weights_only=True)`` accepts.

    numpy scalars/arrays (e.g. a metric from numpy) and paths are converted;
    without this a model would save fine but be refused when loaded.
    """
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}; model metadata may only hold numbers, "
        "strings, lists and dicts."
    )


def model_payload(
    network: nn.Module,
    config: ModelConfig,
    metadata: dict[str, Any] | None = None,
    half_precision: bool = False,
) -> dict[str, Any]:
    """The plain dictionary that a model file holds (also embedded in training checkpoints)."""
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    if half_precision:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": state,
        "metadata": _plain(dict(metadata or {})),
    }


def save_model(
    path: str | Path,
    network: nn.Module,
    config: ModelConfig,
    metadata: dict[str, Any] | None = None,
    half_precision: bool = False,
) -> Path:
    """Save weights, config and metadata to one file, atomically.

    Parameters
    ----------
    path : str or Path
        Destination, conventionally ``*.pt``. Parent folders are created.
    network : torch.nn.Module
        The network whose ``state_dict`` is saved.
    config : ModelConfig
        Configuration that rebuilds ``network``.
    metadata : dict, optional
        Plain-typed training information stored alongside.
    half_precision : bool
        Store floating-point weights as float16 (half the size; loaded back as float32).

    Returns
    -------
    Path
        The written path.
    """
    return save_payload(path, model_payload(network, config, metadata, half_precision))


def save_payload(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a plain dictionary with :func:`torch.save`, atomically; parent folders are created.

    A failing disk (full, a size limit) raises :class:`OSError` and leaves the file that was
    there before untouched.
    """
    path = Path(path)
    with atomic_write(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError:
            # torch's writer reports a failing disk as a RuntimeError without the cause;
            # writing the serialised bytes through Python raises the system's own OSError.
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            tmp.write_bytes(buffer.getbuffer())
    return path


def check_model_path(path: str | Path, what: str = "model file") -> Path:
    """``path`` as a Path if it names a regular, non-empty file, else ModelFileError.

    A folder, a device such as ``/dev/zero`` or an empty file each get their own
    message rather than "does not exist" or an empty reason.
    """
    path = Path(path)
    try:
        status = path.stat()
    except OSError:
        raise ModelFileError(f"{what} {str(path)!r} does not exist; check the path.") from None
    if stat.S_ISDIR(status.st_mode):
        raise ModelFileError(
            f"{str(path)!r} is a folder, not a {what}; give the file itself (*.pt, or a "
            "bioimage.io .zip or rdf.yaml)."
        )
    if not stat.S_ISREG(status.st_mode):
        raise ModelFileError(
            f"{str(path)!r} is not a regular file (a device, pipe or socket); give a {what}."
        )
    if status.st_size == 0:
        raise ModelFileError(
            f"{what} {str(path)!r} is empty (0 bytes); it was not written completely. "
            "Save or download it again."
        )
    return path


def _check_archive(path: Path, size: int) -> None:
    """Refuse a model file whose zip members would inflate far beyond the file's size.

    torch writes model files as uncompressed zip archives, so their members add up to
    the file's size; a compressed "zip bomb" would be inflated by torch.load.
    """
    if size > MAX_MODEL_FILE_BYTES:
        raise ModelFileError(
            f"{str(path)!r} is {size / 2**30:.1f} GiB, larger than any model napari-unet "
            f"builds ({MAX_MODEL_FILE_BYTES / 2**30:.0f} GiB); it is not a napari-unet model file."
        )
    if not zipfile.is_zipfile(path):
        return  # torch's older, non-zip format: nothing is inflated
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception as error:  # zipfile raises many types for damaged directories
        raise ModelFileError(
            f"{str(path)!r} is a damaged archive ({short_reason(error)}); save or download "
            "it again."
        ) from error
    if declared > 2 * size + 2**20:
        raise ModelFileError(
            f"{str(path)!r} would inflate to {declared / 2**20:,.0f} MiB from "
            f"{size / 2**20:,.1f} MiB; model files are not compressed, so it was refused unread."
        )


def read_payload(path: str | Path) -> dict[str, Any]:
    """Load a file written by :func:`torch.save` without executing pickled code.

    Before torch reads it, the file is checked to be a regular, non-empty file whose
    content does not inflate beyond its size.

    Raises
    ------
    ModelFileError
        If the file is missing, unreadable, too large, or holds anything but plain types.
    """
    path = check_model_path(path)
    _check_archive(path, path.stat().st_size)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # damaged (a bad opcode), not a hostile object
            raise ModelFileError(
                f"{str(path)!r} is not a readable model file ({short_reason(error)}); it may "
                "be truncated or of another format."
            ) from error
        raise ModelFileError(
            f"{str(path)!r} holds objects that are not plain weights and was refused "
            "unread (loading it could run code). Only load model files from sources you trust; "
            "re-save it with napari-unet."
        ) from error
    except Exception as error:  # torch raises many types for damaged files
        raise ModelFileError(
            f"{str(path)!r} is not a readable model file ({short_reason(error)}); it may be "
            "truncated or of another format."
        ) from error
    if not isinstance(payload, dict):
        raise ModelFileError(
            f"{str(path)!r} is not a napari-unet model file (it holds a "
            f"{type(payload).__name__}); train one with `napari-unet train`."
        )
    return payload


def _payload_parts(
    payload: Any, source: str
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """The config, state dict and metadata of a model-file dictionary, each checked."""
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("format"), str)
        or (payload["format"] != FORMAT)
    ):
        raise ModelFileError(
            f"{source!r} is not a napari-unet model file (no {FORMAT!r} tag); "
            "train one with `napari-unet train` or give a bioimage.io package."
        )
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{source!r} has an invalid format version; re-save the model.")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source!r} was written by a newer napari-unet (format {version}); upgrade "
            "napari-unet to read it."
        )
    try:
        config = ModelConfig.from_dict(payload["config"])
    except Exception as error:  # a hostile config can hold any type (tensors, lists)
        raise ModelFileError(
            f"{source!r} has an invalid config: {short_reason(error)}; re-save the model."
        ) from error
    state = payload.get("state_dict")
    metadata = payload.get("metadata", {})
    if not (
        isinstance(state, dict)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ModelFileError(f"{source!r} holds no valid weights (state_dict); re-save the model.")
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{source!r} has invalid metadata (not a mapping); re-save the model.")
    if version < 2 and config.target == "distance":
        metadata = _from_format_1(metadata)
    return config, state, metadata


def _from_format_1(metadata: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``distance`` model's metadata without the ``seed_threshold`` values its
    tuning stored: they were ignored then, and would now set its seeds' peak height."""
    tuned = metadata.get("postprocess")
    if not isinstance(tuned, dict):
        return metadata
    tuned = {name: value for name, value in tuned.items() if name != "seed_threshold"}
    per_modality = tuned.get("per_modality")
    if isinstance(per_modality, dict):
        tuned["per_modality"] = {
            modality: {k: v for k, v in values.items() if k != "seed_threshold"}
            if isinstance(values, dict)
            else values
            for modality, values in per_modality.items()
        }
    return {**metadata, "postprocess": tuned}


def model_from_payload(
    payload: dict[str, Any], device: str | torch.device = "auto", source: str = "memory"
) -> TrainedModel:
    """Rebuild a :class:`TrainedModel` from a model-file dictionary.

    The weights are checked against the config's shapes on the meta device (and for
    NaN/infinite values) before the network is built, so a small file whose config
    describes a huge network is refused without allocating it.

    Raises
    ------
    ModelFileError
        If the dictionary is not a valid model file (the message says what is wrong).
    """
    config, state, metadata = _payload_parts(payload, source)
    check_weights(config, state, source)
    half_precision = any(v.dtype == torch.float16 for v in state.values())
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        network = build_model(config)
        network.load_state_dict(state)
    except (ConfigError, RuntimeError) as error:
        raise ModelFileError(f"{source!r}: {short_reason(error)}") from error
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    network.to(torch_device).eval()
    return TrainedModel(network, config, dict(metadata), torch_device, source, half_precision)


class TrustedPath(type(Path())):  # type: ignore[misc]  # the concrete Path class of this OS
    """A model path whose package code its user has chosen to run.

    ``load_model(TrustedPath(p))`` is ``load_model(p, trust_code=True)``; the marker
    carries that choice through everything that takes a model path (``predict``,
    ``evaluate``, ``tune``, ``train(init=...)``, the CLI and the widgets).
    """


def load_model(
    path: str | Path | TrainedModel = DEFAULT_MODEL_NAME,
    device: str | torch.device = "auto",
    *,
    trust_code: bool = False,
    weights: WeightsChoice = "auto",
) -> TrainedModel:
    """Load a model file (or ``"default"``, the bundled nuclei model).

    No code from a model file runs: ``.pt`` files are read with
    ``torch.load(weights_only=True)`` and checked against their config before a
    network is built; bioimage.io packages whose weights need Python code are
    refused unless ``trust_code``.

    Parameters
    ----------
    path : str, Path or TrainedModel
        A ``.pt`` model file written by napari-unet, ``"default"``, a bioimage.io
        package (``.zip``, or its ``rdf.yaml``; see :mod:`napari_unet.bioimageio`), or
        an already loaded model (returned unchanged, moved to ``device`` if one is named).
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU) or a torch device.
    trust_code : bool
        Allow a bioimage.io package's Python code to run (``pytorch_state_dict``
        weights build their network with it). Only for packages from a source you
        trust; a :class:`TrustedPath` means the same.
    weights : {"auto", "native", "torchscript", "onnx", "pytorch_state_dict"}
        Which weights of a bioimage.io package to use (see
        :func:`napari_unet.bioimageio.reading.read_package`).

    Returns
    -------
    TrainedModel
        The network in eval mode with its config and metadata.

    Raises
    ------
    ModelFileError
        If the file is missing, hostile, corrupt, of another format, or runs code
        that was not trusted.
    """
    if isinstance(path, TrainedModel):
        if device != "auto":
            path.device = device if isinstance(device, torch.device) else select_device(device)
            path.network.to(path.device)
        return path
    trust_code = trust_code or isinstance(path, TrustedPath)
    if str(path) == DEFAULT_MODEL_NAME:
        path = default_model_path()
        if not path.is_file():
            raise ModelFileError(
                "the bundled default model is missing from this installation; reinstall "
                "napari-unet or pass a model file."
            )
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    if Path(path).suffix.lower() in PACKAGE_SUFFIXES:
        package = read_package(path, weights, trust_code)
        network = package.network.to(torch_device).eval()
        return TrainedModel(network, package.config, package.metadata, torch_device, str(path))
    payload = read_payload(path)
    return model_from_payload(payload, torch_device, source=str(path))
