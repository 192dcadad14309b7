"""The human-in-the-loop loop as a user feels it: correct 2 images, fine-tune, segment again.

It plays a user whose images the bundled model handles poorly (H&E-stained nuclei):
2 H&E images of the DSB 2018 ``train`` folder, with their labels, are the user's
corrected annotations. The bundled model is fine-tuned on them through the path the
Train widget takes (:func:`napari_unet.process.events_in_process` running
:func:`napari_unet.training.train_events` with ``init="default"`` in a child process,
validated on a held-out strip of each image), and the new model segments the user's next
image, as the Segment widget would. Stages, in seconds:

* ``data``: reading the corrected pairs (in napari they are layers already);
* ``start``: the child process starting and importing PyTorch (its ``running`` phase);
* the fine-tune, split by the events the child relays: loading the bundled model,
  preparing the data and the first step; the other steps; validation; saving the model
  and handing it over;
* ``segment``: the new model segmenting one H&E image of the scored set.

Their sum is "correction to new labels". The load average and the CPU seconds of the
child and of the segmentation are printed with them: on a loaded machine wall seconds
grow, CPU seconds much less (with 2 threads on 2 idle cores a stage's wall time is at
most its CPU time). Then the bundled and the fine-tuned model are
scored (DSB score, as ``napari-unet evaluate``; each model's own post-processing values,
as the Segment widget uses them) on the H&E and the fluorescence images of the scored
set: ``val`` (12 H&E, 93 fluorescence images), or, for choosing settings without looking
at ``val``, ``--score-on selection``: H&E and fluorescence images of ``train`` that are
not the 2 annotations.

The fine-tuning child uses PyTorch's default thread count (the machine's cores). Usage
(on 2 CPU cores, as the goal is stated)::

    python benchmarks/bench_hitl.py                          # the settings chosen
    python benchmarks/bench_hitl.py --data /work/shared/data/dsb2018
    python benchmarks/bench_hitl.py --score-on selection --steps 20 --lr 3e-4 --freeze none
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.annotations import split_held_out_strip
from napari_unet.checkpoint import TrainedModel, load_model
from napari_unet.config import FREEZE_CHOICES
from napari_unet.evaluation import classify_modality, evaluate
from napari_unet.io import find_pairs, read_image
from napari_unet.prediction import PredictConfig, segment
from napari_unet.process import events_in_process
from napari_unet.training import TrainConfig, TrainResult, train_events

#: The DSB 2018 folder next to the repository's folder (override with --data).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
#: The goal of issue #18, on 2 CPU cores.
GOAL_SECONDS, GOAL_GAIN, GOAL_FLUORESCENCE_LOSS = 60.0, 0.05, 0.01


def pairs_by_modality(folder: Path) -> dict[str, list[tuple[Path, Path]]]:
    """The (image, labels) files of ``folder``, grouped by :func:`classify_modality`."""
    groups: dict[str, list[tuple[Path, Path]]] = {}
    for image_path, labels_path in find_pairs(folder / "images", folder / "labels"):
        modality = classify_modality(read_image(image_path))
        groups.setdefault(modality, []).append((image_path, labels_path))
    return groups


def read_pairs(pairs: list[tuple[Path, Path]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and labels of ``pairs``, read from their files."""
    return [read_image(i) for i, _ in pairs], [read_image(lab) for _, lab in pairs]


def fine_tune(
    images: list[np.ndarray], labels: list[np.ndarray], config: TrainConfig
) -> tuple[TrainResult, dict[str, float], float]:
    """Fine-tune the bundled model as the Train widget does.

    Returns the result, the seconds of each stage (the child's start, then the fine-tune
    split by the events it relays) and the CPU seconds the child used.
    """
    train_images, train_labels, val_images, val_labels = split_held_out_strip(images, labels, 0.1)
    marks = {"called": time.perf_counter()}
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = events_in_process(
        train_events,
        train_images,
        train_labels,
        config,
        val_images=val_images,
        val_labels=val_labels,
        init="default",
        on_phase=lambda phase: marks.setdefault(phase, time.perf_counter()),
    )
    events: list[tuple[str, float]] = []
    while True:
        try:
            events.append((next(run).kind, time.perf_counter()))
        except StopIteration as finished:
            result = finished.value
            break
    done = time.perf_counter()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    steps = [t for kind, t in events if kind == "step"]
    seconds = {
        "start": marks["running"] - marks["called"],
        "  model, data, step 1": steps[0] - marks["running"],
        f"  steps 2-{len(steps)}": 0.0,
        "  validation": 0.0,
    }
    for (_, before), (kind, at) in zip(events, events[1:], strict=False):
        if kind in ("step", "epoch"):
            seconds[f"  steps 2-{len(steps)}" if kind == "step" else "  validation"] += at - before
    seconds["  saving, handing over"] = done - events[-1][1] + (events[-1][1] - events[-2][1])
    return result, seconds, child_cpu


def dsb_score(
    model: str | TrainedModel, pairs: tuple[list, list], config: PredictConfig | None = None
) -> float:
    """Mean DSB score of ``model`` over the images (its own post-processing by default)."""
    if not pairs[0]:
        return float("nan")
    report = evaluate(*pairs, model, config=config)
    return float(report.summary["instance"]["dsb_score"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="DSB 2018 train/ + val/ folder")
    parser.add_argument("--score-on", choices=("val", "selection"), default="val")
    parser.add_argument("--steps", type=int, default=10, help="training steps in all")
    parser.add_argument("--epochs", type=int, default=2, help="validations (best one is kept)")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--loss", default="bce", help="bce (the Train widget's default), bce+dice")
    parser.add_argument(
        "--freeze",
        default=TrainConfig().freeze,
        choices=FREEZE_CHOICES,
        help="parts of the bundled model kept fixed (default: TrainConfig's, as the widget)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the scoring (the goal: 2)"
    )
    parser.add_argument(
        "--max-fluorescence", type=int, default=None, help="score at most this many"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_groups = pairs_by_modality(args.data / "train")
    clock = time.perf_counter()
    images, labels = read_pairs(train_groups["H&E"][:2])  # the user's corrected images
    seconds = {"data": time.perf_counter() - clock}
    if args.score_on == "val":
        scored = pairs_by_modality(args.data / "val")
    else:  # train images that are not the annotations: for choosing settings
        scored = {"H&E": train_groups["H&E"][2:14], "fluorescence": train_groups["fluorescence"]}
    he = read_pairs(scored["H&E"])
    fluorescence = read_pairs(scored["fluorescence"][: args.max_fluorescence])

    config = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=max(1, args.steps // args.epochs),
        batch_size=args.batch,
        patch_size=args.patch,
        learning_rate=args.lr,
        augment=args.augment,
        loss=args.loss,
        freeze=args.freeze,
        early_stopping_patience=None,
        device="cpu",
    )
    result, timings, child_cpu = fine_tune(images, labels, config)
    seconds.update(timings)
    clock, cpu_clock = time.perf_counter(), time.process_time()
    segment(he[0][0], result.model)
    seconds["segment"] = time.perf_counter() - clock
    cpu = {"start + fine-tune (child)": child_cpu, "segment": time.process_time() - cpu_clock}
    end_to_end = sum(seconds.values())
    print(
        f"settings: {args.steps} steps in {args.epochs} epochs, patch {args.patch}, batch "
        f"{args.batch}, lr {args.lr:g}, loss {args.loss}, augment {args.augment}, "
        f"frozen {args.freeze}, "
        f"{args.threads} threads; "
        f"best epoch {result.best_epoch}; scored on {args.score_on}"
    )
    print(f"{'stage':<28}{'seconds':>10}")
    for stage, value in seconds.items():
        print(f"{stage:<28}{value:>10.1f}")

    print(f"{'correction -> new labels':<28}{end_to_end:>10.1f}   goal <= {GOAL_SECONDS:g}")
    # CPU seconds do not grow with other processes' load as wall seconds do.
    print(
        "load average "
        + " ".join(f"{value:.2f}" for value in os.getloadavg())
        + "; CPU s: "
        + ", ".join(f"{name} {value:.1f}" for name, value in cpu.items())
    )
    sys.stdout.flush()  # the scoring below takes minutes

    # A fine-tuned model without tuned values of its own is also scored with the bundled
    # model's, to tell the weights' effect from the post-processing's.
    own = result.model.metadata.get("postprocess")
    bundled = load_model("default", device="cpu").metadata.get("postprocess", {})
    bundled_config = PredictConfig(
        **{
            name: bundled[name]
            for name in ("threshold", "seed_threshold", "core_threshold", "min_size")
        }
    )
    scores = {
        name: (
            dsb_score("default", pairs),
            dsb_score(result.model, pairs),
            dsb_score(result.model, pairs, bundled_config) if own is None else float("nan"),
        )
        for name, pairs in (("H&E", he), ("fluorescence", fluorescence))
    }
    gain = scores["H&E"][1] - scores["H&E"][0]
    loss = scores["fluorescence"][0] - scores["fluorescence"][1]

    print(
        f"{'DSB score':<28}{'before':>10}{'after':>10}{'change':>10}{'after*':>10}  images"
        "   (*: with the bundled model's tuned post-processing)"
    )
    for name, (before, after, after_bundled) in scores.items():
        n = len((he if name == "H&E" else fluorescence)[0])
        print(
            f"{name:<28}{before:>10.3f}{after:>10.3f}{after - before:>+10.3f}"
            f"{after_bundled:>10.3f}  {n}"
        )
    met = end_to_end <= GOAL_SECONDS and gain >= GOAL_GAIN and loss <= GOAL_FLUORESCENCE_LOSS
    print(
        f"goal (<= {GOAL_SECONDS:g} s, H&E +{GOAL_GAIN}, fluorescence >= -"
        f"{GOAL_FLUORESCENCE_LOSS}): {'met' if met else 'not met'}"
    )
    return {"seconds": seconds, "scores": scores, "met": met}


if __name__ == "__main__":
    main()
