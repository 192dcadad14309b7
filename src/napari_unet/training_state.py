"""Checks of a resume checkpoint's optimizer, scheduler and random state, and the random
state as plain types.

:class:`napari_unet.training_run.TrainingRun` restores these parts of a saved run only
after the functions here (each returning a short description of the first problem, or
None) found them fit for the run that takes them.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch


def is_number(value: Any) -> bool:
    """A real number (int, float or a 0-d real tensor), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.dtype.is_complex
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def structure_differs(saved: Any, fresh: Any, extra_keys: bool) -> bool:
    """Whether ``saved`` differs from ``fresh`` in structure or types (values may differ).

    Numbers may differ in value; strings may not (they are the constants a scheduler is
    built with); tensors must match in shape and dtype. ``extra_keys`` allows keys that
    ``fresh`` lacks (an optimizer's groups carry the keys of the schedule that ran).
    """
    if isinstance(fresh, dict):
        return (
            not isinstance(saved, dict)
            or not (extra_keys or set(saved) <= set(fresh))
            or any(
                structure_differs(saved[key], fresh[key], extra_keys)
                for key in saved.keys() & fresh.keys()
            )
        )
    if isinstance(fresh, (list, tuple)):
        return (
            not isinstance(saved, (list, tuple))
            or len(saved) != len(fresh)
            or any(structure_differs(s, f, extra_keys) for s, f in zip(saved, fresh, strict=True))
        )
    if isinstance(fresh, bool) or fresh is None:
        return not (saved is None or isinstance(saved, bool))
    if isinstance(fresh, (int, float)):
        return not is_number(saved) or isinstance(saved, torch.Tensor)
    if isinstance(fresh, torch.Tensor):
        return (
            not isinstance(saved, torch.Tensor)
            or saved.shape != fresh.shape
            or saved.dtype != fresh.dtype
        )
    return saved != fresh if isinstance(fresh, str) else type(saved) is not type(fresh)


def optimizer_problem(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> str | None:
    """What keeps ``saved`` (an optimizer's ``state_dict``) from continuing ``optimizer``."""
    wrong = f"its optimizer state is not one of {type(optimizer).__name__} for this network"
    fresh = optimizer.state_dict()
    if not isinstance(saved.get("state"), dict) or structure_differs(
        saved.get("param_groups"), fresh["param_groups"], extra_keys=True
    ):
        return wrong
    ids = [index for group in saved["param_groups"] for index in group["params"]]
    params = [param for group in optimizer.param_groups for param in group["params"]]
    if len(set(ids)) != len(ids) or not set(saved["state"]) <= set(ids):
        return wrong
    for index, param in zip(ids, params, strict=True):
        entry = saved["state"].get(index, {})
        fits = isinstance(entry, dict) and (
            not entry
            or is_number(entry.get("step"))
            and all(
                isinstance(entry.get(key), torch.Tensor) and entry[key].shape == param.shape
                for key in ("exp_avg", "exp_avg_sq")
            )
        )
        if not fits:
            return f"its optimizer state of parameter {index} does not fit the network"
    return None


def scheduler_problem(scheduler: Any, saved: dict[str, Any]) -> str | None:
    """What keeps ``saved`` from continuing ``scheduler`` (of the same kind)."""
    if structure_differs(saved, scheduler.state_dict(), extra_keys=False):
        return f"its scheduler state is not one of {type(scheduler).__name__}"
    return None


def plain_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as plain types (its 128-bit integers as strings)."""
    state = copy.deepcopy(rng.bit_generator.state)
    inner = state["state"]
    state["state"] = {key: str(value) for key, value in inner.items()}
    return state


def restore_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Inverse of :func:`plain_rng_state`; raises ValueError for a state it cannot take."""
    try:
        state = copy.deepcopy(state)
        state["state"] = {key: int(value) for key, value in state["state"].items()}
        rng.bit_generator.state = state
    except (TypeError, KeyError, AttributeError, OverflowError) as error:
        raise ValueError(f"invalid random state ({error})") from None


def rng_problem(rng: np.random.Generator, state: dict[str, Any]) -> str | None:
    """What keeps ``state`` from restoring ``rng`` (tried on a throwaway generator)."""
    try:
        restore_rng_state(np.random.Generator(type(rng.bit_generator)()), state)
    except ValueError:
        return "its random state (rng) is invalid"
    return None
