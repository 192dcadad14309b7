"""Every public module of napari_unet imports without napari or a Qt binding.

The core (training, prediction, metrics, CLI) must run on machines without a
display or napari; only the private ``_``-prefixed adapters may use them. The
modules are imported in a fresh interpreter, because ``sys.modules`` of the test
process is already full of napari and Qt.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import napari_unet

#: Top-level packages of napari and the GUI stack.
FORBIDDEN = ("napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "magicgui")


def public_modules() -> list[str]:
    """``napari_unet`` and all its submodules without a ``_``-prefixed part, found by pkgutil.

    Unlike ``pkgutil.walk_packages`` this imports nothing (walking would import the
    private GUI packages into the test process).
    """
    names = ["napari_unet"]
    folders = [(Path(napari_unet.__file__).parent, "napari_unet.")]
    while folders:
        folder, prefix = folders.pop()
        for info in pkgutil.iter_modules([str(folder)], prefix=prefix):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            names.append(info.name)
            if info.ispkg:
                folders.append((folder / info.name.rsplit(".", 1)[-1], f"{info.name}."))
    return sorted(names)


def test_discovery_finds_the_core_modules() -> None:
    found = set(public_modules())
    core = {"config", "model", "checkpoint", "io", "data", "metrics"}
    assert {f"napari_unet.{name}" for name in core} <= found
    assert not any(name.rsplit(".", 1)[-1].startswith("_") for name in found)


def import_report(modules: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` in turn in a fresh interpreter; for each, the forbidden
    modules its import added to ``sys.modules``."""
    code = (
        "import importlib, json, sys\n"
        f"FORBIDDEN = {FORBIDDEN!r}\n"
        "report = {}\n"
        f"for name in {modules!r}:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(name)\n"
        "    report[name] = sorted(m for m in set(sys.modules) - before\n"
        "                          if m.split('.', 1)[0] in FORBIDDEN)\n"
        "print(json.dumps(report))\n"
    )
    paths = [str(Path(napari_unet.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_public_modules_import_without_napari_or_qt() -> None:
    # One interpreter for all modules (one each would import torch a dozen times);
    # a napari/Qt import is blamed on the first module whose import brought it in.
    modules = public_modules()
    report = import_report(modules)
    assert sorted(report) == modules
    offenders = {name: found[:5] for name, found in report.items() if found}
    assert not offenders, f"public modules imported napari/Qt: {offenders}"


def test_the_check_sees_gui_imports() -> None:
    assert "qtpy" in import_report(["json", "qtpy"])["qtpy"]
