"""The Train widget: train or fine-tune a U-Net on Image + Labels layers of the viewer.

The widget gathers its settings into a :class:`~napari_unet.training.TrainConfig`,
checks them and the data before any thread starts (the Start button stays
disabled with a hint while something is wrong), then runs
:func:`napari_unet.training.train_events` in a child process
(:func:`napari_unet.process.events_in_process`, whose main thread trains faster on a CPU
than a thread of the viewer's process does; on Windows in the worker thread itself),
relayed by a napari ``thread_worker``: the viewer stays responsive, a progress bar and
live loss / Dice / IoU curves follow the run, and Stop ends it after the current step
keeping the best model. Every finished (or stopped) model goes to the session registry,
so the Segment widget can use it at once.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_unet._widgets._common import (
    ModelPicker,
    PairRow,
    RunControls,
    ScrollingDock,
    available_devices,
    connect_until_destroyed,
    layer_data,
    shrink,
)
from napari_unet._widgets._plots import TrainingCurves
from napari_unet._widgets._registry import POOR_DICE, REGISTRY
from napari_unet._widgets._train_plan import (
    DIMENSIONS,
    TrainPlan,
    check_pairs,
    copy_of_labels,
    suggested_ndim,
)
from napari_unet.annotations import check_training_labels, count_planes, split_held_out_strip
from napari_unet.checkpoint import DEFAULT_MODEL_NAME, TrainedModel
from napari_unet.config import PRESETS, TARGET_CHANNELS, TrainConfig
from napari_unet.errors import ConfigError, DataError, ModelFileError
from napari_unet.process import CHILD_PROCESSES, PHASES, events_in_process
from napari_unet.training import MIN_PATCHES_PER_EPOCH, TrainEvent, TrainResult, train_events

if TYPE_CHECKING:
    import napari

#: Label modes as the widget shows them -> TrainConfig.label_mode.
LABEL_MODES = {
    "instance labels": "instance",
    "binary mask": "binary",
    "scribbles (1 = bg, 2 = object)": "sparse",
}
VALIDATION_REGION = "held-out strip"
#: What the widget sets for a 3D model in place of the 2D defaults: a 64 px patch (a 256 px
#: one makes millions of voxels), and the target and contact weight that split crowded
#: nuclei in 3D best (README *Volumes*).
SETTINGS_3D = {"patch_size": 64, "target": "distance", "contact_weight": 5}
#: The target of a 2D model: touching objects apart, as the bundled model (on the bundled
#: nuclei sample: DSB score 0.73 vs 0.35 for foreground only).
TARGET_2D = "contour"
VALIDATION_IMAGES = "whole images"


def _default(name: str) -> Any:
    """Default of a TrainConfig field, so the widget starts from the core's defaults."""
    for item in fields(TrainConfig):
        if item.name == name:
            return item.default
    raise KeyError(name)


class TrainWidget(ScrollingDock):
    """Train a U-Net on (Image, Labels) layer pairs of the viewer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers are offered as training data.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: TrainResult | None = None
        self._label = ""
        # Re-check settings and data shortly after the last change (labels being painted).
        self._check_timer = QTimer(self)
        self._check_timer.setSingleShot(True)
        self._check_timer.setInterval(250)
        self._check_timer.timeout.connect(self.update_state)
        self._build_ui()
        events = napari_viewer.layers.events
        self._callbacks = connect_until_destroyed(
            self, [(events.inserted, self._on_inserted), (events.removed, self.schedule_check)]
        )
        for layer in napari_viewer.layers:
            self._watch_labels(layer)
        self.update_state()

    # ---------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self.content)
        for box in (self._data_box(), self._model_box(), self._run_box()):
            layout.addWidget(box)

        self.controls = controls = RunControls(
            "Start training", "Training failed", "Stopping after this step…"
        )
        controls.run_button.clicked.connect(self.start)
        controls.running_changed.connect(self._on_running_changed)
        layout.addWidget(controls)
        # The widget's own names for its controls (used by tests and scripts).
        self.start_button, self.stop_button = controls.run_button, controls.stop_button
        self.hint, self.progress, self.status = controls.hint, controls.progress, controls.status
        self.curves = TrainingCurves()
        layout.addWidget(self.curves)
        layout.addStretch(1)

        self.dimensions.currentIndexChanged.connect(self._on_dimensions_changed)
        self.rows: list[PairRow] = []
        self.add_pair()
        for combo in self.content.findChildren(QComboBox):
            shrink(combo)
        for signal in (
            self.dimensions.currentIndexChanged,
            self.label_mode.currentIndexChanged,
            self.validation.currentIndexChanged,
            self.val_fraction.valueChanged,
            self.init_model.changed,
            self.preset.currentIndexChanged,
            self.target.currentIndexChanged,
            self.epochs.valueChanged,
            self.batch_size.valueChanged,
            self.learning_rate.textChanged,
            self.patch_size.valueChanged,
            self.steps_per_epoch.valueChanged,
            self.loss.currentIndexChanged,
            self.contact_weight.valueChanged,
            self.max_minutes.valueChanged,
            self.device.currentIndexChanged,
            self.save_path.textChanged,
        ):
            signal.connect(self.schedule_check)

    def _data_box(self) -> QGroupBox:
        """The image/labels pairs, how labels are read, the validation split."""
        data_box = QGroupBox("Training data")
        data_layout = QVBoxLayout(data_box)
        self._rows_layout = QVBoxLayout()
        data_layout.addLayout(self._rows_layout)
        self.add_pair_button = QPushButton("Add image/labels pair")
        self.add_pair_button.clicked.connect(lambda: self.add_pair())
        data_layout.addWidget(self.add_pair_button)
        form = QFormLayout()
        self.label_mode = QComboBox()
        self.label_mode.addItems(list(LABEL_MODES))
        self.label_mode.setToolTip(
            "Instance labels: 0 = background, 1..N = objects. Binary mask: 0 = background, "
            "anything else = object. Scribbles: paint label 1 on background and label 2 on "
            "objects; unpainted pixels (0) are ignored by the loss."
        )
        form.addRow("Labels are", self.label_mode)
        self.validation = QComboBox()
        self.validation.addItems([VALIDATION_REGION, VALIDATION_IMAGES])
        self.validation.setToolTip(
            "Held-out strip: the last part (this fraction) of each plane along its longer "
            "side, bottom or right (through every plane of a volume), is never trained on "
            "and scores each epoch. Whole images: a seeded fraction of the images/planes "
            "(volumes for a 3D model; of a single volume, its last planes) is held out."
        )
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.05, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(_default("val_fraction") or 0.1)
        val_row = QHBoxLayout()
        val_row.addWidget(self.validation, 1)
        val_row.addWidget(self.val_fraction)
        form.addRow("Validation", val_row)
        data_layout.addLayout(form)
        return data_box

    def _model_box(self) -> QGroupBox:
        """The model to start from, the preset and the target."""
        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        self.init_model = ModelPicker(allow_scratch=True)
        self.init_model.setToolTip("Fine-tune a model (keeps its architecture), or start anew.")
        model_form.addRow("Start from", self.init_model)
        self.dimensions = QComboBox()
        for text, ndim in DIMENSIONS.items():
            self.dimensions.addItem(text, ndim)
        self.dimensions.setCurrentIndex(self.dimensions.findData(2))
        self.dimensions.setToolTip(
            "For volumes: a native 3D model (3D convolutions, objects learnt in 3D, the Z "
            "step from the layer's scale), or a 2D model trained on every plane. The "
            "default: a 3D model for a volume layer without a time axis."
        )
        model_form.addRow("Dimensions", self.dimensions)
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        for index, name in enumerate(PRESETS):
            preset = PRESETS[name]
            tip = f"{preset['architecture']}, {preset['base_filters']} base filters"
            self.preset.setItemData(index, tip, Qt.ToolTipRole)
        self.preset.setCurrentText("fast")
        model_form.addRow("Preset", self.preset)
        self.target = QComboBox()
        self.target.addItems(list(TARGET_CHANNELS))
        self.target.setCurrentText(TARGET_2D)
        self.target.setToolTip(
            "foreground: object probability; contour / distance add a second output "
            "that helps separate touching objects."
        )
        model_form.addRow("Target", self.target)
        return model_box

    def _run_box(self) -> QGroupBox:
        """Epochs, batches, loss, augmentation, device and where to save."""
        run_box = QGroupBox("Training")
        run_form = QFormLayout(run_box)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100_000)
        self.epochs.setValue(_default("epochs"))
        run_form.addRow("Epochs", self.epochs)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 1024)
        self.batch_size.setValue(_default("batch_size"))
        run_form.addRow("Batch size", self.batch_size)
        self.learning_rate = QLineEdit(f"{_default('learning_rate'):g}")
        run_form.addRow("Learning rate", self.learning_rate)
        self.patch_size = QSpinBox()
        self.patch_size.setRange(8, 4096)
        self.patch_size.setSingleStep(16)
        self.patch_size.setValue(_default("patch_size"))
        run_form.addRow("Patch size", self.patch_size)
        self.steps_per_epoch = QSpinBox()
        self.steps_per_epoch.setRange(0, 1_000_000)
        self.steps_per_epoch.setSpecialValueText(f"auto (≥ {MIN_PATCHES_PER_EPOCH} patches)")
        self.steps_per_epoch.setToolTip(
            "auto: batches for the images' area once (area / patch area patches), at least "
            f"{MIN_PATCHES_PER_EPOCH} patches: one small image still gets a meaningful epoch."
        )
        run_form.addRow("Steps per epoch", self.steps_per_epoch)
        self.loss = QComboBox()
        self.loss.addItems(["bce", "dice", "bce+dice"])
        self.loss.setCurrentText(_default("loss"))
        run_form.addRow("Loss", self.loss)
        self.contact_weight = QSpinBox()
        self.contact_weight.setRange(1, 100)
        self.contact_weight.setValue(_default("contact_weight"))
        self.contact_weight.setSpecialValueText("1 (off)")
        self.contact_weight.setToolTip(
            "Loss weight of the pixels between touching objects (1 = off). Higher values "
            "push the model to split touching objects, and can split single ones: check "
            "the result on held-out images. Needs instance labels or masks, not scribbles."
        )
        run_form.addRow("Contact weight", self.contact_weight)
        self.max_minutes = QDoubleSpinBox()
        self.max_minutes.setRange(0, 100_000)
        self.max_minutes.setDecimals(1)
        self.max_minutes.setSuffix(" min")
        self.max_minutes.setSpecialValueText("none")
        self.max_minutes.setToolTip(
            "Wall-clock budget: when it is spent the run validates once more and ends, "
            "keeping the best model (none = run all epochs)."
        )
        run_form.addRow("Time budget", self.max_minutes)
        self.augment = QCheckBox("flips, rotations, intensity, noise")
        self.augment.setChecked(_default("augment"))
        run_form.addRow("Augment", self.augment)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        run_form.addRow("Device", self.device)
        self.save_path = QLineEdit()
        self.save_path.setPlaceholderText("optional: model.pt (kept in this session anyway)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_save)
        save_row = QHBoxLayout()
        save_row.addWidget(self.save_path, 1)
        save_row.addWidget(browse)
        run_form.addRow("Save to", save_row)
        return run_box

    def _browse_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save model as", "model.pt", "Model (*.pt)")
        if path:
            self.save_path.setText(path)

    def add_pair(self) -> PairRow:
        """Add a pair row, pre-set to an image not used by the other rows."""
        row = PairRow(self.viewer)
        used = {r.image.layer() for r in self.rows}
        unused = [layer for layer in row.image.layers() if layer not in used]
        if unused:
            row.image.set_layer(unused[0])
        row.image.layer_changed.connect(self.schedule_check)
        if not self.rows:  # the first pair's image decides the default dimensions
            row.image.layer_changed.connect(self.suggest_dimensions)
        row.labels.layer_changed.connect(self.schedule_check)
        row.remove.clicked.connect(lambda: self.remove_pair(row))
        self.rows.append(row)
        self._rows_layout.addWidget(row)
        if len(self.rows) == 1:
            self.suggest_dimensions()
        self.schedule_check()
        return row

    def suggest_dimensions(self) -> None:
        """A 3D model for a volume layer without a time axis, else a 2D one (first pair)."""
        layer = self.rows[0].image.layer() if self.rows else None
        self.dimensions.setCurrentIndex(self.dimensions.findData(suggested_ndim(layer)))

    def _on_dimensions_changed(self) -> None:
        # Swap the 2D and 3D values of the settings the user has left as they were.
        three_d = self.dimensions.currentData() == 3
        for name, value_3d in SETTINGS_3D.items():
            box = getattr(self, name)
            value_2d = TARGET_2D if name == "target" else _default(name)
            old, new = (value_2d, value_3d) if three_d else (value_3d, value_2d)
            if isinstance(box, QComboBox) and box.currentText() == old:
                box.setCurrentText(new)
            elif not isinstance(box, QComboBox) and box.value() == old:
                box.setValue(new)

    def remove_pair(self, row: PairRow) -> None:
        """Remove a pair row."""
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self.schedule_check()

    def _on_inserted(self, event: Any) -> None:
        self._watch_labels(event.value)
        self.schedule_check()

    def _watch_labels(self, layer: Any) -> None:
        # Painting changes the data checks (e.g. "labels are empty").
        if hasattr(layer.events, "paint"):
            for emitter in (layer.events.paint, layer.events.data):
                emitter.connect(self.schedule_check)
                self._callbacks.append((emitter, self.schedule_check))

    def schedule_check(self, *_: Any) -> None:
        """Re-check settings and data soon (debounced)."""
        self._check_timer.start()

    # ---------------------------------------------------------------- checks
    @property
    def running(self) -> bool:
        """Whether a training run is in progress."""
        return self.controls.running

    def update_state(self) -> str | None:
        """Check everything; enable Start or show why not. Returns the hint (None = ready)."""
        for row in self.rows:
            row.remove.setEnabled(len(self.rows) > 1)
        # A fine-tuned model keeps its own architecture and target.
        from_scratch = self.init_model.value() is None
        self.preset.setEnabled(from_scratch)
        self.target.setEnabled(from_scratch)
        hint = None
        if not self.running:
            try:
                self.plan(snapshot=False)
            except (ConfigError, DataError, ModelFileError) as error:
                hint = str(error)
        self.controls.show_hint(hint)
        self._set_inputs_enabled(not self.running)
        return hint

    def _set_inputs_enabled(self, enabled: bool) -> None:
        for child in self.findChildren(QGroupBox):
            child.setEnabled(enabled)

    def plan(self, snapshot: bool = True) -> TrainPlan:
        """Build the run from the widget: data, validation split and TrainConfig.

        Parameters
        ----------
        snapshot : bool
            Copy the labels (numpy) so that painting during the run does not change
            its data; checks skip the copy.

        Raises
        ------
        DataError
            No pairs, a labels layer of another shape, empty labels, an empty
            validation region...
        ConfigError
            A setting the core refuses (its message is shown as the hint).
        """
        pairs = [row.pair() for row in self.rows]
        ndim = int(self.dimensions.currentData())
        anisotropy = check_pairs(pairs, ndim)
        images = [image for image, _ in pairs]
        try:
            learning_rate = float(self.learning_rate.text())
        except ValueError:
            raise ConfigError(
                f"Learning rate {self.learning_rate.text()!r} is not a number; try 1e-4."
            ) from None
        mode = LABEL_MODES[self.label_mode.currentText()]
        label_arrays = [layer_data(labels) for _, labels in pairs]
        if snapshot:
            label_arrays = [copy_of_labels(array) for array in label_arrays]
        for (_, labels), array in zip(pairs, label_arrays, strict=True):
            check_training_labels(labels.name, array, mode)
        image_arrays = [layer_data(image) for image in images]

        init = self.init_model.value()
        problem = self.init_model.problem()
        if problem:
            raise ModelFileError(problem)
        if isinstance(init, TrainedModel):
            init_ndim = init.config.ndim
        else:  # the bundled model is 2D; a model file's are checked when it is read
            init_ndim = 2 if init == DEFAULT_MODEL_NAME else ndim
        if init_ndim != ndim:
            raise ConfigError(
                f"The model to start from is {init_ndim}D; choose "
                f"{'3D model' if init_ndim == 3 else '2D model on the planes'!r}."
            )
        region = self.validation.currentText() == VALIDATION_REGION
        fraction = float(self.val_fraction.value())
        # The option names of the command line (TrainConfig.from_options builds both).
        config = TrainConfig.from_options(
            preset=self.preset.currentText(),
            ndim=ndim,
            anisotropy=anisotropy,
            in_channels=3 if images[0].rgb else 1,
            target=self.target.currentText(),
            epochs=self.epochs.value(),
            batch_size=self.batch_size.value(),
            learning_rate=learning_rate,
            patch_size=self.patch_size.value(),
            augment=self.augment.isChecked(),
            loss=self.loss.currentText(),
            label_mode=mode,
            val_fraction=0.0 if region else fraction,
            device=self.device.currentText(),
            steps_per_epoch=self.steps_per_epoch.value() or None,
            contact_weight=self.contact_weight.value(),
            max_minutes=self.max_minutes.value() or None,
        )
        plan = TrainPlan(image_arrays, label_arrays, config, init=init)
        plan.description = {
            "layers": [[image.name, labels.name] for image, labels in pairs],
            "validation": (
                f"held-out strip ({fraction:.0%} of each plane)"
                if region
                else f"whole planes (fraction {fraction})"
            ),
        }
        if region:
            plan.images, plan.labels, plan.val_images, plan.val_labels = split_held_out_strip(
                plan.images, plan.labels, fraction
            )
        elif ndim == 2 and sum(count_planes(array) for array in label_arrays) < 2:
            raise DataError(
                "Whole-image validation needs at least 2 images or planes; choose "
                f"{VALIDATION_REGION!r} or add another pair."
            )
        text = self.save_path.text().strip()
        if text:
            out = Path(text).expanduser()
            if out.is_dir():
                raise DataError(f"{text!r} is a folder; give a file name such as model.pt.")
            plan.out = out
            plan.log_csv = out.with_name(f"{out.stem}_log.csv")
        return plan

    # ---------------------------------------------------------------- run
    def start(self) -> None:
        """Check the settings and start training in a worker thread."""
        if self.running:
            return
        try:
            plan = self.plan()
        except (ConfigError, DataError, ModelFileError) as error:
            self.controls.show_hint(str(error))
            return
        self.result = None
        self.curves.clear()
        self._label = self._model_label(plan)
        # In a child process where there is one (POSIX): see napari_unet.process.
        relay = (events_in_process, train_events) if CHILD_PROCESSES else (train_events,)
        report = self.controls.phase_reporter()
        phases = {"on_phase": lambda phase: report(PHASES[phase])} if CHILD_PROCESSES else {}
        self.controls.run(
            *relay,
            plan.images,
            plan.labels,
            plan.config,
            message=PHASES["starting" if CHILD_PROCESSES else "running"],
            on_yielded=self._on_event,
            on_returned=self._on_result,
            **phases,
            val_images=plan.val_images,
            val_labels=plan.val_labels,
            out=plan.out,
            init=plan.init,
            log_csv=plan.log_csv,
            data_description=plan.description,
        )

    def stop(self) -> None:
        """Ask the run to end after the current step (the best model is kept)."""
        self.controls.stop()

    def _model_label(self, plan: TrainPlan) -> str:
        if plan.out is not None:
            return plan.out.stem
        if plan.init is not None:
            return "fine-tuned"
        return self.preset.currentText()

    def _on_event(self, event: TrainEvent) -> None:
        total = max(1, event.epochs * event.steps_per_epoch)
        if event.kind == "step":
            done = (event.epoch - 1) * event.steps_per_epoch + event.step
            self.controls.show_progress(
                min(done, total),
                total,
                f"epoch {event.epoch}/{event.epochs} · step {event.step}/"
                f"{event.steps_per_epoch} · loss {event.train_loss:.4f}",
            )
        elif event.kind == "epoch":
            metrics = event.val_metrics or {}
            self.curves.add_epoch(
                event.epoch,
                event.train_loss,
                event.val_loss,
                metrics.get("dice"),
                metrics.get("iou"),
            )
            self.controls.show_progress(
                event.epoch,
                event.epochs,
                f"epoch {event.epoch}/{event.epochs} · loss {event.train_loss:.4f} · val loss "
                f"{event.val_loss:.4f} · Dice {metrics.get('dice', math.nan):.3f} · IoU "
                f"{metrics.get('iou', math.nan):.3f} · {event.elapsed_s:.0f} s",
            )

    def _on_result(self, result: TrainResult) -> None:
        self.result = result
        dice = result.model.metadata.get("val_metrics", {}).get("dice")
        poor = dice is None or not dice >= POOR_DICE  # NaN or unknown counts as poor
        entry = REGISTRY.add(result.model, self._label, result.model_path, poor=poor)
        how = {
            "cancelled": "Stopped",
            "early stopping": "Stopped early",
            "time budget": "Stopped on the time budget",
        }.get(result.stop_reason, "Done")
        quality = f", val Dice {dice:.3f}" if dice is not None else ", not validated"
        saved = f" Saved to {result.model_path}." if result.model_path else ""
        if poor:
            self.controls.say(
                f"{how}: best epoch {result.best_epoch}{quality}: poor (under {POOR_DICE}). "
                f"Segment keeps its model (pick {entry.name!r} there to use it anyway); train "
                f"longer or label more.{saved}",
                warning=True,
            )
        else:
            self.controls.say(
                f"{how}: best epoch {result.best_epoch}{quality}. Model {entry.name!r} is ready "
                f"in the Segment widget.{saved}"
            )

    def _on_running_changed(self) -> None:
        if not self.running:
            # Hand the run's cached GPU memory back (to a Segment run, other programs).
            _free_gpu_memory()
        self.update_state()


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
