"""Building blocks shared by the widgets: layer pickers, a model picker, run controls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet._pairs import match_pairs, spatial_shape
from napari_unet._widgets._registry import REGISTRY, SessionModel
from napari_unet.checkpoint import (
    DEFAULT_MODEL_NAME,
    TrainedModel,
    TrustedPath,
    default_model_path,
)
from napari_unet.modality import classify_modality

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer

#: The model file dialog's filter: napari-unet files and bioimage.io packages.
MODEL_FILE_FILTER = (
    "Models (*.pt *.zip);;napari-unet model (*.pt);;bioimage.io package (*.zip);;All files (*)"
)
#: Device choices offered in the widgets, as the core's ``device`` strings.
DEVICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda``/``mps`` when this machine has them."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def layer_data(layer: Layer) -> Any:
    """A layer's full-resolution array (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_modality(layer: Layer | None) -> str | None:
    """The imaging modality of a 2D in-memory image layer (for its per-modality tuned
    post-processing, :func:`napari_unet.modality.classify_modality`), else None."""
    data = None if layer is None else layer_data(layer)
    if not isinstance(data, np.ndarray) or data.ndim != 2 + int(layer.rgb):
        return None
    return classify_modality(data)


def shrink(combo: QComboBox) -> QComboBox:
    """Let ``combo`` be narrower than its longest entry (the open list still shows it whole).

    Long layer names or choices would otherwise make the whole dock wide.
    """
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(8)
    return combo


class ScrollingDock(QWidget):
    """A dock widget whose controls scroll vertically in :attr:`content`.

    Docked together, the widgets share the height of the window: each keeps
    :data:`MIN_HEIGHT` pixels (its first rows stay visible) and scrolls the rest,
    rather than forcing the window taller than the screen. The dock is as wide as
    its controls need, so nothing scrolls sideways.
    """

    #: Height, in pixels, under which a dock does not shrink.
    MIN_HEIGHT = 150

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        #: The widget holding the controls; give it the layout.
        self.content = QWidget()
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(self.content)
        self.scroll_area.setMinimumHeight(self.MIN_HEIGHT)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll_area)

    def showEvent(self, event: Any) -> None:
        """Fit the width to the controls once they know their sizes."""
        super().showEvent(event)
        bar = self.scroll_area.verticalScrollBar().sizeHint().width()
        self.scroll_area.setMinimumWidth(self.content.minimumSizeHint().width() + bar)


class HintLabel(QLabel):
    """A word-wrapped label that says why an action is unavailable (empty when it is)."""

    #: Amber: a warning, not an error.
    COLOUR = "#e0a040"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setStyleSheet(f"color: {self.COLOUR};")
        self.hide()

    def show_hint(self, text: str | None) -> None:
        """Show ``text``, or hide the label when ``text`` is empty."""
        self.setText(text or "")
        self.setVisible(bool(text))


class LayerCombo(QComboBox):
    """A drop-down of the viewer's layers of one type, kept in sync with the layer list.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are listed.
    layer_type : type
        ``napari.layers.Image`` or ``napari.layers.Labels``.
    """

    #: Emitted when the selected layer changes (also when it is renamed or removed).
    layer_changed = Signal()

    def __init__(
        self, viewer: napari.Viewer, layer_type: type, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._layer_type = layer_type
        self._layers: list[Layer] = []
        shrink(self)
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit())
        events = viewer.layers.events
        callbacks = [
            (events.inserted, self._on_inserted),
            (events.removed, self._on_removed),
            (events.moved, self.refresh),
        ]
        callbacks += [(layer.events.name, self.refresh) for layer in viewer.layers]
        self._callbacks = connect_until_destroyed(self, callbacks)
        self.refresh()

    def layer(self) -> Layer | None:
        """The selected layer, or None when there is none of this type."""
        index = self.currentIndex()
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def set_layer(self, layer: Layer | None) -> None:
        """Select ``layer`` (which must be listed), or nothing for None."""
        self.setCurrentIndex(-1 if layer is None else self._layers.index(layer))

    def layers(self) -> list[Layer]:
        """All listed layers, in layer-list order."""
        return list(self._layers)

    def _on_inserted(self, event: Any) -> None:
        emitter = event.value.events.name
        emitter.connect(self.refresh)
        self._callbacks.append((emitter, self.refresh))
        self.refresh()

    def _on_removed(self, event: Any) -> None:
        emitter = event.value.events.name
        emitter.disconnect(self.refresh)
        self._callbacks.remove((emitter, self.refresh))
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Re-read the layer list, keeping the current selection when it still exists."""
        current = self.layer()
        self._layers = [
            layer for layer in self._viewer.layers if isinstance(layer, self._layer_type)
        ]
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in self._layers])
        if current in self._layers:
            self.setCurrentIndex(self._layers.index(current))
        self.blockSignals(False)
        self.layer_changed.emit()


def connect_until_destroyed(
    widget: QWidget, callbacks: list[tuple[Any, Callable[..., Any]]]
) -> list[tuple[Any, Callable[..., Any]]]:
    """Connect ``(emitter, callback)`` pairs and disconnect them all when ``widget`` is deleted.

    Layers and the layer list outlive the widgets; without this, an event after a
    widget's deletion would call into a deleted Qt object. Returns the live list,
    to which later connections may be appended.
    """
    for emitter, callback in callbacks:
        emitter.connect(callback)

    def disconnect(*_: Any) -> None:
        for emitter, callback in callbacks:
            emitter.disconnect(callback)
        callbacks.clear()

    widget.destroyed.connect(disconnect)
    return callbacks


class ModelPicker(QWidget):
    """Choose a model: the bundled default, one trained in this session, or a file.

    Parameters
    ----------
    allow_scratch : bool
        Offer "none (from scratch)" first (the Train widget's fine-tune choice).
    follow_new : bool
        Select each newly trained model as it appears (the Segment widget), unless it
        is flagged poor.
    """

    SCRATCH = "none (train from scratch)"
    DEFAULT = "default (bundled nuclei model)"
    FILE = "model file…"

    #: Emitted whenever the choice (or the chosen file) changes.
    changed = Signal()

    def __init__(
        self, allow_scratch: bool = False, follow_new: bool = False, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._allow_scratch = allow_scratch
        self._follow_new = follow_new
        self.combo = shrink(QComboBox())
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a .pt model file or a bioimage.io .zip")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self._file_row = QWidget()
        row = QHBoxLayout(self._file_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self._file_row)
        # Off by default: a bioimage.io package's own Python code runs only when ticked.
        self.trust_code = QCheckBox("Trust code in model packages")
        self.trust_code.setToolTip(
            "Let a bioimage.io package run its own Python code (needed by its "
            "pytorch_state_dict weights). Tick only for packages from a source you trust."
        )
        self.trust_code.toggled.connect(lambda _: self.changed.emit())
        layout.addWidget(self.trust_code)
        self.combo.currentIndexChanged.connect(self._on_choice)
        self.path_edit.textChanged.connect(lambda _: self.changed.emit())
        REGISTRY.changed.connect(self._on_registry)
        self.destroyed.connect(lambda *_: REGISTRY.changed.disconnect(self._on_registry))
        self._fill()

    def _fill(self, select: str | None = None) -> None:
        current = select or self.combo.currentText()
        items = [self.SCRATCH] if self._allow_scratch else []
        if default_model_path().is_file():
            items.append(self.DEFAULT)
        items += [entry.name for entry in REGISTRY.entries()]
        items.append(self.FILE)
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(items)
        usable = [entry for entry in REGISTRY.entries() if not entry.poor]
        if current in items:
            self.combo.setCurrentText(current)
        elif not self._allow_scratch and usable:
            self.combo.setCurrentText(usable[-1].name)
        self.combo.blockSignals(False)
        self._on_choice()

    def _on_registry(self, entry: SessionModel | None) -> None:
        follow = entry is not None and self._follow_new and not entry.poor
        self._fill(select=entry.name if follow else None)

    def _on_choice(self, *_: Any) -> None:
        self._file_row.setVisible(self.combo.currentText() == self.FILE)
        self.trust_code.setVisible(self.combo.currentText() == self.FILE)
        self.changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "", MODEL_FILE_FILTER)
        if path:
            self.path_edit.setText(path)

    def choices(self) -> list[str]:
        """The entries offered, in order."""
        return [self.combo.itemText(i) for i in range(self.combo.count())]

    def select(self, text: str) -> None:
        """Select the entry shown as ``text`` (a session model name or a fixed choice)."""
        self.combo.setCurrentText(text)

    def value(self) -> str | Path | TrainedModel | None:
        """The chosen model: ``"default"``, a session ``TrainedModel``, a file path, or None."""
        text = self.combo.currentText()
        if text == self.SCRATCH:
            return None
        if text == self.DEFAULT:
            return DEFAULT_MODEL_NAME
        if text == self.FILE:
            path = Path(self.path_edit.text().strip()).expanduser()
            return TrustedPath(path) if self.trust_code.isChecked() else path
        entry = REGISTRY.get(text)
        return entry.model if entry is not None else None

    def problem(self) -> str | None:
        """Why the choice cannot be used yet (no file picked, missing file), else None."""
        if self.combo.currentText() != self.FILE:
            return None
        text = self.path_edit.text().strip()
        if not text:
            return "Choose a model file (.pt, or a bioimage.io .zip), or pick another model."
        if not Path(text).expanduser().is_file():
            return f"Model file {text!r} does not exist."
        return None


class RunControls(QWidget):
    """Run and Stop buttons, a hint, a progress bar and a status line for one background run.

    :meth:`run` starts a generator in a napari ``thread_worker``; the widget keeps
    only what is its own: what to run, and what to do with what it yields and returns.
    Errors are shown in the status line; :attr:`running_changed` tells the widget
    when to re-check its state.

    A wait with no count to show (the run starting, a model loading, an export) shows a
    busy bar and the step's name (:meth:`show_busy`, or :meth:`phase_reporter` from a
    worker thread). After Stop, the status line says the stop text until the run ends:
    progress moves the bar but does not replace it.

    Parameters
    ----------
    run_text : str
        The Run button's text.
    failure : str
        Start of the status line when a run fails, e.g. ``"Training failed"``.
    stop_text : str or None
        The status line after Stop is pressed. With it, the work is given the
        :attr:`stop_event` as its ``stop`` keyword argument; None hides Stop.
    buttons : sequence of QWidget
        More buttons on the row of Run and Stop.
    rows : sequence of QWidget
        Widgets on their own rows between the buttons and the hint.
    busy_delay_ms : int
        How long a wait shows its step's name over a still bar before the bar turns
        busy. Its animation repaints the window all the time, which slows a short run
        (under a software-rendered display, a 0.4 s segmentation by half or more).
    """

    #: Emitted when a run starts and when it ends (returned, stopped or failed).
    running_changed = Signal()
    #: Emitted with a step's name when a wait with no count begins; shown by
    #: :meth:`show_busy` (any thread may emit it: the call is queued to the GUI thread).
    step_started = Signal(str)
    #: Emitted with each value a run yields, after the widget's own handler saw it.
    yielded = Signal(object)

    def __init__(
        self,
        run_text: str,
        failure: str,
        stop_text: str | None = "Stopping…",
        buttons: Sequence[QWidget] = (),
        rows: Sequence[QWidget] = (),
        busy_delay_ms: int = 0,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.worker: Any = None
        self.stop_event = threading.Event()
        self._failure = failure
        self._run_failure = failure
        self._stop_text = stop_text
        self.run_button = QPushButton(run_text)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setVisible(stop_text is not None)
        self.stop_button.clicked.connect(self.stop)
        row = QHBoxLayout()
        for button in (self.run_button, self.stop_button, *buttons):
            row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        for widget in rows:
            layout.addWidget(widget)
        self.hint = HintLabel()
        layout.addWidget(self.hint)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.step_started.connect(self.show_busy)
        self._busy_timer = QTimer(self)
        self._busy_timer.setSingleShot(True)
        self._busy_timer.setInterval(busy_delay_ms)
        self._busy_timer.timeout.connect(lambda: self.progress.setRange(0, 0))
        # Closing the widget mid-run ends the run (after its current step).
        self.destroyed.connect(lambda *_: self.stop_event.set())

    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self.worker is not None

    def show_hint(self, hint: str | None) -> None:
        """Show why a run cannot start (None: it can) and enable Run and Stop to match."""
        self.hint.show_hint(hint)
        self.run_button.setEnabled(hint is None and not self.running)
        self.stop_button.setEnabled(self.running and not self.stop_event.is_set())

    def say(self, text: str, error: bool = False, warning: bool = False) -> None:
        """Show ``text`` in the status line, red for an ``error``, amber for a ``warning``."""
        colour = "#e05050" if error else HintLabel.COLOUR if warning else None
        self.status.setStyleSheet(f"color: {colour};" if colour else "")
        self.status.setText(text)

    @property
    def stopping(self) -> bool:
        """Whether Stop was pressed and the run has not ended yet."""
        return self.running and self.stop_event.is_set()

    def show_progress(self, done: int, total: int, message: str | None = None) -> None:
        """Show ``done`` of ``total`` (busy for a ``total`` of 0), and ``message``.

        While a Stop is pending the status line keeps saying so.
        """
        # A new value repaints the window at once (tens of ms under software GL); with
        # updates off, Qt paints it with this event's other changes instead.
        self.progress.setUpdatesEnabled(False)
        now = total > 0 or self.progress.maximum() == 0 or not self._busy_timer.interval()
        if now:  # a count, busy already, or no delay
            self._busy_timer.stop()
            self.progress.setRange(0, max(0, total))
            self.progress.setValue(done)
        elif not self._busy_timer.isActive():  # busy once the wait lasts busy_delay_ms
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self._busy_timer.start()
        self.progress.setUpdatesEnabled(True)
        if message is not None and not self.stopping:
            self.say(message)

    def show_busy(self, message: str) -> None:
        """Show a busy bar and ``message``: a step whose length is unknown has begun."""
        self.show_progress(0, 0, message)

    def phase_reporter(self) -> Callable[[str], None]:
        """A function that any thread may call with a step's name (emits :attr:`step_started`)."""

        def report(message: str) -> None:
            try:
                self.step_started.emit(message)
            except RuntimeError:  # the widget was closed: nobody to tell
                pass

        return report

    def run(
        self,
        work: Callable[..., Generator[Any, None, Any]],
        *args: Any,
        message: str,
        on_yielded: Callable[[Any], None],
        on_returned: Callable[[Any], None],
        failure: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Run ``work(*args, **kwargs)`` in a worker thread.

        Parameters
        ----------
        work : generator function
            The run; given ``stop=`` :attr:`stop_event` too when Stop is shown.
        message : str
            The status line until the first progress, under a busy bar.
        on_yielded, on_returned : callable
            Called in the GUI thread with each yielded value and with the result.
        failure : str, optional
            What the status line says before an error of this run (default: the
            ``failure`` given to the constructor).
        """
        from napari.qt.threading import create_worker

        self.stop_event = threading.Event()
        self._run_failure = failure or self._failure
        if self._stop_text is not None:
            kwargs["stop"] = self.stop_event
        self.worker = create_worker(
            work,
            *args,
            **kwargs,
            _connect={
                "yielded": [on_yielded, self.yielded.emit],
                "returned": on_returned,
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        # Its signals reach the GUI thread after this method, so the bar may follow.
        self.show_busy(message)
        self.running_changed.emit()

    def stop(self) -> None:
        """Ask the run to end after its current step."""
        self.stop_event.set()
        self.stop_button.setEnabled(False)
        self.say(self._stop_text or "")

    def _on_error(self, error: Exception) -> None:
        # napari shows the error as a notification; the status line says it too.
        self.say(f"{self._run_failure}: {error}", error=True)

    def _on_finished(self) -> None:
        self.worker = None
        self.show_progress(1, 1)
        self.running_changed.emit()


class PairRow(QWidget):
    """One (Image layer, Labels layer) training pair with a remove button."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        from napari.layers import Image, Labels

        super().__init__(parent)
        self.image = LayerCombo(viewer, Image)
        self.labels = LayerCombo(viewer, Labels)
        self.remove = QToolButton()
        self.remove.setText("✕")
        self.remove.setToolTip("Remove this pair")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.image, 1)
        layout.addWidget(QLabel("↔"))
        layout.addWidget(self.labels, 1)
        layout.addWidget(self.remove)
        self.image.layer_changed.connect(self.match_labels)
        self.match_labels()

    def match_labels(self) -> None:
        """Pick the Labels layer that fits the image (same shape, then matching name)."""
        image, current = self.image.layer(), self.labels.layer()
        if image is None:
            return
        shape = spatial_shape(layer_data(image).shape, image.rgb)
        if current is not None and tuple(layer_data(current).shape) == shape:
            if current.name.lower().startswith(image.name.lower()):
                return
        candidates = self.labels.layers()
        pairs = match_pairs(
            [(image.name, shape)], [(lab.name, tuple(layer_data(lab).shape)) for lab in candidates]
        )
        if pairs:
            self.labels.set_layer(candidates[pairs[0][1]])

    def pair(self) -> tuple[Image | None, Labels | None]:
        """The selected (image, labels) layers; either may be None."""
        return self.image.layer(), self.labels.layer()
