"""Pulmonary vessel trees: space-filling branching from the hila, drawn with partial volume."""

from __future__ import annotations

import numpy as np

from lungtumor.phantom.anatomy import _Anatomy, _inside_lung_points
from lungtumor.phantom.grid import _Grid

__all__ = [
    "HU_VESSEL",
    "VESSEL_MIN_RADIUS_MM",
    "VESSEL_REACH",
    "VESSEL_ROOT_RADIUS_MM",
    "VESSEL_SPLIT_FRACTION",
    "VESSEL_TARGETS_PER_TREE",
]

HU_VESSEL = 40.0
"""Pulmonary vessels (blood, no contrast agent)."""
VESSEL_ROOT_RADIUS_MM = (5.5, 7.5)
"""Radius of an artery / vein where it enters the lung at the hilum."""
VESSEL_TARGETS_PER_TREE = 384
"""Terminal territories of one tree (more = denser, thinner terminal branches)."""
VESSEL_SPLIT_FRACTION = (0.3, 0.7)
"""Share of a branch's territory that goes to its first child."""
VESSEL_REACH = (0.35, 0.6)
"""A branch runs this fraction of the way towards the centroid of its territory."""
_VESSEL_END_TAPER = 0.7
_VESSEL_ROOT_OFFSETS_MM = ((10.0, 0.0), (18.0, -25.0))  # (anterior, superior) of artery, vein roots
_LUNG_SAMPLING_BATCH = 4096
_LUNG_SAMPLING_ROUNDS = 8
VESSEL_MIN_RADIUS_MM = 0.35
"""Thinner branches are not drawn (also at least a fraction of a voxel, see _SizeSpec)."""

_BYTE = 255  # occupancy is stored as uint8 in 0..255


def _sample_lung_points(rng: np.random.Generator, an: _Anatomy, side: float, n: int) -> np.ndarray:
    """``n`` points uniformly inside one lung (rejection sampling; may return fewer)."""
    box_lo = np.array([0.0, -an.body_b_post, an.w_low])
    box_hi = np.array([an.body_a, an.body_b_ant, an.w_apex])
    found = []
    for _ in range(_LUNG_SAMPLING_ROUNDS):
        p = rng.uniform(box_lo, box_hi, (_LUNG_SAMPLING_BATCH, 3)) * np.array([side, 1.0, 1.0])
        found.append(p[_inside_lung_points(an, p)])
        if sum(len(f) for f in found) >= n:
            break
    return np.concatenate(found)[:n]


def _vessel_tree(
    rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, r_root: float, r_min: float
) -> list[np.ndarray]:
    """One space-filling vessel tree from ``root`` to every target point.

    The target set is split recursively in two along its widest axis (a k-d tree); each half
    gets a branch running part of the way towards its centroid. Radii follow Murray's law
    (radius**3 proportional to the territory supplied), so branches thin towards the periphery.

    Returns:
        Segments as rows: start xyz, end xyz, start radius, end radius (mm).
    """
    segments: list[np.ndarray] = []
    stack = [(root, np.arange(len(targets)), r_root)]
    while stack:
        p, idx, r = stack.pop()
        pts = targets[idx]
        if len(idx) == 1:
            segments.append(np.concatenate([p, pts[0], [r, _VESSEL_END_TAPER * r]]))
            continue
        order = np.argsort(pts[:, int(np.argmax(pts.var(axis=0)))], kind="stable")
        cut = int(np.clip(round(len(idx) * rng.uniform(*VESSEL_SPLIT_FRACTION)), 1, len(idx) - 1))
        for part in (idx[order[:cut]], idx[order[cut:]]):
            rc = r * (len(part) / len(idx)) ** (1.0 / 3.0)
            if rc < r_min:
                continue
            end = p + rng.uniform(*VESSEL_REACH) * (targets[part].mean(axis=0) - p)
            segments.append(np.concatenate([p, end, [rc, rc]]))
            stack.append((end, part, rc))
    return segments


def _vessel_segments(rng: np.random.Generator, an: _Anatomy, r_min: float) -> np.ndarray:
    """Pulmonary arteries and veins: one tree of each per lung, rooted at the hilum.

    Returns:
        (N, 8) array of tapered cylinders: start xyz, end xyz, start radius, end radius (mm).
    """
    segments: list[np.ndarray] = []
    for side in (-1.0, 1.0):
        for root_offset in _VESSEL_ROOT_OFFSETS_MM:  # artery, then the (lower) vein
            root = np.array([side * an.hilum_u, an.v_trachea + root_offset[0], an.w_hilum + root_offset[1]])
            targets = _sample_lung_points(rng, an, side, VESSEL_TARGETS_PER_TREE)
            if len(targets):
                segments += _vessel_tree(rng, root, targets, float(rng.uniform(*VESSEL_ROOT_RADIUS_MM)), r_min)
    return np.stack(segments) if segments else np.zeros((0, 8))


def _draw_segments(occupancy: np.ndarray, grid: _Grid, segments: np.ndarray) -> None:
    """Max-blend tapered cylinders into a uint8 occupancy volume (partial volume, 0..255)."""
    sx, sy, sz = grid.spacing_mm
    shape = np.array(grid.shape)
    h = sx  # partial-volume width: the in-plane voxel size
    for seg in segments:
        p0, p1, r0, r1 = seg[:3], seg[3:6], seg[6], seg[7]
        idx = grid.to_index(np.stack([p0, p1]))
        pad = np.array([r0 / sx, r0 / sy, r0 / sz]) + 1.0
        lo = np.maximum(np.floor(idx.min(axis=0) - pad).astype(int), 0)
        hi = np.minimum(np.ceil(idx.max(axis=0) + pad).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        du = (grid.u(np.arange(lo[0], hi[0])) - p0[0])[:, None, None]
        dv = (grid.v(np.arange(lo[1], hi[1])) - p0[1])[None, :, None]
        dw = (grid.w(np.arange(lo[2], hi[2])) - p0[2])[None, None, :]
        axis = p1 - p0
        len2 = max(float(axis @ axis), 1e-9)
        t = np.clip((du * axis[0] + dv * axis[1] + dw * axis[2]) / len2, 0.0, 1.0)
        dist = np.sqrt((du - t * axis[0]) ** 2 + (dv - t * axis[1]) ** 2 + (dw - t * axis[2]) ** 2)
        radius = r0 + (r1 - r0) * t
        # Thin vessels are diluted by the voxel: scale by their diameter / voxel size.
        frac = np.clip((radius - dist) / h + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * radius / h)
        box = occupancy[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.maximum(box, (frac * _BYTE).astype(np.uint8), out=box)
