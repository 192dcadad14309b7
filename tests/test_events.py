"""The plain forms of the ``*_events`` generator functions."""

from __future__ import annotations

import inspect
from collections.abc import Generator

import pytest

from napari_unet.blockwise.driver import segment_to_zarr, segment_to_zarr_events
from napari_unet.evaluation import evaluate, evaluate_events
from napari_unet.events import plain_form, run_to_end
from napari_unet.export import export_events, export_model
from napari_unet.prediction import predict, predict_events
from napari_unet.training import train, train_events
from napari_unet.tuning import tune, tune_events


def test_run_to_end_returns_the_generators_value() -> None:
    def events() -> Generator[int, None, str]:
        yield 1
        yield 2
        return "done"

    assert run_to_end(events()) == "done"


def test_plain_form_shares_the_generators_signature_and_parameter_docs() -> None:
    def count_events(n: int, *, step: int = 1) -> Generator[int, None, list[int]]:
        """Count to ``n``, yielding each number.

        Parameters
        ----------
        n : int
            Where to stop.
        step : int
            Stride.

        Yields
        ------
        int
            The numbers.

        Examples
        --------
        >>> count(3)
        [0, 1, 2]
        """
        done = list(range(0, n, step))
        yield from done
        return done

    count = plain_form(count_events, "count", "The numbers up to ``n``.")
    assert count(5, step=2) == [0, 2, 4]
    signature = inspect.signature(count)
    assert list(signature.parameters) == ["n", "step"]
    assert signature.return_annotation == list[int]
    assert count.__name__ == "count"
    assert count.__doc__.startswith(
        "The numbers up to ``n``.\n\nRuns :func:`count_events` to its end and returns its value."
        "\n\nParameters\n"
    )
    assert "Stride." in count.__doc__ and "Yields" not in count.__doc__
    assert count.__doc__.endswith("Examples\n--------\n>>> count(3)\n[0, 1, 2]")


@pytest.mark.parametrize(
    ("plain", "events"),
    [
        (predict, predict_events),
        (train, train_events),
        (evaluate, evaluate_events),
        (tune, tune_events),
        (segment_to_zarr, segment_to_zarr_events),
        (export_model, export_events),
    ],
)
def test_public_plain_functions_take_their_generators_arguments(plain, events) -> None:
    assert inspect.signature(plain).parameters == inspect.signature(events).parameters
    assert "Parameters\n----------\n" in plain.__doc__
    assert plain.__module__ == events.__module__


@pytest.mark.parametrize("plain", [predict, train, evaluate, tune])
def test_config_overrides_are_documented_on_every_plain_function(plain) -> None:
    assert "**overrides" in plain.__doc__
