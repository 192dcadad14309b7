"""The napari reader: files by type, training folders and DSB folders as layer pairs."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_unet import io
from napari_unet._reader import get_reader, is_label_file
from napari_unet._writer import write_labels_tiff
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


def test_training_folder_opens_as_image_and_labels_pairs(tmp_path):
    image, labels = image_and_labels()
    for stem in ("a", "b"):
        io.write_tiff(tmp_path / "images" / f"{stem}.tif", image)
        io.write_labels(tmp_path / "labels" / f"{stem}.png", labels)
    layers = read(tmp_path)
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        ("a", "image"),
        ("a labels", "labels"),
        ("b", "image"),
        ("b labels", "labels"),
    ]
    np.testing.assert_array_equal(layers[1][0], labels)


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
    assert [kind for _, _, kind in layers] == ["image", "labels", "image", "labels"]
    assert layers[0][1]["rgb"]
    assert set(np.unique(layers[1][0])) == {0, 1, 2}
    assert (layers[1][0] > 0).sum() == (labels > 0).sum()
    # One sample folder alone opens too.
    assert len(read(tmp_path / "s1")) == 2


def test_bundled_samples_folder_opens():
    layers = read(SAMPLES_DIR)
    assert len(layers) == 8
    assert {kind for _, _, kind in layers} == {"image", "labels"}


def test_reader_opens_in_a_viewer(make_napari_viewer, tmp_path):
    image, labels = image_and_labels()
    io.write_tiff(tmp_path / "set" / "images" / "a.tif", image)
    write_labels_tiff(tmp_path / "set" / "labels" / "a.tif", labels)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "set"), plugin="napari-unet")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    assert viewer.layers["a labels"].data.dtype == np.uint16


def test_channels_open_as_one_layer_and_grey_alpha_as_grey(tmp_path):
    image, _ = image_and_labels()
    tifffile.imwrite(tmp_path / "two.tif", np.stack([image, image // 2], axis=-1))
    iio.imwrite(tmp_path / "la.png", np.stack([image, image], axis=-1), extension=".png")
    ((data, meta, kind),) = read(tmp_path / "two.tif")
    assert kind == "image" and not meta["rgb"] and data.shape == (2, 24, 32)
    np.testing.assert_array_equal(data[1], image // 2)
    ((data, meta, kind),) = read(tmp_path / "la.png")
    assert kind == "image" and not meta["rgb"] and data.shape == (24, 32)
