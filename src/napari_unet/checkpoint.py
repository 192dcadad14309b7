"""Self-describing model files: weights plus the config that rebuilds the model.

A model file is written with :func:`torch.save` and holds plain types only: a
format tag, the :class:`~napari_unet.config.ModelConfig` as a dictionary, the
state dict, and free-form training metadata (numbers, strings, lists, dicts).
Loading uses ``torch.load(weights_only=True)``, which refuses any pickled object
that is not a tensor or a plain container, so a hostile file cannot run code.
Saving is atomic: the file appears complete or not at all.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_unet.config import ModelConfig
from napari_unet.errors import ConfigError, ModelFileError
from napari_unet.io import atomic_write
from napari_unet.model import build_model, select_device

FORMAT = "napari-unet-model"
FORMAT_VERSION = 1
#: Name accepted wherever a model path is, meaning the model shipped in the package.
DEFAULT_MODEL_NAME = "default"


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


def read_payload(path: str | Path) -> dict[str, Any]:
    """Load a file written by :func:`torch.save` without executing pickled code.

    Raises
    ------
    ModelFileError
        If the file is missing, unreadable, or holds anything but plain types.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist; check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(
            f"{str(path)!r} holds objects that are not plain weights and was refused "
            "unread (loading it could run code). Only load model files from sources you trust; "
            "re-save it with napari-unet."
        ) from error
    except Exception as error:
        raise ModelFileError(
            f"{str(path)!r} is not a readable model file ({error}); it may be truncated or "
            "of another format."
        ) from error


def model_from_payload(
    payload: dict[str, Any], device: str | torch.device = "auto", source: str = "memory"
) -> TrainedModel:
    """Rebuild a :class:`TrainedModel` from a model-file dictionary."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"{source!r} is not a napari-unet model file (no {FORMAT!r} tag); "
            "train one with `napari-unet train` or give a bioimage.io package."
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{source!r} was written by a newer napari-unet (format "
            f"{payload['format_version']}); upgrade napari-unet to read it."
        )
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError) as error:
        raise ModelFileError(f"{source!r} has an invalid config: {error}") from error
    state = payload.get("state_dict")
    metadata = payload.get("metadata", {})
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{source!r} holds no valid weights (state_dict); re-save the model.")
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{source!r} has invalid metadata (not a mapping); re-save the model.")
    network = build_model(config)
    half_precision = any(v.dtype == torch.float16 for v in state.values())
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(
            f"{source!r}: the weights do not match the stored config ({error})."
        ) from error
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    network.to(torch_device).eval()
    return TrainedModel(network, config, dict(metadata), torch_device, source, half_precision)


def load_model(
    path: str | Path | TrainedModel = DEFAULT_MODEL_NAME, device: str | torch.device = "auto"
) -> TrainedModel:
    """Load a model file (or ``"default"``, the bundled nuclei model).

    Parameters
    ----------
    path : str, Path or TrainedModel
        A ``.pt`` model file written by napari-unet, ``"default"``, a bioimage.io
        package (``.zip``, or its ``rdf.yaml``; see :mod:`napari_unet.bioimageio`), or
        an already loaded model (returned unchanged, moved to ``device`` if one is named).
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU) or a torch device.

    Returns
    -------
    TrainedModel
        The network in eval mode with its config and metadata.

    Raises
    ------
    ModelFileError
        If the file is missing, hostile, corrupt or of another format.
    """
    if isinstance(path, TrainedModel):
        if device != "auto":
            path.device = device if isinstance(device, torch.device) else select_device(device)
            path.network.to(path.device)
        return path
    if str(path) == DEFAULT_MODEL_NAME:
        path = default_model_path()
        if not path.is_file():
            raise ModelFileError(
                "the bundled default model is missing from this installation; reinstall "
                "napari-unet or pass a model file."
            )
    if Path(path).suffix.lower() in (".zip", ".yaml", ".yml"):
        # A bioimage.io package; its reader needs the optional export extra, so import lazily.
        from napari_unet.bioimageio import load_bioimageio

        return load_bioimageio(path, device)
    payload = read_payload(path)
    return model_from_payload(payload, device, source=str(path))
