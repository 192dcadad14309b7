"""The layout module: which axis is channel, stack and plane, and that every path agrees.

The first part checks each rule of :func:`napari_unet.layout.find_layout` on shapes; the
second writes real grey+alpha PNGs and 2-channel TIFFs and checks that prediction, the
CLI, training, evaluation and the reader read them the same way.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from conftest import make_blobs, make_threshold_model
from napari_unet.checkpoint import save_model
from napari_unet.cli import main
from napari_unet.data import infer_in_channels, load_pairs_from_folders, prepare_training_planes
from napari_unet.errors import DataError
from napari_unet.evaluation import evaluate
from napari_unet.io import read_image
from napari_unet.layout import (
    find_layout,
    labels_shape,
    layout_for_labels,
    match_channels,
    to_channels_first,
    without_alpha,
)
from napari_unet.prediction import segment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------------ rules on shapes


def test_grey_plane() -> None:
    layout = find_layout((30, 40), 1)
    assert layout.channel_axis is None and layout.channels == 1 and not layout.rgb
    assert layout.labels_shape == layout.plane_shape == layout.spatial_shape == (30, 40)
    assert layout.kind == "plane" and layout.axes == "YX" and layout.n_planes == 1


@pytest.mark.parametrize("colours", [3, 4])
def test_rgb_and_rgba_are_colour_and_rgba_loses_its_alpha(colours: int) -> None:
    layout = find_layout((30, 40, colours), 3)
    assert layout.rgb and layout.channel_axis == 2 and layout.labels_shape == (30, 40)
    assert layout.alpha == (colours == 4) and layout.model_channels == 3
    image = np.arange(30 * 40 * colours).reshape(30, 40, colours)
    np.testing.assert_array_equal(layout.channels_last(image), image[..., :3])
    # a model taking four channels keeps RGBA's alpha
    assert find_layout((30, 40, 4), 4).model_channels == 4
    # rgb=False (napari's layer.rgb) makes the last axis a plane axis
    assert find_layout((30, 40, colours), rgb=False).labels_shape == (30, 40, colours)


def test_rgb_flag_needs_colours() -> None:
    with pytest.raises(DataError, match="RGB image needs a last axis of 3 or 4"):
        find_layout((30, 40), rgb=True)


def test_channel_axis_given() -> None:
    layout = find_layout((2, 30, 40), 2, channel_axis=0)
    assert layout.channel_axis == 0 and layout.labels_shape == (30, 40) and layout.axes == "CYX"
    assert find_layout((5, 3, 30, 40), channel_axis=-3).labels_shape == (5, 30, 40)
    # four channels on a non-last axis are not RGBA
    assert not find_layout((4, 30, 40), channel_axis=0).alpha
    with pytest.raises(DataError, match="channel_axis 3 does not exist"):
        find_layout((2, 30, 40), channel_axis=3)


def test_a_last_axis_of_two_is_two_channels() -> None:
    layout = find_layout((256, 256, 2), 2)
    assert layout.channel_axis == 2 and not layout.rgb and not layout.alpha
    assert layout.labels_shape == (256, 256) and layout.kind == "plane"
    assert find_layout((256, 256, 2), rgb=False).labels_shape == (256, 256)
    assert find_layout((5, 64, 64, 2)).labels_shape == (5, 64, 64)
    assert find_layout((64, 2)).labels_shape == (64, 2)  # a 2D image stays one


def test_two_channels_for_a_one_channel_model_are_refused_with_the_fix() -> None:
    with pytest.raises(DataError, match=r"2 channels .*takes 1; keep one channel \(e\.g\. image"):
        find_layout((64, 64, 2), 1)
    with pytest.raises(DataError, match=r"numpy\.take\(image, 0, axis=0\)"):
        find_layout((2, 64, 64), 1, channel_axis=0)
    with pytest.raises(DataError, match="has 3 channels.*takes 2"):
        find_layout((64, 64, 3), 2)


def test_grey_plus_alpha_is_grey() -> None:
    layout = find_layout((64, 64, 2), 1, alpha=True)
    assert layout.alpha and layout.drop_alpha and layout.model_channels == 1
    image = np.random.default_rng(0).random((64, 64, 2)).astype(np.float32)
    np.testing.assert_array_equal(layout.channels_last(image), image[..., :1])
    np.testing.assert_array_equal(to_channels_first(image, 1, alpha=True)[0], image[..., 0])
    np.testing.assert_array_equal(without_alpha(image), image[..., 0])
    assert without_alpha(np.zeros((5, 6, 4))).shape == (5, 6, 3)
    # a two-channel model takes grey and alpha both
    assert find_layout((64, 64, 2), 2, alpha=True).model_channels == 2
    with pytest.raises(DataError, match="no channel axis to hold alpha"):
        find_layout((64, 64), alpha=True)


def test_stacks_without_metadata_are_of_unknown_kind() -> None:
    layout = find_layout((5, 30, 40), 1)
    assert layout.stack_axes == "?" and layout.kind == "stack" and layout.n_planes == 5
    assert layout.stack_shape == (5,) and layout.spatial_shape == (30, 40)
    assert find_layout((2, 5, 30, 40, 3)).labels_shape == (2, 5, 30, 40)


def test_metadata_axes_name_stacks_and_channels() -> None:
    volume = find_layout((8, 30, 40), axes="ZYX")
    assert volume.kind == "volume" and volume.spatial_shape == (8, 30, 40)
    series = find_layout((8, 30, 40), axes="TYX")
    assert series.kind == "time series" and series.spatial_shape == (30, 40)
    both = find_layout((3, 8, 30, 40), axes="tzyx")
    assert both.kind == "volume" and both.spatial_shape == (8, 30, 40) and both.n_planes == 24
    channels = find_layout((8, 2, 30, 40), 2, axes="ZCYX")
    assert channels.channel_axis == 1 and channels.labels_shape == (8, 30, 40)
    assert channels.axes == "ZCYX" and channels.kind == "volume"
    assert find_layout((30, 40, 3), axes="YXS").rgb
    # metadata wins over the shape: an X of 2 pixels is a plane axis when the file says so
    assert find_layout((5, 30, 2), axes="ZYX").labels_shape == (5, 30, 2)
    # channel_axis wins over the metadata
    assert find_layout((2, 8, 30, 40), channel_axis=0, axes="TZYX").stack_axes == "Z"


@pytest.mark.parametrize(
    ("shape", "settings", "message"),
    [
        ((30, 40), {"axes": "ZYX"}, "name 3 axes but the image has shape"),
        ((2, 30, 40), {"axes": "YXZ"}, "Y, X as the last plane axes"),
        ((2, 2, 30, 40), {"axes": "CCYX"}, "at most one channel axis"),
        ((2, 8, 30, 40), {"axes": "CZYX", "channel_axis": 1}, "contradicts the file's axes"),
        ((8, 30, 40), {"axes": "ZYX", "channel_axis": 1}, "contradicts the file's axes"),
        ((5,), {}, "expected a 2D image or a stack of up to 2 extra axes"),
        ((2, 3, 4, 30, 40), {}, "expected a 2D image or a stack"),
        ((0, 40), {}, "is empty"),
    ],
)
def test_bad_shapes_are_refused_with_a_clear_message(
    shape: tuple[int, ...], settings: dict, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        find_layout(shape, **settings)


def test_labels_shape_checks_without_pixels() -> None:
    assert labels_shape((4, 30, 40, 3), 3) == (4, 30, 40)
    assert labels_shape((2, 30, 40), 2, None, 0) == (30, 40)
    assert labels_shape((30, 40, 2)) == (30, 40)
    with pytest.raises(DataError, match="takes 1"):
        labels_shape((30, 40, 2), 1)


def test_training_layout_follows_the_labels() -> None:
    assert layout_for_labels((30, 40, 2), (30, 40)).channel_axis == 2
    assert layout_for_labels((3, 30, 40), (30, 40)).channel_axis == 0  # channels first
    assert layout_for_labels((5, 30, 40), (5, 30, 40)).channel_axis is None
    assert layout_for_labels((30, 40, 3), (30, 40, 3)).channel_axis is None  # rgb=False
    with pytest.raises(DataError, match="does not fit label shape"):
        layout_for_labels((30, 40, 2), (30, 41))


def test_channel_matching() -> None:
    grey = np.random.default_rng(1).random((1, 5, 6))
    assert match_channels(grey, 3).shape == (3, 5, 6)
    rgb = np.random.default_rng(2).random((3, 5, 6))
    np.testing.assert_allclose(match_channels(rgb, 1)[0], rgb.mean(axis=0), rtol=1e-6)
    out = to_channels_first(np.moveaxis(rgb, 0, -1), 3)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(DataError, match="expected a 2D plane"):
        to_channels_first(np.zeros((2, 3, 4, 5)), 1)


def test_grey_plane_to_one_channel() -> None:
    plane = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out = to_channels_first(plane, 1)
    assert out.shape == (1, 3, 4) and out.dtype == np.float32
    assert np.array_equal(out[0], plane)
    assert out.flags.c_contiguous


def test_grey_plane_is_repeated_for_an_rgb_model() -> None:
    plane = np.random.default_rng(0).random((5, 6))
    out = to_channels_first(plane, 3)
    assert out.shape == (3, 5, 6)
    assert all(np.array_equal(out[c], plane.astype(np.float32)) for c in range(3))


def test_rgb_plane_channels_last_to_first() -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    out = to_channels_first(rgb, 3)
    assert out.shape == (3, 4, 5)
    assert np.array_equal(out, np.moveaxis(rgb, -1, 0).astype(np.float32))


def test_rgba_alpha_is_dropped() -> None:
    rgba = np.random.default_rng(2).integers(0, 255, (4, 5, 4), dtype=np.uint8)
    out = to_channels_first(rgba, 3)
    assert np.array_equal(out, np.moveaxis(rgba[..., :3], -1, 0).astype(np.float32))


def test_rgb_plane_is_averaged_for_a_grey_model() -> None:
    rgb = np.random.default_rng(3).integers(0, 255, (4, 5, 4), dtype=np.uint8)
    out = to_channels_first(rgb, 1)
    assert out.shape == (1, 4, 5)
    assert np.allclose(out[0], rgb[..., :3].astype(np.float32).mean(axis=-1))


def test_explicit_channel_axis() -> None:
    chw = np.random.default_rng(4).random((2, 7, 8)).astype(np.float32)
    assert np.array_equal(to_channels_first(chw, 2, channel_axis=0), chw)
    hwc = np.moveaxis(chw, 0, -1)
    assert np.array_equal(to_channels_first(hwc, 2, channel_axis=-1), chw)
    assert np.array_equal(to_channels_first(hwc, 2, channel_axis=2), chw)
    # four real channels on a non-last axis are not mistaken for RGBA
    four = np.random.default_rng(5).random((4, 3, 3))
    assert to_channels_first(four, 4, channel_axis=0).shape == (4, 3, 3)


@pytest.mark.parametrize(
    ("shape", "in_channels", "channel_axis", "message"),
    [
        ((5, 6, 2), 1, None, "has 2 channels.*keep one channel"),
        ((5, 6, 7), 1, None, "expected a 2D plane"),
        ((2, 3, 4, 5), 1, None, "expected a 2D plane"),
        ((5,), 1, None, "expected a 2D image"),
        ((2, 5, 6), 3, 0, "has 2 channel.*model takes 3"),
        ((5, 6, 3), 2, None, "has 3 channel.*model takes 2"),
    ],
)
def test_channel_errors(
    shape: tuple[int, ...], in_channels: int, channel_axis: int | None, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        to_channels_first(np.zeros(shape), in_channels, channel_axis)


# --------------------------------------------------------- real files, every path agrees


def _grey_alpha_png(folder: Path, image: np.ndarray) -> Path:
    path = folder / "grey_alpha.png"
    iio.imwrite(path, np.stack([image, np.full_like(image, 255)], axis=-1), extension=".png")
    return path


def _two_channel_tiff(folder: Path, image: np.ndarray) -> Path:
    path = folder / "two_channels.tif"
    tifffile.imwrite(path, np.stack([image, image // 2], axis=-1))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, object]:
    images, labels = make_blobs(n=1, shape=(40, 48))
    folder = tmp_path / "images"
    folder.mkdir()
    grey_alpha = _grey_alpha_png(folder, images[0])
    two_channels = _two_channel_tiff(folder, images[0])
    return {
        "image": images[0],
        "labels": labels[0],
        "grey_alpha": grey_alpha,
        "two_channels": two_channels,
        "grey_model": make_threshold_model(in_channels=1),
        "two_channel_model": make_threshold_model(in_channels=2),
    }


def test_prediction_gives_2d_labels(files: dict) -> None:
    grey = read_image(files["grey_alpha"])
    assert segment(grey, files["grey_model"], min_size=0).shape == (40, 48)
    two = read_image(files["two_channels"])
    labels = segment(two, files["two_channel_model"], min_size=0)
    assert labels.shape == (40, 48) and labels.max() > 0
    with pytest.raises(DataError, match=r"keep one channel \(e\.g\. image\[\.\.\., 0\]\)"):
        segment(two, files["grey_model"])


def test_cli_predict_gives_2d_labels(files: dict, tmp_path: Path, capsys) -> None:
    grey_model = save_model(
        tmp_path / "grey.pt", files["grey_model"].network, files["grey_model"].config
    )
    two = files["two_channel_model"]
    two_model = save_model(tmp_path / "two.pt", two.network, two.config)
    common = ["--quiet", "--min-size", "0", "--out"]  # one folder per model (run records)
    grey_args = [str(files["grey_alpha"]), *common, str(tmp_path / "grey")]
    assert main(["predict", "--model", str(grey_model), *grey_args]) == 0
    assert tifffile.imread(tmp_path / "grey" / "grey_alpha_labels.tif").shape == (40, 48)
    two_args = [str(files["two_channels"]), *common, str(tmp_path / "two")]
    assert main(["predict", "--model", str(two_model), *two_args]) == 0
    assert tifffile.imread(tmp_path / "two" / "two_channels_labels.tif").shape == (40, 48)
    capsys.readouterr()
    refused = tmp_path / "refused"
    for model in (str(grey_model), "default"):  # the bundled model takes 3 channels
        code = main(
            ["predict", "--model", model, str(files["two_channels"]), "--out", str(refused)]
        )
        assert code == 2 and not refused.exists()
        assert "keep one channel (e.g. image[..., 0])" in capsys.readouterr().err
    # the case: a grey+alpha PNG and the bundled model give 2D labels
    default = ["--model", "default", "--out", str(tmp_path / "d"), "--quiet"]
    assert main(["predict", str(files["grey_alpha"]), *default]) == 0
    assert tifffile.imread(tmp_path / "d" / "grey_alpha_labels.tif").shape == (40, 48)


def test_training_reads_the_files_the_same_way(files: dict, tmp_path: Path) -> None:
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for stem in ("grey_alpha", "two_channels"):
        tifffile.imwrite(labels_dir / f"{stem}.tif", files["labels"])
    images, labels = load_pairs_from_folders(tmp_path / "images", labels_dir)
    assert [image.shape for image in images] == [(40, 48), (40, 48, 2)]
    assert infer_in_channels(images[:1], labels[:1]) == 1
    assert infer_in_channels(images[1:], labels[1:]) == 2
    model = files["two_channel_model"].config
    (plane,) = prepare_training_planes(images[1:], labels[1:], 2, model.normalization, "foreground")
    assert plane.image.shape == (2, 40, 48)
    with pytest.raises(DataError, match="keep one channel"):
        prepare_training_planes(images[1:], labels[1:], 1, model.normalization, "foreground")


def test_evaluation_agrees(files: dict) -> None:
    two = read_image(files["two_channels"])
    report = evaluate([two], [files["labels"]], files["two_channel_model"])
    assert report.summary["pixel"]["f1"] > 0.5
    with pytest.raises(DataError, match="keep one channel"):
        evaluate([two], [files["labels"]], files["grey_model"])
