"""``napari-unet predict``: images, folders, TIFF and Zarr stacks to label TIFFs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import make_blobs, make_threshold_model
from napari_unet.checkpoint import save_model
from napari_unet.cli import main
from napari_unet.io import RUN_RECORD, write_png
from napari_unet.metrics import instance_metrics
from napari_unet.synthetic import nuclei_volume


def model_file(tmp_path: Path, in_channels: int = 1) -> Path:
    model = make_threshold_model(in_channels=in_channels)
    return save_model(tmp_path / f"model{in_channels}.pt", model.network, model.config)


def write_imagej_volume(path: Path, volume: np.ndarray, z_step: float) -> Path:
    """``volume`` as an ImageJ ZYX TIFF whose planes are ``z_step`` um apart (1 um pixels)."""
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        resolution=(1.0, 1.0),
        metadata={"axes": "ZYX", "spacing": z_step, "unit": "um"},
    )
    return path


def outputs(folder: Path) -> list[str]:
    """Files in ``folder`` other than its record of the run (see napari_unet.io.RUN_RECORD)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != RUN_RECORD)


def test_folder_and_files_give_one_label_tiff_each(tmp_path: Path, capsys) -> None:
    images, labels = make_blobs(n=2, shape=(40, 44))
    folder = tmp_path / "images"
    for index, image in enumerate(images):
        write_png(folder / f"img{index}.png", image)
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, images[0])
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--model",
            str(model_file(tmp_path)),
            str(folder),
            str(single),
            "--out",
            str(out),
            "--tile",
            "32",
            "--min-size",
            "0",
            "--save-probabilities",
            "--quiet",
        ]
    )
    assert code == 0
    assert outputs(out) == [
        "img0_labels.tif",
        "img0_probabilities.tif",
        "img1_labels.tif",
        "img1_probabilities.tif",
        "single_labels.tif",
        "single_probabilities.tif",
    ]
    predicted = tifffile.imread(out / "img1_labels.tif")
    assert predicted.shape == (40, 44) and predicted.dtype == np.uint16
    assert instance_metrics(labels[1], predicted)["ap50"] > 0.7
    np.testing.assert_array_equal(
        tifffile.imread(out / "single_labels.tif"), tifffile.imread(out / "img0_labels.tif")
    )
    assert tifffile.imread(out / "img0_probabilities.tif").shape == (1, 40, 44)
    assert "img1_labels.tif" in capsys.readouterr().out


def test_tiff_and_zarr_stacks_give_the_same_sequential_labels(tmp_path: Path) -> None:
    import zarr

    images, _ = make_blobs(n=3, shape=(36, 40))
    stack = np.stack(images)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    store = zarr.open(
        str(tmp_path / "lazy.zarr"),
        mode="w",
        shape=stack.shape,
        chunks=(1, 18, 40),
        dtype=stack.dtype,
    )
    store[:] = stack
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--model",
            str(model_file(tmp_path)),
            str(tmp_path / "stack.tif"),
            str(tmp_path / "lazy.zarr"),
            "--out",
            str(out),
            "--min-size",
            "0",
            "--quiet",
            "--save-probabilities",
            "--stack",
            "planes",  # block-wise (Zarr) prediction segments plane by plane
        ]
    )
    assert code == 0
    in_memory = tifffile.imread(out / "stack_labels.tif")
    streamed = tifffile.imread(out / "lazy_labels.tif")
    assert in_memory.shape == streamed.shape == (3, 36, 40)
    np.testing.assert_array_equal(streamed, in_memory)
    values = np.unique(in_memory)
    np.testing.assert_array_equal(values, np.arange(values.size))  # unique over the stack
    np.testing.assert_allclose(
        tifffile.imread(out / "lazy_probabilities.tif"),
        tifffile.imread(out / "stack_probabilities.tif"),
        atol=1e-6,
    )
    assert outputs(out) == [
        "lazy_labels.tif",
        "lazy_probabilities.tif",
        "stack_labels.tif",
        "stack_probabilities.tif",
    ]  # no scratch left


def test_bad_inputs_exit_2_and_write_nothing(tmp_path: Path, capsys) -> None:
    images, _ = make_blobs(n=1, shape=(30, 30))
    good = write_png(tmp_path / "good.png", images[0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    two_channels = tmp_path / "two.tif"
    tifffile.imwrite(two_channels, np.zeros((2, 30, 30), np.uint8), photometric="minisblack")
    model = str(model_file(tmp_path, in_channels=3))
    out = tmp_path / "out"
    cases = [
        ([str(good), str(broken)], "is not a PNG image"),
        ([str(empty)], "no images"),
        ([str(tmp_path / "missing.tif")], "does not exist"),
        ([str(two_channels), "--channel-axis", "0"], "2 channel"),
    ]
    for inputs, message in cases:
        assert main(["predict", "--model", model, *inputs, "--out", str(out), "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert outputs(out) == []
    assert (
        main(["predict", "--model", str(tmp_path / "nope.pt"), str(good), "--out", str(out)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["predict", "--model", model, str(good), "--out", str(out), "--threshold", "2"]) == 2
    )
    assert "threshold" in capsys.readouterr().err
    assert outputs(out) == []
    assert (
        main(["predict", "--model", model, str(good), "--out", str(out), "--core-threshold", "1"])
        == 2
    )
    assert "core_threshold" in capsys.readouterr().err
    assert outputs(out) == []


def test_core_threshold_keeps_only_objects_with_a_confident_core(tmp_path: Path) -> None:
    rows, cols = np.mgrid[:40, :60]
    image = np.zeros((40, 60), np.float32)
    image[(rows - 20) ** 2 + (cols - 15) ** 2 < 36] = 1.0  # foreground probability ~1
    image[(rows - 20) ** 2 + (cols - 45) ** 2 < 36] = 0.6  # ~0.88: over 0.5, under 0.95
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, image)
    model = str(model_file(tmp_path))
    counts = []
    for extra in ([], ["--core-threshold", "0.95"]):
        out = tmp_path / f"out{len(extra)}"
        common = ["--out", str(out), "--threshold", "0.5", "--min-size", "0", "--quiet"]
        assert main(["predict", "--model", model, str(path), *common, *extra]) == 0
        labels = tifffile.imread(out / "two_labels.tif")
        counts.append((labels.max(), labels[20, 15] > 0, labels[20, 45] > 0))
    assert counts == [(2, True, True), (1, True, False)]


@pytest.mark.parametrize("name", ["a.png", "sub/a.tif"])
def test_repeated_names_are_refused(tmp_path: Path, capsys, name: str) -> None:
    images, _ = make_blobs(n=1, shape=(20, 20))
    first = write_png(tmp_path / "a.png", images[0])
    second = tmp_path / "other" / name
    second.parent.mkdir(parents=True)
    tifffile.imwrite(second, images[0])
    code = main(
        [
            "predict",
            "--model",
            str(model_file(tmp_path)),
            str(first),
            str(second),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 2 and "overwrite" in capsys.readouterr().err


def test_compile_flag_gives_the_same_labels(tmp_path: Path) -> None:
    images, _ = make_blobs(n=2, shape=(40, 44))
    folder = tmp_path / "images"
    for index, image in enumerate(images):
        write_png(folder / f"img{index}.png", image)
    model = str(model_file(tmp_path))
    common = ["predict", "--model", model, str(folder), "--tile", "32", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "eager")]) == 0
    assert main([*common, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    for name in ("img0_labels.tif", "img1_labels.tif"):
        eager = tifffile.imread(tmp_path / "eager" / name)
        assert eager.max() > 0
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "compiled" / name), eager)


def cli(*args: str, **options) -> subprocess.CompletedProcess:
    """``python -m napari_unet ARGS`` in a child process (for real stdout/OS behaviour)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "napari_unet", *args], env=env, text=True, **options
    )


def test_output_paths_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    image = write_png(tmp_path / "a.png", make_blobs(n=1, shape=(30, 30))[0][0])
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    missing_model = str(tmp_path / "nope.pt")  # loading it would fail: it is never reached
    cases = [
        (a_file, "is a file, not a folder"),
        (a_file / "out", "file.txt' is a file, not a folder"),
        (Path("/proc/napari-unet-out"), "is not writable"),
    ]
    for out, message in cases:
        assert main(["predict", "--model", missing_model, str(image), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --out") and message in error
        assert error.count("\n") == 1
    assert a_file.read_text() == "x"


def test_a_nan_image_second_in_a_folder_leaves_no_labels(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    image = make_blobs(n=1, shape=(30, 30))[0][0].astype(np.float32)
    tifffile.imwrite(folder / "a.tif", image)
    image[3, 4] = np.nan
    tifffile.imwrite(folder / "b.tif", image)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_file(tmp_path)), str(folder), "--out", str(out)])
    assert code == 2
    assert "b.tif' holds NaN or infinite values" in capsys.readouterr().err
    assert outputs(out) == []


def test_inputs_too_large_for_the_memory_are_refused_before_reading(tmp_path: Path, capsys) -> None:
    import zarr

    from test_io import huge_tiff

    zarr.open(
        str(tmp_path / "empty.zarr"),
        mode="w",
        shape=(100_000, 100_000),
        chunks=(4096, 4096),
        dtype=np.uint8,
    )
    tiff = huge_tiff(tmp_path / "big.tif", side=200_000)
    model = str(model_file(tmp_path))
    out = tmp_path / "out"
    for source in (tmp_path / "empty.zarr", tiff):
        start = time.perf_counter()
        assert main(["predict", "--model", model, str(source), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert "GiB of memory but" in error and "--zarr" in error and error.count("\n") == 1
        assert time.perf_counter() - start < 10
    assert outputs(out) == []


def test_a_run_with_another_model_or_settings_needs_overwrite(tmp_path: Path, capsys) -> None:
    image = write_png(tmp_path / "a.png", make_blobs(n=1, shape=(30, 30))[0][0])
    out = tmp_path / "out"
    common = ["predict", str(image), "--out", str(out), "--quiet", "--min-size", "0"]
    model = str(model_file(tmp_path))
    assert main([*common, "--model", model, "--threshold", "0.5"]) == 0
    first = (out / "a_labels.tif").read_bytes()
    assert main([*common, "--model", model, "--threshold", "0.5"]) == 0  # same run: fine
    capsys.readouterr()
    assert main([*common, "--model", model, "--threshold", "0.9"]) == 2
    assert "another run (settings differ)" in capsys.readouterr().err
    assert main([*common, "--model", str(model_file(tmp_path, 3)), "--threshold", "0.5"]) == 2
    assert "model_sha256" in capsys.readouterr().err
    assert (out / "a_labels.tif").read_bytes() == first
    assert main([*common, "--model", model, "--threshold", "0.9", "--overwrite"]) == 0
    assert main([*common, "--model", model, "--threshold", "0.9"]) == 0  # the new record


def test_a_full_disk_and_a_closed_pipe_end_cleanly(tmp_path: Path) -> None:
    images, _ = make_blobs(n=2, shape=(30, 30))
    for index, image in enumerate(images):
        write_png(tmp_path / "images" / f"{index}.png", image)
    model = str(model_file(tmp_path))
    args = ["predict", "--model", model, str(tmp_path / "images"), "--quiet", "--out"]
    with open("/dev/full", "w") as full:  # every write fails: no space left on device
        result = cli(*args, str(tmp_path / "a"), stdout=full, stderr=subprocess.PIPE)
    assert result.returncode == 2
    assert result.stderr.startswith("error: No space left on device")
    assert result.stderr.count("\n") == 1
    # `napari-unet predict ... | head -0`: the reader is gone before anything is printed
    child = subprocess.Popen(
        [sys.executable, "-m", "napari_unet", *args, str(tmp_path / "b")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child.stdout.close()
    error = child.stderr.read()
    assert child.wait() == 1 and error == ""


def test_a_file_size_limit_mid_run_is_one_error_line_and_no_partial_file(tmp_path: Path) -> None:
    import resource

    noise = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    tifffile.imwrite(tmp_path / "noise.tif", noise)
    out = tmp_path / "out"

    def limit_file_size() -> None:  # like a disk that fills up after 16 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    result = cli(
        "predict",
        "--model",
        str(model_file(tmp_path)),
        str(tmp_path / "noise.tif"),
        "--out",
        str(out),
        "--quiet",
        "--save-probabilities",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit_file_size,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: File too large") and result.stderr.count("\n") == 1
    assert "noise_probabilities.tif" not in outputs(out)
    assert not list(out.glob(".*.part*"))


def test_zarr_output_on_a_scheduler_and_errors(tmp_path: Path, capsys) -> None:
    import zarr

    from napari_unet.prediction import PredictConfig, predict

    stack = np.stack(make_blobs(n=3, shape=(96, 120), seed=1)[0])
    model = model_file(tmp_path)
    source = tmp_path / "stack.zarr"
    zarr.create_array(str(source), data=stack, chunks=(1, 48, 48))
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--model",
            str(model),
            str(source),
            "--out",
            str(out),
            "--scheduler",
            "threads",
            "--workers",
            "2",
            "--block",
            "48",
            "--tile",
            "256",
            "--overlap",
            "16",
            "--min-size",
            "4",
            "--quiet",
        ]
    )
    assert code == 0
    labels = zarr.open_array(str(out / "stack_labels.zarr" / "0"), mode="r")[:]
    config = PredictConfig(tile_size=256, overlap=16, min_size=4, stack="planes")
    expected = predict(stack, model, config).labels  # block-wise: plane by plane
    # Blocks of 48: objects cut by block edges are stitched into the whole-plane objects.
    pairs = np.unique(np.stack([labels.ravel(), expected.ravel()], 1), axis=0)
    assert len(pairs) == len(np.unique(labels)) == len(np.unique(expected))
    code = main(
        [
            "predict",
            "--model",
            str(model),
            str(tmp_path / "missing.tif"),
            "--out",
            str(out),
            "--zarr",
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_lazy_stack_in_blocks_is_numbered_1_to_n_and_leaves_no_scratch(tmp_path: Path, capsys):
    import zarr

    stack = np.stack(make_blobs(n=3, shape=(70, 90), seed=2)[0]).astype(np.float32)
    zarr.create_array(str(tmp_path / "stack.zarr"), data=stack, chunks=(1, 35, 45))
    model = str(model_file(tmp_path))
    out = tmp_path / "out"
    common = ["predict", "--model", model, "--out", str(out), "--min-size", "0", "--quiet"]
    assert main([*common, str(tmp_path / "stack.zarr"), "--block", "32", "--halo", "16"]) == 0
    labels = tifffile.imread(out / "stack_labels.tif")
    ids = [set(np.unique(plane[plane > 0]).tolist()) for plane in labels]
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # unique over planes
    assert set.union(*ids) == set(range(1, labels.max() + 1))  # sequential, no gaps
    assert outputs(out) == ["stack_labels.tif"]  # the scratch folder is gone

    stack[1, 3, 3] = np.nan  # found by a block task: the run fails after it started
    zarr.create_array(str(tmp_path / "nan.zarr"), data=stack, chunks=(1, 35, 45))
    assert main([*common, str(tmp_path / "nan.zarr")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert outputs(out) == ["stack_labels.tif"]


def test_label_tiff_keeps_the_inputs_voxel_size(tmp_path: Path) -> None:
    from napari_unet.metadata import ImageMetadata, anisotropy_from, image_metadata

    images, _ = make_blobs(n=3, shape=(36, 40))
    tifffile.imwrite(
        tmp_path / "volume.tif",
        np.stack(images),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "micron"},
    )
    out = tmp_path / "out"
    code = main(
        ["predict", "--model", str(model_file(tmp_path)), str(tmp_path / "volume.tif")]
        + ["--out", str(out), "--min-size", "0", "--quiet"]
    )
    assert code == 0
    labels = image_metadata(out / "volume_labels.tif")
    assert labels == ImageMetadata("ZYX", (2.0, 0.5, 0.5), ("micrometer",) * 3, (0.0, 0.0, 0.0))
    assert anisotropy_from(labels) == pytest.approx(4.0)
    assert tifffile.imread(out / "volume_labels.tif").shape == (3, 36, 40)


def test_a_3d_tiff_gives_one_id_per_nucleus_across_z(tmp_path: Path, capsys) -> None:
    image, truth = nuclei_volume((16, 64, 64), 4, anisotropy=2.0, diameter=(12.0, 16.0), seed=3)
    model = make_threshold_model(target="contour")
    model_path = str(save_model(tmp_path / "contour.pt", model.network, model.config))
    # An ImageJ volume whose planes are 2 pixels apart: the anisotropy comes from the file.
    source = write_imagej_volume(tmp_path / "volume.tif", image, z_step=2.0)

    def probabilities(out: str, *options: str) -> np.ndarray:
        common = ["predict", "--model", model_path, str(source), "--quiet"]
        assert main([*common, "--out", str(tmp_path / out), "--save-probabilities", *options]) == 0
        return tifffile.imread(tmp_path / out / "volume_probabilities.tif")

    from_file = probabilities("file")
    labels = tifffile.imread(tmp_path / "file" / "volume_labels.tif")
    counts = instance_metrics(truth, labels)
    assert abs(counts["n_pred"] - counts["n_true"]) <= 0.05 * counts["n_true"]
    for nucleus in range(1, 5):  # one id (not one per plane) covers each nucleus
        ids, sizes = np.unique(labels[truth == nucleus], return_counts=True)
        assert sizes[ids > 0].max() > max(0.9 * sizes[ids > 0].sum(), 0.5 * sizes.sum())
    np.testing.assert_array_equal(from_file, probabilities("two", "--anisotropy", "2"))
    assert not np.allclose(from_file, probabilities("one", "--anisotropy", "1"))
    probabilities("planes", "--stack", "planes")
    assert tifffile.imread(tmp_path / "planes" / "volume_labels.tif").max() > 4 * 4


def test_volume_mode_refusals_exit_2_and_write_nothing(tmp_path: Path, capsys) -> None:
    image, _ = nuclei_volume((16, 64, 64), 4, diameter=(10.0, 14.0), seed=2)
    model = str(model_file(tmp_path))
    volume = tmp_path / "volume.tif"
    tifffile.imwrite(volume, image)
    series = tmp_path / "series.tif"
    tifffile.imwrite(series, image, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "out"
    for source, options, message in [
        (volume, ["--anisotropy", "0"], "anisotropy must be"),
        (volume, ["--anisotropy", "-2"], "anisotropy must be"),
        (series, ["--stack", "volume"], "time series"),
    ]:
        code = main(["predict", "--model", model, str(source), "--out", str(out), *options])
        assert code == 2
        assert message in capsys.readouterr().err
        assert outputs(out) == []
    # Without --stack, a time series is segmented plane by plane.
    assert main(["predict", "--model", model, str(series), "--out", str(out), "--quiet"]) == 0


def test_a_3d_model_segments_a_3d_tiff_natively(tmp_path: Path) -> None:
    image, truth = nuclei_volume((20, 64, 64), 6, anisotropy=2.0, diameter=(12.0, 18.0), seed=1)
    model = make_threshold_model(ndim=3, anisotropy=2.0)
    model_path = save_model(tmp_path / "m3d.pt", model.network, model.config)
    source = write_imagej_volume(tmp_path / "volume.tif", image, z_step=2.0)
    out = tmp_path / "out"
    code = main(
        ["predict", "--model", str(model_path), str(source), "--out", str(out)]
        + ["--min-size", "20", "--save-probabilities", "--quiet"]
    )
    assert code == 0
    labels = tifffile.imread(out / "volume_labels.tif")
    assert labels.shape == image.shape
    assert tifffile.imread(out / "volume_probabilities.tif").shape == (1, *image.shape)
    counts = instance_metrics(truth, labels)
    assert abs(counts["n_pred"] - counts["n_true"]) <= 2
    from napari_unet.metadata import image_metadata

    assert image_metadata(out / "volume_labels.tif").scale[0] == pytest.approx(2.0)


def test_a_3d_model_refuses_2d_images_and_blockwise_with_exit_2(tmp_path: Path, capsys) -> None:
    image, _ = nuclei_volume((12, 48, 48), 2, diameter=(8.0, 10.0), seed=2)
    model = make_threshold_model(ndim=3)
    model_path = str(save_model(tmp_path / "m3d.pt", model.network, model.config))
    volume, plane = tmp_path / "volume.tif", tmp_path / "plane.tif"
    tifffile.imwrite(volume, image)
    tifffile.imwrite(plane, image[6])
    series = tmp_path / "series.tif"
    tifffile.imwrite(series, image, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "out"
    for sources, options, message in [
        ([volume, plane], [], "plane.tif': a 3D model segments (Z, Y, X) volumes"),
        ([series], [], "time series"),
        ([volume], ["--stack", "planes"], "3D model cannot"),
        ([volume], ["--zarr"], "napari-unet predict` on a TIFF volume"),
    ]:
        paths = [str(source) for source in sources]
        code = main(["predict", "--model", model_path, *paths, "--out", str(out), *options])
        assert code == 2
        assert message in capsys.readouterr().err
        assert outputs(out) == []
