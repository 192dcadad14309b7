"""The model card of a bioimage.io package: the bundled model's, or one generated.

The bundled model's card ships inside the package (``samples/model_card.md``), so an
installed wheel exports it too; any other model gets a card generated from its config
and training metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_unet import __version__
from napari_unet.bioimageio.weights import OUTPUT_CHANNEL_NAMES, describe_normalization
from napari_unet.checkpoint import TrainedModel, default_model_path

#: Metadata keys (last part) listed under "Validation" in a generated model card.
_METRIC_WORDS = ("dice", "iou", "loss", "score", "f1", "ap50", "ap75", "jaccard", "accuracy", "pq")
#: The bundled model's card, shipped inside the package.
DEFAULT_MODEL_CARD = default_model_path().parent / "model_card.md"


def _flatten(metadata: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(key, value)`` rows of scalar metadata, nested keys joined by dots; long lists skipped."""
    rows: list[tuple[str, str]] = []
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            if len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value):
                rows.append((name, ", ".join(str(v) for v in value)))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        else:
            rows.append((name, str(value)))
    return rows


def model_card(model: TrainedModel, name: str, description: str) -> str:
    """Markdown model card generated from the model's config and training metadata."""
    config = model.config
    rows = _flatten(model.metadata)
    if rows:
        training = "| item | value |\n| --- | --- |\n" + "\n".join(
            f"| {key} | {value} |" for key, value in rows
        )
    else:
        training = "No training metadata was recorded."
    metrics = [
        f"- {key}: {value}"
        for key, value in rows
        if any(word in key.rsplit(".", 1)[-1].lower() for word in _METRIC_WORDS)
    ]
    validation = "\n".join(metrics) or "No validation metrics were recorded with this model."
    outputs = ", ".join(
        f"channel {i}: {channel}" for i, channel in enumerate(OUTPUT_CHANNEL_NAMES[config.target])
    )
    return f"""# {name}

{description}

## Model

- Architecture: {config.architecture} (base filters {config.base_filters}, depth {config.depth})
- Input: {config.in_channels} channel(s), height and width at least {config.size_multiple} pixels
- Pre-processing: {describe_normalization(config)}
- Output: {outputs}; the network returns logits, the package applies a sigmoid
- Target: {config.target}
- Made with napari-unet {__version__}

## Training

{training}

## Validation

{validation}

Validate the model on a few of your own annotated images before relying on it:
`napari-unet evaluate` reports pixel and instance metrics (Dice, IoU, DSB score).

## Limitations

The model has only seen images like its training data; expect failures on other
modalities, magnifications or stains. Check its output visually.
"""


def default_card(model: TrainedModel) -> Path | None:
    """The bundled model's card (shipped inside the package), for the bundled model only."""
    source = Path(model.source) if model.source not in ("memory", "default") else None
    bundled = model.source == "default" or (
        source is not None and source.resolve() == default_model_path().resolve()
    )
    return DEFAULT_MODEL_CARD if bundled and DEFAULT_MODEL_CARD.is_file() else None
