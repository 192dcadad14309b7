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

**Native 3D models** (rows ``3D tiny``, ``3D fast``): for each anisotropy, a 3D U-Net of
the preset (``ModelConfig(ndim=3)``) is trained from scratch on 3 generated *crowded*
volumes (validated on a fourth; seeds other than the scored volumes') for
``--train-minutes`` of wall-clock time (``TrainConfig.max_minutes``, default 12, 2 with
``--quick``; the recipe is ``NATIVE_TRAINING``), its post-processing is tuned on the
validation volume (``tune`` with test-time augmentation, a small grid, min sizes in
voxels), then it predicts each scored volume natively (``predict``, 3D tiles, 3D
watershed), once as is and once with test-time augmentation (rows ``+ TTA``: the mean
of 16 flips and rotations of each tile). Its seconds are the prediction's; the training's
time, epochs and validation Dice are printed above the table. ``--native`` picks the
presets (none: ``--native`` alone).

Every row has the peak resident memory of the process while it ran (``peak MiB``: the
Linux high-water mark, reset before each row through ``/proc/self/clear_refs``; the XY
prediction that the 2D methods share counts in each of theirs). The machine's load
average is printed first: on a shared machine, seconds (and the training's progress
within its budget) depend on it.

Usage::

    python benchmarks/bench_volumes.py [--quick] [--volume-range] [--model default] [--seed 0]
        [--native tiny fast] [--train-minutes 12] [--anisotropies 1 2]
        [--layouts sparse crowded] [--no-2d] [--json FILE] [--keep-models DIR]

Full run: 32 x 256 x 256 volumes with 20 (sparse) and 60 (crowded) nuclei, 10-28 px
across. ``--quick``: 24 x 128 x 128 with 5 and 12 nuclei, 12-20 px. The goal of issue
#17 for a native 3D model (``tiny``: AP50 >= 0.85 and DSB >= 0.6 on the unseen crowded
volume after 12 minutes on 2 CPU cores) is checked by::

    python benchmarks/bench_volumes.py --native tiny --layouts crowded --anisotropies 2 --no-2d
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import (
    ModelConfig,
    NormalizationConfig,
    PostprocessGrid,
    PredictConfig,
    TrainConfig,
)
from napari_unet.data import apply_intensity_range, intensity_range, prepare_plane
from napari_unet.metrics import instance_metrics
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.prediction import TilePredictor, predict, resolve_model
from napari_unet.synthetic import nuclei_volume
from napari_unet.training import train
from napari_unet.tuning import tune
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
#: Training recipe of the native 3D rows (a time budget, not epochs, ends the run): the
#: ``distance`` target (per-object scaled distance to the background, 0 where nuclei
#: touch), the pixels where nuclei touch weighted 5 times; 64 px patches in XY, as deep in
#: Z as wide physically; a higher rate than the 2D reference's 1e-4, as a budget of minutes
#: allows few steps, annealed (cosine) over the budget; epochs of 25 steps, each validated
#: on the whole validation volume. (400 steps on the goal's data, post-processing tuned on
#: the validation volume, scored on the unseen one, see README *Volumes*: contour target
#: with bce and the plateau schedule AP50 0.34, with bce+dice and cosine 0.75; this recipe
#: 0.88, 0.90 with test-time augmentation.)
NATIVE_TRAINING = {
    "patch_size": 64,
    "batch_size": 2,
    "learning_rate": 3e-3,
    "loss": "bce+dice",
    "schedule": "cosine",
    "contact_weight": 5,
    "steps_per_epoch": 25,
    "epochs": 100_000,
    "early_stopping_patience": None,
    "device": "cpu",
}
#: Post-processing values tried for a native model after training (min sizes in voxels;
#: seed thresholds are the distance peaks' heights).
NATIVE_GRID = PostprocessGrid(
    thresholds=(0.4, 0.5, 0.6),
    seed_thresholds=(0.05, 0.1, 0.2),
    core_thresholds=(0.0,),
    min_sizes=(64, 256),
)
#: Seed offset of the native models' training volumes (never the scored volumes' seeds).
TRAINING_SEEDS = 1000


class PeakMemory:
    """Peak resident memory (MiB) of this process within a ``with`` block.

    On Linux the kernel's high-water mark (``VmHWM``) is reset on entry through
    ``/proc/self/clear_refs`` and read on exit; elsewhere ``mib`` is the process's peak
    so far (``resource.getrusage``), an upper bound.
    """

    def __init__(self) -> None:
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass
        return self

    def __exit__(self, *_: Any) -> None:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        self.mib = int(line.split()[1]) / 1024
                        return
        except OSError:
            pass
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mib = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


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


def crowded_volumes(sizes: dict[str, Any], anisotropy: float, seed: int, n: int) -> list[Any]:
    """``n`` crowded (image, labels) volumes of the benchmark's size."""
    return [
        nuclei_volume(
            sizes["shape"],
            sizes["crowded"],
            layout="crowded",
            anisotropy=anisotropy,
            diameter=sizes["diameter"],
            seed=seed + k,
        )
        for k in range(n)
    ]


def train_native(
    preset: str, anisotropy: float, sizes: dict[str, Any], seed: int, minutes: float
) -> tuple[TrainedModel, dict[str, Any]]:
    """A native 3D ``preset`` model trained for ``minutes`` on 3 crowded volumes.

    Returns the model and a summary: epochs, seconds, best validation Dice, peak MiB.
    """
    volumes = crowded_volumes(sizes, anisotropy, TRAINING_SEEDS + seed, 4)
    images, labels = [image for image, _ in volumes], [truth for _, truth in volumes]
    model = ModelConfig.from_preset(
        preset, ndim=3, anisotropy=anisotropy, in_channels=1, target="distance"
    )
    config = TrainConfig(model=model, max_minutes=minutes, seed=seed, **NATIVE_TRAINING)
    with PeakMemory() as memory:
        result = train(images[:3], labels[:3], config, val_images=images[3:], val_labels=labels[3:])
    # As a user would next: tune the post-processing on the annotated validation volume
    # (never a scored one), as the model will predict (with test-time augmentation), and
    # keep it in the model.
    start = time.perf_counter()
    tuning = tune(images[3:], labels[3:], result.model, grid=NATIVE_GRID, device="cpu", tta=True)
    tuning.apply(result.model, tuned_on="validation volume")
    tune_seconds = time.perf_counter() - start
    summary = {
        "preset": preset,
        "anisotropy": anisotropy,
        "epochs": len(result.history),
        "seconds": result.model.metadata["elapsed_s"],
        "val_dice": result.model.metadata["val_metrics"].get("dice"),
        "stop_reason": result.stop_reason,
        "peak_mib": memory.mib,
        "tuned": {key: tuning.best[key] for key in POSTPROCESS_KEYS if key in tuning.best},
        "tune_seconds": tune_seconds,
    }
    return result.model, summary


def planes_rows(
    model: Any, image: np.ndarray, anisotropy: float, one_range: bool
) -> dict[str, tuple[np.ndarray, float, float]]:
    """The 2D model's methods on one volume: ``method -> (labels, seconds, peak MiB)``.

    ``one_range``: normalise with the volume's intensity range (``--volume-range``).
    """
    config = PredictConfig(return_probabilities=True).for_model(model)
    settings = {key: getattr(config, key) for key in POSTPROCESS_KEYS}
    target = model.config.target

    start = time.perf_counter()
    with PeakMemory() as xy_memory:
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

    def timed(method: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
        begin = time.perf_counter()
        with PeakMemory() as memory:
            result = method()
        return result, xy_seconds + time.perf_counter() - begin, max(memory.mib, xy_memory.mib)

    results = {} if plane_labels is None else {"planes": (plane_labels, xy_seconds, xy_memory.mib)}
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
    return results


def run_case(
    model: Any,
    layout: str,
    anisotropy: float,
    sizes: dict[str, Any],
    seed: int,
    one_range: bool = False,
    native: dict[str, TrainedModel] | None = None,
) -> list[dict[str, Any]]:
    """Every method on one synthetic volume; one row per method.

    ``model``: the 2D model (None: no 2D rows); ``native``: 3D models by preset, each
    predicting the volume natively at its anisotropy.
    """
    image, truth = nuclei_volume(
        sizes["shape"],
        sizes[layout],
        layout=layout,
        anisotropy=anisotropy,
        diameter=sizes["diameter"],
        seed=seed,
    )
    results = {} if model is None else planes_rows(model, image, anisotropy, one_range)
    for (preset, model_3d), tta in itertools.product((native or {}).items(), (False, True)):
        begin = time.perf_counter()
        with PeakMemory() as memory:
            labels = predict(image, model_3d, PredictConfig(anisotropy=anisotropy, tta=tta)).labels
        name = f"3D {preset}" + (" + TTA" if tta else "")
        results[name] = (labels, time.perf_counter() - begin, memory.mib)
    case = f"{layout} {'x'.join(map(str, image.shape))} aniso {anisotropy:g}"
    return [
        {
            "case": case,
            "method": method,
            **score(truth, labels),
            "seconds": seconds,
            "peak_mib": mib,
        }
        for method, (labels, seconds, mib) in results.items()
    ]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small volumes (a few minutes)")
    parser.add_argument(
        "--volume-range",
        action="store_true",
        help="normalise every plane with the volume's intensity range, not its own",
    )
    parser.add_argument("--model", default="default", help="2D model file or 'default'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic volumes")
    parser.add_argument(
        "--native",
        nargs="*",
        default=["tiny", "fast"],
        choices=["tiny", "fast"],
        help="native 3D presets to train and score (default tiny fast; none: --native)",
    )
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        help="wall-clock budget of each native 3D training (default 12; 2 with --quick)",
    )
    parser.add_argument("--anisotropies", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument(
        "--layouts", nargs="+", default=["sparse", "crowded"], choices=["sparse", "crowded"]
    )
    parser.add_argument("--no-2d", action="store_true", help="leave out the 2D model's rows")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument(
        "--keep-models",
        metavar="DIR",
        help="save each native 3D model, tuned, as DIR/<preset>_aniso<A>_seed<S>.pt",
    )
    return parser.parse_args()


def main() -> None:
    import torch

    args = parse_arguments()
    sizes = QUICK if args.quick else FULL
    if args.train_minutes is None:
        args.train_minutes = 2.0 if args.quick else 12.0
    model = None if args.no_2d else resolve_model(args.model, "cpu")
    if args.keep_models:
        os.makedirs(args.keep_models, exist_ok=True)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, load {load}")
    rows, trainings = [], []
    for anisotropy in args.anisotropies:
        native = {}
        for preset in args.native:
            native[preset], summary = train_native(
                preset, anisotropy, sizes, args.seed, args.train_minutes
            )
            trainings.append(summary)
            if args.keep_models:
                name = f"{preset}_aniso{anisotropy:g}_seed{args.seed}.pt"
                native[preset].save(os.path.join(args.keep_models, name))
            print(
                f"3D {preset} aniso {anisotropy:g}: {summary['epochs']} epochs in "
                f"{summary['seconds']:.0f} s ({summary['stop_reason']}), val Dice "
                f"{summary['val_dice']:.3f}, peak {summary['peak_mib']:.0f} MiB; tuned "
                f"{summary['tuned']} in {summary['tune_seconds']:.0f} s",
                flush=True,
            )
        for layout in args.layouts:
            rows += run_case(model, layout, anisotropy, sizes, args.seed, args.volume_range, native)
    header = (
        f"{'volume':<32} {'method':<11} {'found/true':>10} {'AP50':>6} {'DSB':>6} {'s':>7} "
        f"{'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        found = f"{row['found']}/{row['true']}"
        print(
            f"{row['case']:<32} {row['method']:<11} {found:>10} {row['ap50']:>6.3f} "
            f"{row['dsb']:>6.3f} {row['seconds']:>7.1f} {row['peak_mib']:>9.0f}",
            flush=True,
        )
    print(f"load after: {', '.join(f'{value:.1f}' for value in os.getloadavg())}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"rows": rows, "trainings": trainings}, stream, indent=1)


if __name__ == "__main__":
    main()
