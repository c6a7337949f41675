"""The seed's way of augmenting, kept for benchmarks and as an independent check of the batched path.

One sample on the CPU with scipy.ndimage, in two steps, as the seed's imgaug pipeline did per
sample in a Dataset. ``bench_train.py`` measures it against :func:`lungtumor.training.augment.augment_batch`;
``tests/test_augment.py`` checks that both compute the same geometry.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from lungtumor.errors import InputError
from lungtumor.training.augment import _GAUSS_TRUNCATE, MASK_FILL, AugmentConfig


def augment_sample_numpy(
    ct: np.ndarray, mask: np.ndarray, cfg: AugmentConfig | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's way, for benchmarks: one sample on the CPU with scipy.ndimage, in two steps.

    Affine (``affine_transform``, order 1 for CT, 0 for mask), then elastic
    (``map_coordinates`` on a Gaussian-smoothed uniform(-1, 1) field x alpha), like imgaug's
    ``Sequential([Affine, ElasticTransformation])`` applied per sample in a Dataset.

    Args:
        ct: ``(C, H, W)`` float CT.
        mask: ``(1, H, W)`` mask.
        cfg: parameters; default ``AugmentConfig()``.
        rng: numpy random generator.

    Returns:
        ``(ct, mask)`` float32 / mask dtype arrays of the input shapes.

    Raises:
        InputError: on inconsistent shapes.
    """
    cfg = cfg if cfg is not None else AugmentConfig()
    if ct.ndim != 3 or mask.ndim != 3 or mask.shape[0] != 1 or ct.shape[-2:] != mask.shape[-2:]:
        raise InputError(
            f"augment_sample_numpy: expected CT (C, H, W) and mask (1, H, W), got {ct.shape} and {mask.shape}"
        )
    if not cfg.enabled or rng.random() >= cfg.p:
        return ct, mask
    _, h, w = ct.shape
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    zoom = rng.uniform(*cfg.scale)
    tx, ty = (cfg.translate, cfg.translate) if cfg.translate_fixed else rng.uniform(-cfg.translate, cfg.translate, 2)
    # scipy maps output index o (row, col) to input index  M @ o + offset; same inverse affine
    # as sampling_grid, about the image centre ((H-1)/2, (W-1)/2) in index coordinates.
    # "grid-constant" interpolates towards cval in the half pixel beyond the edge, exactly as
    # grid_sample's zero padding of (ct - fill) does in augment_batch.
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    matrix = np.array([[c, -s], [s, c]])  # acts on (y, x)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    shift = np.array([ty * h, tx * w])
    offset = centre - matrix @ (centre + shift)
    ct_out = np.stack(
        [ndimage.affine_transform(ch, matrix, offset, order=1, mode="grid-constant", cval=cfg.ct_fill) for ch in ct]
    ).astype(np.float32)
    mask_out = ndimage.affine_transform(mask[0], matrix, offset, order=0, mode="grid-constant", cval=MASK_FILL)[None]
    if cfg.uses_elastic and rng.random() < cfg.elastic_p:
        alpha = rng.uniform(*cfg.elastic_alpha)
        sigma = rng.uniform(*cfg.elastic_sigma)
        dy, dx = (
            ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (h, w)), sigma, truncate=_GAUSS_TRUNCATE) * alpha
            for _ in range(2)
        )
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        coords = np.stack((yy + dy, xx + dx))
        ct_out = np.stack(
            [ndimage.map_coordinates(ch, coords, order=1, mode="grid-constant", cval=cfg.ct_fill) for ch in ct_out]
        ).astype(np.float32)
        mask_out = ndimage.map_coordinates(mask_out[0], coords, order=0, mode="grid-constant", cval=MASK_FILL)[None]
    return ct_out, mask_out.astype(mask.dtype)
