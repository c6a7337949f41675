"""Spatial augmentation: one random affine + elastic transform per sample, same for CT and mask.

The seed notebook augmented each slice on the CPU with imgaug::

    iaa.Sequential([iaa.Affine(translate_percent=(0.15), scale=(0.85, 1.15), rotate=(-45, 45)),
                    iaa.ElasticTransformation()])

i.e. affine (bilinear image / nearest mask, constant padding) followed by an elastic
deformation with imgaug's defaults ``alpha=(0, 40)`` px and ``sigma=(4, 8)`` px: a displacement
field of uniform(-1, 1) noise, Gaussian-smoothed with ``sigma`` and scaled by ``alpha``.
Note: in imgaug a single number ``translate_percent=0.15`` is a *fixed* shift of +15 % on both
axes, not a random one; the default here is the evident intent, a uniform shift in
[-15 %, +15 %] per axis. ``translate_fixed=True`` reproduces imgaug's literal behaviour.

:func:`augment_batch` implements this directly in torch rather than with Kornia, because it is
much faster and fully controllable (measured on this 2-core CPU under the same load, batch 8
at 256x256: Kornia ``AugmentationSequential(RandomAffine, RandomElasticTransform)`` 10-33
slices/s, this module 280-960 slices/s; see the report / BENCHMARKS.md). It composes the affine
and the elastic field into **one** sampling grid per sample (one interpolation instead of
imgaug's two, so less blur); synthesises the smooth displacement noise with an FFT Gaussian on
a coarser grid (cost independent of sigma, where Kornia runs a large spatial Gaussian kernel
and takes alpha/sigma in normalised units, not imgaug's pixels); samples the CT bilinearly and
the mask with nearest neighbour (the mask stays exactly binary); and runs on whatever device
the batch is on. The field is smoothed with periodic (FFT) boundaries instead of imgaug's
reflecting ones: it is stationary random noise, so its local statistics are the same.
The seed's imgaug padded the CT with 0 (water after HU / 3071); here the CT is padded with air
(``ct_fill``), which is what lies outside a patient.

The seed's per-sample CPU way (scipy.ndimage, two interpolations) lives in the repository's
``benchmarks/seed_augment.py``, for benchmarks and as an independent cross-check in the tests.

Layouts: CT ``(N, C, H, W)`` float, normalised as HU / 3071; mask ``(N, 1, H, W)`` in {0, 1}.
Elastic ``alpha``/``sigma`` are in pixels, as in imgaug, calibrated for 256x256 slices.

**Intensity and acquisition** (:func:`intensity_batch`, run by :func:`augment_batch` after the
spatial part; every one OFF by default, so the seed recipe and its random stream are unchanged):
Gaussian noise of a per-sample standard deviation in HU (dose and reconstruction kernel), an
in-plane Gaussian blur (soft kernels, lower resolution), thick-slice simulation (each 2.5D context
channel blended with its neighbours: partial volume along z; identity for one channel), contrast
about the slice's mean and gamma on the slice's min-max range (the definitions of nnU-Net's
``ContrastAugmentationTransform`` and ``GammaTransform``, batchgenerators), each applied to a sample
with its own probability. They act on the CT only; the mask is unchanged. The HU window
``clip_hu`` is no augmentation: :func:`apply_window` clips every batch, training and validation,
and the trainer records it as the checkpoint's preprocessing clip, so inference clips the same way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from lungtumor.config import HU_AIR, HU_SCALE, LEFT_RIGHT_AXIS, check_known_keys
from lungtumor.errors import ConfigError, InputError

#: Padding value of the CT outside the image: air, in the seed's normalisation (HU / 3071).
CT_FILL_AIR = HU_AIR / HU_SCALE
#: Padding value of the mask outside the image (background).
MASK_FILL = 0.0
#: imgaug ``ElasticTransformation()`` defaults (the seed), in pixels.
IMGAUG_ELASTIC_ALPHA = (0.0, 40.0)
IMGAUG_ELASTIC_SIGMA = (4.0, 8.0)
#: ``scipy.ndimage.gaussian_filter`` default truncation (kernel radius in sigmas).
_GAUSS_TRUNCATE = 4.0
#: Smallest smoothing, in coarse pixels, at which the elastic field is synthesised on a coarser
#: grid and upsampled bilinearly (see :func:`elastic_displacement`).
_MIN_COARSE_SIGMA = 2.0
#: Bound of the seeds drawn from a CPU generator to seed a generator on another device.
_SEED_BOUND = 2**62
#: ``(low, high)`` fields of :class:`AugmentConfig`.
_RANGE_FIELDS = (
    "scale", "elastic_alpha", "elastic_sigma", "noise_std_hu", "blur_sigma_px", "thick_slice_weight", "contrast_range", "gamma_range",
)
#: Probability fields of :class:`AugmentConfig`.
_PROBABILITY_FIELDS = ("p", "elastic_p", "flip_lr_p", "noise_p", "blur_p", "thick_slice_p", "contrast_p", "gamma_p")
#: Gaussian blur kernel radius in sigmas.
_BLUR_TRUNCATE = 3.0
#: Guards the division by a slice's intensity range in the gamma transform.
_GAMMA_EPS = 1e-7


@dataclass(frozen=True)
class AugmentConfig:
    """Random spatial augmentation. Defaults follow the seed's imgaug pipeline.

    Attributes:
        enabled: False = identity (validation / inference).
        p: probability that a sample gets the spatial transform (the intensity transforms have their own).
        translate: maximum shift as a fraction of the size, drawn uniformly in
            ``[-translate, translate]`` independently per axis.
        translate_fixed: True = always shift by ``+translate`` on both axes (imgaug's literal
            meaning of the seed's ``translate_percent=(0.15)``).
        scale: ``(low, high)`` isotropic zoom factor, uniform.
        rotate_deg: maximum rotation in degrees, uniform in ``[-rotate_deg, rotate_deg]``.
        elastic_alpha: ``(low, high)`` displacement scale in pixels, uniform per sample.
        elastic_sigma: ``(low, high)`` Gaussian smoothing of the displacement noise in pixels.
        elastic_p: probability that the elastic part is applied to an augmented sample.
        flip_lr_p: probability that a sample is mirrored along the patient's left-right axis
            (0, the seed's, draws nothing: the seed's random stream is unchanged). Makes the
            left-right flip TTA see images like its training's.
        ct_fill: CT value outside the image (air: HU_AIR / HU_SCALE; the seed's imgaug used 0).
        hu_scale: CT values are HU / hu_scale (the store's; the trainer sets it).
        clip_hu: ``(low, high)`` HU window applied to every batch (training and validation) and
            recorded as the checkpoint's preprocessing clip; None = none (the seed).
        noise_p: probability of Gaussian noise; its standard deviation is uniform in ``noise_std_hu``.
        blur_p: probability of an in-plane Gaussian blur of sigma uniform in ``blur_sigma_px`` (pixels).
        thick_slice_p: probability of thick-slice simulation: channel ``c`` becomes
            ``(1 - 2 v) x_c + v (x_(c-1) + x_(c+1))`` (edge channels repeated), ``v`` uniform in
            ``thick_slice_weight`` (at most 1/3, a box over three slices); identity for one channel.
        contrast_p: probability of ``(x - mean) * f + mean`` per sample, ``f`` uniform in
            ``contrast_range``, clipped to the sample's own range (nnU-Net's definition).
        gamma_p: probability of ``min + range * ((x - min) / range) ** g``, ``g`` uniform in ``gamma_range``.
    """

    enabled: bool = True
    p: float = 1.0
    translate: float = 0.15
    translate_fixed: bool = False
    scale: tuple[float, float] = (0.85, 1.15)
    rotate_deg: float = 45.0
    elastic_alpha: tuple[float, float] = IMGAUG_ELASTIC_ALPHA
    elastic_sigma: tuple[float, float] = IMGAUG_ELASTIC_SIGMA
    elastic_p: float = 1.0
    flip_lr_p: float = 0.0
    ct_fill: float = CT_FILL_AIR
    hu_scale: float = HU_SCALE
    clip_hu: tuple[float, float] | None = None
    noise_p: float = 0.0
    noise_std_hu: tuple[float, float] = (0.0, 25.0)
    blur_p: float = 0.0
    blur_sigma_px: tuple[float, float] = (0.5, 1.0)
    thick_slice_p: float = 0.0
    thick_slice_weight: tuple[float, float] = (0.1, 1.0 / 3.0)
    contrast_p: float = 0.0
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_p: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        for name in _RANGE_FIELDS:
            try:
                value = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                value = (getattr(self, name),)
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"augment config: {name} must be (low, high) with low <= high, got {value!r}")
            object.__setattr__(self, name, value)
        if self.clip_hu is not None:
            try:
                window = tuple(float(v) for v in self.clip_hu)
            except (TypeError, ValueError):
                window = (self.clip_hu,)  # type: ignore[assignment]
            if len(window) != 2 or not window[0] < window[1]:
                raise ConfigError(f"augment config: clip_hu must be (low, high) HU with low < high, got {self.clip_hu!r}")
            object.__setattr__(self, "clip_hu", window)
        for name in _PROBABILITY_FIELDS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment config: {name} is a probability in [0, 1], got {getattr(self, name)!r}")
        if not self.hu_scale > 0:
            raise ConfigError(f"augment config: hu_scale must be > 0, got {self.hu_scale!r}")
        if self.noise_std_hu[0] < 0 or self.blur_sigma_px[0] <= 0 or self.contrast_range[0] <= 0 or self.gamma_range[0] <= 0:
            raise ConfigError(
                "augment config: noise_std_hu must be >= 0 and blur_sigma_px, contrast_range, gamma_range > 0, got "
                f"{self.noise_std_hu!r}, {self.blur_sigma_px!r}, {self.contrast_range!r}, {self.gamma_range!r}"
            )
        if not (0.0 <= self.thick_slice_weight[0] and self.thick_slice_weight[1] <= 1.0 / 3.0 + 1e-9):
            raise ConfigError(f"augment config: thick_slice_weight must lie in [0, 1/3], got {self.thick_slice_weight!r}")
        if self.scale[0] <= 0:
            raise ConfigError(f"augment config: scale must be > 0, got {self.scale!r}")
        if self.elastic_sigma[0] <= 0 or self.elastic_alpha[0] < 0:
            raise ConfigError(
                f"augment config: elastic_sigma must be > 0 and elastic_alpha >= 0, got "
                f"{self.elastic_sigma!r} and {self.elastic_alpha!r}"
            )
        if self.translate < 0 or self.rotate_deg < 0:
            raise ConfigError(
                f"augment config: translate and rotate_deg are magnitudes >= 0, got {self.translate!r}, "
                f"{self.rotate_deg!r}"
            )

    @property
    def uses_elastic(self) -> bool:
        """Whether the elastic part can ever move a pixel."""
        return self.elastic_p > 0 and self.elastic_alpha[1] > 0

    @property
    def uses_intensity(self) -> bool:
        """Whether any intensity or acquisition augmentation is on."""
        return any(getattr(self, n) > 0 for n in ("noise_p", "blur_p", "thick_slice_p", "contrast_p", "gamma_p"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        for name in _RANGE_FIELDS:
            d[name] = list(d[name])
        d["clip_hu"] = list(self.clip_hu) if self.clip_hu is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Raises:
            ConfigError: on unknown keys or invalid values.
        """
        check_known_keys(cls, d, "augmentation")
        d = dict(d)
        for name in (*_RANGE_FIELDS, "clip_hu"):
            if d.get(name) is not None and not isinstance(d[name], (str, int, float)):
                d[name] = tuple(d[name])
        return cls(**d)


def _check_batch(ct: torch.Tensor, mask: torch.Tensor) -> None:
    if ct.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1:
        raise InputError(
            f"augment: expected CT (N, C, H, W) and mask (N, 1, H, W), got {tuple(ct.shape)} and "
            f"{tuple(mask.shape)}; add the batch/channel axes"
        )
    if ct.shape[0] != mask.shape[0] or ct.shape[-2:] != mask.shape[-2:]:
        raise InputError(
            f"augment: CT {tuple(ct.shape)} and mask {tuple(mask.shape)} differ in batch size or H, W; "
            "pass the mask that belongs to each CT slice"
        )
    if ct.device != mask.device:
        raise InputError(f"augment: CT is on {ct.device} but mask on {mask.device}; move both to one device")


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _smooth_noise_fft(noise: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Gaussian-smooth ``noise`` ``(N, 2, H, W)`` with a per-sample ``sigma_px`` ``(N,)``.

    Multiplies the spectrum by the Gaussian's transfer function ``exp(-2 pi^2 sigma^2 f^2)``
    (unit gain at f = 0, like a normalised Gaussian kernel); periodic boundaries. The cost does
    not depend on sigma, unlike a spatial kernel of radius 4 sigma.
    """
    h, w = noise.shape[-2:]
    fy = torch.fft.fftfreq(h, device=noise.device)
    fx = torch.fft.rfftfreq(w, device=noise.device)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2  # (H, W//2+1), (cycles per pixel)^2
    transfer = torch.exp(-2.0 * math.pi**2 * sigma_px[:, None, None, None] ** 2 * f2)
    return torch.fft.irfft2(torch.fft.rfft2(noise) * transfer.to(torch.complex64), s=(h, w))


def _coarse_factor(h: int, w: int, sigma_min_px: float) -> int:
    """Largest power of two ``r`` dividing H and W with ``sigma_min / r >= _MIN_COARSE_SIGMA``."""
    r = 1
    while h % (2 * r) == 0 and w % (2 * r) == 0 and sigma_min_px / (2 * r) >= _MIN_COARSE_SIGMA:
        r *= 2
    return r


def _elastic_field(
    n: int,
    h: int,
    w: int,
    amplitude: torch.Tensor,
    sigma_px: torch.Tensor,
    generator: torch.Generator | None,
    sigma_min_px: float,
) -> torch.Tensor:
    """``amplitude[:, k] * gaussian(uniform(-1, 1) noise, sigma)`` for k = 0, 1, ``(n, 2, h, w)``."""
    device = amplitude.device
    r = _coarse_factor(h, w, sigma_min_px)
    noise = torch.rand(n, 2, h // r, w // r, generator=generator, device=device).mul_(2.0).sub_(1.0)
    # Scaling on the coarse grid is cheaper than on the full one.
    field = _smooth_noise_fft(noise, sigma_px / r).mul_((amplitude / r)[:, :, None, None])
    if r > 1:
        field = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)
    return field


def elastic_displacement(
    n: int,
    h: int,
    w: int,
    alpha_px: torch.Tensor,
    sigma_px: torch.Tensor,
    generator: torch.Generator | None = None,
    sigma_min_px: float | None = None,
) -> torch.Tensor:
    """imgaug-style elastic displacement fields in pixels, ``(n, 2, h, w)`` (dx, dy).

    ``alpha * gaussian(uniform(-1, 1) noise, sigma)`` per sample. A Gaussian-smoothed field has
    almost no energy above ``~0.6 / sigma`` cycles per pixel, so it is synthesised on a grid
    ``r`` times coarser (white noise there has ``1/r^2`` of the power in the band, hence the
    ``1/r`` amplitude factor; sigma becomes ``sigma / r`` coarse pixels, at least
    ``_MIN_COARSE_SIGMA``) and upsampled bilinearly: the field's standard deviation and
    gradient agree with the full-resolution field within a few per cent, at ``1/r^2`` of the
    noise and FFT cost.

    Args:
        n, h, w: batch and image size.
        alpha_px: ``(n,)`` displacement scale in pixels, on the target device.
        sigma_px: ``(n,)`` smoothing in pixels, same device.
        generator: random source on ``alpha_px.device`` (or None for the global RNG).
        sigma_min_px: a lower bound of ``sigma_px`` (the config's), which sets the coarse grid;
            None reads ``sigma_px.min()`` (a device sync on a GPU).
    """
    sigma_min = float(sigma_px.min()) if sigma_min_px is None else sigma_min_px
    return _elastic_field(n, h, w, alpha_px[:, None].expand(n, 2), sigma_px, generator, sigma_min)


def sampling_grid(
    n: int,
    h: int,
    w: int,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random sampling grids (affine composed with elastic), one per sample.

    Output pixel ``p`` (pixel units, relative to the image centre) reads the input at
    ``A^-1(p) + d(p) / s``, where ``A(x) = R S x + t`` is the affine (rotation R, zoom s,
    shift t) and ``d`` the elastic displacement. The seed applies the elastic deformation after
    the affine, i.e. reads at ``A^-1(p + d(p)) = A^-1(p) + R^-1 d(p) / s``; ``d``'s two
    components are independent and identically distributed isotropic fields, so ``R^-1 d`` has
    the same distribution as ``d`` and the two are the same random transform, while this form
    costs two full-size operations per axis instead of six.

    Args:
        n, h, w: batch size and image size.
        cfg: augmentation parameters.
        generator: random source; a generator on another device than ``device`` draws the
            per-sample parameters and a seed for the noise field, so results depend only on
            its seed (and the device's arithmetic).
        device: where the grid is built.

    Returns:
        ``(n, h, w, 2)`` float32 grid for ``F.grid_sample(..., align_corners=False)``.
    """
    device = torch.device(device)
    gen_device = generator.device if generator is not None else device
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator, gen_device) * (math.pi / 180.0)
    zoom = _uniform(n, cfg.scale[0], cfg.scale[1], generator, gen_device)
    if cfg.translate_fixed:
        shift = torch.full((n, 2), cfg.translate, device=gen_device)
    else:
        shift = (2.0 * torch.rand(n, 2, generator=generator, device=gen_device) - 1.0) * cfg.translate
    angle, zoom, shift = angle.to(device), zoom.to(device), shift.to(device)
    # Inverse affine S^-1 R(-angle) (q - t) in pixels about the centre, then scaled to
    # grid_sample's [-1, 1] coordinates: src = coef_x * x + coef_y * y + const, per axis.
    cos = torch.cos(angle) / zoom
    sin = torch.sin(angle) / zoom
    tx, ty = shift[:, 0] * w, shift[:, 1] * h
    to_norm = torch.tensor([2.0 / w, 2.0 / h], device=device)
    coef_x = torch.stack((cos, -sin), dim=1) * to_norm  # (n, 2): coefficient of x for (src_x, src_y)
    coef_y = torch.stack((sin, cos), dim=1) * to_norm
    const = -(coef_x * tx[:, None] + coef_y * ty[:, None])

    # Output pixel centres in pixels relative to the image centre (align_corners=False).
    xs = torch.arange(w, device=device, dtype=torch.float32).add_(0.5 - w / 2.0)
    ys = torch.arange(h, device=device, dtype=torch.float32).add_(0.5 - h / 2.0)
    grid = torch.empty(n, h, w, 2, device=device, dtype=torch.float32)
    disp = None
    if cfg.uses_elastic:
        elastic_on = (torch.rand(n, generator=generator, device=gen_device) < cfg.elastic_p).to(device)
        alpha = _uniform(n, *cfg.elastic_alpha, generator, gen_device).to(device) * elastic_on
        sigma = _uniform(n, *cfg.elastic_sigma, generator, gen_device).to(device)
        noise_gen = generator
        if generator is not None and gen_device != device:
            # Draw the large noise field on the batch's device (no host round trip for a GPU
            # batch), from a generator seeded by the caller's generator: still reproducible.
            noise_gen = torch.Generator(device=device)
            noise_gen.manual_seed(int(torch.randint(_SEED_BOUND, (1,), generator=generator, device=gen_device)))
        amplitude = (alpha / zoom)[:, None] * to_norm  # pixels -> normalised units, / s as above
        disp = _elastic_field(n, h, w, amplitude, sigma, noise_gen, cfg.elastic_sigma[0])
    for axis in range(2):
        along_x = coef_x[:, axis, None, None] * xs.view(1, 1, w)  # (n, 1, w)
        along_y = torch.addcmul(const[:, axis, None, None], coef_y[:, axis, None, None], ys.view(1, h, 1))
        out = grid[..., axis]
        torch.add(along_x, along_y, out=out)
        if disp is not None:
            out.add_(disp[:, axis])
    return grid


def augment_batch(
    ct: torch.Tensor,
    mask: torch.Tensor,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch on its own device: one random transform per sample, shared by CT and mask.

    Every CT channel and the mask of a sample get exactly the same spatial transform; the CT
    is sampled bilinearly and padded with ``cfg.ct_fill`` (air), the mask with nearest
    neighbour and padded with 0, so it stays exactly binary. The intensity augmentations that
    ``cfg`` turns on (:func:`intensity_batch`) follow, on the CT only.

    Args:
        ct: ``(N, C, H, W)`` float CT (HU / 3071).
        mask: ``(N, 1, H, W)`` in {0, 1}, any dtype.
        cfg: parameters; default ``AugmentConfig()``.
        generator: random source (seeded -> reproducible); None uses torch's global RNG.

    Returns:
        ``(ct, mask)`` with the input shapes and dtypes (new tensors; inputs are not modified).

    Raises:
        InputError: on inconsistent shapes or devices.
    """
    cfg = cfg if cfg is not None else AugmentConfig()
    _check_batch(ct, mask)
    if not cfg.enabled or ct.shape[0] == 0:
        return ct, mask
    ct, mask = _spatial_batch(ct, mask, cfg, generator)
    if cfg.flip_lr_p > 0:
        gen_device = generator.device if generator is not None else ct.device
        on = _chosen(ct.shape[0], cfg.flip_lr_p, generator, gen_device, ct.device).bool().view(-1, 1, 1, 1)
        ct = torch.where(on, ct.flip(LEFT_RIGHT_AXIS), ct)
        mask = torch.where(on, mask.flip(LEFT_RIGHT_AXIS), mask)
    if cfg.uses_intensity:
        ct = intensity_batch(ct, cfg, generator)
    return ct, mask


def _spatial_batch(
    ct: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spatial part of :func:`augment_batch` (the seed's random stream)."""
    n, _, h, w = ct.shape
    device = ct.device
    gen_device = generator.device if generator is not None else device
    # Always drawn, so that the random stream does not depend on p.
    apply = torch.rand(n, generator=generator, device=gen_device) < cfg.p
    if cfg.p >= 1.0:
        idx = None  # every sample; avoids nonzero(), a device sync on a GPU
    else:
        idx = torch.nonzero(apply).flatten().to(device)
        if idx.numel() == 0:
            return ct.clone(), mask.clone()
    ct_sel, mask_sel = (ct, mask) if idx is None else (ct[idx], mask[idx])
    grid = sampling_grid(ct_sel.shape[0], h, w, cfg, generator, device)
    sample_dtype = ct.dtype if ct.dtype in (torch.float32, torch.float64) else torch.float32
    # Zero padding of (ct - fill), then + fill: pads with the fill value and blends bilinearly
    # towards it at the border.
    ct_in = ct_sel.to(sample_dtype) - cfg.ct_fill
    ct_warp = F.grid_sample(ct_in, grid.to(sample_dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    mask_warp = F.grid_sample(
        mask_sel.to(torch.float32), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    ct_warp = ct_warp.add_(cfg.ct_fill).to(ct.dtype)
    if idx is None:
        return ct_warp, mask_warp.to(mask.dtype)
    ct_out, mask_out = ct.clone(), mask.clone()
    ct_out[idx] = ct_warp
    mask_out[idx] = mask_warp.to(mask.dtype)
    return ct_out, mask_out


# ------------------------------------------------------------------------------------------------
# Intensity and acquisition


def apply_window(ct: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Clip ``ct`` (HU / hu_scale) to ``cfg.clip_hu``; unchanged (the same tensor) when None."""
    if cfg.clip_hu is None:
        return ct
    return ct.clamp(cfg.clip_hu[0] / cfg.hu_scale, cfg.clip_hu[1] / cfg.hu_scale)


def _chosen(n: int, p: float, generator: torch.Generator | None, gen_device: torch.device, device: torch.device) -> torch.Tensor:
    """``(n,)`` float 0/1: which samples get a transform of probability ``p``."""
    return (torch.rand(n, generator=generator, device=gen_device) < p).to(device=device, dtype=torch.float32)


def _gaussian_blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Separable in-plane Gaussian blur of ``(N, C, H, W)`` with a per-sample ``sigma_px`` ``(N,)`` (reflect padding)."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(_BLUR_TRUNCATE * float(sigma_px.max())))
    radius = min(radius, h - 1, w - 1)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma_px[:, None].clamp_min(1e-6)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (n, k)
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def intensity_batch(ct: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The intensity and acquisition augmentations of ``cfg`` on a CT batch, per sample.

    In this order, each with its own probability: thick-slice simulation, blur, contrast, gamma,
    noise (noise last: it is added by the scanner after the anatomy is imaged). Nothing is drawn
    from ``generator`` for a transform whose probability is 0.

    Args:
        ct: ``(N, C, H, W)`` float CT (HU / hu_scale).
        cfg: parameters.
        generator: random source on any device (seeded: reproducible).

    Returns:
        A new CT batch of the same shape and dtype (the input when nothing is on).
    """
    if not cfg.uses_intensity or ct.shape[0] == 0:
        return ct
    n, c, _, _ = ct.shape
    dev = ct.device
    gen_dev = generator.device if generator is not None else dev
    x = ct.float()

    def draw(low: float, high: float) -> torch.Tensor:
        return _uniform(n, low, high, generator, gen_dev).to(dev)

    if cfg.thick_slice_p > 0:
        on = _chosen(n, cfg.thick_slice_p, generator, gen_dev, dev)
        v = (draw(*cfg.thick_slice_weight) * on)[:, None, None, None]
        if c > 1:
            below = torch.cat((x[:, :1], x[:, :-1]), dim=1)
            above = torch.cat((x[:, 1:], x[:, -1:]), dim=1)
            x = (1.0 - 2.0 * v) * x + v * (below + above)
    if cfg.blur_p > 0:
        on = _chosen(n, cfg.blur_p, generator, gen_dev, dev)
        sigma = draw(*cfg.blur_sigma_px)
        blurred = _gaussian_blur(x, sigma)
        x = torch.where(on[:, None, None, None] > 0, blurred, x)
    if cfg.contrast_p > 0 or cfg.gamma_p > 0:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        if cfg.contrast_p > 0:
            on = _chosen(n, cfg.contrast_p, generator, gen_dev, dev)
            f = 1.0 + (draw(*cfg.contrast_range) - 1.0) * on
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * f[:, None, None, None] + mean).clamp(lo, hi)
        if cfg.gamma_p > 0:
            on = _chosen(n, cfg.gamma_p, generator, gen_dev, dev)
            g = 1.0 + (draw(*cfg.gamma_range) - 1.0) * on
            span = (hi - lo).clamp_min(_GAMMA_EPS)
            x = lo + span * ((x - lo) / span).clamp(0.0, 1.0).pow(g[:, None, None, None])
    if cfg.noise_p > 0:
        on = _chosen(n, cfg.noise_p, generator, gen_dev, dev)
        std = draw(*cfg.noise_std_hu) * on / cfg.hu_scale
        noise = torch.randn(x.shape, generator=generator, device=gen_dev).to(dev)
        x = x + noise * std[:, None, None, None]
    return x.to(ct.dtype)


def combined_clip(store_clip_hu: tuple[float, float] | None, window_hu: tuple[float, float] | None) -> tuple[float, float] | None:
    """The HU clip a checkpoint records: the store's clip narrowed by the training window.

    Raises:
        ConfigError: the two do not overlap.
    """
    if window_hu is None:
        return None if store_clip_hu is None else tuple(store_clip_hu)  # type: ignore[return-value]
    if store_clip_hu is None:
        return (float(window_hu[0]), float(window_hu[1]))
    low, high = max(float(store_clip_hu[0]), float(window_hu[0])), min(float(store_clip_hu[1]), float(window_hu[1]))
    if not low < high:
        raise ConfigError(f"augment_options clip_hu {tuple(window_hu)} does not overlap the store's clip_hu {tuple(store_clip_hu)}; choose a window inside it")
    return (low, high)
