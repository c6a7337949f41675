"""Synthetic follow-up pairs for tests and benchmarks: a scan moved by a known rigid motion, resampled
onto another grid (other orientation, other slice thickness), its lesions scaled, removed or added."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from helpers import REAL_DATA
from lungtumor.io.volume import Volume
from lungtumor.lesions.components import label_instances
from lungtumor.preprocessing.lungs import find_lung_region
from lungtumor.preprocessing.registration import map_points, resample_onto

LUNG_HU, TUMOUR_HU = -850, 30


def real_data_dir() -> Path | None:
    """The shared real scans: ``<repo>/../shared/data/real``, else ``$LUNGTUMOR_REAL_DATA``; None when absent."""
    for candidate in (REAL_DATA, Path(os.environ.get("LUNGTUMOR_REAL_DATA", "/nonexistent"))):
        if candidate.resolve().is_dir():
            return candidate.resolve()
    return None


def rotation(axis: int, degrees: float) -> np.ndarray:
    """4x4 rotation about a RAS+ axis (0 = x, 1 = y, 2 = z)."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    out = np.eye(4)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    out[i, i] = out[j, j] = c
    out[i, j], out[j, i] = -s, s
    return out


def motion(rot_z_deg: float = 7.0, rot_x_deg: float = 3.0, translation_mm: tuple[float, float, float] = (35.0, -12.0, 20.0), centre: np.ndarray | None = None) -> np.ndarray:
    """Baseline RAS+ -> follow-up RAS+: a rotation about ``centre`` then a translation (the patient moved)."""
    c = np.zeros(3) if centre is None else np.asarray(centre, dtype=np.float64)
    to_c, back = np.eye(4), np.eye(4)
    to_c[:3, 3], back[:3, 3] = -c, c
    out = back @ rotation(2, rot_z_deg) @ rotation(0, rot_x_deg) @ to_c
    out[:3, 3] += translation_mm
    return out


def followup_grid(baseline: Volume, baseline_to_followup: np.ndarray, spacing_mm: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """An R-P-S grid (a different orientation from the phantom's L-A-S) covering the moved baseline."""
    corners = np.array([[i, j, k] for i in (0, baseline.shape[0] - 1) for j in (0, baseline.shape[1] - 1) for k in (0, baseline.shape[2] - 1)], float)
    moved = map_points(baseline_to_followup, map_points(baseline.affine, corners))
    lo, hi = moved.min(axis=0), moved.max(axis=0)
    sx, sy, sz = spacing_mm
    affine = np.diag([sx, -sy, sz, 1.0])
    affine[:3, 3] = [lo[0], hi[1], lo[2]]
    shape = tuple(int(np.ceil((h - low) / s)) + 1 for h, low, s in zip(hi, lo, (sx, sy, sz)))
    return shape, affine  # type: ignore[return-value]


def _scaled_about(centre: np.ndarray, factor: float) -> np.ndarray:
    out = np.eye(4) * factor
    out[3, 3] = 1.0
    out[:3, 3] = centre * (1.0 - factor)
    return out


@dataclass
class Pair:
    """A baseline and its synthetic follow-up (all RAS+)."""

    ct_b: Volume
    mask_b: Volume
    ct_f: Volume
    baseline_to_followup: np.ndarray  # the true motion
    new_centre_b: np.ndarray  # where a new lesion goes (baseline RAS+)

    def followup_mask(self, scales: dict[int, float] | None = None, remove: tuple[int, ...] = (), new_radius_mm: float | None = None) -> Volume:
        """The follow-up mask: baseline lesion ``id`` scaled by ``scales[id]`` (default 1) about its centroid,
        ``remove`` ids left out, and a new sphere of ``new_radius_mm`` when given."""
        labels, count = label_instances(self.mask_b.array)
        inverse = np.linalg.inv(self.baseline_to_followup)
        out = np.zeros(self.ct_f.shape, dtype=np.uint8)
        for lesion in range(1, count + 1):
            if lesion in remove:
                continue
            idx = np.argwhere(labels == lesion)
            centre = map_points(self.mask_b.affine, idx.mean(axis=0))[0]
            factor = (scales or {}).get(lesion, 1.0)
            # follow-up point -> baseline point -> un-scaled baseline point
            to_source = np.linalg.inv(_scaled_about(centre, factor)) @ inverse
            one = self.mask_b.with_array((labels == lesion).astype(np.uint8))
            out |= resample_onto(one, self.ct_f.shape, self.ct_f.affine, to_source, label=True).array.astype(np.uint8)
        if new_radius_mm is not None:
            centre_f = map_points(self.baseline_to_followup, self.new_centre_b)[0]
            centre_ijk = map_points(np.linalg.inv(self.ct_f.affine), centre_f)[0]
            reach = new_radius_mm / np.array(self.ct_f.spacing_mm) + 2
            box = tuple(slice(max(int(c - r), 0), min(int(c + r) + 1, n)) for c, r, n in zip(centre_ijk, reach, self.ct_f.shape))
            ijk = np.indices(tuple(b.stop - b.start for b in box)).reshape(3, -1).T + [b.start for b in box]
            dist = np.linalg.norm(map_points(self.ct_f.affine, ijk) - centre_f, axis=1).reshape(tuple(b.stop - b.start for b in box))
            out[box] |= (dist <= new_radius_mm).astype(np.uint8)
        return Volume(out, self.ct_f.affine.copy(), {"path": "follow-up mask (synthetic)"})

    def painted_ct(self, mask_f: Volume) -> Volume:
        """The follow-up CT with its lesions painted to match ``mask_f`` (old lesion voxels become lung)."""
        old = resample_onto(self.mask_b, self.ct_f.shape, self.ct_f.affine, np.linalg.inv(self.baseline_to_followup), label=True).array != 0
        array = self.ct_f.array.copy()
        array[old] = LUNG_HU
        array[mask_f.array != 0] = TUMOUR_HU
        return self.ct_f.with_array(array)


def make_pair(ct_b: Volume, mask_b: Volume, baseline_to_followup: np.ndarray, spacing_mm: tuple[float, float, float]) -> Pair:
    """Resample ``ct_b`` through the motion onto a new grid; choose a lung point far from every lesion."""
    shape, affine = followup_grid(ct_b, baseline_to_followup, spacing_mm)
    ct_f = resample_onto(ct_b, shape, affine, np.linalg.inv(baseline_to_followup), label=False)
    ct_f = Volume(np.rint(ct_f.array).astype(np.int16), affine, {"path": "follow-up CT (synthetic)"})
    lungs = find_lung_region(ct_b).lung_mask
    inside = ndimage.distance_transform_edt(lungs.array != 0, sampling=lungs.spacing_mm)
    # Far from the lesions: mask them (grown) out of the candidates.
    tumour_on_lungs = resample_onto(mask_b, lungs.shape, lungs.affine, label=True).array != 0
    away = ndimage.distance_transform_edt(~tumour_on_lungs, sampling=lungs.spacing_mm)
    score = np.minimum(inside, away / 3.0)
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    new_centre = map_points(lungs.affine, np.array(best, dtype=float))[0]
    return Pair(ct_b, mask_b, ct_f, baseline_to_followup, new_centre)
