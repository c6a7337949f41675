"""Tests for lungtumor.augment: same transform for CT channels and mask, binary masks,
reproducibility, padding with air, and the scipy (seed-style) per-sample variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.seed_augment import augment_sample_numpy  # benchmarks/: the seed's scipy way
from lungtumor.config import HU_AIR, HU_SCALE
from lungtumor.errors import ConfigError, InputError
from lungtumor.training.augment import (
    CT_FILL_AIR,
    AugmentConfig,
    augment_batch,
    elastic_displacement,
)

SIZE = 64
DISK_VALUE = 1.0


def _disk(size: int = SIZE, centre: tuple[float, float] = (27.0, 37.0), radius: float = 11.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).float()


def _pair(n: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """CT = air + (c + 1) * DISK_VALUE inside an off-centre disk, mask = the disk."""
    disk = _disk()
    scale = torch.arange(1, channels + 1, dtype=torch.float32).view(1, channels, 1, 1)
    ct = CT_FILL_AIR + DISK_VALUE * scale * disk.expand(n, channels, SIZE, SIZE)
    mask = disk.expand(n, 1, SIZE, SIZE).clone()
    return ct.contiguous(), mask


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_air_fill_constant() -> None:
    assert CT_FILL_AIR == HU_AIR / HU_SCALE
    assert AugmentConfig().ct_fill == pytest.approx(-1000 / 3071)


@pytest.mark.parametrize("channels", [1, 3])
def test_mask_follows_every_ct_channel(channels: int) -> None:
    ct, mask = _pair(8, channels)
    ct_aug, mask_aug = augment_batch(ct, mask, AugmentConfig(), _gen(0))
    assert ct_aug.shape == ct.shape and mask_aug.shape == mask.shape
    assert set(mask_aug.unique().tolist()) <= {0.0, 1.0}
    for i in range(ct.shape[0]):
        assert mask_aug[i].sum() > 50  # the disk is still (mostly) in view
        for c in range(channels):
            # Bilinear CT thresholded half-way equals the nearest-sampled mask except at
            # pixel-boundary corners; a different transform would give a far lower IoU.
            level = CT_FILL_AIR + DISK_VALUE * (c + 1) / 2
            assert _iou(ct_aug[i, c] > level, mask_aug[i, 0]) > 0.97
        # All channels are moved identically: the normalised channels agree to float precision.
        norm = (ct_aug[i] - CT_FILL_AIR) / torch.arange(1, channels + 1).view(channels, 1, 1)
        assert torch.allclose(norm, norm[:1].expand_as(norm), atol=1e-5)


def test_different_samples_get_different_transforms() -> None:
    ct, mask = _pair(6)
    _, mask_aug = augment_batch(ct, mask, AugmentConfig(), _gen(1))
    for i in range(6):
        for j in range(i + 1, 6):
            assert _iou(mask_aug[i], mask_aug[j]) < 0.95


def test_reproducible_with_seeded_generator() -> None:
    ct, mask = _pair(4)
    a = augment_batch(ct, mask, AugmentConfig(), _gen(7))
    b = augment_batch(ct, mask, AugmentConfig(), _gen(7))
    c = augment_batch(ct, mask, AugmentConfig(), _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Inputs are not modified.
    ref_ct, ref_mask = _pair(4)
    assert torch.equal(ct, ref_ct) and torch.equal(mask, ref_mask)


def test_fixed_shift_pads_ct_with_air_and_mask_with_zero() -> None:
    shift_px = 16
    cfg = AugmentConfig(translate=shift_px / SIZE, translate_fixed=True, scale=(1.0, 1.0), rotate_deg=0.0, elastic_p=0.0)
    torch.manual_seed(0)
    ct = torch.rand(2, 2, SIZE, SIZE)  # HU 0..3071 range, never air
    mask = torch.ones(2, 1, SIZE, SIZE, dtype=torch.uint8)
    ct_aug, mask_aug = augment_batch(ct, mask, cfg, _gen(0))
    assert mask_aug.dtype == torch.uint8
    # Content moves +x (right) and +y (down), as imgaug's positive translate_percent.
    assert torch.allclose(ct_aug[..., shift_px:, shift_px:], ct[..., :-shift_px, :-shift_px], atol=1e-5)
    assert torch.allclose(ct_aug[..., :shift_px, :], torch.full_like(ct_aug[..., :shift_px, :], CT_FILL_AIR))
    assert torch.allclose(ct_aug[..., :, :shift_px], torch.full_like(ct_aug[..., :, :shift_px], CT_FILL_AIR))
    assert mask_aug[..., :shift_px, :].sum() == 0 and mask_aug[..., :, :shift_px].sum() == 0
    assert mask_aug[..., shift_px:, shift_px:].all()


def test_disabled_and_probability() -> None:
    ct, mask = _pair(16)
    out = augment_batch(ct, mask, AugmentConfig(enabled=False), _gen(0))
    assert out[0] is ct and out[1] is mask
    out = augment_batch(ct, mask, AugmentConfig(p=0.0), _gen(0))
    assert torch.equal(out[0], ct) and torch.equal(out[1], mask)
    ct_aug, mask_aug = augment_batch(ct, mask, AugmentConfig(p=0.5), _gen(3))
    unchanged = [torch.equal(ct_aug[i], ct[i]) for i in range(16)]
    assert 0 < sum(unchanged) < 16
    for i in range(16):
        assert unchanged[i] == torch.equal(mask_aug[i], mask[i])


def test_elastic_field_statistics() -> None:
    """Displacement std of a Gaussian-smoothed uniform(-1, 1) field: alpha / (sqrt(12 pi) sigma)."""
    n, size = 8, 128
    for sigma in (4.0, 8.0):
        alpha = torch.full((n,), 40.0)
        field = elastic_displacement(n, size, size, alpha, torch.full((n,), sigma), _gen(0))
        expected = 40.0 / (np.sqrt(12 * np.pi) * sigma)
        assert field.shape == (n, 2, size, size)
        assert field.std().item() == pytest.approx(expected, rel=0.1)
    zero = elastic_displacement(2, size, size, torch.zeros(2), torch.full((2,), 4.0), _gen(0))
    assert torch.count_nonzero(zero) == 0


def test_input_checks() -> None:
    ct, mask = _pair(2)
    with pytest.raises(InputError, match=r"\(N, 1, H, W\)"):
        augment_batch(ct, mask[:, 0])
    with pytest.raises(InputError, match="differ in batch size"):
        augment_batch(ct, mask[:1])


def test_config_round_trip_and_validation() -> None:
    cfg = AugmentConfig(translate=0.1, scale=(0.9, 1.1), elastic_alpha=(0.0, 20.0), p=0.5)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()
    with pytest.raises(ConfigError, match="unknown augmentation keys"):
        AugmentConfig.from_dict({"flip": True})
    with pytest.raises(ConfigError, match="low <= high"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ConfigError, match="low <= high"):
        AugmentConfig(scale=1.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="probability"):
        AugmentConfig(p=1.5)
    with pytest.raises(ConfigError, match="elastic_sigma"):
        AugmentConfig(elastic_sigma=(0.0, 1.0))


def test_numpy_variant_same_transform_and_reproducible() -> None:
    ct, mask = _pair(1, channels=2)
    ct_np, mask_np = ct[0].numpy(), mask[0].numpy().astype(np.uint8)
    a_ct, a_mask = augment_sample_numpy(ct_np, mask_np, AugmentConfig(), np.random.default_rng(0))
    b_ct, b_mask = augment_sample_numpy(ct_np, mask_np, AugmentConfig(), np.random.default_rng(0))
    c_ct, _ = augment_sample_numpy(ct_np, mask_np, AugmentConfig(), np.random.default_rng(1))
    assert a_ct.shape == ct_np.shape and a_mask.shape == mask_np.shape and a_mask.dtype == np.uint8
    assert np.array_equal(a_ct, b_ct) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_ct, c_ct)
    assert set(np.unique(a_mask).tolist()) <= {0, 1}
    for c in range(2):
        level = CT_FILL_AIR + DISK_VALUE * (c + 1) / 2
        assert _iou(torch.from_numpy(a_ct[c] > level), torch.from_numpy(a_mask[0])) > 0.9
    with pytest.raises(InputError):
        augment_sample_numpy(ct_np[0], mask_np, AugmentConfig(), np.random.default_rng(0))


def test_numpy_and_torch_use_the_same_geometry() -> None:
    """With every random range collapsed, both ways compute the same affine image."""
    cfg = AugmentConfig(translate=0.1, translate_fixed=True, scale=(1.1, 1.1), rotate_deg=0.0, elastic_p=0.0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    smooth = torch.cos(2 * yy) * torch.sin(3 * xx + 0.5)  # smooth, so interpolation errors are small
    ct = smooth.view(1, 1, SIZE, SIZE)
    mask = (smooth > 0).float().view(1, 1, SIZE, SIZE)
    t_ct, t_mask = augment_batch(ct, mask, cfg, _gen(0))
    n_ct, n_mask = augment_sample_numpy(ct[0].numpy(), mask[0].numpy(), cfg, np.random.default_rng(0))
    assert np.allclose(t_ct[0].numpy(), n_ct, atol=1e-4)
    assert (t_mask[0].numpy() != n_mask).mean() < 0.01


# ------------------------------------------------------------------------------------------------
# Intensity and acquisition augmentation

from scipy import ndimage  # noqa: E402

from lungtumor.training.augment import apply_window, combined_clip, intensity_batch  # noqa: E402

INTENSITY_ON = {"noise_p": 1.0, "blur_p": 1.0, "thick_slice_p": 1.0, "contrast_p": 1.0, "gamma_p": 1.0}


def _noise_ct(n: int = 4, channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (-500.0 + 100.0 * torch.randn(n, channels, SIZE, SIZE, generator=g)) / HU_SCALE


def test_intensity_is_off_by_default_and_leaves_the_spatial_stream_alone() -> None:
    cfg = AugmentConfig()
    assert not cfg.uses_intensity and cfg.clip_hu is None
    ct, mask = _pair(6)
    base_ct, base_mask = augment_batch(ct, mask, cfg, _gen(4))
    # Changing the ranges of transforms whose probability is 0 changes nothing.
    same = augment_batch(ct, mask, AugmentConfig(noise_std_hu=(5.0, 50.0), gamma_range=(0.5, 2.0)), _gen(4))
    assert torch.equal(same[0], base_ct) and torch.equal(same[1], base_mask)
    # Intensity on: the spatial transform (seen in the mask) is the same draw, the CT differs.
    on_ct, on_mask = augment_batch(ct, mask, AugmentConfig(**INTENSITY_ON), _gen(4))
    assert torch.equal(on_mask, base_mask) and not torch.equal(on_ct, base_ct)
    assert apply_window(ct, cfg) is ct
    for name in INTENSITY_ON:
        x = _noise_ct()
        assert intensity_batch(x, AugmentConfig(**{name: 0.0}), _gen(0)) is x


def test_noise_adds_the_stated_standard_deviation() -> None:
    ct = torch.full((4, 1, SIZE, SIZE), -500.0 / HU_SCALE)
    out = intensity_batch(ct, AugmentConfig(noise_p=1.0, noise_std_hu=(20.0, 20.0)), _gen(0))
    diff_hu = (out - ct) * HU_SCALE
    assert diff_hu.std().item() == pytest.approx(20.0, rel=0.03)
    assert abs(diff_hu.mean().item()) < 0.5


def test_blur_matches_scipy_and_lowers_the_noise() -> None:
    ct = _noise_ct(2, channels=2)
    sigma = 1.2
    out = intensity_batch(ct, AugmentConfig(blur_p=1.0, blur_sigma_px=(sigma, sigma)), _gen(0))
    # torch's "reflect" padding is scipy's "mirror"; truncate as in the module (3 sigma).
    ref = ndimage.gaussian_filter(ct.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    assert np.allclose(out.numpy(), ref, atol=1e-6)
    assert out.std().item() < 0.4 * ct.std().item()  # white noise: std x 1 / (2 sqrt(pi) sigma) = 0.24
    assert out.mean().item() == pytest.approx(ct.mean().item(), abs=1e-4)


def test_thick_slice_blends_neighbouring_channels() -> None:
    levels = torch.tensor([0.0, 3.0, 6.0]).view(1, 3, 1, 1) / HU_SCALE
    ct = levels.expand(2, 3, 8, 8).contiguous()
    out = intensity_batch(ct, AugmentConfig(thick_slice_p=1.0, thick_slice_weight=(0.2, 0.2)), _gen(0)) * HU_SCALE
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 0.6), atol=1e-4)  # 0.6 * 0 + 0.2 * (0 + 3)
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 3.0), atol=1e-4)  # linear profile: centre stays
    assert torch.allclose(out[:, 2], torch.full_like(out[:, 2], 5.4), atol=1e-4)
    one = _noise_ct()
    assert torch.equal(intensity_batch(one, AugmentConfig(thick_slice_p=1.0), _gen(0)), one)  # one channel: identity


def test_contrast_scales_the_spread_about_the_mean() -> None:
    ct = _noise_ct()
    out = intensity_batch(ct, AugmentConfig(contrast_p=1.0, contrast_range=(0.5, 0.5)), _gen(0))
    for i in range(ct.shape[0]):
        assert out[i].std().item() == pytest.approx(0.5 * ct[i].std().item(), rel=1e-4)
        assert out[i].mean().item() == pytest.approx(ct[i].mean().item(), abs=1e-6)
    up = intensity_batch(ct, AugmentConfig(contrast_p=1.0, contrast_range=(1.5, 1.5)), _gen(0))
    assert up.std().item() > 1.2 * ct.std().item()
    assert up.min() >= ct.min() - 1e-7 and up.max() <= ct.max() + 1e-7  # clipped to each sample's own range


def test_gamma_keeps_the_range_and_follows_the_formula() -> None:
    ct = _noise_ct()
    out = intensity_batch(ct, AugmentConfig(gamma_p=1.0, gamma_range=(2.0, 2.0)), _gen(0))
    x = ct.numpy().astype(np.float64)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    ref = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** 2
    assert np.allclose(out.numpy(), ref, atol=1e-6)
    assert torch.allclose(out.amin((1, 2, 3)), ct.amin((1, 2, 3))) and torch.allclose(out.amax((1, 2, 3)), ct.amax((1, 2, 3)))
    assert out.mean().item() < ct.mean().item()  # gamma > 1 darkens the middle of the range


def test_intensity_probability_and_reproducibility() -> None:
    ct = _noise_ct(16)
    cfg = AugmentConfig(noise_p=0.5, noise_std_hu=(10.0, 20.0))
    a = intensity_batch(ct, cfg, _gen(1))
    assert torch.equal(a, intensity_batch(ct, cfg, _gen(1)))
    assert not torch.equal(a, intensity_batch(ct, cfg, _gen(2)))
    unchanged = sum(torch.equal(a[i], ct[i]) for i in range(16))
    assert 0 < unchanged < 16


def test_window_clips_and_combines_with_the_store_clip() -> None:
    ct = _noise_ct()
    cfg = AugmentConfig(clip_hu=(-600.0, -400.0))
    out = apply_window(ct, cfg) * HU_SCALE
    assert out.min().item() >= -600.0 - 1e-3 and out.max().item() <= -400.0 + 1e-3
    inside = ((ct * HU_SCALE) > -600) & ((ct * HU_SCALE) < -400)
    assert torch.equal(out[inside], (ct * HU_SCALE)[inside])
    assert combined_clip(None, None) is None
    assert combined_clip((-1024.0, 3071.0), None) == (-1024.0, 3071.0)
    assert combined_clip(None, (-1000.0, 500.0)) == (-1000.0, 500.0)
    assert combined_clip((-1024.0, 3071.0), (-1200.0, 500.0)) == (-1024.0, 500.0)
    with pytest.raises(ConfigError, match="does not overlap"):
        combined_clip((-1024.0, 0.0), (100.0, 500.0))


def test_intensity_config_validation_and_round_trip() -> None:
    cfg = AugmentConfig(clip_hu=(-1000, 600), noise_p=0.3, gamma_range=(0.8, 1.2), thick_slice_p=0.1)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.clip_hu == (-1000.0, 600.0)
    for bad in ({"noise_p": 1.5}, {"clip_hu": (500, -500)}, {"blur_sigma_px": (0.0, 1.0)}, {"gamma_range": (1.5, 0.5)},
                {"thick_slice_weight": (0.1, 0.5)}, {"noise_std_hu": (-1.0, 2.0)}, {"contrast_range": (0.0, 1.0)}):
        with pytest.raises(ConfigError):
            AugmentConfig(**bad)


def test_left_right_flip_mirrors_ct_and_mask_together_along_the_tta_axis() -> None:
    from lungtumor.config import LEFT_RIGHT_AXIS

    assert LEFT_RIGHT_AXIS == -2  # H of (N, C, H, W): test_grid's TTA test checks it is the patient's left-right
    ct = torch.zeros(16, 3, 8, 6)
    mask = torch.zeros(16, 1, 8, 6, dtype=torch.uint8)
    ct[:, :, 1, 4] = 1.0  # towards one side, near the back
    mask[:, :, 1, 4] = 1
    out_ct, out_mask = augment_batch(ct, mask, AugmentConfig(p=0.0, flip_lr_p=1.0, hu_scale=HU_SCALE))
    assert torch.equal(out_ct[:, :, 6, 4], torch.ones(16, 3)) and float(out_ct.sum()) == 16 * 3
    assert torch.equal(out_mask[:, 0, 6, 4], torch.ones(16, dtype=torch.uint8)) and int(out_mask.sum()) == 16
    g = torch.Generator().manual_seed(3)
    half_ct, half_mask = augment_batch(ct, mask, AugmentConfig(p=0.0, flip_lr_p=0.5, hu_scale=HU_SCALE), generator=g)
    flipped = half_ct[:, 0, 6, 4] == 1
    assert 0 < int(flipped.sum()) < 16  # some samples, not all
    assert torch.equal(half_mask[:, 0, 6, 4].bool(), flipped) and torch.equal(half_mask[:, 0, 1, 4].bool(), ~flipped)
    with pytest.raises(ConfigError):
        AugmentConfig(flip_lr_p=1.5)
