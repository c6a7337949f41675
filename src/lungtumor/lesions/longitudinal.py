"""Lesions of two visits of one patient, paired one to one, and their changes.

Each scan's lesions are measured on its own grid (:func:`lungtumor.lesions.recist.
measure_lesions`); nothing here is measured on a resampled grid. The two scans are related by a
point map ``followup_to_baseline_ras`` (4x4, follow-up RAS+ mm -> baseline RAS+ mm, from
:func:`lungtumor.preprocessing.registration.register_followup`).

Matching rule (:data:`MATCHING_RULE`), in two steps:

1. **Overlap.** The follow-up instance labels are resampled into the baseline grid through the
   map, nearest neighbour, at the baseline lesions' voxels (the only places an overlap can be): a
   baseline lesion and a follow-up lesion overlap when the shared volume is at least
   :data:`MIN_OVERLAP_FRACTION` of the smaller of the two lesions' volumes. Lesions linked by
   overlaps form groups: one baseline and one follow-up lesion are a **matched** pair; several
   baseline lesions overlapping one follow-up lesion are a **merge**; one baseline lesion
   overlapping several follow-up lesions is a **split** (one lesion becoming two is not a new
   lesion); both at once is **merged and split**.
2. **Centroid distance.** Lesions left without any overlap are paired one to one by the distance
   between the baseline centroid and the follow-up centroid mapped through the map, smallest total
   distance first (Hungarian assignment), when within the tolerance (default
   :data:`DEFAULT_TOLERANCE_MM`).

Baseline lesions left over are **gone**; follow-up lesions left over are **new**. When the
alignment failed, step 1 is skipped (overlaps need an alignment) and step 2 runs on the fallback
map, flagged.

Changes per group: longest axial diameter and short axis (RECIST 1.1, each scan's own
measurement), volume, absolute and relative change, and the volume doubling time
``t * ln 2 / ln(V1 / V0)`` in days (negative: the lesion shrank, the magnitude is its halving
time; none when the volume did not change or a side is empty). For merges and splits the
quantities of the lesions on each side are summed (RECIST 1.1 sums the fragments' long axes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from lungtumor.lesions.recist import LesionReport, MeasuredLesion

#: Centroids closer than this (mm) may be paired when the lesions do not overlap.
DEFAULT_TOLERANCE_MM = 10.0
#: Two lesions overlap when they share at least this fraction of the smaller one's volume (a
#: voxel or two of contact after a sub-voxel misalignment is not an overlap).
MIN_OVERLAP_FRACTION = 0.1
MATCHED, MERGED, SPLIT, MERGED_SPLIT, GONE, NEW = "matched", "merged", "split", "merged and split", "gone", "new"
STATUSES = (MATCHED, MERGED, SPLIT, MERGED_SPLIT, GONE, NEW)
MATCHING_RULE = (
    "1. overlap: the follow-up instance labels are resampled into the baseline grid through the alignment (nearest "
    "neighbour, at the baseline lesions' voxels); two lesions overlap when they share at least "
    f"{MIN_OVERLAP_FRACTION:.0%} of the smaller lesion's volume; lesions linked by overlaps form a group: 1 baseline + 1 "
    "follow-up = matched, several baseline + 1 follow-up = merged, 1 baseline + several follow-up = split, several + several "
    "= merged and split. 2. centroid distance: lesions without overlap are paired one to one (Hungarian assignment, "
    "smallest total distance) when the baseline centroid and the follow-up centroid mapped into the baseline are within "
    "the tolerance. Baseline lesions left over are gone, follow-up lesions left over are new"
)
VDT_FORMULA = "volume doubling time = t * ln 2 / ln(V1 / V0), t in days between the two scans; negative = halving time of a shrinking lesion"


@dataclass(frozen=True)
class LesionGroup:
    """Lesions of the two visits that are one lesion (or none on one side).

    Attributes:
        status: one of :data:`STATUSES`.
        baseline_ids, followup_ids: the lesion ids of each scan in the group (one side empty for
            gone and new lesions).
        method: ``"overlap"``, ``"centroid distance"`` or None (gone, new).
        overlap_ml: shared volume of the group's lesions (overlap groups).
        distance_mm: distance between the baseline centroid and the mapped follow-up centroid
            (between the volume-weighted centroids of the two sides for groups).
    """

    status: str
    baseline_ids: tuple[int, ...]
    followup_ids: tuple[int, ...]
    method: str | None
    overlap_ml: float | None
    distance_mm: float | None


@dataclass(frozen=True)
class Matching:
    """The groups and the evidence behind them.

    Attributes:
        groups: matched, merged, split, merged-and-split groups (by smallest baseline id), then gone,
            then new lesions.
        overlap_ml: (n_baseline, n_followup) shared volume of each pair in ml.
        distance_mm: (n_baseline, n_followup) centroid distances after mapping.
        used_overlap: False when the overlap step was skipped (failed alignment).
        tolerance_mm: the centroid tolerance.
    """

    groups: list[LesionGroup]
    overlap_ml: np.ndarray
    distance_mm: np.ndarray
    used_overlap: bool
    tolerance_mm: float

    def followup_to_baseline_ids(self) -> dict[int, list[int]]:
        """Every follow-up lesion id -> the baseline ids it continues (empty for a new lesion)."""
        out: dict[int, list[int]] = {}
        for group in self.groups:
            for fid in group.followup_ids:
                out[fid] = list(group.baseline_ids)
        return dict(sorted(out.items()))


def _map(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def overlap_volumes_ml(baseline: LesionReport, followup: LesionReport, followup_to_baseline_ras: np.ndarray) -> np.ndarray:
    """(n_baseline, n_followup) volume (ml) shared by each pair after the alignment.

    The follow-up labels are looked up (nearest neighbour) at every baseline lesion voxel's
    position mapped into the follow-up scan; each hit counts one baseline voxel's volume.
    """
    n_b, n_f = len(baseline.lesions), len(followup.lesions)
    out = np.zeros((n_b, n_f), dtype=np.float64)
    if n_b == 0 or n_f == 0:
        return out
    labels_b = np.asarray(baseline.instances.array)
    idx = np.argwhere(labels_b != 0)
    ids_b = labels_b[tuple(idx.T)].astype(np.int64)
    # baseline voxel -> baseline RAS -> follow-up RAS -> follow-up voxel (continuous), rounded.
    to_followup_voxel = np.linalg.inv(followup.instances.affine) @ np.linalg.inv(followup_to_baseline_ras) @ baseline.instances.affine
    ijk = np.rint(_map(to_followup_voxel, idx)).astype(np.int64)
    shape = np.asarray(followup.instances.shape)
    inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
    ids_f = np.zeros(ids_b.shape, dtype=np.int64)
    ids_f[inside] = np.asarray(followup.instances.array)[tuple(ijk[inside].T)]
    hit = ids_f != 0
    counts = np.bincount((ids_b[hit] - 1) * n_f + (ids_f[hit] - 1), minlength=n_b * n_f).reshape(n_b, n_f)
    return counts * baseline.instances.voxel_volume_ml


def centroid_distances_mm(baseline: Sequence[MeasuredLesion], followup: Sequence[MeasuredLesion], followup_to_baseline_ras: np.ndarray) -> np.ndarray:
    """(n_baseline, n_followup) distances between baseline centroids and follow-up centroids mapped into the baseline."""
    if not baseline or not followup:
        return np.zeros((len(baseline), len(followup)))
    b = np.array([les.centroid_ras_mm for les in baseline])
    f = _map(followup_to_baseline_ras, np.array([les.centroid_ras_mm for les in followup]))
    return np.linalg.norm(b[:, None, :] - f[None, :, :], axis=-1)


def _components(edges: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """Connected components of a bipartite graph given as an (n_b, n_f) bool matrix (0-based ids)."""
    n_b, n_f = edges.shape
    parent = list(range(n_b + n_f))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in np.argwhere(edges):
        a, b = find(int(i)), find(n_b + int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for i in range(n_b):
        if edges[i].any():
            groups.setdefault(find(i), ([], []))[0].append(i)
    for j in range(n_f):
        if edges[:, j].any():
            groups.setdefault(find(n_b + j), ([], []))[1].append(j)
    return sorted(groups.values(), key=lambda g: min(g[0]))


def _weighted_centroid(lesions: Sequence[MeasuredLesion]) -> np.ndarray:
    weights = np.array([les.volume_ml for les in lesions])
    points = np.array([les.centroid_ras_mm for les in lesions])
    return (points * weights[:, None]).sum(axis=0) / max(float(weights.sum()), 1e-12)


def match_lesions(
    baseline: LesionReport,
    followup: LesionReport,
    followup_to_baseline_ras: np.ndarray,
    *,
    use_overlap: bool = True,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> Matching:
    """Pair the lesions of two visits by :data:`MATCHING_RULE`.

    Args:
        baseline, followup: :func:`measure_lesions` of each scan on its own grid.
        followup_to_baseline_ras: 4x4 map from follow-up RAS+ mm to baseline RAS+ mm.
        use_overlap: False skips the overlap step (the alignment failed: centroid distance only).
        tolerance_mm: largest centroid distance of a pair found by distance.

    Returns:
        The groups with their evidence.
    """
    matrix = np.asarray(followup_to_baseline_ras, dtype=np.float64)
    b_les, f_les = baseline.lesions, followup.lesions
    overlap = overlap_volumes_ml(baseline, followup, matrix) if use_overlap else np.zeros((len(b_les), len(f_les)))
    distance = centroid_distances_mm(b_les, f_les, matrix)
    groups: list[LesionGroup] = []
    if overlap.size:
        smaller = np.minimum.outer(np.array([les.volume_ml for les in b_les]), np.array([les.volume_ml for les in f_les]))
        edges = overlap >= MIN_OVERLAP_FRACTION * smaller
        edges &= overlap > 0
    else:
        edges = np.zeros(overlap.shape, dtype=bool)
    for b_idx, f_idx in _components(edges):
        if len(b_idx) == 1 and len(f_idx) == 1:
            status = MATCHED
        elif len(f_idx) == 1:
            status = MERGED
        elif len(b_idx) == 1:
            status = SPLIT
        else:
            status = MERGED_SPLIT
        shared = float(overlap[np.ix_(b_idx, f_idx)].sum())
        centre_b = _weighted_centroid([b_les[i] for i in b_idx])
        centre_f = _map(matrix, _weighted_centroid([f_les[j] for j in f_idx]))[0]
        groups.append(
            LesionGroup(
                status, tuple(i + 1 for i in b_idx), tuple(j + 1 for j in f_idx), "overlap", shared, float(np.linalg.norm(centre_b - centre_f))
            )
        )
    free_b = [i for i in range(len(b_les)) if not edges[i].any()]
    free_f = [j for j in range(len(f_les)) if not edges[:, j].any()]
    paired_b: set[int] = set()
    paired_f: set[int] = set()
    if free_b and free_f:
        cost = distance[np.ix_(free_b, free_f)]
        # Pairs beyond the tolerance are forbidden: a large finite cost keeps the assignment feasible.
        big = 1e6 + float(cost.max())
        rows, cols = linear_sum_assignment(np.where(cost <= tolerance_mm, cost, big))
        for r, c in zip(rows, cols):
            if cost[r, c] <= tolerance_mm:
                i, j = free_b[r], free_f[c]
                paired_b.add(i)
                paired_f.add(j)
                groups.append(LesionGroup(MATCHED, (i + 1,), (j + 1,), "centroid distance", 0.0 if use_overlap else None, float(distance[i, j])))
    groups.sort(key=lambda g: min(g.baseline_ids))
    groups += [LesionGroup(GONE, (i + 1,), (), None, None, None) for i in free_b if i not in paired_b]
    groups += [LesionGroup(NEW, (), (j + 1,), None, None, None) for j in free_f if j not in paired_f]
    return Matching(groups, overlap, distance, use_overlap, float(tolerance_mm))


# --------------------------------------------------------------------------------------------
# Changes


def volume_doubling_time_days(volume0_ml: float, volume1_ml: float, interval_days: float | None) -> float | None:
    """``t * ln 2 / ln(V1 / V0)`` (see :data:`VDT_FORMULA`); None without an interval, an empty side or no change."""
    if interval_days is None or interval_days <= 0 or volume0_ml <= 0 or volume1_ml <= 0 or volume0_ml == volume1_ml:
        return None
    return float(interval_days * math.log(2.0) / math.log(volume1_ml / volume0_ml))


def _change(before: float, after: float) -> tuple[float, float | None]:
    """(absolute, relative in percent or None when before is 0)."""
    return after - before, (100.0 * (after - before) / before if before > 0 else None)


def group_record(group: LesionGroup, baseline: Sequence[MeasuredLesion], followup: Sequence[MeasuredLesion], interval_days: float | None) -> dict[str, Any]:
    """One group's measurements and changes (sums over the lesions of each side; 0 for an empty side)."""
    b = [baseline[i - 1] for i in group.baseline_ids]
    f = [followup[j - 1] for j in group.followup_ids]
    out: dict[str, Any] = {
        "status": group.status,
        "baseline_ids": list(group.baseline_ids),
        "followup_ids": list(group.followup_ids),
        "match_method": group.method,
        "overlap_ml": group.overlap_ml,
        "centroid_distance_mm": group.distance_mm,
    }
    for key, attr in (("long_axis_mm", "longest_diameter_mm"), ("short_axis_mm", "short_axis_mm"), ("volume_ml", "volume_ml")):
        before = float(sum(getattr(les, attr) for les in b))
        after = float(sum(getattr(les, attr) for les in f))
        absolute, relative = _change(before, after)
        unit = key.rsplit("_", 1)[1]
        out[f"baseline_{key}"] = before if b else None
        out[f"followup_{key}"] = after if f else None
        out[f"{key.rsplit('_', 1)[0]}_change_{unit}"] = absolute if b and f else None
        out[f"{key.rsplit('_', 1)[0]}_change_percent"] = relative if b and f else None
    v0 = float(sum(les.volume_ml for les in b))
    v1 = float(sum(les.volume_ml for les in f))
    out["volume_doubling_time_days"] = volume_doubling_time_days(v0, v1, interval_days) if b and f else None
    if len(b) > 1 or len(f) > 1:
        out["note"] = "sums over the lesions of each side (RECIST 1.1 sums the fragments' long axes)"
    return out
