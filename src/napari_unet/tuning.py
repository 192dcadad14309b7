"""Choose a model's post-processing on annotated images, and store it in the model.

A model's probabilities become instances through a few settings (threshold, seed
threshold, core threshold, minimum size; see :mod:`napari_unet.postprocess`). The
best values depend on the model and the data, so, like StarDist's threshold
optimisation, :func:`tune_events` predicts each annotated image once, re-runs only
the post-processing for every combination of a :class:`PostprocessGrid`, and ranks
the combinations by a mean instance score. :meth:`TuningResult.apply` stores the
best one in ``model.metadata["postprocess"]``, where prediction takes it whenever a
caller leaves a setting unset.

Tune on validation images, never on a test set: the best row is chosen and scored on
the same images, so it flatters the settings. :meth:`TuningResult.holdout_scores`
estimates by how much, by choosing on one random half of the images and scoring on
the other.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import GRID_SETTINGS, PostprocessGrid, PredictConfig
from napari_unet.errors import ConfigError, DataError
from napari_unet.evaluation import check_planes, pair_names, score_plane
from napari_unet.events import plain_form
from napari_unet.native3d import check_scoring_inputs, data_anisotropy
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.prediction import Progress, predict, resolve_model

#: Scores a grid can be ranked by (means over images).
RANK_KEYS = ("f1_50", "dsb_score")


@dataclass
class TuningResult:
    """Scores of every combination of a grid, best first.

    Attributes
    ----------
    rows : list of dict
        One per combination: its settings, and the means over images of the
        pixel F1 (of its labels), the DSB score and F1 at IoU 0.5; sorted by
        ``rank_by``, best first (ties by the other instance score).
    rank_by : str
        The score the rows are sorted by.
    per_image : np.ndarray
        ``(combinations, images)`` ``rank_by`` scores, rows in the order of ``rows``.
    """

    rows: list[dict[str, Any]]
    rank_by: str
    per_image: np.ndarray

    @property
    def best(self) -> dict[str, Any]:
        """Settings of the best combination."""
        return {key: self.rows[0][key] for key in GRID_SETTINGS}

    def apply(self, model: TrainedModel, tuned_on: str) -> None:
        """Store the best settings in ``model.metadata["postprocess"]``, in place."""
        model.metadata["postprocess"] = {**self.best, "tuned_on": tuned_on}

    def holdout_scores(self, splits: int, seed: int = 0) -> np.ndarray:
        """Held-out ``rank_by`` of settings chosen on the other half, per random halving.

        Returns ``(splits,)`` scores; needs at least two images.
        """
        n_images = self.per_image.shape[1]
        if n_images < 2:
            raise DataError("a held-out estimate needs at least two images.")
        rng = np.random.default_rng(seed)
        scores = []
        for _ in range(splits):
            order = rng.permutation(n_images)
            choose, score = order[: n_images // 2], order[n_images // 2 :]
            best = np.argmax(self.per_image[:, choose].mean(axis=1))
            scores.append(self.per_image[best, score].mean())
        return np.array(scores)

    def format_table(self, limit: int = 10) -> str:
        """The ``limit`` best rows as a text table."""
        scores = ("pixel_f1", "dsb_score", "f1_50")
        lines = ["".join(f"{name:>16}" for name in (*GRID_SETTINGS, *scores))]
        for row in self.rows[:limit]:
            lines.append(
                "".join(f"{row[name]:>16g}" for name in GRID_SETTINGS)
                + "".join(f"{row[name]:>16.4f}" for name in scores)
            )
        return "\n".join(lines)


def tune_events(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    model: str | os.PathLike[str] | TrainedModel,
    config: PredictConfig | None = None,
    *,
    grid: PostprocessGrid | None = None,
    rank_by: str = "f1_50",
    names: Sequence[str] | None = None,
    stop: threading.Event | None = None,
    **overrides: Any,
) -> Generator[Progress, None, TuningResult]:
    """Score every combination of ``grid`` on annotated images, yielding progress.

    Parameters
    ----------
    images : sequence of np.ndarray
        2D planes: ``(H, W)`` grey or ``(H, W, 3|4)`` colour; for a 3D model
        (``ndim=3``), ``(Z, Y, X)`` volumes, labelled and matched in 3D.
    labels : sequence of np.ndarray
        ``(H, W)`` (3D model: ``(Z, Y, X)``) integer instance labels (0 = background),
        one per image, with objects in at least one of them.
    model : str, Path or TrainedModel
        A model file, ``"default"`` or a loaded model.
    config : PredictConfig, optional
        Prediction settings (tiles, TTA, device); its post-processing is ignored.
    grid : PostprocessGrid, optional
        The values to try (default :class:`PostprocessGrid`).
    rank_by : {"f1_50", "dsb_score"}
        Mean score that orders the combinations.
    names : sequence of str, optional
        Image names for error messages (default ``image_000``, ...).
    stop : threading.Event, optional
        When set, stop and raise :class:`~napari_unet.io.DataError`.
    **overrides
        :class:`PredictConfig` fields overriding ``config`` (e.g. ``tta=True``); see
        :meth:`~napari_unet.settings.Settings.with_overrides`.

    Returns
    -------
    TuningResult
        Every combination with its mean scores, best first.

    Raises
    ------
    ConfigError
        If ``rank_by`` is unknown.
    DataError
        If there are no images, counts differ, an image is not a 2D plane, labels are
        not 2D integer images of their image's shape or hold no object at all, or the
        run was stopped. All pairs are checked before any prediction.

    Examples
    --------
    >>> result = tune(images, labels, "default")  # doctest: +SKIP
    >>> print(result.format_table(5))  # doctest: +SKIP
    """
    grid = grid or PostprocessGrid()
    if rank_by not in RANK_KEYS:
        raise ConfigError(f"rank_by must be one of {RANK_KEYS}, got {rank_by!r}.")
    names = pair_names(images, labels, names, "tune")
    config = PredictConfig.with_overrides(config, {**overrides, "return_probabilities": True})
    trained = resolve_model(model, config.device)
    volumes = trained.config.ndim == 3  # a 3D model is tuned on volumes, labelled in 3D
    check_planes(names, images, labels, trained.config.in_channels, None, "tune", volumes=volumes)
    check_scoring_inputs(trained.config, names, labels, config.stack)
    anisotropy = data_anisotropy(config, trained.config)
    spacing = {"spacing": (anisotropy, 1.0, 1.0)} if volumes else {}
    if not any(np.any(np.asarray(truth) > 0) for truth in labels):
        raise DataError("the labels hold no object at all; tune on images with annotated objects.")

    combinations = grid.combinations(trained.config.target)
    total = len(images) + len(combinations)
    cases = []
    for number, (name, image) in enumerate(zip(names, images)):
        if stop is not None and stop.is_set():
            raise DataError("tuning was stopped; nothing was chosen.")
        probabilities = predict(np.asarray(image), trained, config).probabilities
        cases.append((probabilities, np.asarray(labels[number])))
        yield Progress(number + 1, total, f"predicted {name}")

    rows, per_image = [], []
    for number, settings in enumerate(combinations):
        if stop is not None and stop.is_set():
            raise DataError("tuning was stopped; nothing was chosen.")
        pixel_f1, scores = [], {key: [] for key in RANK_KEYS}
        for probabilities, truth in cases:
            predicted = probabilities_to_labels(
                probabilities, trained.config.target, **settings, **spacing
            )
            pixel, instance = score_plane(truth, predicted)
            pixel_f1.append(pixel["f1"])
            for key in RANK_KEYS:
                scores[key].append(instance[key])
        rows.append(
            {
                **settings,
                "pixel_f1": float(np.mean(pixel_f1)),
                **{key: float(np.mean(values)) for key, values in scores.items()},
            }
        )
        per_image.append(scores[rank_by])
        yield Progress(len(images) + number + 1, total, "post-processing")
    # Ties on the ranking score go to the better other score.
    other = next(key for key in RANK_KEYS if key != rank_by)
    order = sorted(range(len(rows)), key=lambda i: (-rows[i][rank_by], -rows[i][other]))
    return TuningResult([rows[i] for i in order], rank_by, np.array([per_image[i] for i in order]))


tune = plain_form(
    tune_events, "tune", "Score every combination of post-processing settings and rank them."
)
