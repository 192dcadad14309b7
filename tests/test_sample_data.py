"""Sample data: the bundled DSB 2018 images open as Image + Labels layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._sample_data import make_all_samples, make_histology_sample, make_nuclei_sample


@pytest.mark.parametrize("make", [make_nuclei_sample, make_histology_sample])
def test_single_samples_are_an_rgb_image_with_instance_labels(make):
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = make()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image_meta["rgb"] and image.shape[-1] == 3 and image.dtype == np.uint8
    assert labels.shape == image.shape[:2]
    assert np.issubdtype(labels.dtype, np.integer) and labels.max() > 10
    assert labels_meta["name"] == f"{image_meta['name']} labels"
    assert "CC0" in image_meta["metadata"]["source"]


def test_all_samples():
    layers = make_all_samples()
    assert [kind for _, _, kind in layers] == ["image", "labels"] * 4
    for (image, _, _), (labels, _, _) in zip(layers[::2], layers[1::2]):
        assert labels.shape == image.shape[:2]


def test_samples_open_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "nuclei")
    viewer.open_sample("napari-unet", "tissue")
    assert [layer.name for layer in viewer.layers] == [
        "nuclei",
        "nuclei labels",
        "tissue",
        "tissue labels",
    ]
    assert viewer.layers["nuclei"].rgb
    assert type(viewer.layers["tissue labels"]).__name__ == "Labels"
