"""Block-wise segmentation on dask / dask.distributed (napari_unet.blockwise)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tifffile
import zarr

from conftest import make_blobs, make_threshold_model
from napari_unet.blockwise import (
    loaded_models,
    match_strips,
    open_image,
    relabel_tables,
    segment_to_zarr,
    segment_to_zarr_events,
)
from napari_unet.checkpoint import save_model
from napari_unet.errors import DataError
from napari_unet.prediction import PredictConfig, predict, segment

CONFIG = PredictConfig(tile_size=256, overlap=16, min_size=4)


def same_up_to_relabelling(first: np.ndarray, second: np.ndarray) -> bool:
    """True when the two label images differ only by a one-to-one renaming of labels."""
    pairs = np.unique(np.stack([first.ravel(), second.ravel()], 1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1])) and bool(
        np.all((pairs[:, 0] == 0) == (pairs[:, 1] == 0))
    )


@pytest.fixture
def model_file(tmp_path):
    model = make_threshold_model()
    return save_model(tmp_path / "threshold.pt", model.network, model.config, {})


@pytest.fixture
def stack() -> np.ndarray:
    images, _ = make_blobs(n=3, shape=(96, 120), seed=1)
    return np.stack(images)


def test_local_cluster_gives_the_in_memory_labels(tmp_path, model_file, stack) -> None:
    distributed = pytest.importorskip("distributed")
    source = tmp_path / "stack.zarr"
    zarr.create_array(str(source), data=stack, chunks=(1, 48, 48))
    expected = predict(stack, model_file, CONFIG).labels
    before = loaded_models()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        result = segment_to_zarr(
            source,
            tmp_path / "labels.zarr",
            model_file,
            CONFIG,
            block=40,
            halo=24,
            scheduler_name=cluster.scheduler_address,
        )
    labels = np.asarray(result.open())
    assert result.n_blocks == 3 * 3 * 3 and result.merged > 0
    assert labels.shape == stack.shape and labels.max() == result.n_objects
    assert same_up_to_relabelling(expected, labels)
    # Unique over the volume: no label appears in two planes, and they run 1..N.
    planes_of = [set(np.unique(plane[plane > 0])) for plane in labels]
    assert not set.intersection(*planes_of)
    assert set.union(*planes_of) == set(range(1, result.n_objects + 1))
    # 27 blocks, one model load (the workers share this process).
    assert loaded_models() - before == 1


def test_object_cut_by_block_edges_keeps_one_label(tmp_path) -> None:
    image = np.full((100, 100), 30, np.uint8)
    image[10:20, 5:95] = 200  # a bar across three blocks
    image[40:70, 40:70] = 200  # a square on the corner of four blocks
    image[80:92, 26:32] = 200  # two objects 2 px apart, on either side of a block edge
    image[80:92, 34:40] = 200
    # A model object (not a file) is serialised once and shipped to the workers.
    result = segment_to_zarr(
        image,
        tmp_path / "labels.zarr",
        make_threshold_model(),
        CONFIG,
        block=32,
        halo=16,
        scheduler_name="synchronous",
    )
    labels = np.asarray(result.open())
    for region in (
        labels[10:20, 5:95],
        labels[40:70, 40:70],
        labels[80:92, 26:32],
        labels[80:92, 34:40],
    ):
        assert len(np.unique(region)) == 1 and region[0, 0] > 0
    assert result.n_objects == 4 == len(np.unique(labels)) - 1


def test_labels_per_plane_and_plain_zarr(tmp_path, model_file, stack) -> None:
    result = segment_to_zarr(
        stack,
        tmp_path / "plain.zarr",
        model_file,
        PredictConfig(tile_size=256, overlap=16, min_size=4, labels_per_plane=True),
        block=48,
        ome=False,
        scheduler_name="threads",
        workers=2,
    )
    labels = zarr.open_array(str(tmp_path / "plain.zarr"), mode="r")
    assert labels.chunks == (1, 48, 48)
    expected = predict(stack, model_file, CONFIG, labels_per_plane=True).labels
    for plane, truth in zip(labels[:], expected):
        assert same_up_to_relabelling(truth, plane)
        assert set(np.unique(plane)) == set(range(int(plane.max()) + 1))
    assert result.n_objects == max(int(p.max()) for p in expected)


def test_ome_zarr_labels_and_lazy_tiff(tmp_path, model_file, stack) -> None:
    # An OME-Zarr image: the labels go into its NGFF labels group.
    image = tmp_path / "image.zarr"
    group = zarr.open_group(str(image), mode="w", zarr_format=2)
    axes = [
        {"name": "z", "type": "space"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    group.create_array("0", data=stack, chunks=(1, 64, 64))
    lazy, found_axes = open_image(image)
    assert found_axes == axes and lazy.chunks[0] == (1, 1, 1)
    result = segment_to_zarr(
        image, image / "labels" / "cells", model_file, CONFIG, block=64, name="cells"
    )
    attrs = json.loads((image / "labels" / "cells" / ".zattrs").read_text())
    assert attrs["image-label"]["source"]["image"] == "../../"
    assert attrs["multiscales"][0]["axes"] == axes
    assert json.loads((image / "labels" / ".zattrs").read_text())["labels"] == ["cells"]
    from_ome = zarr.open_array(str(image / "labels" / "cells" / "0"), mode="r")[:]
    # The same stack as a tiled TIFF, read lazily tile by tile, gives the same labels.
    tiff = tmp_path / "stack.tif"
    tifffile.imwrite(tiff, stack, tile=(32, 32), photometric="minisblack")
    lazy_tiff, _ = open_image(tiff)
    assert lazy_tiff.chunks[1] == (32, 32, 32)
    from_tiff = segment_to_zarr(tiff, tmp_path / "tiff.zarr", model_file, CONFIG, block=64)
    assert np.array_equal(np.asarray(from_tiff.open()), from_ome)
    assert result.n_objects == from_tiff.n_objects


def test_match_strips_and_relabel_tables() -> None:
    first = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    second = np.array([[5, 5, 0, 7, 7], [5, 5, 0, 0, 7]])
    assert match_strips(first, second).tolist() == [[1, 5], [2, 7]]
    assert len(match_strips(first, np.zeros_like(first))) == 0
    # Block 0 has objects 1, 2; block 1 has 1 (= block 0's 2) and 2.
    tables, largest = relabel_tables(
        [2, 2], [np.array([1, 2]), np.array([1, 2])], [(0, 1, np.array([[2, 1]], np.uint64))]
    )
    assert largest == 3
    assert tables[0].tolist() == [0, 1, 2] and tables[1].tolist() == [0, 2, 3]


def test_one_block_per_plane_gives_exactly_the_in_memory_result(tmp_path, model_file, stack):
    config = PredictConfig(tile_size=64, overlap=16, min_size=4, return_probabilities=True)
    expected = predict(stack, model_file, config)
    result = segment_to_zarr(
        stack,
        tmp_path / "labels.zarr",
        model_file,
        config,
        ome=False,
        probabilities_out=tmp_path / "probabilities.zarr",
    )
    labels = zarr.open_array(str(result.path), mode="r")[:]
    np.testing.assert_array_equal(labels, expected.labels)  # same ids: 1..N over the stack
    assert labels.dtype == expected.labels.dtype == result.dtype
    probabilities = zarr.open_array(str(result.probabilities), mode="r")[:]
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.zarr",
        "probabilities.zarr",
        "threshold.pt",
    ]


def test_stop_and_errors_write_nothing_and_leave_no_scratch(tmp_path, model_file, stack):
    out = tmp_path / "out"
    out.mkdir()
    stop = threading.Event()
    events = segment_to_zarr_events(
        stack, out / "labels.zarr", model_file, CONFIG, block=48, workers=1, stop=stop
    )
    progress = next(events)
    assert 0 < progress.done < progress.total
    stop.set()
    with pytest.raises(StopIteration) as finished:
        next(events)
    assert finished.value.value.cancelled
    assert list(out.iterdir()) == []  # neither the labels nor the scratch folder

    broken = stack.astype(np.float32)
    broken[1, 5, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        segment_to_zarr(broken, out / "labels.zarr", model_file, CONFIG, block=48)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("channel_axis", [None, 1])
def test_colour_and_channel_axes_are_read_as_predict_reads_them(tmp_path, stack, channel_axis):
    model = make_threshold_model(in_channels=3)
    if channel_axis is None:  # RGBA, channels last: alpha dropped
        image = np.stack([stack, stack, stack, np.full_like(stack, 255)], axis=-1)
    else:  # (Z, C, Y, X)
        image = np.stack([stack, stack // 2, stack], axis=1)
    expected = segment(image, model, CONFIG, channel_axis=channel_axis)
    result = segment_to_zarr(
        image,
        tmp_path / "labels.zarr",
        model,
        CONFIG,
        ome=False,
        channel_axis=channel_axis,
        scheduler_name="synchronous",
    )
    np.testing.assert_array_equal(zarr.open_array(str(result.path), mode="r")[:], expected)
