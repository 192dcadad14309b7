"""Models of this napari session, shared between the widgets.

The Train widget adds every model it finishes (or stops) here; the Segment,
Train (fine-tune) and Evaluate widgets list them next to the bundled default
and model files, so a model is usable the moment training ends, saved or not.
Model files are read once per file version and device (:data:`MODEL_CACHE`), not
on every click.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from napari_unet.checkpoint import DEFAULT_MODEL_NAME, TrainedModel, default_model_path, load_model

#: Validation Dice under which a trained model is flagged as poor: it is listed, but no
#: widget selects it by itself (a model that finds nothing must not replace a good one).
POOR_DICE = 0.5


@dataclass(frozen=True)
class SessionModel:
    """A model trained in this session.

    Attributes
    ----------
    name : str
        Unique display name, e.g. ``"tiny #1 (Dice 0.84)"``.
    model : TrainedModel
        The trained network with its config and metadata.
    path : Path or None
        Where it was saved, if it was.
    poor : bool
        Its validation score is poor (or unknown): only a user picks it.
    """

    name: str
    model: TrainedModel
    path: Path | None = None
    poor: bool = False


class ModelRegistry:
    """An ordered, name-keyed list of :class:`SessionModel`; emits ``changed`` on edits."""

    #: Emitted with the added model (or None when the registry was cleared).
    changed = Signal(object)

    def __init__(self) -> None:
        self._models: dict[str, SessionModel] = {}

    def add(
        self, model: TrainedModel, label: str, path: Path | None = None, poor: bool = False
    ) -> SessionModel:
        """Register ``model`` as ``"<label> #<n>"`` (``poor``: see SessionModel) and return it."""
        name = f"{label} #{len(self._models) + 1}"
        entry = SessionModel(name, model, path, poor)
        self._models[name] = entry
        self.changed.emit(entry)
        return entry

    def get(self, name: str) -> SessionModel | None:
        """The entry called ``name``, or None."""
        return self._models.get(name)

    def entries(self) -> list[SessionModel]:
        """All entries, oldest first."""
        return list(self._models.values())

    def clear(self) -> None:
        """Forget every model (tests, or a user closing the session)."""
        self._models.clear()
        self.changed.emit(None)


#: The registry of this Python process (one napari session).
REGISTRY = ModelRegistry()


class ModelCache:
    """Loaded model files, keyed by file (path, modification time, size) and device.

    A widget asks for ``"default"`` or a path on every run; the file is read the
    first time only, and again when it changes on disk. The least recently used
    models beyond ``capacity`` are dropped (each may hold GPU memory). Safe to call
    from worker threads.

    Parameters
    ----------
    capacity : int
        How many loaded models to keep.
    """

    def __init__(self, capacity: int = 4) -> None:
        self._capacity = capacity
        self._models: OrderedDict[tuple[str, int, int, str], TrainedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: str | os.PathLike[str] | TrainedModel, device: str) -> TrainedModel:
        """The model ``model`` names, loaded on ``device`` (a loaded model as it is).

        Raises
        ------
        ModelFileError
            If the file is missing, hostile, corrupt or of another format.
        """
        if isinstance(model, TrainedModel):
            return model
        key = self._key(model, device)
        if key is None:  # load_model's own message says what is wrong
            return load_model(self._path(model), device=device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loaded = load_model(self._path(model), device=device)
            self._models[key] = loaded
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
            return loaded

    @staticmethod
    def _path(model: str | os.PathLike[str]) -> Path:
        return default_model_path() if str(model) == DEFAULT_MODEL_NAME else Path(model)

    def _key(self, model: str | os.PathLike[str], device: str) -> tuple[str, int, int, str] | None:
        """The file's identity (path, modification time, size) and device; None if unreadable."""
        path = self._path(model)
        try:
            stat = path.stat()
        except OSError:
            return None
        return (str(path.resolve()), stat.st_mtime_ns, stat.st_size, device)

    def holds(self, model: str | os.PathLike[str] | TrainedModel, device: str) -> bool:
        """Whether :meth:`get` returns ``model`` without reading a file."""
        if isinstance(model, TrainedModel):
            return True
        key = self._key(model, device)
        with self._lock:
            return key is not None and key in self._models

    def clear(self) -> None:
        """Forget every loaded model."""
        with self._lock:
            self._models.clear()


#: The loaded model files of this Python process.
MODEL_CACHE = ModelCache()
