"""The napari writers: Labels to TIFF/PNG, Image + Labels pairs to a training folder."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet import io
from napari_unet._reader import get_reader
from napari_unet._writer import write_labels, write_training_folder
from napari_unet.data import load_pairs_from_folders
from napari_unet.errors import SaveError


def labels_2d(dtype=np.uint16, top: int = 3) -> np.ndarray:
    labels = np.zeros((20, 30), dtype)
    labels[2:6, 2:6] = 1
    labels[10:15, 5:25] = top
    return labels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_labels_tiff_keeps_dtype_and_is_compressed(tmp_path, dtype):
    labels = labels_2d(dtype, top=70_000 if np.iinfo(dtype).max > 70_000 else 3)
    written = write_labels(str(tmp_path / "out.tif"), labels, {"name": "out"})
    assert written == [str(tmp_path / "out.tif")]
    with tifffile.TiffFile(written[0]) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        data = tif.asarray()
    assert data.dtype == dtype
    np.testing.assert_array_equal(data, labels)
    ((reopened, _, kind),) = get_reader(written[0])(written[0])
    assert kind == "labels"


def test_labels_stack_to_tiff(tmp_path):
    stack = np.stack([labels_2d(), labels_2d() * 2])
    path = write_labels(str(tmp_path / "stack.tiff"), stack, {})[0]
    np.testing.assert_array_equal(tifffile.imread(path), stack)


def test_labels_png_when_the_range_fits(tmp_path):
    small = labels_2d(np.int32, top=200)
    path = write_labels(str(tmp_path / "small.png"), small, {})[0]
    assert io.read_image(path).dtype == np.uint16  # 16-bit, even when 8 bits would do
    np.testing.assert_array_equal(io.read_image(path), small)
    wide = labels_2d(np.int32, top=40_000)
    path = write_labels(str(tmp_path / "wide.png"), wide, {})[0]
    np.testing.assert_array_equal(io.read_image(path), wide)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (labels_2d(np.int64, top=70_000), "16-bit PNG"),
        (np.stack([labels_2d()] * 2), "2D plane"),
    ],
)
def test_labels_png_refuses_what_does_not_fit_and_writes_nothing(tmp_path, labels, message):
    with pytest.raises(SaveError, match=message):
        write_labels(str(tmp_path / "bad.png"), labels, {})
    assert list(tmp_path.iterdir()) == []


def test_float_labels_are_refused(tmp_path):
    with pytest.raises(SaveError, match="integers"):
        write_labels(str(tmp_path / "f.tif"), labels_2d().astype(float), {})
    assert list(tmp_path.iterdir()) == []


def test_training_folder_round_trip_through_reader_and_training_loader(tmp_path):
    labels = labels_2d()
    grey = (labels > 0).astype(np.uint16) * 1000
    rgb = np.stack([labels.astype(np.uint8) * 50] * 3, axis=-1)
    layer_data = [
        (grey, {"name": "cells/1"}, "image"),
        (rgb, {"name": "colour", "rgb": True}, "image"),
        (labels * 2, {"name": "colour labels"}, "labels"),
        (labels, {"name": "cells/1 labels"}, "labels"),
    ]
    written = write_training_folder(str(tmp_path / "set"), layer_data)
    assert sorted(written) == sorted(
        str(tmp_path / "set" / sub / f"{stem}.tif")
        for sub in ("images", "labels")
        for stem in ("cells_1", "colour")
    )
    folder = tmp_path / "set"
    images, label_list = load_pairs_from_folders(folder / "images", folder / "labels")
    np.testing.assert_array_equal(images[0], grey)  # cells_1 sorts first
    np.testing.assert_array_equal(label_list[0], labels)
    np.testing.assert_array_equal(images[1], rgb)
    np.testing.assert_array_equal(label_list[1], labels * 2)
    layers = get_reader(str(tmp_path / "set"))(str(tmp_path / "set"))
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        ("cells_1", "image"),
        ("cells_1 labels", "labels"),
        ("colour", "image"),
        ("colour labels", "labels"),
    ]
    assert layers[2][1]["rgb"]


def test_training_folder_refuses_unpaired_layers(tmp_path):
    layer_data = [
        (np.zeros((10, 10)), {"name": "a"}, "image"),
        (np.zeros((12, 10), np.uint8), {"name": "a labels"}, "labels"),
    ]
    with pytest.raises(SaveError, match="unpaired"):
        write_training_folder(str(tmp_path / "set"), layer_data)
    with pytest.raises(SaveError, match="folder name"):
        write_training_folder(str(tmp_path / "set.tif"), layer_data[:1])
    assert list(tmp_path.iterdir()) == []


def test_viewer_saves_labels_and_training_folder_with_the_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = labels_2d()
    viewer.add_image(labels.astype(np.float32), name="img")
    viewer.add_labels(labels, name="img labels")
    viewer.layers.selection = {viewer.layers["img labels"]}
    viewer.layers.save(str(tmp_path / "seg.tif"), selected=True, plugin="napari-unet")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "seg.tif"), labels)
    viewer.layers.selection = set(viewer.layers)
    viewer.layers.save(str(tmp_path / "train_set"), selected=True, plugin="napari-unet")
    assert (tmp_path / "train_set" / "images" / "img.tif").is_file()
    assert (tmp_path / "train_set" / "labels" / "img.tif").is_file()


def test_a_refusal_reaches_the_user_with_the_plugins_message(make_napari_viewer, tmp_path):
    """napari hides a writer's ValueError behind 'not a valid writer'; SaveError gets through."""
    viewer = make_napari_viewer()
    stack = viewer.add_labels(np.stack([labels_2d()] * 2), name="stack")
    viewer.layers.selection = {stack}
    with pytest.raises(SaveError, match="a PNG holds one 2D plane.*save as .tif"):
        viewer.layers.save(str(tmp_path / "stack.png"), selected=True, plugin="napari-unet")
    assert list(tmp_path.iterdir()) == []


def test_png_labels_reopen_as_16_bit_labels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = labels_2d(np.int32, top=200)
    layer = viewer.add_labels(labels, name="cells")
    viewer.layers.selection = {layer}
    viewer.layers.save(str(tmp_path / "cells_labels.png"), selected=True, plugin="napari-unet")
    reopened = viewer.open(str(tmp_path / "cells_labels.png"), plugin="napari-unet")[0]
    assert type(reopened).__name__ == "Labels" and reopened.data.dtype == np.uint16
    np.testing.assert_array_equal(reopened.data, labels)


def test_labels_scale_translate_and_units_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    stack = np.stack([labels_2d(np.uint32, top=70_000)] * 3)
    layer = viewer.add_labels(
        stack, name="cells", scale=(2.0, 0.5, 0.25), translate=(10.0, -4.0, 3.0), units="µm"
    )
    viewer.layers.selection = {layer}
    viewer.layers.save(str(tmp_path / "cells.tif"), selected=True, plugin="napari-unet")
    reopened = viewer.open(str(tmp_path / "cells.tif"), plugin="napari-unet")[0]
    assert type(reopened).__name__ == "Labels" and reopened.data.dtype == np.uint32
    np.testing.assert_array_equal(reopened.data, stack)
    np.testing.assert_allclose(reopened.scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(reopened.translate, (10.0, -4.0, 3.0))
    assert [str(unit) for unit in reopened.units] == ["micrometer"] * 3
    # Fiji and other OME readers see the voxel size too.
    with tifffile.TiffFile(tmp_path / "cells.tif") as tif:
        assert tif.is_ome and 'PhysicalSizeZ="2.0"' in tif.ome_metadata


def test_training_folder_keeps_the_layers_scale(tmp_path):
    labels = labels_2d()
    colour = np.repeat(labels[..., None], 3, axis=-1).astype(np.uint8)
    half_micron = {"scale": (0.5, 0.5), "units": ("µm", "µm")}
    layer_data = [
        (colour, {"name": "img", "rgb": True, **half_micron}, "image"),
        (labels, {"name": "img labels", **half_micron}, "labels"),
    ]
    write_training_folder(str(tmp_path / "set"), layer_data)
    files = [str(tmp_path / "set" / folder / "img.tif") for folder in ("images", "labels")]
    image_layer, labels_layer = get_reader(files)(files)
    assert image_layer[2] == "image" and image_layer[1]["rgb"]
    assert labels_layer[2] == "labels"
    for _, meta, _ in (image_layer, labels_layer):
        assert meta["scale"] == (0.5, 0.5)
        assert meta["units"] == ("micrometer", "micrometer")
    np.testing.assert_array_equal(labels_layer[0], labels)
    np.testing.assert_array_equal(image_layer[0], colour)
