"""napari-unet: train U-Net / U-Net++ models on your microscopy images and segment with them.

The public Python API is importable without napari or Qt::

    import napari_unet as nu
    model = nu.load_model("default")           # the bundled nuclei model
    labels = nu.segment(image, model)          # instance labels, same plane shape
    result = nu.train(images, labels, out="my_model.pt")

Names are imported lazily so that napari's plugin discovery stays fast. The modules
behind ``train``, ``predict``, ``evaluate`` and ``tune`` are named ``training``,
``prediction``, ``evaluation`` and ``tuning`` so that importing them never shadows the
functions of the same name.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "ModelConfig": "napari_unet.config",
    "NormalizationConfig": "napari_unet.config",
    "TrainConfig": "napari_unet.config",
    "PredictConfig": "napari_unet.config",
    "PostprocessGrid": "napari_unet.config",
    "build_model": "napari_unet.model",
    "load_model": "napari_unet.checkpoint",
    "save_model": "napari_unet.checkpoint",
    "TrainedModel": "napari_unet.checkpoint",
    "train": "napari_unet.training",
    "predict": "napari_unet.prediction",
    "segment": "napari_unet.prediction",
    "evaluate": "napari_unet.evaluation",
    "tune": "napari_unet.tuning",
    "segment_to_zarr": "napari_unet.blockwise",
    "export_model": "napari_unet.export",
    "NapariUnetError": "napari_unet.errors",
    "ConfigError": "napari_unet.errors",
    "DataError": "napari_unet.errors",
    "ModelFileError": "napari_unet.errors",
    "SaveError": "napari_unet.errors",
    "TrainingDivergedError": "napari_unet.errors",
    "WorkerProcessError": "napari_unet.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")


def __dir__() -> list[str]:
    # IDEs and tab completion list the lazy names too
    return sorted(set(globals()) | set(_API))
