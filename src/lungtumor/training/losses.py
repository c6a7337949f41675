"""Segmentation losses computed from logits.

All losses take ``logits`` ``(N, 1, H, W)`` (any float dtype) and ``target`` ``(N, 1, H, W)``
with values in {0, 1}, and return a scalar float32 tensor. They always compute in float32, so
they are numerically stable under bfloat16 autocast (bf16 has an 8-bit mantissa: a pixel sum
over a 256x256 slice, or ``log(1 + exp(x))`` near 0, loses most of its digits in bf16).

The seed trained with ``BCEWithLogitsLoss`` (mean over all pixels) and reported that it worked
better than a Dice loss; ``bce`` is the default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from lungtumor.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Added to numerator and denominator of the soft Dice: an empty prediction on an empty
#: target scores Dice 1 (loss 0) instead of 0/0, and tiny masks get smooth gradients.
DICE_SMOOTH = 1.0
#: Names accepted by :func:`make_loss`.
LOSS_NAMES: tuple[str, ...] = ("bce", "dice", "bce+dice")
DEFAULT_LOSS = "bce"


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape:
        raise ValueError(
            f"loss: logits shape {tuple(logits.shape)} differs from target shape {tuple(target.shape)}; "
            "the model's out_channels and the mask layout (N, 1, H, W) must agree"
        )
    if logits.ndim < 2:
        raise ValueError(f"loss: expected (N, C, H, W) tensors, got shape {tuple(logits.shape)}")


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over every pixel of the batch (the seed's loss).

    Args:
        logits: ``(N, 1, H, W)`` raw model outputs.
        target: ``(N, 1, H, W)`` in {0, 1}.

    Returns:
        Scalar float32 loss.
    """
    _check_pair(logits, target)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH, per_sample: bool = True
) -> torch.Tensor:
    """``1 - soft Dice`` of ``sigmoid(logits)`` against ``target``.

    ``dice = (2 * sum(p * y) + smooth) / (sum(p) + sum(y) + smooth)``.

    Args:
        logits: ``(N, 1, H, W)`` raw model outputs.
        target: ``(N, 1, H, W)`` in {0, 1}.
        smooth: additive smoothing term (:data:`DICE_SMOOTH`).
        per_sample: True (default): Dice per sample (sums over C, H, W), loss = mean over the
            batch of ``1 - dice``; an empty slice predicted empty scores loss 0. False: one Dice
            over the whole batch (sums over N, C, H, W), as the seed's pooled evaluation metric.

    Returns:
        Scalar float32 loss in [0, 1].
    """
    _check_pair(logits, target)
    prob = torch.sigmoid(logits.float())
    tgt = target.float()
    dims = tuple(range(1, prob.ndim)) if per_sample else tuple(range(prob.ndim))
    intersection = (prob * tgt).sum(dim=dims)
    denominator = prob.sum(dim=dims) + tgt.sum(dim=dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return (1.0 - dice).mean()


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH, per_sample: bool = True
) -> torch.Tensor:
    """Sum of :func:`bce_loss` and :func:`soft_dice_loss` (unweighted)."""
    return bce_loss(logits, target) + soft_dice_loss(logits, target, smooth=smooth, per_sample=per_sample)


_LOSSES: dict[str, LossFn] = {"bce": bce_loss, "dice": soft_dice_loss, "bce+dice": bce_dice_loss}


def make_loss(name: str = DEFAULT_LOSS) -> LossFn:
    """The loss function called ``name`` (one of :data:`LOSS_NAMES`).

    Raises:
        ConfigError: for an unknown name.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {list(LOSS_NAMES)}")
    return _LOSSES[key]
