"""The package's lazy public API."""

from __future__ import annotations

import importlib

import napari_unet as nu


def test_api_functions_are_not_shadowed_by_their_modules() -> None:
    # Importing the implementing modules first must not replace the functions.
    for module in ("training", "prediction", "evaluation"):
        importlib.import_module(f"napari_unet.{module}")
    from napari_unet.evaluation import evaluate
    from napari_unet.prediction import predict, segment
    from napari_unet.training import train

    assert (nu.train, nu.predict, nu.segment, nu.evaluate) == (train, predict, segment, evaluate)


def test_every_api_name_resolves() -> None:
    for name in nu.__all__:
        assert getattr(nu, name) is not None
