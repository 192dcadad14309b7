"""The Evaluate widget: score a segmentation against ground truth, export the table.

Pick a predicted Labels layer and a ground-truth Labels layer (or an image and a
model, which segments it first and adds the prediction as a layer). The roles are
chosen by :func:`pick_roles` whenever layers are added or removed: a segmentation this
plugin produced is the prediction, a loaded or painted layer the ground truth, and
otherwise the newest layer is the prediction; *Swap* exchanges them. The scores
are those of :mod:`napari_unet.metrics`: pixel accuracy, F1 (Dice), Jaccard
(IoU), recall and precision of the foreground, and the instance scores (DSB
score, TP/(TP+FP+FN) at IoU 0.5 and 0.75, F1 at 0.5, panoptic quality) with the
per-threshold counts. A 3D pair is scored as a volume by default (*Stack*: 3D objects,
matched over voxels and counted once, as :func:`napari_unet.evaluation.score_labels`
does); with *each plane on its own*, and for any other stack, plane by plane and
averaged over planes, as an evaluation over a set of images is. A 3D model segments a
volume in 3D (its Z step from the image layer's scale) and is tuned on the volume.

In the model mode, *Tune post-processing* chooses the model's post-processing on the
image and its ground truth (:mod:`napari_unet.tuning`) and adds a copy of the model
carrying the best settings to the session's models, where the Segment widget picks it.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_unet import metrics
from napari_unet._widgets._common import (
    LayerCombo,
    ModelPicker,
    RunControls,
    ScrollingDock,
    connect_until_destroyed,
    layer_data,
)
from napari_unet._widgets._outputs import is_prediction, prediction_metadata
from napari_unet._widgets._registry import MODEL_CACHE, REGISTRY
from napari_unet._widgets._segment import layer_anisotropy, stack_choice
from napari_unet.checkpoint import TrainedModel
from napari_unet.errors import ConfigError, DataError, ModelFileError
from napari_unet.evaluation import as_planes, score_labels, score_labels_events
from napari_unet.io import atomic_write
from napari_unet.prediction import (
    PredictConfig,
    Progress,
    Segmentation,
    predict_events,
)
from napari_unet.tuning import TuningResult, tune_events

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

COMPARE = "compare a prediction with ground truth"
#: How the widget picks the two layers (its tooltip and the docs say the same).
ROLE_RULE = (
    "Chosen whenever layers are added or removed: a segmentation made by napari U-Net is "
    "the prediction, a loaded or painted Labels layer the ground truth; otherwise the "
    "newest (top-most) layer is the prediction. Swap exchanges them."
)
SEGMENT = "segment an image with a model, then compare"
#: Summary rows of the table: (label shown, section, key in the metrics dictionaries).
SUMMARY_ROWS = (
    ("pixel accuracy", "pixel", "accuracy"),
    ("pixel F1 (Dice)", "pixel", "f1"),
    ("pixel Jaccard (IoU)", "pixel", "jaccard"),
    ("pixel recall", "pixel", "recall"),
    ("pixel precision", "pixel", "precision"),
    ("DSB score (mean AP 0.50:0.95)", "instance", "dsb_score"),
    ("AP @ IoU 0.50 (TP/(TP+FP+FN))", "instance", "ap50"),
    ("AP @ IoU 0.75", "instance", "ap75"),
    ("F1 @ IoU 0.50", "instance", "f1_50"),
    ("panoptic quality (PQ)", "instance", "pq"),
    ("true objects", "instance", "n_true"),
    ("predicted objects", "instance", "n_pred"),
    ("planes scored", "instance", "n_images"),
)
THRESHOLD_COLUMNS = ("IoU", "TP", "FP", "FN", "precision", "recall", "F1", "AP")


def pick_roles(layers: Sequence[Labels]) -> tuple[Labels | None, Labels | None]:
    """The (prediction, ground truth) pair among ``layers`` by :data:`ROLE_RULE`.

    The prediction is the newest segmentation this plugin produced (see
    :func:`~napari_unet._widgets._outputs.is_prediction`), else the newest layer when
    there are two or more (a single loaded layer is ground truth). The ground truth is
    the newest other layer that was loaded or painted, else the newest other layer.

    Parameters
    ----------
    layers : sequence of Labels
        The viewer's Labels layers, oldest (bottom of the layer list) first.
    """
    produced = [layer for layer in layers if is_prediction(layer)]
    prediction = produced[-1] if produced else layers[-1] if len(layers) > 1 else None
    others = [layer for layer in layers if layer is not prediction]
    loaded = [layer for layer in others if not is_prediction(layer)]
    truth = (loaded or others)[-1] if others else None
    return prediction, truth


def score_layers(
    truth: Any, prediction: Any, stack: str | None
) -> Generator[Progress, None, dict[str, dict[str, Any]]]:
    """Scores of ``prediction`` against ``truth``, as :func:`score_labels_events` gives them.

    A 3D pair with ``stack`` other than ``"planes"`` is one volume: objects matched in 3D
    (IoU over voxels) and counted once; anything else is scored plane by plane.
    """
    if np.ndim(truth) != 3 or stack == "planes":
        return (yield from score_labels_events(truth, prediction))
    yield Progress(0, 1, "matching objects in 3D")
    pixel, instance = score_labels(np.asarray(truth), np.asarray(prediction), stack)
    yield Progress(1, 1, "scored in 3D")
    return {
        "pixel": metrics.mean_pixel_metrics([pixel]),
        "instance": metrics.mean_instance_metrics([instance]),
    }


def segment_and_score(
    image: Any, rgb: bool, model: str | Path | TrainedModel, truth: Any, config: PredictConfig
) -> Generator[Progress, None, tuple[dict[str, dict[str, Any]], Segmentation]]:
    """Segment ``image`` with ``model`` and ``config``, then score it against ``truth``.

    Post-processing left unset in ``config`` uses the values tuned for the model; the
    pair is scored as ``config.stack`` says (:func:`score_layers`).
    """
    trained = MODEL_CACHE.get(model, config.device)
    segmentation = yield from predict_events(image, trained, config, rgb=rgb)
    scores = yield from score_layers(truth, segmentation.labels, config.stack)
    return scores, segmentation


def tune_on_layers(
    image: Any, rgb: bool, model: str | Path | TrainedModel, truth: Any, config: PredictConfig
) -> Generator[Progress, None, tuple[TrainedModel, TuningResult]]:
    """Tune ``model``'s post-processing on the planes of ``image`` and ``truth`` (a 3D
    model: on the volume, labelled in 3D).

    Returns the loaded model (not yet changed) and the tuning result.
    """
    trained = MODEL_CACHE.get(model, config.device)
    images = np.asarray(image)
    if trained.config.ndim == 3:
        images, truths = images[None], np.asarray(truth)[None]
    else:
        images = images.reshape((-1, *images.shape[-3:]) if rgb else (-1, *images.shape[-2:]))
        truths = as_planes(truth)
    result = yield from tune_events(list(images), list(truths), trained, config=config)
    return trained, result


class EvaluateWidget(ScrollingDock):
    """Pixel and instance metrics of a Labels layer against ground truth.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose Labels (and Image) layers are offered.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from napari.layers import Image, Labels

        super().__init__()
        self.viewer = napari_viewer
        self.scores: dict[str, dict[str, Any]] | None = None
        self._image_layer: Any = None  # the image segmented by the run in progress
        self._tune_names = ("", "")  # (new model's label, image name) of the tuning in progress

        layout = QVBoxLayout(self.content)
        # A grid, not a form: rows whose widgets are hidden take no space in a grid.
        grid = QGridLayout()
        self.mode = QComboBox()
        self.mode.addItems([COMPARE, SEGMENT])
        self.prediction = LayerCombo(napari_viewer, Labels)
        self.image = LayerCombo(napari_viewer, Image)
        self.model = ModelPicker(follow_new=True)
        self.truth = LayerCombo(napari_viewer, Labels)
        self.stack = stack_choice()
        self.stack.setToolTip(
            "A 3D pair as one volume (objects matched in 3D and counted once) or each "
            "plane scored on its own (time series)."
        )
        self.tta = QCheckBox("average over flips and rotations (slower)")
        self._labels: dict[QWidget, QLabel] = {}
        for row, (text, widget) in enumerate(
            [
                ("Mode", self.mode),
                ("Prediction", self.prediction),
                ("Image", self.image),
                ("Model", self.model),
                ("TTA", self.tta),
                ("Ground truth", self.truth),
                ("Stack", self.stack),
            ]
        ):
            self._labels[widget] = QLabel(text)
            grid.addWidget(self._labels[widget], row, 0)
            grid.addWidget(widget, row, 1)
        self.swap_button = QPushButton("⇅ Swap")
        self.swap_button.setToolTip("Exchange the prediction and the ground truth.")
        self.swap_button.clicked.connect(self.swap)
        grid.addWidget(self.swap_button, len(self._labels), 1)
        grid.setColumnStretch(1, 1)
        for widget in (self.prediction, self.truth, self._labels[self.prediction]):
            widget.setToolTip(ROLE_RULE)
        layout.addLayout(grid)
        # Both roles in one line, so that a swapped pair shows at a glance.
        self.roles = QLabel()
        self.roles.setWordWrap(True)
        self.roles.setToolTip(ROLE_RULE)
        layout.addWidget(self.roles)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._export_dialog)
        self.tune_button = QPushButton("Tune post-processing")
        self.tune_button.setToolTip(
            "Choose the thresholds and minimum size that score best on this image and its "
            "ground truth; adds a copy of the model with them (use validation images)."
        )
        self.tune_button.clicked.connect(self.tune)
        self.controls = controls = RunControls(
            "Evaluate",
            "Evaluation failed",
            stop_text=None,
            buttons=[self.export_button, self.tune_button],
        )
        controls.run_button.clicked.connect(self.start)
        controls.running_changed.connect(self.update_state)
        layout.addWidget(controls)
        # The widget's own names for its controls (used by tests and scripts).
        self.run_button = controls.run_button
        self.hint, self.progress, self.status = controls.hint, controls.progress, controls.status
        self._add_tables(layout)

        for signal in (
            self.mode.currentIndexChanged,
            self.prediction.layer_changed,
            self.image.layer_changed,
            self.truth.layer_changed,
            self.model.changed,
        ):
            signal.connect(self.update_state)
        events = napari_viewer.layers.events
        connect_until_destroyed(
            self, [(events.inserted, self.choose_roles), (events.removed, self.choose_roles)]
        )
        self.choose_roles()

    def _add_tables(self, layout: QVBoxLayout) -> None:
        """The summary table and the per-threshold table."""
        self.table = QTableWidget(len(SUMMARY_ROWS), 2)
        self.table.setHorizontalHeaderLabels(["metric", "value"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        for row, (label, _, _) in enumerate(SUMMARY_ROWS):
            self.table.setItem(row, 0, QTableWidgetItem(label))
            self.table.setItem(row, 1, QTableWidgetItem(""))
        self.table.setMinimumHeight(
            self.table.horizontalHeader().height()
            + sum(self.table.rowHeight(r) for r in range(len(SUMMARY_ROWS)))
            + 4
        )
        layout.addWidget(self.table)
        layout.addWidget(QLabel("Per IoU threshold (counts summed, ratios averaged over planes)"))
        self.thresholds = QTableWidget(0, len(THRESHOLD_COLUMNS))
        self.thresholds.setHorizontalHeaderLabels(list(THRESHOLD_COLUMNS))
        self.thresholds.verticalHeader().setVisible(False)
        self.thresholds.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        layout.addWidget(self.thresholds)

    def choose_roles(self, *_: Any) -> None:
        """Pick the prediction and the ground truth by :data:`ROLE_RULE`."""
        # Callbacks may run before the drop-downs' own; make sure they list every layer.
        self.prediction.refresh()
        self.truth.refresh()
        prediction, truth = pick_roles(self.truth.layers())
        self.prediction.set_layer(prediction)
        self.truth.set_layer(truth)
        self.update_state()

    def swap(self) -> None:
        """Exchange the prediction and the ground truth."""
        prediction, truth = self.prediction.layer(), self.truth.layer()
        if prediction is not None and truth is not None:
            self.prediction.set_layer(truth)
            self.truth.set_layer(prediction)

    @property
    def running(self) -> bool:
        """Whether an evaluation is in progress."""
        return self.controls.running

    def update_state(self, *_: Any) -> str | None:
        """Show the fields of the mode; enable Evaluate or say why not (returns the hint)."""
        segmenting = self.mode.currentText() == SEGMENT
        for widget in (self.prediction, self.image, self.model, self.tta):
            visible = segmenting != (widget is self.prediction)
            widget.setVisible(visible)
            self._labels[widget].setVisible(visible)
        self.swap_button.setVisible(not segmenting)
        self.roles.setText(self._roles_text(segmenting))
        hint = None if self.running else self._problem()
        self.controls.show_hint(hint)
        self.tune_button.setVisible(segmenting)
        self.tune_button.setEnabled(segmenting and hint is None and not self.running)
        return hint

    def _roles_text(self, segmenting: bool) -> str:
        truth = self.truth.layer()
        truth_name = "—" if truth is None else repr(truth.name)
        if segmenting:
            image = self.image.layer()
            source = "—" if image is None else f"segment {image.name!r}"
            return f"Prediction: {source} · Ground truth: {truth_name}"
        prediction = self.prediction.layer()
        prediction_name = "—" if prediction is None else repr(prediction.name)
        return f"Prediction: {prediction_name} · Ground truth: {truth_name}"

    def _problem(self) -> str | None:
        truth = self.truth.layer()
        if truth is None:
            return "Add a ground-truth Labels layer."
        if self.mode.currentText() == SEGMENT:
            image = self.image.layer()
            if image is None:
                return "Add an Image layer to segment."
            shape = tuple(layer_data(image).shape)
            shape = shape[:-1] if image.rgb else shape
            truth_shape = tuple(layer_data(truth).shape)
            if shape != truth_shape:
                return (
                    f"Image {image.name!r} has shape {shape}, ground truth {truth.name!r} "
                    f"{truth_shape}; pick the labels of this image."
                )
            return self.model.problem()
        prediction = self.prediction.layer()
        if prediction is None:
            return "Add the predicted Labels layer (e.g. from the Segment widget)."
        if prediction is truth:
            return "Prediction and ground truth are the same layer; pick two layers."
        shapes = tuple(layer_data(prediction).shape), tuple(layer_data(truth).shape)
        if shapes[0] != shapes[1]:
            return (
                f"Prediction {prediction.name!r} has shape {shapes[0]}, ground truth "
                f"{truth.name!r} {shapes[1]}; they must match."
            )
        return None

    def start(self) -> None:
        """Score in a worker thread (segmenting first in the model mode)."""
        if self.running or self.update_state() is not None:
            return
        truth = self.truth.layer()
        self._image_layer = None
        if self.mode.currentText() == SEGMENT:
            image = self.image.layer()
            self._image_layer = image
            work = segment_and_score
            args: tuple[Any, ...] = (
                layer_data(image),
                bool(image.rgb),
                self.model.value(),
                layer_data(truth),
                self._config(image),
            )
        else:
            work = score_layers
            args = (layer_data(truth), layer_data(self.prediction.layer()), self._stack())
        self.controls.run(
            work,
            *args,
            message="Scoring…",
            on_yielded=self._on_progress,
            on_returned=self._on_result,
        )

    def _stack(self) -> str | None:
        """The Stack choice (a 3D pair as a volume, or plane by plane)."""
        return self.stack.currentData()

    def _config(self, image: Any) -> PredictConfig:
        """Prediction settings of the model mode: TTA, Stack, the image's Z step."""
        return PredictConfig(
            tta=self.tta.isChecked(),
            stack=self._stack(),
            anisotropy=layer_anisotropy(image, None),
        )

    def tune(self) -> None:
        """Tune the model's post-processing on the image and ground truth in a worker thread."""
        if self.running or self.mode.currentText() != SEGMENT or self.update_state() is not None:
            return
        image, truth = self.image.layer(), self.truth.layer()
        chosen = self.model.value()
        # Named now, as the choices may change while the worker runs.
        # "default (bundled nuclei model)" -> "default"; "tiny #1 (Dice 0.84)" -> "tiny #1"
        source = (
            chosen.stem
            if isinstance(chosen, Path)
            else self.model.combo.currentText().split(" (")[0]
        )
        self._tune_names = (f"{source} tuned", image.name)
        self.controls.run(
            tune_on_layers,
            layer_data(image),
            bool(image.rgb),
            chosen,
            layer_data(truth),
            self._config(image),
            message="Tuning the post-processing…",
            failure="Tuning failed",
            on_yielded=self._on_progress,
            on_returned=self._on_tuned,
        )

    def _on_tuned(self, result: tuple[TrainedModel, TuningResult]) -> None:
        trained, tuning = result
        label, image_name = self._tune_names
        # A copy, so that the chosen model (perhaps a session model in use) stays as it was.
        tuned = copy.deepcopy(trained)
        planes_used = tuning.per_image.shape[1]
        tuning.apply(tuned, f"{planes_used} plane(s) of {image_name!r} (napari)")
        entry = REGISTRY.add(tuned, label)
        best = ", ".join(f"{key} {value:g}" for key, value in tuning.best.items())
        self.controls.say(
            f"Best on {planes_used} plane(s): {best} (F1 @ IoU 0.5 "
            f"{tuning.rows[0]['f1_50']:.3f}); added model {entry.name!r}."
        )

    def _on_progress(self, progress: Progress) -> None:
        self.controls.show_progress(progress.done, progress.total)

    def _on_result(self, result: Any) -> None:
        if self._image_layer is not None:
            scores, segmentation = result
            image = self._image_layer
            self.viewer.add_labels(
                segmentation.labels,
                name=f"{image.name} segmentation",
                scale=image.scale,
                translate=image.translate,
                metadata=prediction_metadata(self.model.combo.currentText()),
            )
        else:
            scores = result
        self.show_scores(scores)

    def show_scores(self, scores: dict[str, dict[str, Any]]) -> None:
        """Fill both tables from ``{"pixel": ..., "instance": ...}`` and allow export."""
        self.scores = scores
        for row, (_, section, key) in enumerate(SUMMARY_ROWS):
            self.table.item(row, 1).setText(_fmt(scores[section][key]))
        instance = scores["instance"]
        self.thresholds.setRowCount(len(instance["thresholds"]))
        for row, threshold in enumerate(instance["thresholds"]):
            values = [f"{threshold:.2f}"] + [
                instance[key][row] for key in ("tp", "fp", "fn", "precision", "recall", "f1", "ap")
            ]
            for column, value in enumerate(values):
                self.thresholds.setItem(row, column, QTableWidgetItem(_fmt(value)))
        self.export_button.setEnabled(True)
        self.status.setText(
            f"DSB score {instance['dsb_score']:.3f} · pixel F1 {scores['pixel']['f1']:.3f} over "
            f"{instance['n_images']} plane(s)."
        )

    def rows(self) -> list[tuple[str, Any]]:
        """The scores as flat ``(metric, value)`` rows, as exported to CSV."""
        if self.scores is None:
            return []
        pixel, instance = self.scores["pixel"], self.scores["instance"]
        rows: list[tuple[str, Any]] = [(f"pixel_{key}", pixel[key]) for key in metrics.PIXEL_KEYS]
        rows += [(key, instance[key]) for key in (*metrics.INSTANCE_KEYS, "sq", "rq")]
        rows += [(key, instance[key]) for key in ("n_true", "n_pred", "n_images")]
        for index, threshold in enumerate(instance["thresholds"]):
            for key in ("tp", "fp", "fn", "precision", "recall", "f1", "ap"):
                rows.append((f"{key}@{threshold:.2f}", instance[key][index]))
        return rows

    def export_csv(self, path: str | Path) -> Path:
        """Write the scores to ``path`` as ``metric,value`` rows (atomically)."""
        rows = self.rows()
        if not rows:
            raise DataError("nothing to export yet; press Evaluate first.")
        path = Path(path)
        with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["metric", "value"])
            writer.writerows(rows)
        return path

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv", "CSV (*.csv)")
        if path:
            try:
                self.controls.say(f"Saved {self.export_csv(path)}")
            except (DataError, OSError, ConfigError, ModelFileError) as error:
                self.controls.say(f"Export failed: {error}", error=True)


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4f}"
