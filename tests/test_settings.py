"""Tests of napari_unet.settings: rules, their messages, and the shared base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from napari_unet.errors import ConfigError
from napari_unet.settings import Rule, Settings, check, option_fields, setting, wanted


@dataclass(frozen=True)
class Inner(Settings):
    WHAT: ClassVar[str] = "inner"

    size: int = setting(2, kind="int", low=1, high=9, hint="try 2", help="a size")


def _inner() -> Inner:
    return Inner()


@dataclass(frozen=True)
class Outer(Settings):
    WHAT: ClassVar[str] = "outer"

    inner: Inner = setting(factory=_inner, kind="config", config=Inner, prefix="inner_", help="")
    rate: float | None = setting(
        None, kind="float", low=0, high=1, open_low=True, none="automatic", help="a rate"
    )
    mode: str = setting("a", kind="choice", choices=("a", "b"), help="a mode")
    values: tuple[int, ...] = setting((1,), kind="ints", low=0, help="some values")
    on: bool = setting(False, kind="bool", help="a switch")

    def _check_together(self) -> None:
        check(not self.on or self.mode == "b", "on needs mode 'b'.")


def test_wanted_describes_bounds_in_words() -> None:
    assert wanted(Rule("", "int", low=1, high=64)) == "a whole number from 1 to 64"
    assert wanted(Rule("", "float", low=0, high=1, open_low=True, open_high=True)) == (
        "a number strictly between 0 and 1"
    )
    assert wanted(Rule("", "floats", low=0, high=1, open_high=True), plural=True) == (
        "numbers from 0 to under 1"
    )
    assert wanted(Rule("", "int", low=1, none="never")) == "a whole number >= 1, or None (never)"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate": 0}, r"rate must be a number over 0 up to 1, or None \(automatic\), got 0\."),
        ({"mode": "c"}, "mode 'c' is unknown; use one of 'a', 'b'."),
        ({"values": ()}, "values is empty; give at least one value."),
        ({"values": (1, -1)}, r"values must be whole numbers >= 0; \[-1\] are not."),
        ({"on": 1}, "on must be True or False, got 1."),
        ({"on": True}, "on needs mode 'b'."),
        ({"inner": {"size": 10}}, "size must be a whole number from 1 to 9, got 10; try 2."),
    ],
)
def test_each_kind_of_rule_has_one_message(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Outer(**values)


def test_nested_settings_and_options() -> None:
    assert list(option_fields(Outer)) == ["inner_size", "rate", "mode", "values", "on"]
    outer = Outer.from_options(inner_size=3, values=[4, 5], on=True, mode="b")
    assert outer == Outer(inner=Inner(3), values=(4, 5), on=True, mode="b")
    assert Outer.from_dict(outer.to_dict()) == outer
    with pytest.raises(ConfigError, match=r"Unknown outer setting\(s\) \['size'\]; valid"):
        Outer.from_options(size=3)
