"""Evaluate a model on images with known labels: pixel and instance metrics.

Each image is predicted (optionally after resizing it and its labels to
``resize x resize``, the reference protocol at 256), then scored:

* pixel metrics (accuracy, F1, Jaccard, recall, precision) of the predicted
  labels' foreground (``labels > 0``, after post-processing) against the true
  labels' foreground, per image, then the mean over images;
* instance metrics of the predicted labels against the true labels: DSB 2018
  score, TP/(TP+FP+FN) at IoU 0.5 and 0.75, F1 at 0.5 and panoptic quality.

Both come from :mod:`napari_unet.metrics`, through :func:`score_plane`: the one
definition of every score, which the Evaluate widget uses too
(:func:`score_labels_events` scores label images and stacks that are already there).
Every image is also given a rough imaging *modality* (fluorescence, brightfield or
H&E, see :func:`classify_modality`) so that the report can show where a model is weak.
"""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import PredictConfig
from napari_unet.errors import DataError
from napari_unet.events import plain_form
from napari_unet.io import as_image, atomic_write, check_finite, write_png, write_tiff
from napari_unet.layout import labels_shape
from napari_unet.metrics import (
    instance_metrics,
    mean_instance_metrics,
    mean_pixel_metrics,
    pixel_metrics,
)
from napari_unet.native3d import check_scoring_inputs
from napari_unet.prediction import (
    Progress,
    predict,
    resolve_model,
)

PIXEL_KEYS = ("accuracy", "f1", "jaccard", "recall", "precision")
INSTANCE_KEYS = ("dsb_score", "ap50", "ap75", "f1_50", "pq")
MODALITIES = ("fluorescence", "brightfield", "H&E")
#: Columns of the per-image CSV, in order.
CSV_COLUMNS = (
    "image",
    "modality",
    "height",
    "width",
    "n_true",
    "n_pred",
    *PIXEL_KEYS,
    *INSTANCE_KEYS,
)

#: Mean HSV saturation (0-255) above which an image is taken as stained (H&E).
SATURATION_HE = 15.0
#: Mean intensity (0-255) above which an unstained image is taken as brightfield.
INTENSITY_BRIGHTFIELD = 100.0


def _as_uint8_scale(image: np.ndarray) -> np.ndarray:
    """``image`` as float on a 0-255 scale (integers by their dtype's range)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)
    image = image.astype(np.float32)
    return image * 255.0 if image.size and image.max() <= 1.0 else image


def classify_modality(image: np.ndarray) -> str:
    """A rough imaging modality of one plane, from its colour and brightness.

    Stained tissue is coloured: a mean HSV saturation over 15 (of 255) means
    ``"H&E"``. Otherwise a bright image (mean over 100 of 255) is
    ``"brightfield"`` (dark objects on a light background), and a dark one
    ``"fluorescence"`` (light objects on black). Grey images have no saturation.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` grey or ``(H, W, 3|4)`` colour.
    """
    scaled = _as_uint8_scale(image)
    if scaled.ndim == 3 and scaled.shape[-1] in (3, 4):
        rgb = scaled[..., :3]
        high, low = rgb.max(axis=-1), rgb.min(axis=-1)
        # HSV saturation: (max - min) / max, 0 where max is 0.
        saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
        if saturation.mean() * 255.0 > SATURATION_HE:
            return "H&E"
        intensity = rgb.mean()
    else:
        intensity = scaled.mean()
    return "brightfield" if intensity > INTENSITY_BRIGHTFIELD else "fluorescence"


def resize_pair(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (linear) and its labels (nearest) to ``size x size``.

    This is the reference protocol's ``skimage.transform.resize(..., mode="constant",
    preserve_range=True)`` of its time (no anti-aliasing); labels keep their values.
    """
    from skimage.transform import resize

    channels = image.shape[2:] if image.ndim == 3 else ()
    image = resize(
        image,
        (size, size, *channels),
        order=1,
        mode="constant",
        preserve_range=True,
        anti_aliasing=False,
    ).astype(np.float32)
    labels = resize(
        labels, (size, size), order=0, mode="constant", preserve_range=True, anti_aliasing=False
    ).astype(labels.dtype)
    return image, labels


def _display_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 RGB view of an image for overlays (1st-99.8th percentile stretched)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    low, high = np.percentile(image, [1.0, 99.8]) if image.size else (0.0, 1.0)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    if scaled.ndim == 2 or scaled.shape[-1] == 1:
        scaled = np.repeat(scaled.reshape(scaled.shape[:2])[..., None], 3, axis=-1)
    return (scaled * 255).astype(np.uint8)


def overlay_image(
    image: np.ndarray, true_labels: np.ndarray, pred_labels: np.ndarray
) -> np.ndarray:
    """Side-by-side uint8 RGB: the image | true labels | predicted labels.

    Labels are drawn in random colours on black, split by white 4-pixel bars.
    """
    from skimage.color import label2rgb

    def colour(labels: np.ndarray) -> np.ndarray:
        return (label2rgb(labels, bg_label=0, bg_color=(0, 0, 0)) * 255).astype(np.uint8)

    bar = np.full((true_labels.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate(
        [_display_rgb(image), bar, colour(true_labels), bar, colour(pred_labels)], axis=1
    )


@dataclass
class EvaluationReport:
    """Per-image scores and their means.

    Attributes
    ----------
    rows : list of dict
        One dict per image, keys :data:`CSV_COLUMNS`.
    summary : dict
        ``{"n_images", "pixel": {accuracy, f1, jaccard, recall, precision},
        "instance": {dsb_score, ap50, ap75, f1_50, pq}}``: means over images.
    per_modality : dict
        Modality name -> a summary like ``summary`` over that modality's images
        (only modalities present).
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    per_modality: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the per-image table (like the reference's ``score.csv``) atomically."""
        path = Path(path)
        with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(
                    {k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()}
                )
        return path

    def format_table(self) -> str:
        """Plain-text table: all images, then one line per modality."""
        header = f"{'images':<14}{'n':>5} " + "".join(
            f"{k:>10}" for k in PIXEL_KEYS + INSTANCE_KEYS
        )
        lines = ["pixel metrics (mean over images) | instance metrics", header]
        groups = [("all", self.summary), *self.per_modality.items()]
        for name, summary in groups:
            values = [summary["pixel"][k] for k in PIXEL_KEYS]
            values += [summary["instance"][k] for k in INSTANCE_KEYS]
            lines.append(
                f"{name:<14}{summary['n_images']:>5} " + "".join(f"{v:>10.4f}" for v in values)
            )
        return "\n".join(lines)


def score_plane(true_labels: Any, pred_labels: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """Pixel and instance scores of one predicted label plane: the one definition.

    **Pixel metrics** (accuracy, F1 = Dice, Jaccard = IoU, recall, precision) compare
    the foreground of the predicted labels, ``pred_labels > 0`` (the objects left
    after post-processing: thresholds, splitting, minimum size), with the foreground
    of the true labels, ``true_labels > 0``
    (:func:`napari_unet.metrics.pixel_metrics`). They score the segmentation a user
    gets, not the probability map, so that scoring a Labels layer in napari and
    scoring a model with :func:`evaluate` give the same number for the same labels.
    **Instance metrics** match objects one-to-one by IoU
    (:func:`napari_unet.metrics.instance_metrics`).

    Parameters
    ----------
    true_labels, pred_labels : array_like
        Integer label images of the same shape, 0 = background.

    Returns
    -------
    pixel, instance : dict
        :func:`~napari_unet.metrics.pixel_metrics` and
        :func:`~napari_unet.metrics.instance_metrics` of the pair.

    Raises
    ------
    DataError
        If the shapes differ or the images are empty.
    """
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    return pixel_metrics(true_labels > 0, pred_labels > 0), instance_metrics(
        true_labels, pred_labels
    )


def score_labels(
    true_labels: np.ndarray, pred_labels: np.ndarray, stack: str | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Scores of a label image, or of a volume in 3D or plane by plane.

    A 2D image, or a volume with ``stack`` other than ``"planes"`` (the default of
    :class:`~napari_unet.config.PredictConfig`), is scored as one by
    :func:`score_plane`: objects of a volume are matched in 3D (IoU over voxels) and
    counted once. With ``stack="planes"`` each plane is scored on its own, and the
    scores are the means over planes (counts summed), as :func:`score_labels_events`
    gives.
    """
    if true_labels.ndim == 2 or stack != "planes":
        return score_plane(true_labels, pred_labels)
    scores = [score_plane(truth, pred) for truth, pred in zip(true_labels, pred_labels)]
    pixel = mean_pixel_metrics([pixel for pixel, _ in scores])
    return pixel, mean_instance_metrics([instance for _, instance in scores])


def as_planes(labels: Any) -> np.ndarray:
    """``(N, H, W)`` view of a 2D label image or a stack of any depth.

    Raises
    ------
    DataError
        If ``labels`` has fewer than two dimensions.
    """
    array = np.asarray(labels)
    if array.ndim < 2:
        raise DataError(f"labels of shape {array.shape} are not an image.")
    return array.reshape((-1, *array.shape[-2:]))


def score_labels_events(
    true_labels: Any, pred_labels: Any
) -> Generator[Progress, None, dict[str, dict[str, Any]]]:
    """Score predicted labels against the truth plane by plane, yielding progress.

    Each 2D plane (of an image, a stack or a time series) is scored by
    :func:`score_plane` and the scores are averaged over planes, as an evaluation
    over a set of images is (per-threshold counts are summed).

    Parameters
    ----------
    true_labels, pred_labels : array_like
        Label images or stacks of the same shape.

    Yields
    ------
    Progress
        After each plane.

    Returns
    -------
    dict
        ``{"pixel": mean_pixel_metrics(...), "instance": mean_instance_metrics(...)}``.

    Raises
    ------
    DataError
        If the shapes differ.
    """
    true_planes, pred_planes = as_planes(true_labels), as_planes(pred_labels)
    if true_planes.shape != pred_planes.shape:
        raise DataError(
            f"the prediction has shape {np.shape(pred_labels)} and the ground truth "
            f"{np.shape(true_labels)}; pick labels of the same image."
        )
    pixel_rows, instance_rows = [], []
    total = len(true_planes)
    for index, (true_plane, pred_plane) in enumerate(
        zip(true_planes, pred_planes, strict=True), start=1
    ):
        pixel, instance = score_plane(true_plane, pred_plane)
        pixel_rows.append(pixel)
        instance_rows.append(instance)
        yield Progress(index, total, f"scored plane {index}/{total}")
    return {
        "pixel": mean_pixel_metrics(pixel_rows),
        "instance": mean_instance_metrics(instance_rows),
    }


def _summarise(
    pixel_rows: list[dict[str, float]], instance_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    pixel = mean_pixel_metrics(pixel_rows)
    instance = mean_instance_metrics(instance_rows)
    return {
        "n_images": len(pixel_rows),
        "pixel": {k: float(pixel[k]) for k in PIXEL_KEYS},
        "instance": {k: float(instance[k]) for k in INSTANCE_KEYS},
    }


def pair_names(
    images: Sequence[Any], labels: Sequence[Any], names: Sequence[str] | None, task: str
) -> list[str]:
    """Names of image/label pairs (default ``image_000``, ...), once the pairs add up.

    ``task`` ("evaluate", "tune") names the work in the messages.

    Raises
    ------
    DataError
        If there are no images, or the counts of images, labels and names differ.
    """
    if len(images) != len(labels):
        raise DataError(f"got {len(images)} images but {len(labels)} label images; pair them up.")
    if not images:
        raise DataError(f"no images to {task}; check the folder or the list.")
    names = list(names) if names is not None else [f"image_{i:03d}" for i in range(len(images))]
    if len(names) != len(images):
        raise DataError(f"got {len(names)} names for {len(images)} images; give one name each.")
    return names


def check_planes(
    names: Sequence[str],
    images: Sequence[Any],
    labels: Sequence[Any],
    in_channels: int,
    channel_axis: int | None,
    task: str,
    volumes: bool = False,
) -> None:
    """Check that every image is a 2D plane (or, with ``volumes``, a ``(Z, Y, X)``
    volume) for the model and its labels match it.

    Raises
    ------
    DataError
        If labels are not a 2D (or 3D) integer image, an image is not a 2D plane or
        volume (grey, colour, or multichannel along ``channel_axis``), or the shapes
        differ.
    """
    dims = (2, 3) if volumes else (2,)
    what = "2D or 3D" if volumes else "2D"
    for name, image, truth in zip(names, images, labels):
        truth = np.asarray(truth)
        if truth.ndim not in dims or not np.issubdtype(truth.dtype, np.integer):
            raise DataError(
                f"labels of {name!r} must be a {what} integer image, got shape {truth.shape} "
                f"of {truth.dtype}."
            )
        expected = labels_shape(np.shape(image), in_channels, None, channel_axis)
        if len(expected) not in dims:
            takes = "2D planes and (Z, Y, X) volumes" if volumes else "2D planes"
            raise DataError(f"{name!r} has shape {np.shape(image)}; {task} takes {takes}.")
        if expected != truth.shape:
            raise DataError(
                f"labels of {name!r} have shape {truth.shape} but the image is {expected}; "
                "labels must match their image."
            )


def _finite_arrays(
    names: Sequence[str], images: Sequence[Any], labels: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """Images and labels as arrays (paths read), each image checked for NaN/inf values.

    Raises
    ------
    DataError
        If one is unreadable or not an array of numbers, or an image holds NaN/inf.
    """
    images = [as_image(image, f"image {name!r}") for name, image in zip(names, images)]
    labels = [as_image(truth, f"the labels of {name!r}") for name, truth in zip(names, labels)]
    for name, image in zip(names, images):
        check_finite(image, f"image {name!r}")
    return images, labels


def _middle_plane(volume: np.ndarray) -> np.ndarray:
    """The plane a volume's modality and overlay come from."""
    return volume[len(volume) // 2]


def evaluate_events(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    model: str | os.PathLike[str] | TrainedModel,
    config: PredictConfig | None = None,
    *,
    resize: int | None = None,
    names: Sequence[str] | None = None,
    overlay_dir: str | os.PathLike[str] | None = None,
    labels_dir: str | os.PathLike[str] | None = None,
    channel_axis: int | None = None,
    stop: threading.Event | None = None,
    **overrides: Any,
) -> Generator[Progress, None, EvaluationReport]:
    """Predict and score every image, yielding progress after each one.

    Parameters
    ----------
    images : sequence of np.ndarray
        2D planes: ``(H, W)`` grey, ``(H, W, 3|4)`` colour, or multichannel with
        ``channel_axis``; or ``(Z, Y, X)`` volumes of such planes.
    labels : sequence of np.ndarray
        ``(H, W)`` (or ``(Z, Y, X)``) integer instance labels (0 = background), one per
        image. A volume is predicted and scored as ``config.stack`` says
        (:func:`score_labels`): by default as 3D objects, matched in 3D; with
        ``stack="planes"``, plane by plane.
    model : str, Path or TrainedModel
        A model file, ``"default"`` or a loaded model.
    config : PredictConfig, optional
        Prediction and post-processing settings (threshold 0.5 by default).
    resize : int, optional
        Resize images (linear) and labels (nearest) to ``resize x resize`` first;
        ``256`` reproduces the reference protocol.
    names : sequence of str, optional
        Image names for the rows (default ``image_000``, ...).
    overlay_dir : path, optional
        Write ``<name>.png`` side-by-side overlays (image | truth | prediction) here.
    labels_dir : path, optional
        Write the predicted labels as ``<name>.tif`` here (at the evaluated size).
    channel_axis : int, optional
        Channel axis of multichannel images (colour images need none).
    stop : threading.Event, optional
        When set, stop after the current image and report the images done.
    **overrides
        :class:`PredictConfig` fields overriding ``config`` (e.g. ``tta=True``); see
        :meth:`~napari_unet.settings.Settings.with_overrides`.

    Returns
    -------
    EvaluationReport
        Per-image scores, their means over all images and per modality.

    Raises
    ------
    DataError
        If there are no images, counts differ, an image does not suit the model,
        or labels do not match their image's shape. All pairs are checked before
        any prediction, so nothing is written for a bad input.

    Examples
    --------
    >>> report = evaluate(images, labels, "default", resize=256)  # doctest: +SKIP
    >>> report.summary["f1_50"]  # doctest: +SKIP
    """
    config = PredictConfig.with_overrides(config, overrides)
    if resize is not None and not (isinstance(resize, int) and resize >= 16):
        raise DataError(f"resize must be a size of at least 16 pixels, got {resize!r}; try 256.")
    names = pair_names(images, labels, names, "evaluate")
    images, labels = _finite_arrays(names, images, labels)  # before the first overlay
    trained = resolve_model(model, config.device)
    config = config.for_model(trained)
    check_planes(
        names, images, labels, trained.config.in_channels, channel_axis, "evaluate", volumes=True
    )
    check_scoring_inputs(trained.config, names, labels, config.stack)
    if resize is not None and any(np.ndim(truth) == 3 for truth in labels):
        raise DataError("resize works on 2D planes; leave it out to evaluate volumes.")

    rows: list[dict[str, Any]] = []
    pixel_rows: list[dict[str, float]] = []
    instance_rows: list[dict[str, Any]] = []
    for number, (name, image, truth) in enumerate(zip(names, images, labels)):
        if stop is not None and stop.is_set():
            break
        image, truth = np.asarray(image), np.asarray(truth)
        if channel_axis is not None:
            image = np.moveaxis(image, channel_axis, -1)
        middle = _middle_plane if truth.ndim == 3 else np.asarray
        modality = classify_modality(middle(image))
        if resize is not None:
            image, truth = resize_pair(image, truth, resize)
        result = predict(image, trained, config, channel_axis=None if channel_axis is None else -1)
        pixel, instance = score_labels(truth, result.labels, config.stack)
        pixel_rows.append(pixel)
        instance_rows.append(instance)
        rows.append(
            {
                "image": name,
                "modality": modality,
                "height": int(truth.shape[-2]),
                "width": int(truth.shape[-1]),
                "n_true": int(instance["n_true"]),
                "n_pred": int(instance["n_pred"]),
                **{k: float(pixel[k]) for k in PIXEL_KEYS},
                **{k: float(instance[k]) for k in INSTANCE_KEYS},
            }
        )
        if labels_dir is not None:
            write_tiff(Path(labels_dir) / f"{name}.tif", result.labels)
        if overlay_dir is not None:
            overlay = overlay_image(middle(image), middle(truth), middle(result.labels))
            write_png(Path(overlay_dir) / f"{name}.png", overlay)
        yield Progress(number + 1, len(names), name)
    if not rows:
        raise DataError("evaluation was stopped before any image was scored.")

    per_modality = {}
    for modality in MODALITIES:
        chosen = [i for i, row in enumerate(rows) if row["modality"] == modality]
        if chosen:
            per_modality[modality] = _summarise(
                [pixel_rows[i] for i in chosen], [instance_rows[i] for i in chosen]
            )
    return EvaluationReport(rows, _summarise(pixel_rows, instance_rows), per_modality)


evaluate = plain_form(evaluate_events, "evaluate", "Predict and score every image.")
