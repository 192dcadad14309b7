"""The written labels: a Zarr array, or an NGFF 0.4 label image registered in its image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def default_axes(ndim: int) -> list[dict[str, Any]]:
    """NGFF axes of labels with ``ndim`` axes when the input named none (``..., y, x``)."""
    names = ["t", "z", "y", "x"][-ndim:]
    return [{"name": n, "type": "time" if n == "t" else "space"} for n in names]


def ome_label_attrs(
    name: str, axes: list[dict[str, Any]], source_image: str | None
) -> dict[str, Any]:
    """NGFF 0.4 attributes of a one-level label image (``multiscales`` + ``image-label``)."""
    image_label: dict[str, Any] = {"version": "0.4"}
    if source_image is not None:
        image_label["source"] = {"image": source_image}
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0] * len(axes)}
                        ],
                    }
                ],
            }
        ],
        "image-label": image_label,
    }


def parent_ome_image(out: Path) -> Path | None:
    """The OME-Zarr image that ``out`` (``<image>/labels/<name>``) labels, if any."""
    image = out.parent.parent
    if out.parent.name != "labels" or not (image / ".zattrs").is_file():
        return None
    attrs = json.loads((image / ".zattrs").read_text())
    return image if "multiscales" in attrs else None


def create_labels(
    path: Path,
    shape: tuple[int, ...],
    block: int,
    dtype: np.dtype,
    ome: bool,
    attrs: dict[str, Any],
) -> str:
    """Create the empty labels (chunks of one block) and return the path of the array.

    ``ome``: a zarr v2 group with NGFF ``attrs`` and the array ``0`` ("/"-separated chunk
    keys, as NGFF 0.4 asks); otherwise a bare zarr v2 array.
    """
    import zarr

    chunks = (1,) * (len(shape) - 2) + (min(block, shape[-2]), min(block, shape[-1]))
    if not ome:
        zarr.create_array(
            str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=2
        )
        return str(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(attrs)
    group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    return str(path / "0")


def register_label(labels_dir: Path, name: str) -> None:
    """Add ``name`` to the NGFF ``labels`` group of an OME-Zarr image."""
    import zarr

    group = zarr.open_group(str(labels_dir), mode="a", zarr_format=2)
    names = list(group.attrs.get("labels", []))
    if name not in names:
        group.attrs["labels"] = [*names, name]
