"""Tests of napari_unet.io: atomic writes, reading, label writing and pairing of files."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet.errors import DataError
from napari_unet.io import (
    RUN_RECORD,
    as_image,
    atomic_write,
    check_finite,
    check_output,
    check_run_record,
    find_dsb_samples,
    find_pairs,
    image_header,
    is_dsb_folder,
    list_images,
    read_dsb_sample,
    read_image,
    remove_stale_parts,
    write_labels,
    write_png,
    write_run_record,
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
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="could not read .* as a PNG image"):
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


def huge_tiff(path: Path, side: int = 1_000_000) -> Path:
    """A 300-byte TIFF whose header declares ``side x side`` 16-bit pixels (terabytes)."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(side)
        tif.pages[0].tags["ImageLength"].overwrite(side)
    return path


def huge_png(path: Path, side: int = 100_000) -> Path:
    """A 70-byte PNG whose header declares ``side x side`` pixels."""
    iio.imwrite(path, np.zeros((8, 8), np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", side, side)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_read_image_refuses_a_declared_size_over_the_free_memory(tmp_path: Path) -> None:
    start = time.perf_counter()
    tiff = huge_tiff(tmp_path / "huge.tif")
    assert tiff.stat().st_size < 2000
    assert image_header(tiff) == ((1_000_000, 1_000_000), np.dtype(np.uint16))
    with pytest.raises(DataError, match=r"needs 1862\.6 GiB of memory but .* GiB is free"):
        read_image(tiff)
    with pytest.raises(DataError, match="could not read .* as a PNG image"):
        read_image(huge_png(tmp_path / "huge.png"))
    assert time.perf_counter() - start < 5


def test_read_image_says_what_a_file_is(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"is empty \(0 bytes\), not a PNG image") as empty:
        read_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello, I am text")
    with pytest.raises(DataError, match="is not a PNG image") as text:
        read_image(tmp_path / "text.png")
    for error in (empty, text):
        message = str(error.value)
        assert "plugin" not in message and "\n" not in message
    with pytest.raises(DataError, match="is a folder, not an image file"):
        read_image(tmp_path)
    with pytest.raises(DataError, match="is not a regular file"):
        read_image("/dev/zero")
    # A file is read as what its bytes are, whatever its suffix says.
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    iio.imwrite(tmp_path / "really_png.tif", image, extension=".png")
    np.testing.assert_array_equal(read_image(tmp_path / "really_png.tif"), image)


def test_check_output_refuses_the_wrong_kind_and_unwritable_places(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match="--out .* is a file, not a folder"):
        check_output(a_file, "folder", "--out")
    with pytest.raises(DataError, match="--csv .* is a folder"):
        check_output(tmp_path, "file", "--csv")
    with pytest.raises(DataError, match=r"cannot be created: .*file\.txt' is a file"):
        check_output(a_file / "sub" / "scores.csv", "file", "--csv")
    with pytest.raises(DataError, match="is not a regular file"):
        check_output("/dev/full", "file", "--csv")
    # root writes through permission bits; /proc refuses everyone
    with pytest.raises(DataError, match="is not writable"):
        check_output("/proc/napari-unet-out", "folder", "--out")
    # A missing folder is fine (created when written) and is not created by the check.
    assert check_output(tmp_path / "new" / "deep", "folder", "--out") == tmp_path / "new" / "deep"
    assert not (tmp_path / "new").exists()
    assert check_output(a_file, "file", "--out") == a_file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_killed_writer_leaves_a_part_file_that_the_next_run_removes(tmp_path: Path) -> None:
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from napari_unet.io import atomic_write\n"
            "with atomic_write(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half')\n"
            "    os._exit(9)",
            str(tmp_path / "model.pt"),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert killed.returncode == 9
    (stale,) = tmp_path.glob(".model.pt.*.part.pt")
    # A file being written by this process (a running writer) stays.
    with atomic_write(tmp_path / "other.tif") as running:
        assert remove_stale_parts(tmp_path) == [stale]
        assert running.exists()
    with atomic_write(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"again")
        os.rename(tmp, tmp_path / ".model.pt.999999999-abcdefgh.part.pt")  # no such process
        tmp.write_bytes(b"again")
    check_output(tmp_path / "model.pt", "file", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "other.tif"]


def test_run_records_refuse_a_folder_of_another_run_unless_overwrite(tmp_path: Path) -> None:
    record = {"command": "predict", "model_sha256": "abc", "settings": {"threshold": 0.5}}
    check_run_record(tmp_path / "out", record, False, "--out")  # no folder yet
    assert write_run_record(tmp_path / "out", record) == tmp_path / "out" / RUN_RECORD
    check_run_record(tmp_path / "out", dict(record), False, "--out")  # same run: adds to it
    other = {**record, "settings": {"threshold": 0.7}}
    with pytest.raises(
        DataError, match=r"holds results of another run \(settings differ\).*--overwrite"
    ):
        check_run_record(tmp_path / "out", other, False, "--out")
    check_run_record(tmp_path / "out", other, True, "--out")


def test_as_image_reads_paths_and_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    import dask.array as da
    import torch

    image = np.arange(20, dtype=np.uint16).reshape(4, 5)
    tifffile.imwrite(tmp_path / "a.tif", image)
    np.testing.assert_array_equal(as_image(str(tmp_path / "a.tif")), image)
    np.testing.assert_array_equal(as_image(tmp_path / "a.tif"), image)
    np.testing.assert_array_equal(as_image(torch.ones(2, 3)), np.ones((2, 3), np.float32))
    lazy = da.zeros((4, 5))
    assert as_image(lazy) is lazy
    with pytest.raises(DataError, match="does not exist"):
        as_image(str(tmp_path / "missing.tif"))
    with pytest.raises(DataError, match="ragged nested list"):
        as_image([[1, 2], [3]])
    with pytest.raises(DataError, match="requires grad; give tensor.detach"):
        as_image(torch.ones(2, 3, requires_grad=True))
    with pytest.raises(DataError, match="complex numbers"):
        as_image(np.ones((4, 4), np.complex64))
    with pytest.raises(DataError, match="holds <U1 values, not numbers"):
        as_image(np.array([["a"]]))


def test_check_finite(tmp_path: Path) -> None:
    import dask.array as da

    check_finite(np.zeros((3, 3), np.uint8), "'a'")
    check_finite(np.zeros((3, 3), np.float32), "'a'")
    bad = np.zeros((3, 3), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(DataError, match="'b' holds NaN or infinite values"):
        check_finite(bad, "'b'")
    with pytest.raises(DataError, match="holds NaN"):
        check_finite(da.from_array(bad, chunks=2), "'c'")


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
