"""Score post-processing choices of one model on labelled images, predicting each once.

Issue #20's protocol scores ``val`` once, at the end, for the choices made on the
"selection" split. This predicts every image of a folder once with ``--model`` and then
labels and scores its probabilities with each ``--settings-from`` model file's stored
post-processing, twice: the overall values alone, and with its per-modality values for
the image's modality (where it has them). With the same settings it gives the numbers
of ``napari-unet evaluate`` (same prediction, post-processing and scores), per image
and per modality, in far less time than one ``evaluate`` per choice.

Usage::

    python benchmarks/score_postprocess.py --model runs/m/tuned.pt \
        --images ../shared/data/dsb2018/val/images --labels ../shared/data/dsb2018/val/labels \
        --settings-from default --settings-from runs/m/tuned.pt --json runs/m/val.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.checkpoint import load_model
from napari_unet.config import DEFAULT_POSTPROCESS
from napari_unet.evaluation import INSTANCE_KEYS, PIXEL_KEYS, score_plane
from napari_unet.io import read_image
from napari_unet.modality import MODALITIES, classify_modality, postprocess_for_modality
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.prediction import predict


def settings_of(tuned: dict[str, Any], modality: str | None) -> dict[str, Any]:
    """The four post-processing values of a stored table, for ``modality`` if given."""
    chosen = postprocess_for_modality(tuned, modality)
    return {name: chosen.get(name, default) for name, default in DEFAULT_POSTPROCESS.items()}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-image means of every score, over all images and per modality."""
    keys = ("pixel_" + key for key in PIXEL_KEYS)
    keys = [*keys, *INSTANCE_KEYS]
    groups = {"all": rows, **{m: [r for r in rows if r["modality"] == m] for m in MODALITIES}}
    return {
        name: {"n": len(group), **{key: float(np.mean([r[key] for r in group])) for key in keys}}
        for name, group in groups.items()
        if group
    }


def main() -> None:
    """Predict once, score every choice, print a table (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--settings-from", action="append", required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--cache", type=Path, help="keep probabilities here (float32 .npy), reuse them"
    )
    args = parser.parse_args()
    start = time.time()
    trained = load_model(args.model, device="cpu")  # the cache must come from this model
    choices = {}
    for source in args.settings_from:
        tuned = load_model(source, device="cpu").metadata.get("postprocess", {})
        choices[f"{source} overall"] = (tuned, False)
        if tuned.get("per_modality"):
            choices[f"{source} per modality"] = (tuned, True)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in choices}
    names = sorted(path.name for path in args.images.iterdir())
    for name in names:
        image, truth = read_image(args.images / name), read_image(args.labels / name)
        modality = classify_modality(image)
        cached = None if args.cache is None else args.cache / f"{name}.npy"
        if cached is not None and cached.exists():
            probabilities = np.load(cached)
        else:
            probabilities = predict(image, trained, return_probabilities=True).probabilities
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, probabilities.astype(np.float32))
        for choice, (tuned, per_modality) in choices.items():
            settings = settings_of(tuned, modality if per_modality else None)
            labels = probabilities_to_labels(probabilities, trained.config.target, **settings)
            pixel, instance = score_plane(truth, labels)
            rows[choice].append(
                {
                    "image": name,
                    "modality": modality,
                    **{"pixel_" + key: float(pixel[key]) for key in PIXEL_KEYS},
                    **{key: float(instance[key]) for key in INSTANCE_KEYS},
                }
            )
    report = {choice: summarise(choice_rows) for choice, choice_rows in rows.items()}
    for choice, summary in report.items():
        print(choice)
        for group, scores in summary.items():
            print(
                f"  {group:>13} n={scores['n']:>3} pixel F1 {scores['pixel_f1']:.4f} "
                f"DSB {scores['dsb_score']:.4f} AP50 {scores['ap50']:.4f} "
                f"F1@0.5 {scores['f1_50']:.4f} PQ {scores['pq']:.4f}"
            )
    print(f"{len(names)} images, {time.time() - start:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": report, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
