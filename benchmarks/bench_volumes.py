"""Volumes: how well a 2D model's planes become 3D objects, on synthetic nuclei.

For a sparse and a crowded volume (:func:`napari_unet.synthetic.nuclei_volume`) at
anisotropy 1 and 2, the bundled 2D model (or ``--model``) predicts every XY plane with
``napari_unet.predict`` as a stack is segmented today, and each way of turning that
into 3D objects is scored against the exact labels in 3D (IoU over voxels):

* ``planes``: today's result, each plane's objects with ids of their own;
* ``link``: :func:`napari_unet.volume.link_planes` (IoU >= 0.25 between planes);
* ``watershed``: :func:`napari_unet.volume.watershed_volume` of the stacked
  probabilities;
* ``orthogonal``: :func:`napari_unet.volume.orthogonal_probabilities` (XY, XZ and YZ
  views averaged, Z resampled for the anisotropy), then the 3D watershed.

Post-processing uses the model's tuned settings (``min_size`` counted in voxels in
3D), except the ``orthogonal`` seeds (``ORTHOGONAL_SEED_THRESHOLD``). Columns:
objects found / true, AP50 = TP / (TP + FP + FN) at IoU 0.5, the DSB score (mean of
that over IoU 0.50-0.95), and seconds: the XY prediction (through ``predict``,
shared by all methods) plus the method's own work. The XZ and YZ planes
of ``orthogonal`` go through the network in batches (:func:`batched_plane_predictor`)
since one small plane at a time costs mostly per-call overhead.

``predict`` normalises each plane by its own intensity range, which stretches the
faint out-of-focus light above and below a nucleus (and the noise of empty planes)
into what looks like a nucleus. ``--volume-range`` instead normalises every plane of
every view with one range for the whole volume (the model's percentiles taken over
all voxels), and predicts the XY planes in batches too; the ``planes`` row is then
left out (``link`` labels the planes with the model's settings first).

Usage::

    python benchmarks/bench_volumes.py [--quick] [--volume-range] [--model default] [--seed 0]
        [--json FILE]

Full run: 32 x 256 x 256 volumes with 20 (sparse) and 60 (crowded) nuclei, 10-28 px
across. ``--quick``: 24 x 128 x 128 with 5 and 12 nuclei, 12-20 px.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_unet.config import NormalizationConfig, PredictConfig
from napari_unet.data import apply_intensity_range, intensity_range, prepare_plane
from napari_unet.metrics import instance_metrics
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.prediction import TilePredictor, predict, resolve_model
from napari_unet.synthetic import nuclei_volume
from napari_unet.volume import (
    ORTHOGONAL_SEED_THRESHOLD,
    link_planes,
    orthogonal_probabilities,
    watershed_volume,
)

FULL = {"shape": (32, 256, 256), "sparse": 20, "crowded": 60, "diameter": (10.0, 28.0)}
QUICK = {"shape": (24, 128, 128), "sparse": 5, "crowded": 12, "diameter": (12.0, 20.0)}
#: Network input pixels per batch of planes (a few 256 x 256 planes).
BATCH_PIXELS = 1 << 18
POSTPROCESS_KEYS = ("threshold", "min_size", "seed_threshold", "core_threshold", "fill_holes")


def batched_plane_predictor(
    model: Any, volume_range: tuple[float, float] | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """``predict_planes`` for :func:`orthogonal_probabilities`: planes in batches.

    Each plane is normalised on its own exactly as ``predict`` does
    (:func:`napari_unet.data.prepare_plane`), or with ``volume_range`` mapped to 0..1
    if given, and predicted whole (no tiles: the planes of a benchmark volume
    are small), ``BATCH_PIXELS`` at a time.
    """
    network = TilePredictor(model)
    config = model.config
    # With one range for all planes, the planes arrive normalised.
    normalization = config.normalization if volume_range is None else NormalizationConfig("none")

    def predict_planes(planes: np.ndarray) -> np.ndarray:
        per_batch = max(1, BATCH_PIXELS // (planes.shape[1] * planes.shape[2]))
        outputs = []
        for start in range(0, len(planes), per_batch):
            batch = np.stack(
                [
                    prepare_plane(
                        plane
                        if volume_range is None
                        else apply_intensity_range(plane, *volume_range),
                        config.in_channels,
                        normalization,
                    )
                    for plane in planes[start : start + per_batch]
                ]
            )
            outputs.append(network(batch))
        return np.concatenate(outputs).transpose(1, 0, 2, 3)

    return predict_planes


def score(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Objects found, AP50 and DSB score of ``labels`` against ``truth``, in 3D."""
    metrics = instance_metrics(truth, labels)
    return {
        "found": metrics["n_pred"],
        "true": metrics["n_true"],
        "ap50": metrics["ap50"],
        "dsb": metrics["dsb_score"],
    }


def run_case(
    model: Any,
    layout: str,
    anisotropy: float,
    sizes: dict[str, Any],
    seed: int,
    one_range: bool = False,
) -> list[dict[str, Any]]:
    """Every method on one synthetic volume; one row per method.

    ``one_range``: normalise with the volume's intensity range (``--volume-range``).
    """
    image, truth = nuclei_volume(
        sizes["shape"],
        sizes[layout],
        layout=layout,
        anisotropy=anisotropy,
        diameter=sizes["diameter"],
        seed=seed,
    )
    config = PredictConfig(return_probabilities=True).for_model(model)
    settings = {key: getattr(config, key) for key in POSTPROCESS_KEYS}
    target = model.config.target

    start = time.perf_counter()
    if one_range:
        predict_planes = batched_plane_predictor(
            model, intensity_range(image, model.config.normalization)
        )
        probabilities = predict_planes(image)
        plane_labels = None
    else:
        predict_planes = batched_plane_predictor(model)
        segmentation = predict(image, model, config)
        probabilities, plane_labels = segmentation.probabilities, segmentation.labels
    xy_seconds = time.perf_counter() - start

    def link() -> np.ndarray:
        planes = plane_labels
        if planes is None:
            planes = np.stack(
                [
                    probabilities_to_labels(plane, target, **settings)
                    for plane in probabilities.transpose(1, 0, 2, 3)
                ]
            )
        return link_planes(planes)

    def timed(method: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
        begin = time.perf_counter()
        result = method()
        return result, xy_seconds + time.perf_counter() - begin

    results = {} if plane_labels is None else {"planes": (plane_labels, xy_seconds)}
    results |= {
        "link": timed(link),
        "watershed": timed(lambda: watershed_volume(probabilities, target, anisotropy, **settings)),
        "orthogonal": timed(
            lambda: watershed_volume(
                orthogonal_probabilities(image, predict_planes, anisotropy, probabilities),
                target,
                anisotropy,
                **{**settings, "seed_threshold": ORTHOGONAL_SEED_THRESHOLD},
            )
        ),
    }
    case = f"{layout} {'x'.join(map(str, image.shape))} aniso {anisotropy:g}"
    return [
        {"case": case, "method": method, **score(truth, labels), "seconds": seconds}
        for method, (labels, seconds) in results.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small volumes (a few minutes)")
    parser.add_argument(
        "--volume-range",
        action="store_true",
        help="normalise every plane with the volume's intensity range, not its own",
    )
    parser.add_argument("--model", default="default", help="2D model file or 'default'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic volumes")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    model = resolve_model(args.model, "cpu")
    rows = []
    header = f"{'volume':<32} {'method':<11} {'found/true':>10} {'AP50':>6} {'DSB':>6} {'s':>7}"
    print(header)
    print("-" * len(header))
    for layout in ("sparse", "crowded"):
        for anisotropy in (1.0, 2.0):
            for row in run_case(model, layout, anisotropy, sizes, args.seed, args.volume_range):
                rows.append(row)
                found = f"{row['found']}/{row['true']}"
                print(
                    f"{row['case']:<32} {row['method']:<11} {found:>10} {row['ap50']:>6.3f} "
                    f"{row['dsb']:>6.3f} {row['seconds']:>7.1f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
