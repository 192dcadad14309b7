"""napari sample data: real DSB 2018 nuclei images with their instance labels.

The four images (CC0, from the 2018 Data Science Bowl / BBBC038; see
``samples/README.md``) ship inside the package, so the samples open offline.
"""

from __future__ import annotations

from typing import Any

from napari_unet import io

LayerData = tuple[Any, dict[str, Any], str]

_CREDIT = "2018 Data Science Bowl (BBBC038, Caicedo et al. 2019), CC0"
# Stems of the single-image samples: a fluorescence image and an H&E tissue image.
_FLUORESCENCE = "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1"
_HISTOLOGY = "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e"


def _pair(stem: str, name: str) -> list[LayerData]:
    image = io.read_image(io.SAMPLES_DIR / "images" / f"{stem}.png")
    labels = io.read_image(io.SAMPLES_DIR / "labels" / f"{stem}.png")
    metadata = {"source": _CREDIT, "dsb_id": stem}
    return [
        (image, {"name": name, "rgb": True, "metadata": metadata}, "image"),
        (labels, {"name": f"{name} labels", "metadata": metadata}, "labels"),
    ]


def make_nuclei_sample() -> list[LayerData]:
    """A fluorescence nuclei image (RGB, 256x256) and its instance labels."""
    return _pair(_FLUORESCENCE, "nuclei")


def make_histology_sample() -> list[LayerData]:
    """An H&E-stained tissue image (RGB, 256x320) and its nuclei instance labels."""
    return _pair(_HISTOLOGY, "tissue")


def make_all_samples() -> list[LayerData]:
    """All four bundled DSB images, each with its labels (images differ in size)."""
    stems = sorted(p.stem for p in io.list_images(io.SAMPLES_DIR / "images"))
    layers: list[LayerData] = []
    for index, stem in enumerate(stems, start=1):
        layers.extend(_pair(stem, f"dsb {index} ({stem[:8]})"))
    return layers
