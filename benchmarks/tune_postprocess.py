"""Choose post-processing settings (thresholds, minimum size) on a validation set.

Predicts each validation image once, then re-runs only the post-processing for every
combination of threshold, seed threshold, core threshold (hysteresis; 0 = off) and minimum
size, and prints a table of mean pixel F1, DSB score and F1 at IoU 0.5, best first by
``--rank-by``. Use it on validation data only, never on a test set.

The best row is chosen and scored on the same images, so it flatters the settings.
``--holdout-splits N`` estimates by how much: N times, the images are split at random into
two halves, the best settings are chosen on one half and scored on the other; it prints the
mean and standard deviation of those held-out scores.

    python benchmarks/tune_postprocess.py --model runs/default_model/model.pt \
        --images ../shared/data/dsb2018/val/images --labels ../shared/data/dsb2018/val/labels \
        --core-thresholds 0 0.85 0.9
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from napari_unet.checkpoint import load_model
from napari_unet.io import find_pairs, read_image
from napari_unet.metrics import instance_metrics, pixel_metrics
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.prediction import PredictConfig, predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--seed-thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--core-thresholds", type=float, nargs="+", default=[0.0])
    parser.add_argument("--min-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rank-by", choices=["dsb", "f1_50"], default="dsb")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--holdout-splits", type=int, default=0, metavar="N")
    args = parser.parse_args()

    model = load_model(args.model)
    config = PredictConfig(return_probabilities=True, tta=args.tta)
    cases = []
    for image_path, labels_path in find_pairs(args.images, args.labels):
        probabilities = predict(read_image(image_path), model, config).probabilities
        cases.append((probabilities, read_image(labels_path)))
    print(f"{len(cases)} images, target {model.config.target}, tta={args.tta}")

    rows, per_image = [], []
    for threshold, seed_threshold, core_threshold, min_size in itertools.product(
        args.thresholds, args.seed_thresholds, args.core_thresholds, args.min_sizes
    ):
        pixel_f1, dsb, f1_50 = [], [], []
        for probabilities, truth in cases:
            labels = probabilities_to_labels(
                probabilities,
                model.config.target,
                threshold=threshold,
                min_size=min_size,
                seed_threshold=seed_threshold,
                core_threshold=core_threshold,
            )
            pixel_f1.append(pixel_metrics(truth > 0, probabilities[0] > threshold)["f1"])
            scores = instance_metrics(truth, labels)
            dsb.append(scores["dsb_score"])
            f1_50.append(scores["f1_50"])
        per_image.append({"dsb": dsb, "f1_50": f1_50})
        rows.append(
            (
                threshold,
                seed_threshold,
                core_threshold,
                min_size,
                np.mean(pixel_f1),
                np.mean(dsb),
                np.mean(f1_50),
            )
        )
    columns = ("threshold", "seed_thr", "core_thr", "min_size", "pixel_f1", "dsb", "f1_50")
    print("".join(f"{name:>10}" for name in columns))
    rank = columns.index(args.rank_by)
    for row in sorted(rows, key=lambda r: -r[rank]):
        print(
            f"{row[0]:>10.2f}{row[1]:>10.2f}{row[2]:>10.2f}{row[3]:>10d}"
            f"{row[4]:>10.4f}{row[5]:>10.4f}{row[6]:>10.4f}"
        )
    if args.holdout_splits:
        scores = np.array([settings[args.rank_by] for settings in per_image])
        held_out = holdout_scores(scores, args.holdout_splits)
        print(
            f"{args.rank_by} of the settings chosen on one half, scored on the other "
            f"({args.holdout_splits} random halvings): {held_out.mean():.4f} "
            f"+- {held_out.std():.4f} (best on all images: {scores.mean(axis=1).max():.4f})"
        )


def holdout_scores(scores: np.ndarray, splits: int, seed: int = 0) -> np.ndarray:
    """Held-out mean score of the settings chosen on the other half, per random halving.

    ``scores`` is ``(settings, images)``; returns ``(splits,)``.
    """
    rng = np.random.default_rng(seed)
    n_images = scores.shape[1]
    held_out = []
    for _ in range(splits):
        order = rng.permutation(n_images)
        choose, score = order[: n_images // 2], order[n_images // 2 :]
        best = np.argmax(scores[:, choose].mean(axis=1))
        held_out.append(scores[best, score].mean())
    return np.array(held_out)


if __name__ == "__main__":
    main()
