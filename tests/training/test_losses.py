"""Tests for lungtumor.losses on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lungtumor.errors import ConfigError
from lungtumor.training.losses import DICE_SMOOTH, LOSS_NAMES, bce_dice_loss, bce_loss, make_loss, soft_dice_loss

BIG = 30.0  # logit whose sigmoid is 1 - 1e-13


def _target() -> torch.Tensor:
    y = torch.zeros(2, 1, 8, 8)
    y[0, 0, 2:6, 2:6] = 1.0  # sample 0: a 4x4 square; sample 1: empty
    return y


def test_bce_known_values() -> None:
    y = _target()
    assert bce_loss(torch.zeros_like(y), y).item() == pytest.approx(math.log(2.0), rel=1e-6)
    perfect = (2 * y - 1) * BIG
    assert bce_loss(perfect, y).item() < 1e-10
    # Logit 1 on a positive pixel, logit -2 on a negative one: mean of log(1+e^-1), log(1+e^-2).
    logits = torch.tensor([1.0, -2.0]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-2.0))) / 2
    assert bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_perfect_and_worst() -> None:
    y = _target()
    perfect = (2 * y - 1) * BIG
    assert soft_dice_loss(perfect, y).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(perfect, y, per_sample=False).item() == pytest.approx(0.0, abs=1e-6)
    # Everything wrong: both samples have sum(p) + sum(y) = 64 (s0: 48 + 16, s1: 64 + 0) and
    # no overlap, so dice = smooth / (64 + smooth).
    worst = (1 - 2 * y) * BIG
    expected = 1 - DICE_SMOOTH / (64 + DICE_SMOOTH)
    assert soft_dice_loss(worst, y).item() == pytest.approx(expected, rel=1e-5)


def test_dice_per_sample_vs_batch() -> None:
    y = _target()
    half = torch.zeros_like(y)  # p = 0.5 everywhere
    # per sample: s0: (2*8+1)/(32+16+1); s1: 1/(32+1). batch: (2*8+1)/(64+16+1)
    per_sample = 1 - ((17 / 49) + (1 / 33)) / 2
    pooled = 1 - 17 / 81
    assert soft_dice_loss(half, y).item() == pytest.approx(per_sample, rel=1e-5)
    assert soft_dice_loss(half, y, per_sample=False).item() == pytest.approx(pooled, rel=1e-5)


def test_bce_dice_is_sum_and_factory() -> None:
    torch.manual_seed(0)
    y = _target()
    logits = torch.randn_like(y)
    total = bce_dice_loss(logits, y)
    assert total.item() == pytest.approx((bce_loss(logits, y) + soft_dice_loss(logits, y)).item(), rel=1e-6)
    assert make_loss("bce") is bce_loss
    assert make_loss("dice") is soft_dice_loss
    assert make_loss("bce+dice") is bce_dice_loss
    assert set(LOSS_NAMES) == {"bce", "dice", "bce+dice"}
    with pytest.raises(ConfigError, match=r"unknown loss 'focal'.*bce\+dice"):
        make_loss("focal")


def test_float32_under_bf16_autocast_and_gradients() -> None:
    torch.manual_seed(0)
    y = torch.zeros(4, 1, 64, 64)
    y[:, :, 20:30, 20:30] = 1.0
    logits32 = torch.randn_like(y)
    logits = logits32.to(torch.bfloat16).requires_grad_()
    for name in LOSS_NAMES:
        fn = make_loss(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(logits, y)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        ref = fn(logits.detach().float(), y)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad.float()).all()


def test_shape_mismatch_is_a_programmer_error_not_a_user_config_error() -> None:
    from lungtumor.errors import LungTumorError

    with pytest.raises(ValueError, match="differs from target shape") as info:
        bce_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    assert not isinstance(info.value, LungTumorError)  # the CLI would report it as the user's mistake
