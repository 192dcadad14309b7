"""Models trained in this napari session, shared between the widgets.

The Train widget adds every model it finishes (or stops) here; the Segment,
Train (fine-tune) and Evaluate widgets list them next to the bundled default
and model files, so a model is usable the moment training ends, saved or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from napari_unet.checkpoint import TrainedModel


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
    """

    name: str
    model: TrainedModel
    path: Path | None = None


class ModelRegistry:
    """An ordered, name-keyed list of :class:`SessionModel`; emits ``changed`` on edits."""

    #: Emitted with the added model (or None when the registry was cleared).
    changed = Signal(object)

    def __init__(self) -> None:
        self._models: dict[str, SessionModel] = {}

    def add(self, model: TrainedModel, label: str, path: Path | None = None) -> SessionModel:
        """Register ``model`` as ``"<label> #<n>"`` and return the entry."""
        name = f"{label} #{len(self._models) + 1}"
        entry = SessionModel(name, model, path)
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
