"""``napari-unet evaluate``: metrics table, JSON, CSV, overlays and error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import make_blobs, make_threshold_model
from napari_unet.checkpoint import save_model
from napari_unet.cli import main
from napari_unet.evaluation import evaluate
from napari_unet.io import read_image, write_png
from napari_unet.prediction import PredictConfig


def write_dataset(folder: Path, n: int = 3, shape: tuple[int, int] = (32, 40)) -> tuple[Path, Path]:
    images, labels = make_blobs(n=n, shape=shape, rgb=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        write_png(folder / "images" / f"s{index}.png", image)
        write_png(folder / "labels" / f"s{index}.png", label)
    return folder / "images", folder / "labels"


def model_file(tmp_path: Path) -> str:
    model = make_threshold_model(in_channels=3)
    return str(save_model(tmp_path / "model.pt", model.network, model.config))


def test_json_prints_the_summary_and_the_post_processing_used(tmp_path: Path, capsys) -> None:
    images_dir, labels_dir = write_dataset(tmp_path)
    code = main(
        [
            "evaluate",
            "--model",
            model_file(tmp_path),
            "--images",
            str(images_dir),
            "--labels",
            str(labels_dir),
            "--json",
            "--quiet",
            "--min-size",
            "0",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)  # the whole output is one JSON object
    assert set(summary) == {"n_images", "pixel", "instance", "postprocess"}
    # the settings the scores came from: the option given, else the defaults (no tuned values)
    assert summary["postprocess"] == {
        "threshold": 0.5,
        "min_size": 0,
        "seed_threshold": 0.5,
        "core_threshold": 0.0,
    }
    assert set(summary["pixel"]) == {"accuracy", "f1", "jaccard", "recall", "precision"}
    assert set(summary["instance"]) == {"dsb_score", "ap50", "ap75", "f1_50", "pq"}
    images = [read_image(p) for p in sorted(images_dir.iterdir())]
    labels = [read_image(p) for p in sorted(labels_dir.iterdir())]
    expected = evaluate(
        images, labels, make_threshold_model(in_channels=3), PredictConfig(min_size=0)
    )
    assert summary["n_images"] == 3
    for group in ("pixel", "instance"):
        for key, value in expected.summary[group].items():
            assert np.isclose(summary[group][key], value)


def test_table_csv_and_overlays(tmp_path: Path, capsys) -> None:
    images_dir, labels_dir = write_dataset(tmp_path)
    code = main(
        [
            "evaluate",
            "--model",
            model_file(tmp_path),
            "--images",
            str(images_dir),
            "--labels",
            str(labels_dir),
            "--csv",
            str(tmp_path / "score.csv"),
            "--save-overlays",
            str(tmp_path / "results"),
            "--resize",
            "32",
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "dsb_score" in out and "fluorescence" in out
    used = "post-processing: threshold 0.5, min_size 8, seed_threshold 0.5, core_threshold 0.0"
    assert used in out
    lines = (tmp_path / "score.csv").read_text().splitlines()
    assert lines[0].startswith("image,modality,") and len(lines) == 4
    assert read_image(tmp_path / "results" / "s0.png").shape == (32, 3 * 32 + 8, 3)


def test_dsb_layout(tmp_path: Path, capsys) -> None:
    images, labels = make_blobs(n=2, shape=(30, 30), rgb=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        sample = tmp_path / "dsb" / f"id{index}"
        write_png(sample / "images" / f"id{index}.png", image)
        for value in np.unique(label[label > 0]):
            write_png(sample / "masks" / f"m{value}.png", (label == value).astype(np.uint8) * 255)
    code = main(
        [
            "evaluate",
            "--model",
            model_file(tmp_path),
            "--dsb",
            str(tmp_path / "dsb"),
            "--json",
            "--quiet",
            "--min-size",
            "0",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 2 and summary["instance"]["ap50"] > 0.7


def test_bad_inputs_exit_2_without_outputs(tmp_path: Path, capsys) -> None:
    images_dir, labels_dir = write_dataset(tmp_path / "data")
    write_png(labels_dir / "s1.png", np.zeros((10, 10), np.uint16))  # labels of another shape
    model = model_file(tmp_path)
    csv_path, overlays = tmp_path / "score.csv", tmp_path / "results"
    args = [
        "evaluate",
        "--model",
        model,
        "--csv",
        str(csv_path),
        "--save-overlays",
        str(overlays),
        "--quiet",
    ]
    assert main([*args, "--images", str(images_dir), "--labels", str(labels_dir)]) == 2
    assert "shape" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--images", str(empty), "--labels", str(labels_dir)]) == 2
    assert "no images" in capsys.readouterr().err
    assert main([*args, "--images", str(images_dir)]) == 2
    assert "go together" in capsys.readouterr().err
    assert main([*args]) == 2
    assert "--dsb" in capsys.readouterr().err
    assert not csv_path.exists() and not overlays.exists()


def test_a_nan_image_second_leaves_no_overlay_and_no_csv(tmp_path: Path, capsys) -> None:
    import tifffile

    images_dir, labels_dir = write_dataset(tmp_path, n=2)
    second = read_image(images_dir / "s1.png").astype(np.float32)
    second[5, 5] = np.nan
    (images_dir / "s1.png").unlink()
    tifffile.imwrite(images_dir / "s1.tif", second)
    csv_path, overlays = tmp_path / "score.csv", tmp_path / "overlays"
    data = ["--images", str(images_dir), "--labels", str(labels_dir), "--quiet"]
    outputs = ["--csv", str(csv_path), "--save-overlays", str(overlays)]
    assert main(["evaluate", "--model", model_file(tmp_path), *data, *outputs]) == 2
    assert "image 's1' holds NaN or infinite values" in capsys.readouterr().err
    assert not csv_path.exists() and not overlays.exists()


def test_output_paths_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    images_dir, labels_dir = write_dataset(tmp_path, n=1)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    data = ["--images", str(images_dir), "--labels", str(labels_dir), "--quiet"]
    missing_model = ["--model", str(tmp_path / "nope.pt")]  # never reached
    cases = [
        (["--csv", str(tmp_path)], "--csv", "is a folder"),
        (["--csv", str(a_file / "score.csv")], "--csv", "is a file, not a folder"),
        (["--csv", "/dev/full"], "--csv", "not a regular file"),
        (["--save-overlays", str(a_file)], "--save-overlays", "is a file, not a folder"),
        (["--save-overlays", "/proc/napari-unet"], "--save-overlays", "is not writable"),
    ]
    for extra, option, message in cases:
        assert main(["evaluate", *missing_model, *data, *extra]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {option}") and message in error
    assert a_file.read_text() == "x"


def test_overlays_of_another_model_need_overwrite(tmp_path: Path, capsys) -> None:
    images_dir, labels_dir = write_dataset(tmp_path, n=1)
    overlays = tmp_path / "overlays"
    args = ["--images", str(images_dir), "--labels", str(labels_dir), "--quiet"]
    args += ["--save-overlays", str(overlays), "--model", model_file(tmp_path)]
    assert main(["evaluate", *args]) == 0
    assert main(["evaluate", *args, "--resize", "16"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", *args, "--resize", "16", "--overwrite"]) == 0
