"""Tests of napari_unet.io: atomic writes, reading, label writing and pairing of files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet.errors import DataError
from napari_unet.io import (
    atomic_write,
    find_dsb_samples,
    find_pairs,
    is_dsb_folder,
    list_images,
    read_dsb_sample,
    read_image,
    write_labels,
    write_png,
    write_tiff,
)


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_write_gives_ordinary_file_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        target = tmp_path / "labels.tif"
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"data")
    finally:
        os.umask(umask)
    # readable by others like any file the user saves, not owner-only as mkstemp makes it
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_write_leaves_old_file_untouched_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_atomic_write_of_a_new_file_leaves_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.png") as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_read_image_formats_and_errors(tmp_path: Path) -> None:
    stack = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    assert np.array_equal(read_image(tmp_path / "stack.tif"), stack)
    rgb = np.random.default_rng(0).integers(0, 255, (6, 4, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)

    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a supported image"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="could not read"):
        read_image(tmp_path / "broken.png")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_write_labels_tiff_keeps_dtype(tmp_path: Path, dtype: type) -> None:
    labels = np.zeros((9, 11), dtype)
    labels[2:5, 3:7] = 7
    labels[6:, :2] = np.iinfo(dtype).max // 2
    path = write_labels(tmp_path / "labels.tif", labels)
    back = read_image(path)
    assert back.dtype == dtype and np.array_equal(back, labels)


def test_write_labels_png(tmp_path: Path) -> None:
    small = np.array([[0, 1], [2, 255]], np.int64)
    assert read_image(write_labels(tmp_path / "s.png", small)).dtype == np.uint16
    large = np.array([[0, 1], [2, 65535]], np.int32)
    back = read_image(write_labels(tmp_path / "l.png", large))
    assert back.dtype == np.uint16 and np.array_equal(back, large)


def test_write_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="do not fit a 16-bit PNG; save as TIFF"):
        write_labels(tmp_path / "big.png", np.array([[0, 70000]], np.int32))
    with pytest.raises(DataError, match="16-bit PNG"):
        write_labels(tmp_path / "neg.png", np.array([[0, -1]], np.int32))
    with pytest.raises(DataError, match="labels must be integers"):
        write_labels(tmp_path / "f.tif", np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match="use .tif or .png"):
        write_labels(tmp_path / "l.jpg", np.zeros((2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_tiff_and_png(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)
    assert np.array_equal(read_image(write_tiff(tmp_path / "f.tiff", data)), data)
    overlay = np.zeros((4, 4, 3), np.uint8)
    overlay[..., 0] = 200
    assert np.array_equal(read_image(write_png(tmp_path / "o.png", overlay)), overlay)


def write_folder(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        iio.imwrite(folder / name, np.zeros((4, 4), np.uint8))


def test_list_images_skips_hidden_and_other_files(tmp_path: Path) -> None:
    write_folder(tmp_path, ["b.png", "a.tif", ".hidden.png"])
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.png"]
    with pytest.raises(DataError, match="is not a folder"):
        list_images(tmp_path / "nope")


def test_find_pairs_matches_by_stem(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", ["b.png", "a.png"])
    write_folder(tmp_path / "labels", ["a.tif", "b.tif"])
    pairs = find_pairs(tmp_path / "images", tmp_path / "labels")
    assert [(i.name, lab.name) for i, lab in pairs] == [("a.png", "a.tif"), ("b.png", "b.tif")]


def test_find_pairs_mismatches(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", ["a.png", "b.png", "c.png"])
    write_folder(tmp_path / "labels", ["a.tif", "d.tif"])
    with pytest.raises(DataError, match=r"no labels for \['b', 'c'\].*no images for \['d'\]"):
        find_pairs(tmp_path / "images", tmp_path / "labels")
    write_folder(tmp_path / "empty", [])
    with pytest.raises(DataError, match="no images"):
        find_pairs(tmp_path / "empty", tmp_path / "labels")
    with pytest.raises(DataError, match="is not a folder"):
        find_pairs(tmp_path / "images", tmp_path / "missing")
    write_folder(tmp_path / "twice", ["a.png", "a.tif"])
    with pytest.raises(DataError, match="share a name"):
        find_pairs(tmp_path / "twice", tmp_path / "labels")


def make_dsb_sample(root: Path, sample_id: str, masks: list[np.ndarray]) -> np.ndarray:
    """A DSB 2018 style sample: RGBA image and one binary PNG per nucleus."""
    image = np.random.default_rng(0).integers(0, 255, (12, 10, 4), dtype=np.uint8)
    image[..., 3] = 255
    write_png(root / sample_id / "images" / f"{sample_id}.png", image)
    for index, mask in enumerate(masks):
        write_png(root / sample_id / "masks" / f"m{index:03d}.png", mask.astype(np.uint8) * 255)
    return image


def test_read_dsb_sample(tmp_path: Path) -> None:
    masks = [np.zeros((12, 10), bool) for _ in range(3)]
    masks[0][1:4, 1:4] = True
    masks[1][6:10, 2:8] = True
    masks[2][3:5, 3:6] = True  # overlaps the first: later masks win
    image = make_dsb_sample(tmp_path, "abc", masks)
    read, labels = read_dsb_sample(tmp_path / "abc")
    assert np.array_equal(read, image)
    assert labels.shape == (12, 10) and labels.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels[3:5, 3:6] == 3).all() and labels[1, 1] == 1 and (labels[masks[1]] == 2).all()
    assert np.count_nonzero(labels) == np.count_nonzero(np.any(masks, axis=0))


def test_dsb_folder_discovery(tmp_path: Path) -> None:
    mask = np.zeros((12, 10), bool)
    mask[2:5, 2:5] = True
    make_dsb_sample(tmp_path / "stage1", "s2", [mask])
    make_dsb_sample(tmp_path / "stage1", "s1", [mask])
    (tmp_path / "stage1" / "notes").mkdir()
    assert is_dsb_folder(tmp_path / "stage1")
    assert not is_dsb_folder(tmp_path / "stage1" / "s1" / "images")
    assert not is_dsb_folder(tmp_path / "missing")
    assert [p.name for p in find_dsb_samples(tmp_path / "stage1")] == ["s1", "s2"]
    with pytest.raises(DataError, match="no DSB samples"):
        find_dsb_samples(tmp_path / "stage1" / "notes")


def test_read_dsb_sample_errors(tmp_path: Path) -> None:
    make_dsb_sample(tmp_path, "odd", [np.ones((5, 5), bool)])
    with pytest.raises(DataError, match="masks must match their image"):
        read_dsb_sample(tmp_path / "odd")
    write_folder(tmp_path / "two" / "images", ["a.png", "b.png"])
    with pytest.raises(DataError, match="exactly one image, found 2"):
        read_dsb_sample(tmp_path / "two")
    # a test-set sample without masks reads as empty labels
    make_dsb_sample(tmp_path, "nomasks", [])
    _, labels = read_dsb_sample(tmp_path / "nomasks")
    assert not labels.any()


def test_write_tiff_keeps_a_three_plane_stack_apart_from_rgb(tmp_path: Path) -> None:
    stack = np.arange(3 * 5 * 4, dtype=np.uint16).reshape(3, 5, 4)
    write_tiff(tmp_path / "stack.tif", stack)
    assert np.array_equal(tifffile.imread(tmp_path / "stack.tif"), stack)
    with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
        assert tif.pages[0].photometric != tifffile.PHOTOMETRIC.RGB
    colour = np.zeros((5, 4, 3), np.uint8)
    write_tiff(tmp_path / "colour.tif", colour, rgb=True)
    with tifffile.TiffFile(tmp_path / "colour.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert tif.asarray().shape == (5, 4, 3)


def test_grey_plus_alpha_files_read_as_grey(tmp_path: Path) -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with_alpha = np.stack([image, np.full_like(image, 255)], axis=-1)
    iio.imwrite(tmp_path / "la.png", with_alpha, extension=".png")  # PNG mode LA
    tifffile.imwrite(
        tmp_path / "la.tif", with_alpha, photometric="minisblack", extrasamples=["unassalpha"]
    )
    tifffile.imwrite(tmp_path / "two.tif", with_alpha)  # two channels, no alpha
    rgba = np.concatenate([np.stack([image] * 3, axis=-1), with_alpha[..., 1:]], axis=-1)
    iio.imwrite(tmp_path / "rgba.png", rgba, extension=".png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), image)
    np.testing.assert_array_equal(read_image(tmp_path / "la.tif"), image)
    np.testing.assert_array_equal(read_image(tmp_path / "two.tif"), with_alpha)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba)  # napari shows it
