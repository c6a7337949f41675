"""Lobulated lung tumours: count, placement inside the lungs, and their shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungtumor.config import SEED_SKIP_INFERIOR_SLICES
from lungtumor.phantom.anatomy import _Anatomy, _inside_lung_points
from lungtumor.phantom.grid import _Grid, _SizeSpec

__all__ = [
    "HU_TUMOUR_RANGE",
    "JUXTAPLEURAL_FRACTION",
    "PRIMARY_TUMOUR_MIN_MM",
    "SECONDARY_TUMOUR_MAX_MM",
    "TUMOUR_BOUNDARY_NOISE",
    "TUMOUR_COUNT_PROBABILITIES",
    "TUMOUR_DIAMETER_MM",
]

HU_TUMOUR_RANGE = (15.0, 55.0)
"""Base HU of a tumour, drawn per tumour."""
TUMOUR_DIAMETER_MM = (3.0, 50.0)
"""Tumour diameter range (the lower end is raised to a few voxels at coarse sizes)."""
PRIMARY_TUMOUR_MIN_MM = 20.0
"""The first tumour of a case (the primary) is at least this large."""
SECONDARY_TUMOUR_MAX_MM = 30.0
"""Further tumours (satellites, metastases) are at most this large."""
TUMOUR_COUNT_PROBABILITIES = (0.15, 0.5, 0.25, 0.10)
"""P(0), P(1), P(2), P(3) tumours per case."""
JUXTAPLEURAL_FRACTION = 0.4
"""Fraction of tumours placed against the chest wall or mediastinum."""
TUMOUR_BOUNDARY_NOISE = 0.15
"""Amplitude of the boundary noise, relative to the tumour radius."""
_TUMOUR_WALL_MARGIN = 1.35  # a tumour's extent is at most this many radii from its centre


@dataclass(frozen=True)
class _Tumour:
    centre: np.ndarray  # body frame, mm
    radius: float
    hu: float


_SPHERE_DIRECTIONS = np.array(
    [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)], dtype=float
)
_SPHERE_DIRECTIONS /= np.linalg.norm(_SPHERE_DIRECTIONS, axis=1, keepdims=True)
_PLACEMENT_CANDIDATES = 512
_PLACEMENT_TRIES = 8
_PLACEMENT_SHRINK = 0.8


def _draw_tumour_count(rng: np.random.Generator) -> int:
    return int(rng.choice(len(TUMOUR_COUNT_PROBABILITIES), p=TUMOUR_COUNT_PROBABILITIES))


def _place_tumours(
    rng: np.random.Generator, an: _Anatomy, grid: _Grid, spec: _SizeSpec, count: int
) -> list[_Tumour]:
    """Choose centres and sizes of ``count`` tumours inside the lungs (rejection sampling)."""
    d_min = max(TUMOUR_DIAMETER_MM[0], spec.min_tumour_voxels * grid.spacing_mm[0])
    # The lowest tumour voxel stays above the slices the seed's preprocessing drops.
    w_floor = grid.w(SEED_SKIP_INFERIOR_SLICES + 1)
    a, b_ant, b_post = an.body_a, an.body_b_ant, an.body_b_post
    tumours: list[_Tumour] = []
    for n in range(count):
        lo = max(d_min, PRIMARY_TUMOUR_MIN_MM) if n == 0 else d_min
        hi = TUMOUR_DIAMETER_MM[1] if n == 0 else SECONDARY_TUMOUR_MAX_MM
        radius = 0.5 * float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))))
        juxtapleural = rng.random() < JUXTAPLEURAL_FRACTION
        for _ in range(_PLACEMENT_TRIES):
            w_lo = w_floor + _TUMOUR_WALL_MARGIN * radius
            w_hi = an.w_apex - radius
            if w_hi > w_lo:
                c = np.stack(
                    [
                        rng.uniform(-a, a, _PLACEMENT_CANDIDATES),
                        rng.uniform(-b_post, b_ant, _PLACEMENT_CANDIDATES),
                        rng.uniform(w_lo, w_hi, _PLACEMENT_CANDIDATES),
                    ],
                    axis=1,
                )
                shells = c[:, None, None, :] + np.array([0.5, 1.0, 1.25])[None, :, None, None] * radius * (
                    _SPHERE_DIRECTIONS[None, None]
                )
                centre_in = _inside_lung_points(an, c)
                shell_in = _inside_lung_points(an, shells).all(axis=2)  # (N, 3 shells)
                if juxtapleural:
                    ok = centre_in & shell_in[:, 0] & ~shell_in[:, 1]
                else:
                    ok = centre_in & shell_in[:, 2]
                for t in tumours:
                    ok &= np.linalg.norm(c - t.centre, axis=1) > _TUMOUR_WALL_MARGIN * (radius + t.radius) + 3.0
                hits = np.flatnonzero(ok)
                if len(hits):
                    tumours.append(_Tumour(c[hits[0]], radius, float(rng.uniform(*HU_TUMOUR_RANGE))))
                    break
            radius = max(0.5 * d_min, radius * _PLACEMENT_SHRINK)
    return tumours


def _draw_tumour(rng: np.random.Generator, shape_vol: np.ndarray, grid: _Grid, tumour: _Tumour, index: int) -> None:
    """Write one lobulated tumour (value ``index``) into ``shape_vol`` where it is still 0."""
    sx, sy, sz = grid.spacing_mm
    rad = tumour.radius
    c = tumour.centre
    # Main ellipsoid plus a few overlapping lobules.
    n_lobes = int(rng.integers(2, 5))
    dirs = rng.standard_normal((n_lobes, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    centres = np.concatenate([c[None], c + dirs * rad * rng.uniform(0.25, 0.5, (n_lobes, 1))])
    main_semi = rad * rng.uniform(0.85, 1.1, (1, 3))
    lobe_semi = rad * rng.uniform(0.45, 0.7, (n_lobes, 1)) * rng.uniform(0.8, 1.2, (n_lobes, 3))
    semis = np.concatenate([main_semi, lobe_semi])
    idx = grid.to_index(c)
    half = np.array([_TUMOUR_WALL_MARGIN * rad / s + 2 for s in (sx, sy, sz)])
    lo = np.maximum(np.floor(idx - half).astype(int), 0)
    hi = np.minimum(np.ceil(idx + half).astype(int) + 1, np.array(grid.shape))
    if np.any(hi <= lo):
        return
    u = grid.u(np.arange(lo[0], hi[0]))[:, None, None]
    v = grid.v(np.arange(lo[1], hi[1]))[None, :, None]
    w = grid.w(np.arange(lo[2], hi[2]))[None, None, :]
    field = np.full(tuple(hi - lo), -np.inf)
    for ce, se in zip(centres, semis):
        q = np.sqrt(((u - ce[0]) / se[0]) ** 2 + ((v - ce[1]) / se[1]) ** 2 + ((w - ce[2]) / se[2]) ** 2)
        np.maximum(field, 1.0 - q, out=field)
    # Noisy boundary: smooth noise with a correlation length of a fraction of the radius.
    corr = max(0.3 * rad, 1.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(field.shape), [corr / s for s in (sx, sy, sz)], mode="nearest")
    noise /= max(float(noise.std()), 1e-9)
    inside = field + TUMOUR_BOUNDARY_NOISE * noise > 0
    # Keep only the component holding the most voxels (the noise can cut off specks).
    labels, n = ndimage.label(inside)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        inside = labels == int(np.argmax(sizes))
    box = shape_vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    box[inside & (box == 0)] = index
