"""The layers the widgets add as results: marked as predictions, replaced while unedited.

A Labels layer this plugin predicts carries :func:`prediction_metadata` (the Evaluate
widget tells predictions from ground truth by it, :func:`is_prediction`).

:class:`ResultLayers` shows a widget's results. Like napari's own rule for a function's
result (a layer of the same name is updated), a new result goes into the layer of the
widget's latest result of that name instead of a new layer, which also costs far less
than building a layer (its visuals and controls). Unlike that rule, only a layer nobody
touched is reused: the widget's own result, still in the viewer, under the name and with
the shape it was shown with, from the same model, never painted, filled, erased or
given new data (napari's ``paint`` and ``data`` events). A corrected result, one renamed
to keep it for comparison, another model's result, and every other layer stay as they
are; the run adds a new layer instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: Key in a Labels layer's metadata that marks a segmentation this plugin produced.
PREDICTION_KEY = "napari_unet_prediction"


def prediction_metadata(model: str) -> dict[str, Any]:
    """Metadata for a layer this plugin predicts (read by :func:`is_prediction`).

    Parameters
    ----------
    model : str
        The model's name as the widget shows it.
    """
    return {PREDICTION_KEY: {"model": model}}


def is_prediction(layer: Layer) -> bool:
    """Whether ``layer`` is a segmentation this plugin produced (not loaded or painted)."""
    return PREDICTION_KEY in (getattr(layer, "metadata", None) or {})


@dataclass
class _Shown:
    """A result layer, the name napari gave it, and whether it was edited since."""

    layer: Layer
    name: str
    edited: bool = False

    def mark_edited(self, event: Any = None) -> None:
        self.edited = True


class ResultLayers:
    """A widget's result layers: a new result takes the place of an unedited earlier one.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the layers are added to.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer = viewer
        # The latest layer shown under each name asked for (napari appends " [1]" to a
        # name already taken). napari holds the edit callbacks weakly: they go with these.
        self._shown: dict[str, _Shown] = {}

    def show(self, kind: str, data: Any, name: str, **properties: Any) -> tuple[Layer, bool]:
        """Show ``data`` as a ``kind`` (``"labels"`` or ``"image"``) layer called ``name``.

        ``properties`` are napari's ``add_<kind>`` keyword arguments; a reused layer gets
        its data, ``scale``, ``translate`` and ``metadata`` from them, and keeps the rest
        (colours, opacity, visibility a user may have changed).

        Returns
        -------
        layer, replaced
            The layer, and whether it is an earlier result given the new data.
        """
        # Layers removed from the viewer are forgotten (their data freed).
        self._shown = {
            key: shown for key, shown in self._shown.items() if shown.layer in self._viewer.layers
        }
        shown = self._shown.get(name)
        replaced = shown is not None and self.reusable(shown, data, properties.get("metadata"))
        if replaced:
            layer = shown.layer
            with layer.events.data.blocker(shown.mark_edited):
                layer.data = data
            for key in ("scale", "translate", "metadata"):
                # Each set redraws the layer (tens of ms), even with the same value.
                if key in properties and not _same(getattr(layer, key), properties[key]):
                    setattr(layer, key, properties[key])
        else:
            layer = getattr(self._viewer, f"add_{kind}")(data, name=name, **properties)
            shown = self._shown[name] = _Shown(layer, layer.name)
            layer.events.data.connect(shown.mark_edited)
            if hasattr(layer.events, "paint"):  # Labels: paint, fill, erase, polygon
                layer.events.paint.connect(shown.mark_edited)
        return layer, replaced

    def reusable(self, shown: _Shown, data: Any, metadata: dict[str, Any] | None = None) -> bool:
        """Whether a result layer may take ``data``: still in the viewer, under the name
        it was shown with, of the same shape, not edited, and (``metadata`` given) from
        the same source: another model's result is kept for comparison."""
        layer = shown.layer
        return (
            not shown.edited
            and layer in self._viewer.layers
            and layer.name == shown.name
            and tuple(layer.data.shape) == tuple(data.shape)
            and (metadata is None or _same(layer.metadata, metadata))
        )


def _same(current: Any, new: Any) -> bool:
    """Whether a layer's property ``current`` already equals ``new`` (arrays or dicts)."""
    if isinstance(current, dict):
        return current == new
    return bool(np.array_equal(np.asarray(current), np.asarray(new)))
