"""Export a trained model to a BioImage Model Zoo (bioimage.io) package or to ONNX.

:func:`export_events` is the progress generator behind ``napari-unet export`` and the
widgets' Export button (with ``stop``); :func:`export_model` runs it to the end. The
package itself is written by :mod:`napari_unet.bioimageio.writing`, the TorchScript
and ONNX weights by :mod:`napari_unet.bioimageio.weights`. Both formats need the
optional ``export`` extra (``pip install 'napari-unet[export]'``: ``bioimageio.core``,
``onnx``, ``onnxruntime``); the rest of napari-unet does not.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

import torch

from napari_unet.bioimageio.weights import (
    check_onnx,
    export_network,
    onnx_metadata,
    require_modules,
    write_onnx,
)
from napari_unet.bioimageio.writing import bioimageio_events
from napari_unet.checkpoint import TrainedModel, load_model
from napari_unet.errors import ConfigError
from napari_unet.events import plain_form
from napari_unet.io import atomic_write
from napari_unet.prediction import Progress

ExportFormat = Literal["bioimageio", "onnx"]
#: Formats :func:`export_model` writes, and the file suffix each one gets by default.
FORMAT_SUFFIXES: dict[str, str] = {"bioimageio": ".zip", "onnx": ".onnx"}


def export_onnx(model: TrainedModel | str | Path, path: str | Path) -> Path:
    """Write ``model`` as an ONNX graph with dynamic batch and spatial sizes.

    Parameters
    ----------
    model : TrainedModel, str or Path
        A loaded model, a model file, a bioimage.io package of ours or ``"default"``.
    path : str or Path
        Destination ``.onnx`` file, written atomically.

    Returns
    -------
    Path
        The written file. Its input ``input`` is ``(N, C, H, W)`` float32 (a 3D model's
        ``(N, C, Z, Y, X)``), normalised as the file's ``normalization`` metadata says;
        its output ``output`` holds logits. The export is checked against PyTorch with
        ONNX Runtime (<= 1e-4).

    Raises
    ------
    ModelFileError
        If the export packages are missing or the model is not a napari-unet network.
    """
    require_modules("onnx", "onnxruntime")
    model = load_model(model, device="cpu") if not isinstance(model, TrainedModel) else model
    network = export_network(model)
    multiples = model.config.size_multiples
    channels = model.config.in_channels
    # Two sizes, one not a multiple of 2**depth, prove the graph's shapes are dynamic.
    generator = torch.Generator().manual_seed(0)
    *z, y, x = multiples  # z: a 3D model's Z multiple, none for a 2D model
    first = [2 * m for m in z] + [4 * y, 6 * x]
    second = [m + 1 for m in z] + [3 * y + 5, 2 * x + 3]
    checks = [
        torch.rand(1, channels, *first, generator=generator),
        torch.rand(2, channels, *second, generator=generator),
    ]
    path = Path(path)
    with atomic_write(path) as tmp:
        write_onnx(network, checks[0], tmp, onnx_metadata(model))
        check_onnx(tmp, network, checks)
    return path


def export_events(
    model: TrainedModel | str | Path,
    path: str | Path,
    format: ExportFormat | None = None,
    stop: threading.Event | None = None,
    **options: Any,
) -> Generator[Progress, None, Path | None]:
    """Export ``model`` to ``path`` as a bioimage.io package or an ONNX file, yielding progress.

    The generator behind ``napari-unet export`` and the widgets' Export button.

    Parameters
    ----------
    model : TrainedModel, str or Path
        A loaded model, a model file, or ``"default"``.
    path : str or Path
        Destination file.
    format : {"bioimageio", "onnx"}, optional
        Output format; inferred from the suffix of ``path`` (``.zip``, ``.onnx``) if None.
    stop : threading.Event, optional
        When set, the export ends at its next step with nothing written.
    **options
        Passed to :func:`~napari_unet.bioimageio.writing.export_bioimageio` (name,
        authors, sample, ...); none for ONNX.

    Yields
    ------
    Progress
        Before each step (an ONNX export is one step).

    Returns
    -------
    Path or None
        The written file; None if stopped.

    Raises
    ------
    ConfigError
        If the format is unknown or cannot be inferred.
    ModelFileError
        See :func:`~napari_unet.bioimageio.writing.export_bioimageio` and :func:`export_onnx`.

    Examples
    --------
    >>> export_model("default", "nuclei.onnx")  # doctest: +SKIP
    """
    path = Path(path)
    format = format or export_format(path)
    if format == "onnx":
        if options:
            raise ConfigError(f"ONNX export takes no options, got {sorted(options)}.")
        yield Progress(0, 1, "ONNX export")
        if stop is not None and stop.is_set():
            return None
        return export_onnx(model, path)
    if format == "bioimageio":
        return (yield from bioimageio_events(model, path, stop=stop, **options))
    raise ConfigError(f"export format {format!r} is unknown; use 'bioimageio' or 'onnx'.")


export_model = plain_form(
    export_events,
    "export_model",
    "Export ``model`` to ``path`` as a bioimage.io package or an ONNX file.",
)


def export_format(path: str | Path) -> ExportFormat:
    """The format a file name asks for (``*.zip``: bioimage.io, ``*.onnx``: ONNX).

    Raises
    ------
    ConfigError
        If the suffix names neither.
    """
    by_suffix = {suffix: fmt for fmt, suffix in FORMAT_SUFFIXES.items()}
    format = by_suffix.get(Path(path).suffix.lower())
    if format is None:
        raise ConfigError(
            f"cannot tell the export format from {Path(path).name!r}; name the file *.zip "
            "(bioimage.io) or *.onnx, or give the format."
        )
    return format  # type: ignore[return-value]
