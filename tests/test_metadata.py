"""Voxel size, units, origin and axes read from and written to TIFF and OME-Zarr files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet import io
from napari_unet.metadata import (
    ImageMetadata,
    anisotropy_from,
    image_metadata,
    labels_metadata,
    ngff_axes,
    ngff_transformations,
    tiff_metadata,
    tiff_notes,
    unit_name,
)

MICRONS = ("micrometer",) * 3


def test_imagej_tiff_gives_its_voxel_size_and_axes(tmp_path) -> None:
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(
        path,
        np.zeros((5, 2, 16, 20), np.uint16),
        imagej=True,
        resolution=(4.0, 4.0),  # pixels per micron: 0.25 micron steps
        metadata={"axes": "ZCYX", "spacing": 1.0, "unit": "micron"},
    )
    metadata = image_metadata(path)
    assert metadata.axes == "ZCYX"
    assert metadata.scale == (1.0, 1.0, 0.25, 0.25)
    assert metadata.units == ("micrometer", None, "micrometer", "micrometer")
    assert anisotropy_from(metadata) == pytest.approx(4.0)
    assert labels_metadata(metadata, 3) == ImageMetadata(
        "ZYX", (1.0, 0.25, 0.25), MICRONS, (0.0, 0.0, 0.0)
    )


def test_ome_tiff_gives_its_physical_sizes_units_and_position(tmp_path) -> None:
    path = tmp_path / "ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 4, 16, 20), np.uint16),
        ome=True,
        metadata={
            "axes": "TZYX",
            "PhysicalSizeX": 200.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 200.0,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 0.6,  # OME's default unit: µm
            "TimeIncrement": 30.0,
            "Plane": {"PositionX": [5.0] * 12, "PositionY": [7.0] * 12, "PositionZ": [1.0] * 12},
        },
    )
    metadata = image_metadata(path)
    assert metadata.axes == "TZYX"
    assert metadata.scale == (30.0, 0.6, 200.0, 200.0)
    assert metadata.units == ("second", "micrometer", "nanometer", "nanometer")
    assert metadata.translate == (0.0, 1.0, 7.0, 5.0)
    assert anisotropy_from(metadata) == pytest.approx(3.0)  # units converted


def test_ome_zarr_gives_its_axes_scale_and_translation(tmp_path) -> None:
    store = tmp_path / "image.zarr"
    store.mkdir()
    (store / ".zattrs").write_text(
        json.dumps(
            {
                "multiscales": [
                    {
                        "version": "0.4",
                        "axes": [
                            {"name": "c", "type": "channel"},
                            {"name": "z", "type": "space", "unit": "micrometer"},
                            {"name": "y", "type": "space", "unit": "micrometer"},
                            {"name": "x", "type": "space", "unit": "micrometer"},
                        ],
                        "datasets": [
                            {
                                "path": "0",
                                "coordinateTransformations": [
                                    {"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]},
                                    {"type": "translation", "translation": [0, 10.0, 0, 3.0]},
                                ],
                            }
                        ],
                    }
                ]
            }
        )
    )
    metadata = image_metadata(store)
    assert metadata == ImageMetadata(
        "CZYX", (1.0, 2.0, 0.5, 0.5), (None, *MICRONS), (0.0, 10.0, 0.0, 3.0)
    )
    assert anisotropy_from(metadata) == pytest.approx(4.0)


def test_files_without_metadata_axes_know_nothing(tmp_path) -> None:
    # tifffile calls a plain stack's pages "Q" (or guesses samples): not depth, not time.
    tifffile.imwrite(
        tmp_path / "plain.tif", np.zeros((4, 16, 20), np.uint16), photometric="minisblack"
    )
    io.write_png(tmp_path / "plane.png", np.zeros((16, 20), np.uint8))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    for name in ("plain.tif", "plane.png", "broken.tif", "missing.tif"):
        metadata = image_metadata(tmp_path / name)
        assert metadata == ImageMetadata()
        assert anisotropy_from(metadata) is None


def test_anisotropy_needs_a_z_step_and_comparable_units() -> None:
    assert anisotropy_from(ImageMetadata("TYX", (5.0, 1.0, 1.0))) is None
    assert anisotropy_from(ImageMetadata("ZYX", (3.0, 1.5, 1.5))) == pytest.approx(2.0)
    mixed = ImageMetadata("ZYX", (3.0, 1.5, 1.5), ("micrometer", None, None))
    assert anisotropy_from(mixed) is None


def test_write_tiff_keeps_voxel_size_units_and_origin(tmp_path) -> None:
    metadata = ImageMetadata("ZYX", (2.0, 0.5, 0.25), MICRONS, (4.0, -1.0, 3.0))
    path = io.write_tiff(tmp_path / "volume.tif", np.ones((3, 8, 9), np.float32), False, metadata)
    assert image_metadata(path) == metadata
    assert io.read_image(path).shape == (3, 8, 9)
    colour = ImageMetadata("YXS", (0.5, 0.5, 1.0), ("micrometer", "micrometer", None))
    path = io.write_tiff(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8), True, colour)
    assert image_metadata(path).scale == (0.5, 0.5, 1.0)
    assert io.read_image(path).shape == (8, 9, 3)


def test_pixel_metadata_and_notes_keep_a_plain_tiff(tmp_path) -> None:
    plain = ImageMetadata("YX", (1.0, 1.0), None, (0.0, 0.0))
    assert tiff_metadata(plain, (8, 9)) == {}
    assert tiff_metadata(None, (8, 9), notes={"kind": "labels"}) == {"metadata": {"kind": "labels"}}
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 9), np.uint8), **tiff_metadata(plain, (8, 9)))
    assert tiff_notes(tmp_path / "a.tif").get("kind") is None
    scaled = ImageMetadata("YX", (0.5, 0.5))
    kwargs = tiff_metadata(scaled, (8, 9), notes={"kind": "labels"})
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((8, 9), np.uint8), **kwargs)
    assert tiff_notes(tmp_path / "b.tif") == {"kind": "labels"}
    assert image_metadata(tmp_path / "b.tif").scale == (0.5, 0.5)


def test_ngff_axes_and_transformations() -> None:
    metadata = ImageMetadata("ZYX", (2.0, 0.5, 0.5), MICRONS, (1.0, 0.0, 0.0))
    assert ngff_axes(metadata, 3) == [
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert ngff_transformations(metadata, 3) == [
        {"type": "scale", "scale": [2.0, 0.5, 0.5]},
        {"type": "translation", "translation": [1.0, 0.0, 0.0]},
    ]
    assert ngff_axes(None, 2) == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert ngff_transformations(None, 2) == [{"type": "scale", "scale": [1.0, 1.0]}]


def test_uncalibrated_imagej_and_unknown_units_give_no_voxel_size(tmp_path) -> None:
    # ImageJ ignores a resolution without a unit (a 72 dpi print resolution, say).
    tifffile.imwrite(
        tmp_path / "dpi.tif",
        np.zeros((3, 16, 20), np.uint8),
        imagej=True,
        resolution=(72.0, 72.0),
        metadata={"axes": "ZYX", "spacing": 4.0},
    )
    metadata = image_metadata(tmp_path / "dpi.tif")
    assert metadata.axes == "ZYX" and metadata.scale is None
    assert anisotropy_from(metadata) is None
    assert [unit_name(u) for u in ("µm", "micron", "NM", "pixel", "parsec", None)] == [
        "micrometer",
        "micrometer",
        "nanometer",
        None,
        None,
        None,
    ]


def test_axes_move_and_drop_with_the_array() -> None:
    metadata = ImageMetadata("ZYXC", (2.0, 0.5, 0.5, 1.0), None, (1.0, 0.0, 0.0, 0.0))
    assert metadata.moved_to_front(-1) == ImageMetadata(
        "CZYX", (1.0, 2.0, 0.5, 0.5), None, (0.0, 1.0, 0.0, 0.0)
    )
    assert metadata.without_axis(3) == ImageMetadata("ZYX", (2.0, 0.5, 0.5), None, (1.0, 0, 0))
    assert ImageMetadata().without_axis(2) == ImageMetadata().moved_to_front(0) == ImageMetadata()
