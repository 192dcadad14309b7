"""Tests of ``napari-unet train``: a real run, and every user error exits 2 writing nothing."""

from __future__ import annotations

import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_blobs
from napari_unet.checkpoint import load_model, model_payload
from napari_unet.cli import main
from napari_unet.config import ModelConfig
from napari_unet.io import write_png, write_tiff
from napari_unet.model import build_model
from napari_unet.training_run import CHECKPOINT_FORMAT
from test_training import read_only_folder

FAST = [
    "--preset",
    "tiny",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "2",
    "--batch-size",
    "2",
    "--patch-size",
    "32",
    "--device",
    "cpu",
    "--quiet",
    "--lr",
    "1e-3",
]


def write_pairs(folder: Path, n: int = 3, shape: tuple[int, int] = (40, 40)) -> tuple[Path, Path]:
    images, labels = make_blobs(n=n, shape=shape, rgb=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        write_png(folder / "images" / f"img{index}.png", image)
        write_png(folder / "labels" / f"img{index}.png", label)
    return folder / "images", folder / "labels"


def test_train_writes_model_log_and_checkpoint(tmp_path, capsys) -> None:
    images, labels = write_pairs(tmp_path / "data")
    out = tmp_path / "run" / "model.pt"
    code = main(
        [
            "train",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--target",
            "contour",
            "--contact-weight",
            "10",
            "--half",
            *FAST,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "best epoch 1" in printed and str(out) in printed
    model = load_model(out, device="cpu")
    assert model.config.in_channels == 3 and model.config.target == "contour"
    assert model.metadata["data"]["train_source"].startswith(str(images))
    assert model.metadata["train_config"]["contact_weight"] == 10
    assert (tmp_path / "run" / "model.csv").is_file()
    assert (tmp_path / "run" / "model.ckpt.pt").is_file()
    # Resume to a second epoch from the checkpoint.
    code = main(
        [
            "train",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--resume",
            str(tmp_path / "run" / "model.ckpt.pt"),
            *FAST[:2],
            "--epochs",
            "2",
            *FAST[4:],
        ]
    )
    assert code == 0 and load_model(out, device="cpu").metadata["epochs_run"] == 2


def test_train_with_validation_folders_and_dsb_layout(tmp_path) -> None:
    write_pairs(tmp_path / "train")
    write_pairs(tmp_path / "val", n=1, shape=(24, 30))
    out = tmp_path / "m.pt"
    code = main(
        [
            "train",
            "--dsb",
            str(tmp_path / "train"),
            "--val-dsb",
            str(tmp_path / "val"),
            "--out",
            str(out),
            "--log",
            str(tmp_path / "log.csv"),
            *FAST,
        ]
    )
    assert code == 0 and (tmp_path / "log.csv").is_file()
    assert load_model(out, device="cpu").metadata["data"]["val_planes"] == 1


def error_cases(tmp_path: Path) -> dict[str, list[str]]:
    images, labels = write_pairs(tmp_path / "good")
    # A label file of the wrong shape
    bad_images, bad_labels = write_pairs(tmp_path / "shape")
    write_png(bad_labels / "img1.png", np.ones((30, 30), np.uint16))
    # Label files that mark nothing
    empty_images, empty_labels = write_pairs(tmp_path / "empty")
    for path in empty_labels.iterdir():
        write_png(path, np.zeros((40, 40), np.uint16))
    # Stems that do not match
    odd_images, odd_labels = write_pairs(tmp_path / "stems")
    (odd_labels / "img2.png").rename(odd_labels / "other.png")
    # A label file with a negative id
    minus_images, minus_labels = write_pairs(tmp_path / "negative")
    negative = np.zeros((40, 40), np.int16)
    negative[5:10, 5:10] = -3
    (minus_labels / "img1.png").unlink()
    write_tiff(minus_labels / "img1.tif", negative)
    # A resume checkpoint whose training state holds nothing but its tag
    config = ModelConfig.from_preset("tiny", in_channels=3)
    damaged = model_payload(build_model(config), config)
    damaged["training_state"] = {"format": CHECKPOINT_FORMAT}
    torch.save(damaged, tmp_path / "damaged.ckpt.pt")
    torch.save(model_payload(build_model(config), config), tmp_path / "model.pt")
    return {
        "missing folder": ["--images", str(tmp_path / "nope"), "--labels", str(labels)],
        "only images": ["--images", str(images)],
        "shape mismatch": ["--images", str(bad_images), "--labels", str(bad_labels)],
        "empty labels": ["--images", str(empty_images), "--labels", str(empty_labels)],
        "unmatched stems": ["--images", str(odd_images), "--labels", str(odd_labels)],
        "negative label ids": ["--images", str(minus_images), "--labels", str(minus_labels)],
        "damaged checkpoint": [
            *("--images", str(images), "--labels", str(labels)),
            *("--resume", str(tmp_path / "damaged.ckpt.pt")),
        ],
        "resume a model file": [
            *("--images", str(images), "--labels", str(labels)),
            *("--resume", str(tmp_path / "model.pt")),
        ],
        "bad lr": ["--images", str(images), "--labels", str(labels), "--lr", "3"],
        "bad contact weight": [
            *("--images", str(images), "--labels", str(labels), "--contact-weight", "0")
        ],
        "contact weight on scribbles": [
            *("--images", str(images), "--labels", str(labels), "--contact-weight", "5"),
            *("--label-mode", "sparse"),
        ],
        "resume not a checkpoint": [
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--resume",
            str(images / "img0.png"),
        ],
        "missing init": [
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--init",
            str(tmp_path / "none.pt"),
        ],
    }


def test_user_errors_exit_2_and_write_nothing(tmp_path, capsys) -> None:
    for name, args in error_cases(tmp_path).items():
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        code = main(["train", "--out", str(out_dir / "m.pt"), *FAST, *args])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (name, err)
        assert not out_dir.exists() or not any(out_dir.iterdir()), name


def test_bad_outputs_are_refused_before_reading_data(tmp_path, capsys) -> None:
    (tmp_path / "existing").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    cases = {
        "out is a folder": (["--out", str(tmp_path / "existing")], "is a folder"),
        "parent is a file": (["--out", str(tmp_path / "a-file" / "m.pt")], "is a file"),
        "read-only folder": (
            ["--out", str(read_only_folder(tmp_path) / "m.pt")],
            "is not writable",
        ),
        "log is a folder": (
            ["--out", str(tmp_path / "m.pt"), "--log", str(tmp_path / "existing")],
            "--log.* is a folder",
        ),
    }
    # The data folders do not exist: an error about them would mean they were read first.
    missing_data = ["--images", str(tmp_path / "no-images"), "--labels", str(tmp_path / "no")]
    for name, (outputs, message) in cases.items():
        before = sorted(tmp_path.rglob("*"))
        code = main(["train", *outputs, *missing_data, *FAST])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: "), (name, err)
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), (name, err)
        assert sorted(tmp_path.rglob("*")) == before, name


def test_a_full_disk_is_one_error_line_and_keeps_the_model(tmp_path) -> None:
    images, labels = write_pairs(tmp_path / "data")
    out = tmp_path / "m.pt"
    args = ["train", "--images", str(images), "--labels", str(labels), "--out", str(out), *FAST]
    assert main(args) == 0
    before = out.read_bytes()

    def limit_file_size() -> None:  # as on a full disk, every write past 4 KiB fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    completed = subprocess.run(
        [sys.executable, "-m", "napari_unet", *args, "--seed", "3"],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        check=False,
    )
    assert completed.returncode == 2 and completed.stderr.startswith("error: "), completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert out.read_bytes() == before


def test_python_dash_m_runs_the_same_cli(tmp_path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "napari_unet", "train", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0 and "--val-fraction" in completed.stdout


@pytest.mark.parametrize("flag", ["--schedule", "--loss", "--target", "--sampling"])
def test_choices_are_checked_by_argparse(flag) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--images", "x", "--labels", "y", "--out", "m.pt", flag, "nonsense"])
    assert exit_info.value.code == 2


# -- native 3D models ----------------------------------------------------------------------

FAST_3D = [
    *("--ndim", "3", "--preset", "tiny", "--base-filters", "4", "--depth", "2"),
    *("--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "1", "--patch-size", "16"),
    *("--device", "cpu", "--quiet"),
]


def write_volumes(folder: Path, n: int = 2, voxel_z: float = 0.5) -> tuple[Path, Path]:
    """``n`` ImageJ TIFF nuclei volumes (Z step ``voxel_z`` micron, 0.25 micron pixels)."""
    import tifffile

    from napari_unet.synthetic import nuclei_volume

    for index in range(n):
        image, labels = nuclei_volume((8, 32, 32), 3, anisotropy=2.0, diameter=(8, 10), seed=index)
        for kind, data in (("images", image.astype(np.uint16)), ("labels", labels)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(
                folder / kind / f"vol{index}.tif",
                data,
                imagej=True,
                resolution=(4.0, 4.0),
                metadata={"axes": "ZYX", "spacing": voxel_z, "unit": "micron"},
            )
    return folder / "images", folder / "labels"


def test_train_a_3d_model_on_tiff_volumes_within_a_time_budget(tmp_path, capsys) -> None:
    images, labels = write_volumes(tmp_path / "data")
    out = tmp_path / "run" / "model3d.pt"
    args = ["train", "--images", str(images), "--labels", str(labels), "--out", str(out)]
    code = main([*args, *FAST_3D, "--max-minutes", "1e-6"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "stopped on the time budget (1e-06 min)" in printed and "epoch 1/3" in printed
    model = load_model(out, device="cpu")
    # The anisotropy comes from the files' voxel size: 0.5 micron planes, 0.25 micron pixels.
    assert model.config.ndim == 3 and model.config.anisotropy == pytest.approx(2.0)
    assert model.metadata["data"]["anisotropy_from"] == "the images' voxel size"
    assert model.metadata["epochs_run"] == 1 and model.metadata["stop_reason"] == "time budget"


def test_3d_user_errors_exit_2_and_write_nothing(tmp_path, capsys) -> None:
    volumes, volume_labels = write_volumes(tmp_path / "volumes")
    planes, plane_labels = write_pairs(tmp_path / "planes")
    shifted, shifted_labels = write_volumes(tmp_path / "shape")
    narrow = np.zeros((8, 32, 30), np.uint16)
    narrow[2:5, 4:9, 4:9] = 1
    write_tiff(shifted_labels / "vol1.tif", narrow)
    odd, odd_labels = write_volumes(tmp_path / "odd", n=1, voxel_z=1.0)
    (odd / "vol0.tif").rename(odd / "vol5.tif")
    (odd_labels / "vol0.tif").rename(odd_labels / "vol5.tif")
    for kind in ("images", "labels"):  # and one of 0.5 micron planes
        shutil.copy(tmp_path / "volumes" / kind / "vol0.tif", tmp_path / "odd" / kind)
    config = ModelConfig.from_preset("tiny", ndim=3, in_channels=1, base_filters=4, depth=2)
    torch.save(model_payload(build_model(config), config), tmp_path / "model3d.pt")
    data = ["--images", str(volumes), "--labels", str(volume_labels)]
    cases = {
        "2D files": (["--images", str(planes), "--labels", str(plane_labels)], "not a (Z, Y, X)"),
        "3D init for a 2D run": ([*FAST, "--init", str(tmp_path / "model3d.pt")], "3D model"),
        "anisotropy 0": (["--anisotropy", "0"], "anisotropy must be"),
        "negative anisotropy": (["--anisotropy", "-2"], "anisotropy must be"),
        "shape mismatch": (["--images", str(shifted), "--labels", str(shifted_labels)], "shape"),
        "two voxel sizes": (["--images", str(odd), "--labels", str(odd_labels)], "anisotropies"),
    }
    for name, (words, message) in cases.items():
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        options = words if name == "3D init for a 2D run" else [*FAST_3D, *words]
        code = main(["train", *data, "--out", str(out_dir / "m.pt"), *options])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (name, err)
        assert message in err, (name, err)
        assert not out_dir.exists() or not any(out_dir.iterdir()), name
