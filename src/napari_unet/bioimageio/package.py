"""Opening a bioimage.io package without trusting it: bounded, local and code-free.

Everything here runs before bioimage.io's own code reads the package:

- the path must be a regular file: a ``.zip``, or an ``rdf.yaml`` / ``bioimageio.yaml``
  next to its files;
- the members of a ``.zip`` are checked against size bounds before anything is
  inflated (zip bombs);
- the YAML is at most :data:`MAX_RDF_BYTES` and its size with every alias expanded is
  bounded before it is built into Python objects (alias bombs, recursive aliases);
- the description is built with bioimage.io's I/O checks off, so nothing is downloaded
  or read for validation;
- every file the loader reads (weights, architecture code, test tensors) must be a
  relative path inside the package: no absolute paths, no ``..``, no URLs;
- weights that need Python code from the package (``pytorch_state_dict``) are refused
  unless the caller trusts the package (:func:`refuse_code`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from napari_unet.errors import ModelFileError, short_reason

#: Largest ``rdf.yaml`` read; real descriptions are a few kilobytes.
MAX_RDF_BYTES = 2**20
#: Most YAML nodes a description may have once its aliases are expanded.
MAX_YAML_NODES = 100_000
#: Largest member of a package (the largest network napari-unet builds, as float32, fits).
MAX_MEMBER_BYTES = 5 * 2**30
#: Largest sum of a package's members, and most members.
MAX_PACKAGE_BYTES = 8 * 2**30
MAX_MEMBERS = 10_000
#: Members over 16 MiB may inflate at most this many times their stored size (weights ~1x).
MAX_RATIO = 100
#: Names a package's description may have, most preferred first (as bioimage.io looks them up).
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml", "model.yaml")
#: How a user allows a package's Python code to run, named in every refusal.
TRUST_HINT = (
    "if you trust its source, pass --trust-package-code (command line), trust_code=True to "
    "load_model or a TrustedPath (Python), or tick 'Trust code in model packages' (widgets)"
)
_EXTRA_HINT = "install the export extra: pip install 'napari-unet[export]'"


@dataclass
class OpenedPackage:
    """A package's validated description and the root its relative paths resolve against.

    Attributes
    ----------
    path : Path
        The ``.zip`` or YAML file given.
    where : str
        How messages name the package.
    root : zipfile.ZipFile or Path
        The open archive, or the folder of the YAML file.
    descr : bioimageio.spec.model.ModelDescr
        The model description, converted to the latest format.
    """

    path: Path
    where: str
    root: zipfile.ZipFile | Path
    descr: Any


def require_bioimageio() -> None:
    """Import bioimage.io's spec library, or say how to install it."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as error:
        raise ModelFileError(
            f"reading bioimage.io packages needs bioimageio.core; {_EXTRA_HINT}"
        ) from error


@contextmanager
def open_package(path: str | Path) -> Iterator[OpenedPackage]:
    """Check and open a package; the archive stays open while the block reads its files.

    Raises
    ------
    ModelFileError
        If the package is missing, over a bound, not valid YAML, not a valid model
        description, or names a file outside itself (the message says which).
    """
    require_bioimageio()
    path = Path(path)
    where = f"bioimage.io package {str(path)!r}"
    _check_regular_file(path)
    archive = None
    try:
        if zipfile.is_zipfile(path):
            archive, rdf_name, text = _open_zip(path, where)
            root: zipfile.ZipFile | Path = archive
        elif path.suffix.lower() in (".yaml", ".yml"):
            root, rdf_name = path.parent.resolve(), path.name
            text = _read_text(path.read_bytes() if _small(path) else None, where)
        else:
            raise ModelFileError(
                f"{str(path)!r} is neither a zip archive nor an rdf.yaml; give a bioimage.io "
                "package (.zip) or its rdf.yaml."
            )
        content = parse_yaml(text, where)
        descr = _build(content, root, rdf_name, where)
        check_local_files(descr, root, where)
        yield OpenedPackage(path, where, root, descr)
    finally:
        if archive is not None:
            archive.close()


def _check_regular_file(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"bioimage.io package {str(path)!r} does not exist; check the path.")
    if path.is_dir():
        raise ModelFileError(
            f"{str(path)!r} is a folder; give the package's .zip or the rdf.yaml inside it."
        )
    if not path.is_file():
        raise ModelFileError(f"{str(path)!r} is not a regular file; give a bioimage.io package.")


def _small(path: Path) -> bool:
    return path.stat().st_size <= MAX_RDF_BYTES


def _read_text(data: bytes | None, where: str) -> str:
    if data is None:
        raise ModelFileError(
            f"{where}: its description is over {MAX_RDF_BYTES // 2**20} MiB; real ones are a "
            "few kilobytes, so it was refused unread."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelFileError(f"{where}: its description is not UTF-8 text.") from error


def _open_zip(path: Path, where: str) -> tuple[zipfile.ZipFile, str, str]:
    """The open archive, its description's name and text, after checking member sizes."""
    try:
        archive = zipfile.ZipFile(path)
        infos = archive.infolist()
    except Exception as error:  # zipfile raises many types for damaged directories
        raise ModelFileError(
            f"{where} is a damaged zip archive ({short_reason(error)}); download it again."
        ) from error
    try:
        _check_members(infos, where)
        names = {info.filename: info for info in infos}
        rdf_name = next((name for name in RDF_NAMES if name in names), None)
        if rdf_name is None:
            raise ModelFileError(
                f"{where} holds no rdf.yaml (or bioimageio.yaml); it is not a bioimage.io package."
            )
        info = names[rdf_name]
        data = archive.read(info) if info.file_size <= MAX_RDF_BYTES else None
        return archive, rdf_name, _read_text(data, where)
    except ModelFileError:
        archive.close()
        raise
    except Exception as error:  # zipfile raises many types for damaged members
        archive.close()
        raise ModelFileError(
            f"{where} is a damaged zip archive ({short_reason(error)}); download it again."
        ) from error


def _check_members(infos: list[zipfile.ZipInfo], where: str) -> None:
    """Refuse archives whose declared sizes exceed the bounds (reads inflate no further)."""
    if len(infos) > MAX_MEMBERS:
        raise ModelFileError(f"{where} has {len(infos):,} files, over {MAX_MEMBERS:,}; refused.")
    total = 0
    for info in infos:
        size = info.file_size
        total += size
        bomb = size > 16 * 2**20 and size > MAX_RATIO * max(info.compress_size, 1)
        if size > MAX_MEMBER_BYTES or bomb:
            raise ModelFileError(
                f"{where}: its member {info.filename!r} would inflate to {size / 2**20:,.0f} MiB "
                f"from {info.compress_size / 2**20:,.1f} MiB; refused unread (a zip bomb?)."
            )
    if total > MAX_PACKAGE_BYTES:
        raise ModelFileError(
            f"{where} would inflate to {total / 2**30:,.1f} GiB, over "
            f"{MAX_PACKAGE_BYTES / 2**30:.0f} GiB; refused unread."
        )


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """A description's YAML as plain Python, refusing alias bombs and recursive aliases.

    The node graph is composed first (aliases share nodes, so this is linear in the
    text), its expanded size is counted with memoisation, and only a document
    within :data:`MAX_YAML_NODES` is built into Python objects.
    """
    from ruyaml import YAML, YAMLError

    # One pass of bioimage.io's parser (YAML 1.2): compose, check, then construct that node.
    yaml = YAML(typ="safe", pure=True)
    try:
        constructor, parser = yaml.get_constructor_parser(text)
        try:
            node = constructor.composer.get_single_node()
            if node is not None:
                _expanded_size(node, {}, set(), where)
            content = constructor.construct_document(node) if node is not None else None
        finally:
            parser.dispose()
    except ModelFileError:
        raise
    except (YAMLError, RecursionError, ValueError, TypeError) as error:
        raise ModelFileError(
            f"{where}: its description is not valid YAML ({short_reason(error)})."
        ) from error
    if not isinstance(content, dict) or not all(isinstance(key, str) for key in content):
        raise ModelFileError(f"{where}: its description is not a YAML mapping of field names.")
    return content


def _expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int], where: str) -> int:
    """Number of nodes under ``node`` with aliases expanded; raises past the bound."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ModelFileError(f"{where}: its description has a recursive YAML alias; refused.")
    open_nodes.add(key)
    size = 1
    value = node.value
    if isinstance(value, list):
        for item in value:
            for child in item if isinstance(item, tuple) else (item,):
                size += _expanded_size(child, sizes, open_nodes, where)
                if size > MAX_YAML_NODES:
                    raise ModelFileError(
                        f"{where}: its description expands to over {MAX_YAML_NODES:,} YAML "
                        "nodes (an alias bomb?); refused."
                    )
    open_nodes.discard(key)
    sizes[key] = size
    return size


def _build(content: dict[str, Any], root: zipfile.ZipFile | Path, name: str, where: str) -> Any:
    """The model description in the latest format, built without any file or network I/O."""
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description

    context = ValidationContext(
        root=root, file_name=name, perform_io_checks=False, log_warnings=False
    )
    try:
        descr = build_description(content, context=context, format_version="latest")
    except Exception as error:  # bioimage.io raises many types for malformed content
        raise ModelFileError(
            f"{where} is not a valid bioimage.io description ({short_reason(error)})."
        ) from error
    if isinstance(descr, InvalidDescr):
        reason = descr.get_reason() or "it does not follow the bioimage.io specification"
        reason = " ".join(reason.replace("\n- ", "; ").split())
        raise ModelFileError(f"{where} is invalid: {reason[:400]}")
    if descr.type != "model":
        raise ModelFileError(f"{where} describes a bioimage.io {descr.type!r}, not a model.")
    return descr


def _package_files(descr: Any) -> list[tuple[str, Any]]:
    """``(what, source)`` of every file loading may read: weights, their code, test tensors."""
    files = []
    for name, entry in descr.weights:
        if entry is None:
            continue
        files.append((f"{name} weights", entry.source))
        architecture = getattr(entry, "architecture", None)
        if getattr(architecture, "source", None) is not None:
            files.append((f"{name} architecture code", architecture.source))
    for tensor in (*descr.inputs, *descr.outputs):
        if tensor.test_tensor is not None:
            files.append((f"test tensor of {tensor.id!s}", tensor.test_tensor.source))
    return files


def check_local_files(descr: Any, root: zipfile.ZipFile | Path, where: str) -> None:
    """Every file loading may read is a relative path to an existing file inside the package.

    Raises
    ------
    ModelFileError
        For an absolute path, a URL, a ``..`` or a link leading out of the package
        (nothing is downloaded or read), or files that are missing.
    """
    from bioimageio.spec.common import RelativeFilePath

    missing = []
    for what, source in _package_files(descr):
        if not isinstance(source, RelativeFilePath):
            kind = "a URL" if str(source).startswith(("http:", "https:")) else "an absolute path"
            raise ModelFileError(
                f"{where}: its {what} {str(source)!r} is {kind}; napari-unet reads only files "
                "inside the package (nothing is downloaded). Put the file in the package."
            )
        relative = PurePosixPath(source.path.as_posix())
        if ".." in relative.parts:
            raise ModelFileError(
                f"{where}: its {what} {str(relative)!r} points outside the package ('..'); "
                "napari-unet reads only files inside the package."
            )
        if isinstance(root, zipfile.ZipFile):
            present = str(relative) in root.NameToInfo
        else:
            target = (root / relative).resolve()
            if not target.is_relative_to(root):
                raise ModelFileError(
                    f"{where}: its {what} {str(relative)!r} is a link to outside the package; "
                    "napari-unet reads only files inside the package."
                )
            present = target.is_file()
        if not present:
            missing.append(f"{what} ({relative.name})")
    if missing:
        raise ModelFileError(
            f"{where} is invalid: files it names are missing: {', '.join(missing)}."
        )


def code_needed(entry: Any) -> str | None:
    """What Python code the weights ``entry`` runs to build its network, or None."""
    architecture = getattr(entry, "architecture", None)
    if architecture is None:
        return None
    source = getattr(architecture, "source", None)
    origin = str(source) if source is not None else getattr(architecture, "import_from", "?")
    return f"{origin}:{architecture.callable}"


def refuse_code(entry: Any, where: str) -> None:
    """Raise ModelFileError if ``entry`` runs package code: the caller did not trust it."""
    code = code_needed(entry)
    if code is not None:
        raise ModelFileError(
            f"{where}: its weights are built by Python code named in the package ({code}), "
            f"which napari-unet does not run unless asked; {TRUST_HINT}."
        )
