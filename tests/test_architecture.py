"""The package's shape: no import cycles, a core that never reaches into the CLI or into
another module's private names, and modules and functions short enough to read.

These read the source with :mod:`ast`; nothing is imported. A module or function may pass
a limit only with a written reason in :data:`LONG_ALLOWED`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import napari_unet

PACKAGE_DIR = Path(napari_unet.__file__).parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
#: Qualified names (module or module.function) allowed past the limits, and why.
LONG_ALLOWED: dict[str, str] = {
    "napari_unet.config": "declarations only: every settings class of the package, one "
    "documented field with its rule per setting (issue #16: all configs in one module)",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def imports(tree: ast.Module, known: set[str]) -> list[tuple[str, str]]:
    """(module, imported name) of every ``napari_unet`` import, at any depth of the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_unet"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in known else node.module, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("napari_unet")]
    return found


def test_no_import_cycles() -> None:
    trees = modules()
    graph = {
        name: {target for target, _ in imports(tree, set(trees))} for name, tree in trees.items()
    }
    graph = {
        name: {t for t in targets if t in trees and t != name} for name, targets in graph.items()
    }
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


def test_core_never_imports_the_cli_or_private_names() -> None:
    trees = modules()
    offenders = []
    for name, tree in trees.items():
        for target, imported in imports(tree, set(trees)):
            if target.startswith("napari_unet.cli") and not name.startswith(
                ("napari_unet.cli", "napari_unet.__main__")
            ):
                offenders.append(f"{name} imports {target}")
            if imported.startswith("_") and not imported.startswith("__"):
                offenders.append(f"{name} imports private {target}.{imported}")
    assert not offenders, offenders


def test_modules_and_functions_stay_short() -> None:
    too_long = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = module_name(path)
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES and name not in LONG_ALLOWED:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                qualified = f"{name}.{node.name}"
                if length > MAX_FUNCTION_LINES and qualified not in LONG_ALLOWED:
                    too_long.append(f"{qualified}: {length} lines")
    assert not too_long, f"over the limits without a reason in LONG_ALLOWED: {too_long}"


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    tree = ast.parse("from napari_unet.cli.predict import _stem\nfrom napari_unet import io\n")
    found = imports(tree, {"napari_unet.cli.predict", "napari_unet.io"})
    assert found == [("napari_unet.cli.predict", "_stem"), ("napari_unet.io", "io")]
