"""The napari reader: files by type, training folders and DSB folders as layer pairs."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet import io
from napari_unet._reader import get_reader, is_label_file
from napari_unet._writer import write_labels_tiff
from napari_unet.errors import DataError
from napari_unet.io import SAMPLES_DIR


def image_and_labels() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((24, 32), np.uint16)
    labels[2:8, 3:9] = 1
    labels[12:20, 10:25] = 2
    image = (labels > 0).astype(np.uint8) * 200 + 20
    return image, labels


def read(path) -> list[tuple]:
    reader = get_reader(str(path) if not isinstance(path, list) else [str(p) for p in path])
    assert reader is not None
    return reader(path if not isinstance(path, list) else [str(p) for p in path])


def test_get_reader_returns_none_for_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "images").mkdir()  # images/ without labels/
    iio.imwrite(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([str(tmp_path / "notes.txt"), str(tmp_path / "images" / "a.png")]) is None
    assert get_reader([]) is None
    assert get_reader("\0bad") is None


def test_images_and_label_images_open_with_the_right_layer_type(tmp_path):
    image, labels = image_and_labels()
    rgb = np.stack([image] * 3, axis=-1)
    iio.imwrite(tmp_path / "cells.png", image)
    iio.imwrite(tmp_path / "colour.jpg", rgb)
    tifffile.imwrite(tmp_path / "cells_masks.tif", labels)  # a label word in the name
    (tmp_path / "labels").mkdir()
    iio.imwrite(tmp_path / "labels" / "cells.png", labels)  # a label folder
    tifffile.imwrite(tmp_path / "signal.tif", labels)  # integers, but no label word
    tifffile.imwrite(tmp_path / "float_mask.tif", labels.astype(np.float32))

    layers = read([tmp_path / "cells.png", tmp_path / "colour.jpg"])
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        ("cells", "image"),
        ("colour", "image"),
    ]
    assert layers[1][1]["rgb"] and layers[1][0].shape == (24, 32, 3)
    for path in (tmp_path / "cells_masks.tif", tmp_path / "labels" / "cells.png"):
        ((data, meta, kind),) = read(path)
        assert kind == "labels"
        np.testing.assert_array_equal(data, labels)
    assert read(tmp_path / "signal.tif")[0][2] == "image"
    assert read(tmp_path / "float_mask.tif")[0][2] == "image"


def test_labels_written_by_the_plugin_reopen_as_labels_whatever_their_name(tmp_path):
    _, labels = image_and_labels()
    stack = np.stack([labels, labels * 2]).astype(np.int32)
    write_labels_tiff(tmp_path / "nuclei.tif", stack)
    ((data, _, kind),) = read(tmp_path / "nuclei.tif")
    assert kind == "labels" and data.dtype == np.int32
    np.testing.assert_array_equal(data, stack)
    assert is_label_file(tmp_path / "nuclei.tif", data)


def test_a_training_folder_of_one_shape_opens_as_one_image_and_one_labels_stack(tmp_path):
    image, labels = image_and_labels()
    folder = tmp_path / "cells"
    for number, stem in enumerate(("a", "b", "c")):
        io.write_tiff(folder / "images" / f"{stem}.tif", image + number)
        io.write_labels(folder / "labels" / f"{stem}.png", labels)
    layers = read(folder)
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        ("cells", "image"),
        ("cells labels", "labels"),
    ]
    (images, image_meta, _), (stack, labels_meta, _) = layers
    assert images.shape == (3, 24, 32) and stack.shape == (3, 24, 32)
    np.testing.assert_array_equal(images[2], image + 2)
    np.testing.assert_array_equal(stack[1], labels)
    assert image_meta["metadata"]["files"] == ["a", "b", "c"]
    assert image_meta["visible"] and labels_meta["visible"]
    # The images are read when shown (labels at once: the brush paints numpy arrays).
    assert io.is_lazy(images) and isinstance(stack, np.ndarray)


def test_a_folder_image_changed_after_opening_is_refused_when_read(tmp_path):
    image, labels = image_and_labels()
    for stem in ("a", "b"):
        io.write_tiff(tmp_path / "images" / f"{stem}.tif", image)
        io.write_labels(tmp_path / "labels" / f"{stem}.png", labels)
    (images, _, _), _ = read(tmp_path)
    io.write_tiff(tmp_path / "images" / "b.tif", image.astype(np.float32))
    with pytest.raises(DataError, match="b.tif.*as when its folder was opened"):
        np.asarray(images[1])


def test_a_folder_of_several_shapes_shows_only_its_first_stack_or_pair(tmp_path):
    image, labels = image_and_labels()
    long_stem = "f" + "0123456789abcdef" * 4  # as long as a DSB sample id
    for stem, factor in (("a", 1), ("b", 1), (long_stem, 2)):
        io.write_tiff(tmp_path / "images" / f"{stem}.tif", np.tile(image, (factor, 1)))
        io.write_labels(tmp_path / "labels" / f"{stem}.png", np.tile(labels, (factor, 1)))
    layers = read(tmp_path)
    assert [(meta["name"], kind, meta["visible"]) for _, meta, kind in layers] == [
        (f"{tmp_path.name} 24x32", "image", True),
        (f"{tmp_path.name} 24x32 labels", "labels", True),
        ("f0123456789a", "image", False),
        ("f0123456789a labels", "labels", False),
    ]
    assert layers[0][0].shape == (2, 24, 32) and layers[2][0].shape == (48, 32)


def test_a_training_folder_of_one_pair_opens_as_that_pair(tmp_path):
    image, labels = image_and_labels()
    io.write_tiff(tmp_path / "images" / "a.tif", np.stack([image, image]))  # a stack
    io.write_labels(tmp_path / "labels" / "a.tif", np.stack([labels, labels]))
    layers = read(tmp_path)
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        ("a", "image"),
        ("a labels", "labels"),
    ]
    assert layers[1][0].shape == (2, 24, 32)


def test_training_folder_with_unmatched_stems_is_not_claimed(tmp_path):
    image, labels = image_and_labels()
    io.write_tiff(tmp_path / "images" / "a.tif", image)
    io.write_labels(tmp_path / "labels" / "other.png", labels)
    assert get_reader(str(tmp_path)) is None


def test_dsb_layout_opens_with_masks_merged(tmp_path):
    image, labels = image_and_labels()
    for sample_id in ("s1", "s2"):
        sample = tmp_path / sample_id
        (sample / "images").mkdir(parents=True)
        (sample / "masks").mkdir()
        iio.imwrite(sample / "images" / f"{sample_id}.png", np.stack([image] * 3, -1))
        for index in (1, 2):
            mask = ((labels == index) * 255).astype(np.uint8)
            iio.imwrite(sample / "masks" / f"m{index}.png", mask)
    layers = read(tmp_path)
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    assert layers[0][1]["rgb"] and layers[0][0].shape == (2, 24, 32, 3)
    assert set(np.unique(layers[1][0])) == {0, 1, 2}
    assert (layers[1][0][1] > 0).sum() == (labels > 0).sum()
    # One sample folder alone opens too.
    assert len(read(tmp_path / "s1")) == 2


def test_bundled_samples_folder_opens():
    layers = read(SAMPLES_DIR)  # 4 pairs: 2 of 256x256, one 256x320, one 360x360
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        ("dsb2018 256x256", "image"),
        ("dsb2018 256x256 labels", "labels"),
        ("00ae65c1c663", "image"),
        ("00ae65c1c663 labels", "labels"),
        ("02903040e19d", "image"),
        ("02903040e19d labels", "labels"),
    ]


def test_reader_opens_in_a_viewer(make_napari_viewer, tmp_path):
    image, labels = image_and_labels()
    io.write_tiff(tmp_path / "set" / "images" / "a.tif", image)
    write_labels_tiff(tmp_path / "set" / "labels" / "a.tif", labels)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "set"), plugin="napari-unet")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    assert viewer.layers["a labels"].data.dtype == np.uint16


def test_a_folder_of_pairs_opens_in_a_viewer_as_stacks_the_train_widget_pairs(
    make_napari_viewer, tmp_path
):
    image, labels = image_and_labels()
    for stem in ("a", "b", "c"):
        io.write_tiff(tmp_path / "set" / "images" / f"{stem}.tif", image)
        io.write_labels(tmp_path / "set" / "labels" / f"{stem}.png", labels)
    io.write_tiff(tmp_path / "set" / "images" / "wide.tif", np.tile(image, (1, 2)))
    io.write_labels(tmp_path / "set" / "labels" / "wide.png", np.tile(labels, (1, 2)))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "set"), plugin="napari-unet")
    assert [(layer.name, layer.visible) for layer in viewer.layers] == [
        ("set 24x32", True),
        ("set 24x32 labels", True),
        ("wide", False),
        ("wide labels", False),
    ]
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    image_layer, labels_layer = train.rows[0].pair()
    assert (image_layer.name, labels_layer.name) == ("set 24x32", "set 24x32 labels")


def test_channels_open_as_one_layer_and_grey_alpha_as_grey(tmp_path):
    image, _ = image_and_labels()
    tifffile.imwrite(tmp_path / "two.tif", np.stack([image, image // 2], axis=-1))
    iio.imwrite(tmp_path / "la.png", np.stack([image, image], axis=-1), extension=".png")
    ((data, meta, kind),) = read(tmp_path / "two.tif")
    assert kind == "image" and not meta["rgb"] and data.shape == (2, 24, 32)
    np.testing.assert_array_equal(data[1], image // 2)
    ((data, meta, kind),) = read(tmp_path / "la.png")
    assert kind == "image" and not meta["rgb"] and data.shape == (24, 32)


def test_imagej_and_ome_voxel_size_become_the_layers_scale(make_napari_viewer, tmp_path):
    volume = np.zeros((4, 2, 24, 32), np.uint16)
    tifffile.imwrite(
        tmp_path / "imagej.tif",
        volume,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "micron"},
    )
    _, labels = image_and_labels()
    tifffile.imwrite(
        tmp_path / "cells_labels.tif",
        np.stack([labels] * 3),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 0.9},
    )
    ((data, meta, kind),) = read(tmp_path / "imagej.tif")
    # the channels go first, and their axis has no voxel size
    assert kind == "image" and data.shape == (2, 4, 24, 32)
    assert meta["scale"] == (1.0, 1.5, 0.5, 0.5)
    assert meta["axis_labels"] == ("c", "z", "y", "x")
    viewer = make_napari_viewer()
    image = viewer.open(str(tmp_path / "imagej.tif"), plugin="napari-unet")[0]
    np.testing.assert_allclose(image.scale, (1.0, 1.5, 0.5, 0.5))
    assert [str(unit) for unit in image.units] == ["pixel", *["micrometer"] * 3]
    layer = viewer.open(str(tmp_path / "cells_labels.tif"), plugin="napari-unet")[0]
    assert type(layer).__name__ == "Labels"
    np.testing.assert_allclose(layer.scale, (0.9, 0.3, 0.3))
    assert [str(unit) for unit in layer.units] == ["micrometer"] * 3


def test_a_plain_multipage_tiff_is_no_volume_and_has_unit_scale(tmp_path):
    image, _ = image_and_labels()
    tifffile.imwrite(tmp_path / "pages.tif", np.stack([image] * 3), photometric="minisblack")
    ((data, meta, kind),) = read(tmp_path / "pages.tif")
    assert kind == "image" and data.shape == (3, 24, 32)
    assert "scale" not in meta and "axis_labels" not in meta
