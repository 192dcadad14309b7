"""The Segment widget: turn an Image layer into a new Labels layer with a U-Net.

The widget gathers its settings into a :class:`~napari_unet.prediction.PredictConfig`
and runs :func:`napari_unet.prediction.predict_events` in a napari ``thread_worker``
with a progress bar and a Stop button. The input layer is never modified: the
result is a Labels layer named ``"<image> segmentation"`` (and, on request, the
probability maps as Image layers), with the image's scale and translation. A run puts
its result into the widget's earlier result of that name while it is unedited, else
adds a layer (:class:`~napari_unet._widgets._outputs.ResultLayers`).

2D, RGB, multichannel (pick the channel axis), 3D and time stacks (segmented
plane by plane) and dask-backed layers work alike. A dask layer goes through the
core's block-wise path (:func:`napari_unet.blockwise.segment_to_zarr_events`) into a
temporary Zarr (read into memory when small, removed when no longer used), so the
stack is never loaded whole. A 3D model segments a volume in memory, in 3D (native3d).
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_unet._widgets._common import (
    LayerCombo,
    ModelPicker,
    RunControls,
    ScrollingDock,
    available_devices,
    layer_data,
    layer_modality,
)
from napari_unet._widgets._lazy import segment_lazy
from napari_unet._widgets._outputs import ResultLayers, prediction_metadata
from napari_unet._widgets._registry import MODEL_CACHE
from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig
from napari_unet.errors import ConfigError, DataError
from napari_unet.io import is_lazy
from napari_unet.native3d import check_model_input
from napari_unet.prediction import PredictConfig, Progress, Segmentation, predict_events

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

#: A wait shorter than this shows its step's name but no busy animation (RunControls).
BUSY_DELAY_MS = 1000
#: Shown by the post-processing fields when they take the model's tuned value.
TUNED = "tuned for the model"
#: Names of the probability channels per model target.
CHANNEL_NAMES = {
    "foreground": ("probability",),
    "contour": ("probability", "boundary"),
    "distance": ("probability", "distance"),
}


def tuned_text(name: str, value: float) -> str:
    """What a post-processing field at "tuned" shows: the value the run will use."""
    if name == "min_size":
        return f"tuned: {int(value)} px"
    if name == "core_threshold" and value <= 0:
        return "tuned: off"
    return f"tuned: {value:g}"


def tuned_probability_box(tooltip: str) -> QDoubleSpinBox:
    """A probability field whose lowest value, 0, stands for the model's tuned value."""
    box = QDoubleSpinBox()
    box.setRange(0.0, 0.99)
    box.setSingleStep(0.05)
    box.setSpecialValueText(TUNED)
    box.setValue(0.0)
    box.setToolTip(tooltip)
    return box


def stack_choice() -> QComboBox:
    """The Stack choice: a stack as 3D objects (:class:`PredictConfig` ``stack``)."""
    box = QComboBox()
    box.addItem("3D objects", "volume")
    box.addItem("each plane on its own", "planes")
    box.setToolTip(
        "A stack's planes as one volume (one id per object across Z, the Z step from "
        "the layer's scale) or each plane segmented on its own (time series). Dask "
        "layers are segmented plane by plane."
    )
    return box


def segment_layer(
    data: Any,
    model: str | Path | TrainedModel,
    config: PredictConfig,
    rgb: bool,
    channel_axis: int | None,
    stop: threading.Event,
) -> Generator[Progress, None, tuple[Segmentation, str]]:
    """Segment ``data`` with ``model``; a dask layer block by block (``_lazy``).

    Yields
    ------
    Progress
        "Loading the model" (total 0: busy) unless ``model`` is loaded or cached, then the
        core's progress: tiles of an in-memory image, block tasks of a dask one.

    Returns
    -------
    segmentation, target
        The result (numpy, or zarr-backed when large; ``cancelled`` set when Stop
        ended it early) and the model's target, which names the probability maps.
    """
    # Session models are used as they are; a file is read once per version and device.
    if not MODEL_CACHE.holds(model, config.device):
        yield Progress(0, 0, "Loading the model…")  # seconds for a file not read yet
    trained = MODEL_CACHE.get(model, config.device)
    if is_lazy(data) and trained.config.ndim == 2:  # block-wise prediction is 2D only
        segmentation = yield from segment_lazy(data, trained, config, rgb, channel_axis, stop)
    else:
        segmentation = yield from predict_events(
            data, trained, config, rgb=rgb, channel_axis=channel_axis, stop=stop
        )
    return segmentation, trained.config.target


def _load_for(model: str | Path, device: str) -> tuple[TrainedModel, tuple[str | Path, str]]:
    """The cached model for ``(model, device)``, returned with the pair that asked for it."""
    return MODEL_CACHE.get(model, device), (model, device)


class SegmentWidget(ScrollingDock):
    """Segment an Image layer into a new Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose Image layers are offered.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from napari.layers import Image

        super().__init__()
        self.viewer = napari_viewer
        self.output: Any = None
        self.results = ResultLayers(napari_viewer)
        # The layer and channel axis of the run in progress.
        self._source: Image | None = None
        self._axis: int | None = None
        self._model_name = ""
        defaults = PredictConfig()

        layout = QVBoxLayout(self.content)
        form = QFormLayout()
        self.image = LayerCombo(napari_viewer, Image)
        form.addRow("Image", self.image)
        self.channel_axis = QComboBox()
        self.channel_axis.setToolTip(
            "For a multichannel image held in one layer, the axis of its channels; "
            "'none' segments every plane of a stack."
        )
        form.addRow("Channel axis", self.channel_axis)
        self.stack = stack_choice()
        form.addRow("Stack", self.stack)
        self.model = ModelPicker(follow_new=True)
        form.addRow("Model", self.model)
        self._add_postprocessing_rows(form, defaults)
        self._add_run_rows(form, defaults)
        layout.addLayout(form)

        self.export_button = QPushButton("Export model…")
        self.export_button.setToolTip(
            "Save the selected model as a bioimage.io package (.zip: deepImageJ, ilastik, "
            "QuPath, bioimage.io runners) or an ONNX file (.onnx)."
        )
        self.export_button.clicked.connect(self._export_dialog)
        self.export_worker: Any = None
        self.controls = controls = RunControls(
            "Segment",
            "Segmentation failed",
            rows=[self.export_button],
            # A small image takes well under a second: no busy animation meanwhile.
            busy_delay_ms=BUSY_DELAY_MS,
        )
        controls.run_button.clicked.connect(self.start)
        controls.running_changed.connect(self.update_state)
        # The result is shown when the run has ended, with the buttons and the bar: one
        # window repaint instead of two (each tens of ms under software GL).
        self._result: tuple[Segmentation, str] | None = None
        controls.running_changed.connect(self._show_result)
        layout.addWidget(controls)
        # The widget's own names for its controls (used by tests and scripts).
        self.run_button, self.stop_button = controls.run_button, controls.stop_button
        self.hint, self.progress, self.status = controls.hint, controls.progress, controls.status

        self.image.layer_changed.connect(self._fill_channel_axes)
        for signal in (
            self.image.layer_changed,
            self.channel_axis.currentIndexChanged,
            self.model.changed,
            self.threshold.valueChanged,
            self.seed_threshold.valueChanged,
            self.core_threshold.valueChanged,
            self.min_size.valueChanged,
            self.tile_size.valueChanged,
            self.device.currentIndexChanged,
        ):
            signal.connect(self.update_state)
        self._tuned_worker: Any = None
        self._tuned_for: tuple[Any, str] | None = None
        self._model_config: ModelConfig | None = None  # the chosen model's, once loaded
        self.stack.currentIndexChanged.connect(self.update_state)
        self.model.changed.connect(self.show_tuned_values)
        self.device.currentIndexChanged.connect(self.show_tuned_values)
        self._fill_channel_axes()
        self.update_state()
        self.show_tuned_values()

    def _add_postprocessing_rows(self, form: QFormLayout, defaults: PredictConfig) -> None:
        """Threshold, separation, seed/core thresholds and minimum size."""
        # Post-processing left at its lowest value ("tuned for the model") takes the
        # value tuned for the chosen model on its validation data (PredictConfig None).
        self.threshold = tuned_probability_box(
            "Foreground probability above which a pixel is an object."
        )
        form.addRow("Threshold", self.threshold)
        self.separate = QCheckBox("split touching objects (watershed)")
        self.separate.setChecked(defaults.separate)
        form.addRow("Separate", self.separate)
        self.seed_threshold = tuned_probability_box(
            "Contour models: boundary probability under which an object pixel seeds an object. "
            "Distance models: height a distance peak must have to seed an object."
        )
        form.addRow("Seed threshold", self.seed_threshold)
        self.core_threshold = tuned_probability_box(
            "Hysteresis: split objects where the foreground probability is over this value, "
            "then grow them to the threshold. At or below the threshold: no hysteresis."
        )
        form.addRow("Core threshold", self.core_threshold)
        self.min_size = QSpinBox()
        self.min_size.setRange(-1, 1_000_000)
        self.min_size.setSuffix(" px")
        self.min_size.setSpecialValueText(TUNED)
        self.min_size.setValue(-1 if defaults.min_size is None else defaults.min_size)
        self.min_size.setToolTip("Objects with fewer pixels are removed.")
        form.addRow("Minimum size", self.min_size)

    def _add_run_rows(self, form: QFormLayout, defaults: PredictConfig) -> None:
        """Tiling, augmentation, compilation, device and extra outputs."""
        self.tile_size = QSpinBox()
        self.tile_size.setRange(0, 16384)
        self.tile_size.setSingleStep(64)
        self.tile_size.setSpecialValueText("auto (from memory)")
        self.tile_size.setValue(defaults.tile_size or 0)
        form.addRow("Tile size", self.tile_size)
        self.tta = QCheckBox("average over flips and rotations (slower)")
        self.tta.setChecked(defaults.tta)
        form.addRow("TTA", self.tta)
        self.compile = QCheckBox("compile the network (once per tile size, then faster)")
        self.compile.setToolTip(
            "torch.compile: tens of seconds before the first tile, then every tile runs "
            "faster. Worth it for large images and long stacks."
        )
        self.compile.setChecked(defaults.compile)
        form.addRow("Speed", self.compile)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        form.addRow("Device", self.device)
        self.probabilities = QCheckBox("also add the probability map")
        form.addRow("Output", self.probabilities)

    def _tuned_boxes(self) -> dict[str, QDoubleSpinBox | QSpinBox]:
        return {
            "threshold": self.threshold,
            "seed_threshold": self.seed_threshold,
            "core_threshold": self.core_threshold,
            "min_size": self.min_size,
        }

    def show_tuned_values(self, *_: Any) -> None:
        """Show in each post-processing field at "tuned" the value the chosen model gives.

        A model file is loaded in the background (into the cache the run then uses);
        until it is, and for a model that cannot be read, the fields say "tuned for
        the model".
        """
        for box in self._tuned_boxes().values():
            box.setSpecialValueText(TUNED)
        self._model_config = None
        model = self.model.value()
        if model is None or self.model.problem() is not None:
            self._tuned_for = None
            return
        self._tuned_for = (model, self.device.currentText())
        if isinstance(model, TrainedModel):
            self._on_tuned_model((model, self._tuned_for))
            return
        from napari.qt.threading import create_worker

        self._tuned_worker = create_worker(
            _load_for,
            *self._tuned_for,
            # A bound method: Qt drops the call if the widget is closed meanwhile.
            _connect={"returned": self._on_tuned_model},
            # A file that cannot be read says so when Segment is pressed.
            _ignore_errors=True,
        )

    def _on_tuned_model(self, loaded: tuple[TrainedModel, tuple[Any, str]]) -> None:
        trained, wanted = loaded
        if wanted != self._tuned_for:
            return  # the choice changed while the model loaded
        self._model_config = trained.config
        self.update_state()
        try:
            tuned = PredictConfig().for_model(trained, layer_modality(self.image.layer()))
        except ConfigError:
            return  # invalid stored settings: the run's error says how to fix them
        for name, box in self._tuned_boxes().items():
            box.setSpecialValueText(tuned_text(name, getattr(tuned, name)))

    def _fill_channel_axes(self) -> None:
        image = self.image.layer()
        self.channel_axis.blockSignals(True)
        self.channel_axis.clear()
        if image is not None and image.rgb:
            self.channel_axis.addItem("RGB colour (last axis)", None)
        else:
            self.channel_axis.addItem("none (2D, or a stack of planes)", None)
            if image is not None and image.ndim >= 3:
                for axis, size in enumerate(layer_data(image).shape[:-2]):
                    self.channel_axis.addItem(f"axis {axis} ({size} channels)", axis)
        self.channel_axis.setEnabled(self.channel_axis.count() > 1)
        self.channel_axis.blockSignals(False)

    @property
    def running(self) -> bool:
        """Whether a segmentation is in progress."""
        return self.controls.running

    def config(self) -> PredictConfig:
        """The widget's settings as a validated PredictConfig (ConfigError if invalid)."""
        tile = self.tile_size.value() or None
        # Small tiles get a proportionally small overlap (it must stay under half a tile).
        default = PredictConfig().overlap
        overlap = default if tile is None else min(default, tile // 4)
        return PredictConfig(
            tile_size=tile,
            overlap=overlap,
            tta=self.tta.isChecked(),
            compile=self.compile.isChecked(),
            threshold=self.threshold.value() or None,
            separate=self.separate.isChecked(),
            seed_threshold=self.seed_threshold.value() or None,
            core_threshold=self.core_threshold.value() or None,
            min_size=None if self.min_size.value() < 0 else self.min_size.value(),
            device=self.device.currentText(),
            return_probabilities=self.probabilities.isChecked(),
            stack=self.stack.currentData(),
            anisotropy=layer_anisotropy(self.image.layer(), self.channel_axis.currentData()),
        )

    def update_state(self, *_: Any) -> str | None:
        """Enable Segment, or show why it cannot run (returns the hint; None = ready)."""
        hint = None
        if not self.running:
            if self.image.layer() is None:
                hint = "Add an Image layer to segment (File > Open, or a sample)."
            else:
                hint = self.model.problem()
                if hint is None and self.model.value() is None:
                    hint = "Pick a model: train one with the Train widget, or choose a file."
                if hint is None:
                    try:
                        self._check_for_model(self.config())
                    except (ConfigError, DataError) as error:
                        hint = str(error)
        self.controls.show_hint(hint)
        return hint

    def _check_for_model(self, config: PredictConfig) -> None:
        """Refuse an image (or Stack choice) the loaded 3D model cannot segment."""
        if self._model_config is not None:
            image, axis = self.image.layer(), self.channel_axis.currentData()
            shape, rgb = layer_data(image).shape, bool(image.rgb)
            check_model_input(self._model_config, shape, config.stack, rgb, axis)

    def start(self) -> None:
        """Segment the selected image in a worker thread."""
        if self.running or self.update_state() is not None:
            return
        image = self.image.layer()
        try:
            config = self.config()
        except ConfigError as error:
            self.controls.show_hint(str(error))
            return
        self._source = image
        self._axis = self.channel_axis.currentData()
        model = self.model.value()
        self._model_name = str(model) if isinstance(model, Path) else self.model.combo.currentText()
        self.output = None
        self.controls.run(
            segment_layer,
            layer_data(image),
            model,
            config,
            bool(image.rgb),
            self._axis,
            message=f"Segmenting {image.name!r}…",
            on_yielded=self._on_progress,
            on_returned=self._keep_result,
        )

    def stop(self) -> None:
        """Stop after the current plane/block."""
        self.controls.stop()

    def _on_progress(self, progress: Progress) -> None:
        if progress.total == 1:
            return  # one tile: "1/1" tells nothing the run's end does not (and repaints)
        message = progress.message or f"{progress.done}/{progress.total}"
        self.controls.show_progress(progress.done, progress.total, message)

    def _keep_result(self, result: tuple[Segmentation, str]) -> None:
        self._result = result

    def _show_result(self) -> None:
        if self.running or self._result is None:
            return
        segmentation, target = self._result
        self._result = None
        stopped = segmentation.cancelled
        source = self._source
        scale, translate = _spatial(source, self._axis)
        suffix = " (stopped)" if stopped else ""
        # An earlier result of the same name takes the new data unless edited (ResultLayers).
        self.output, replaced = self.results.show(
            "labels",
            segmentation.labels,
            f"{source.name} segmentation{suffix}",
            scale=scale,
            translate=translate,
            metadata=prediction_metadata(self._model_name),
        )
        if segmentation.probabilities is not None:
            names = CHANNEL_NAMES.get(target, ())
            for index, channel in enumerate(segmentation.probabilities):
                what = names[index] if index < len(names) else f"channel {index}"
                self.results.show(
                    "image",
                    channel,
                    f"{source.name} {what}",
                    colormap="magma",
                    blending="additive",
                    contrast_limits=(0.0, 1.0),
                    scale=scale,
                    translate=translate,
                    visible=index == 0,
                    metadata=prediction_metadata(self._model_name),
                )
        count = _count_objects(segmentation.labels)
        objects = f" ({count} objects)" if count is not None else ""
        if stopped:
            self.status.setText(f"Stopped: {self.output.name!r} holds the planes done so far.")
        else:
            verb = "Updated" if replaced else "Added"
            self.status.setText(f"{verb} {self.output.name!r}{objects}.")

    def _export_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self, "Export model", "model.zip", "bioimage.io package (*.zip);;ONNX (*.onnx)"
        )
        if path:
            self.export_model(path)

    def export_model(self, path: str | Path) -> None:
        """Export the selected model to ``path`` (``.zip`` bioimage.io, ``.onnx``) in a worker."""
        from napari.qt.threading import create_worker

        from napari_unet.export import export_model

        model = self.model.value()
        if model is None or self.export_worker is not None:
            return
        self.export_button.setEnabled(False)
        self.controls.show_busy(f"Exporting the model to {path}…")
        self.export_worker = create_worker(
            export_model,
            model,
            path,
            _connect={
                "returned": self._on_exported,
                "errored": self._on_export_error,
                "finished": self._on_export_finished,
            },
        )

    def _on_exported(self, path: Path) -> None:
        self.controls.say(f"Exported the model to {path}.")

    def _on_export_error(self, error: Exception) -> None:
        self.controls.say(f"Export failed: {error}", error=True)

    def _on_export_finished(self) -> None:
        self.export_worker = None
        self.export_button.setEnabled(True)
        if not self.running:  # a segmentation run shows its own progress
            self.controls.show_progress(1, 1)


def _spatial(layer: Image, channel_axis: int | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The layer's scale and translation without its channel axis (RGB has none in napari)."""
    scale, translate = list(layer.scale), list(layer.translate)
    if channel_axis is not None:
        del scale[channel_axis], translate[channel_axis]
    return tuple(scale), tuple(translate)


def layer_anisotropy(layer: Image | None, channel_axis: int | None) -> float | None:
    """Z step over X pixel size, from a volume layer's scale; None for a plane, and for
    napari's default scale (all 1: no voxel size, as a file without one)."""
    if layer is None:
        return None
    scale, _ = _spatial(layer, channel_axis)
    if len(scale) < 3 or not scale[-1] or all(step == 1 for step in scale):
        return None
    return abs(scale[-3] / scale[-1])


def _count_objects(labels: Any) -> int | None:
    """Number of objects of an in-memory result (None for an on-disk one: too costly)."""
    if not isinstance(labels, np.ndarray):
        return None
    return int(np.count_nonzero(np.unique(labels)))
