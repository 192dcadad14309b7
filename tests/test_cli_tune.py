"""``napari-unet tune``: the best post-processing on labelled images, stored in a model copy."""

from __future__ import annotations

from pathlib import Path

from conftest import make_threshold_model
from napari_unet.checkpoint import load_model, save_model
from napari_unet.cli import main
from napari_unet.io import write_png
from test_tuning import blobs_with_specks


def write_dataset(folder: Path) -> tuple[Path, Path]:
    images, labels = blobs_with_specks()
    for index, (image, label) in enumerate(zip(images, labels)):
        write_png(folder / "images" / f"s{index}.png", image)
        write_png(folder / "labels" / f"s{index}.png", label)
    return folder / "images", folder / "labels"


def test_tune_prints_the_best_settings_and_stores_them_in_the_copy(tmp_path, capsys) -> None:
    images, labels = write_dataset(tmp_path)
    network = make_threshold_model()
    model = save_model(tmp_path / "model.pt", network.network, network.config, half_precision=True)
    before = model.read_bytes()
    out = tmp_path / "tuned.pt"
    grid = ["--thresholds", "0.5", "--core-thresholds", "0", "--min-sizes", "0", "8"]
    args = ["--images", str(images), "--labels", str(labels), "--quiet", "--holdout-splits", "4"]
    assert main(["tune", "--model", str(model), *args, *grid, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best: threshold 0.5, seed_threshold 0.5, core_threshold 0, min_size 8" in printed
    assert "4 random halvings" in printed
    tuned = load_model(out, device="cpu").metadata["postprocess"]
    assert (tuned["threshold"], tuned["core_threshold"], tuned["min_size"]) == (0.5, 0.0, 8)
    assert "napari-unet tune" in tuned["tuned_on"]
    assert model.read_bytes() == before  # the input model is left as it was
    assert load_model(out, device="cpu").half_precision  # and its precision is kept


def test_bad_grid_or_data_exit_2_and_write_nothing(tmp_path, capsys) -> None:
    images, labels = write_dataset(tmp_path)
    out = tmp_path / "tuned.pt"
    data = ["--images", str(images), "--labels", str(labels), "--quiet", "--out", str(out)]
    cases = [
        (["--thresholds", "1.5"], "strictly between 0 and 1"),
        (["--holdout-splits", "-1"], "--holdout-splits"),
    ]
    for extra, message in cases:
        assert main(["tune", "--model", "default", *data, *extra]) == 2
        assert message in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = ["--images", str(empty), "--labels", str(labels), "--quiet", "--out", str(out)]
    assert main(["tune", "--model", "default", *no_images]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_out_is_refused_before_tuning(tmp_path, capsys) -> None:
    images, labels = write_dataset(tmp_path)
    data = ["--images", str(images), "--labels", str(labels), "--quiet"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    missing_model = str(tmp_path / "nope.pt")  # loading it would fail: never reached
    for out, message in [(tmp_path, "is a folder"), (a_file / "m.pt", "is a file, not a folder")]:
        assert main(["tune", "--model", missing_model, *data, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --out") and message in error


def test_per_modality_stores_each_modality_with_enough_images(tmp_path, capsys) -> None:
    images, labels = write_dataset(tmp_path)  # three grey blob images: fluorescence
    network = make_threshold_model()
    model = save_model(tmp_path / "model.pt", network.network, network.config)
    grid = ["--thresholds", "0.5", "--core-thresholds", "0", "--min-sizes", "0", "8"]
    out = tmp_path / "tuned.pt"
    command = ["tune", "--model", str(model), "--images", str(images), "--labels", str(labels)]
    command += ["--quiet", *grid, "--per-modality", "--out", str(out)]
    assert main([*command, "--min-modality-images", "2"]) == 0
    assert "fluorescence (3 images)" in capsys.readouterr().out
    tuned = load_model(out, device="cpu").metadata["postprocess"]
    settings = ("threshold", "seed_threshold", "core_threshold", "min_size")
    assert tuned["per_modality"] == {"fluorescence": {key: tuned[key] for key in settings}}
    out.unlink()
    # The default minimum (5) is more than three images: the overall values serve all.
    assert main(command) == 0
    assert "fluorescence: 3 image(s), under 5: uses the overall settings" in capsys.readouterr().out
    assert load_model(out, device="cpu").metadata["postprocess"]["per_modality"] == {}
    out.unlink()
    assert main([*command, "--min-modality-images", "0"]) == 2
    assert "--min-modality-images" in capsys.readouterr().err
    assert not out.exists()
