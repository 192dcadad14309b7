"""Masked training losses on logits: binary cross-entropy, Dice, and their sum.

Every loss takes ``logits``, ``targets`` (values in 0..1) and ``weights`` of shape
``(N, C, H, W)``. A pixel with weight 0 (not annotated in sparse mode, or padding
added around a small image) contributes nothing to the loss and gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_unet.config import LOSSES


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy averaged over the pixels (and channels) with non-zero weight."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_pixel * weights).sum() / weights.sum().clamp_min(1.0)


def weighted_dice(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Soft Dice loss ``1 - (2|PT| + s) / (|P| + |T| + s)`` per channel over the batch.

    Channels without any weighted pixel (e.g. the contour channel in sparse mode) are left
    out of the mean; ``smooth`` keeps empty patches from dividing by zero.
    """
    probabilities = torch.sigmoid(logits)
    dims = (0, 2, 3)
    intersection = (weights * probabilities * targets).sum(dims)
    total = (weights * probabilities).sum(dims) + (weights * targets).sum(dims)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    present = weights.sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0  # keeps the graph; nothing to learn from
    return 1.0 - dice[present].mean()


def compute_loss(
    name: str,
    outputs: torch.Tensor | list[torch.Tensor],
    targets: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The named loss; for a list of outputs (U-Net++ deep supervision) their mean.

    Computed in float32 even under mixed precision, where sums of many small terms
    would lose precision.
    """
    if isinstance(outputs, list):
        return torch.stack([compute_loss(name, o, targets, weights) for o in outputs]).mean()
    logits = outputs.float()
    if name == "bce":
        return weighted_bce(logits, targets, weights)
    if name == "dice":
        return weighted_dice(logits, targets, weights)
    if name == "bce+dice":
        return weighted_bce(logits, targets, weights) + weighted_dice(logits, targets, weights)
    raise ValueError(f"loss {name!r} is unknown; use one of {LOSSES}.")
