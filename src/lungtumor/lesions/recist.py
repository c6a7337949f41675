"""RECIST 1.1 measurements of a mask's lesions, in millimetres, and the lesion report.

Conventions, stated once and used everywhere (the ``lesions`` command, ``evaluate``'s lesion
matching and size bands, the HTML report); instances are those of
:mod:`lungtumor.lesions.components`, axial slices and world coordinates those of
:mod:`lungtumor.lesions.frame`, the side that of :mod:`lungtumor.lesions.side`:

- **Diameters are edge to edge**: lengths run between the outer corners of the mask's boundary
  pixels, i.e. the Feret diameter of the union of the lesion's pixel squares in one slice, as a
  caliper placed on the outer edges of the displayed lesion measures it. A row of n pixels of
  spacing s measures n*s along the row (a voxel-centre convention would give (n-1)*s and call a
  one-pixel lesion 0 mm). On ellipses rasterised by pixel centre, this reads 0.4 pixel longer
  than the true axis on average (at most about 1.3 pixels); centre-to-centre reads 0.6-0.85
  pixel shorter.
- **Longest axial diameter** (RECIST 1.1): the largest such distance within one slice, over all
  slices of the lesion (ties: the most inferior slice). Computed exactly: the convex hull of the
  boundary-pixel corners (``scipy.spatial.ConvexHull``), then every pair of hull vertices.
- **Short axis**: on the same slice, the longest segment perpendicular to the long axis between
  the outermost boundary points of the lesion on that line (for a convex lesion, the longest
  perpendicular chord; for an ellipse, its minor axis). Computed exactly: the span is piecewise
  linear between the pixel corners' positions along the long axis, so those positions are tried.
- **Measurable** (RECIST 1.1, Eisenhauer et al. 2009): longest diameter >= 10 mm and, where
  slices are thicker than 5 mm, >= twice the slice thickness. The slice thickness is the distance
  between consecutive slice planes from the affine (a NIfTI file carries no separate thickness).
- **Size bands** of the longest axial diameter: [0, 10), [10, 20), [20, 30), [30, inf) mm (each
  lesion of the report carries its band; evaluation pools sensitivity and false positives by them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from lungtumor.io.volume import Volume, foreground_box, require_same_grid
from lungtumor.lesions.components import LabelledInstances, check_probabilities, label_cropped, require_binary, uncrop
from lungtumor.lesions.frame import SliceFrame, ijk_to_ras, lift_to_ijk, scan_facts, slice_frame, to_slices_first
from lungtumor.lesions.score import instance_scores
from lungtumor.lesions.side import BodyMidline, decide_side, prepare_lungs

#: RECIST 1.1: smallest measurable longest diameter, mm.
RECIST_MIN_DIAMETER_MM = 10.0
#: RECIST 1.1: slices thicker than this (mm) need a longest diameter of at least
#: RECIST_THICKNESS_FACTOR slice thicknesses.
RECIST_THICK_SLICE_MM = 5.0
RECIST_THICKNESS_FACTOR = 2.0
#: Size bands of the longest axial diameter, mm: [0, 10), [10, 20), [20, 30), [30, inf).
SIZE_BAND_EDGES_MM = (10.0, 20.0, 30.0)
SIZE_BAND_NAMES = ("<10 mm", "10-20 mm", "20-30 mm", ">30 mm")
#: Equal lengths (mm) within this are ties.
_TIE_MM = 1e-9
#: Perpendicular-span candidates evaluated per block (bounds the temporaries).
_SPAN_BLOCK = 128
#: How diameters are measured, in words (lesions.json, summary.json).
DIAMETER_CONVENTION = (
    "edge to edge: between the outer corners of the mask's boundary pixels (Feret diameter of the union of "
    "the lesion's pixel squares in one slice); longest = max over the lesion's axial slices; short axis = "
    "longest segment perpendicular to it on that slice between the lesion's outermost boundary points"
)


# --------------------------------------------------------------------------------------------
# One slice: long and short axis


@dataclass(frozen=True)
class SliceAxes:
    """Long and short axis of a pixel region in one slice, as in-plane index coordinates.

    Attributes:
        long_mm, short_mm: lengths in mm.
        long_ab, short_ab: (2, 2) endpoints, rows = points, columns = continuous indices along
            the frame's two ``plane_axes`` (pixel centres at integers, edges at half-integers).
    """

    long_mm: float
    long_ab: np.ndarray
    short_mm: float
    short_ab: np.ndarray


def _boundary_pixels(region: np.ndarray) -> np.ndarray:
    """(N, 2) indices of the pixels of a 2D bool region with a 4-neighbour outside it."""
    padded = np.pad(region, 1)
    inner = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(2, 1))
    return np.argwhere(padded & ~inner) - 1


#: Pixel corner offsets in cyclic order (a parallelogram's vertices).
_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])


def _longest(boundary: np.ndarray, to_plane: np.ndarray) -> tuple[float, np.ndarray]:
    """Feret diameter of the union of pixel squares: (length mm, (2, 2) endpoints in index coords)."""
    corners = np.unique((2 * boundary[:, None, :] + (2 * _CORNERS).astype(int)[None]).reshape(-1, 2), axis=0) / 2.0
    xy = corners @ to_plane.T
    hull = corners[ConvexHull(xy).vertices] if len(corners) > 4 else corners
    hull_xy = hull @ to_plane.T
    d2 = ((hull_xy[:, None, :] - hull_xy[None, :, :]) ** 2).sum(axis=-1)
    first, second = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return float(math.sqrt(d2[first, second])), hull[[first, second]]


def _short_axis(boundary: np.ndarray, to_plane: np.ndarray, long_ab: np.ndarray) -> tuple[float, np.ndarray]:
    """Longest span perpendicular to the long axis: (length mm, (2, 2) endpoints in index coords).

    Each boundary pixel is a parallelogram in the plane. On a line perpendicular to the long
    axis at position c along it, the lesion's span is (largest - smallest) crossing of a pixel
    edge; every edge lies on one of two families of parallel grid lines, so the span is linear
    between consecutive corner positions and its maximum is at one of them.
    """
    p, q = long_ab @ to_plane.T
    u = (q - p) / np.linalg.norm(q - p)
    v = np.array([-u[1], u[0]])
    verts = (boundary[:, None, :] + _CORNERS[None]) @ to_plane.T  # (P, 4, 2) in-plane mm
    pu, pv = verts @ u, verts @ v  # (P, 4)
    u0, u1 = pu, np.roll(pu, -1, axis=1)
    v0, v1 = pv, np.roll(pv, -1, axis=1)
    lo_u, hi_u = np.minimum(u0, u1), np.maximum(u0, u1)
    du = u1 - u0
    slanted = du != 0  # edges parallel to the line add only their endpoints, which the other edges hold
    slope = np.where(slanted, (v1 - v0) / np.where(slanted, du, 1.0), 0.0)
    candidates = np.unique(pu)
    best_len, best_c, best_lo, best_hi = -1.0, 0.0, 0.0, 0.0
    for start in range(0, candidates.size, _SPAN_BLOCK):
        c = candidates[start : start + _SPAN_BLOCK][:, None, None]  # (C, 1, 1)
        hit = slanted & (lo_u <= c) & (c <= hi_u)
        cross = v0 + (c - u0) * slope
        top = np.where(hit, cross, -np.inf).max(axis=(1, 2))
        bottom = np.where(hit, cross, np.inf).min(axis=(1, 2))
        span = np.where(np.isfinite(top), top - bottom, -1.0)
        k = int(np.argmax(span))
        if span[k] > best_len + _TIE_MM:
            best_len, best_c, best_lo, best_hi = float(span[k]), float(c[k, 0, 0]), float(bottom[k]), float(top[k])
    ends_xy = np.array([best_c * u + best_lo * v, best_c * u + best_hi * v])
    ends_ab = np.linalg.solve(to_plane, ends_xy.T).T
    return max(best_len, 0.0), ends_ab


def slice_axes(region: np.ndarray, to_plane_mm: np.ndarray) -> SliceAxes:
    """Long and short axis (edge to edge, exact) of a non-empty 2D bool region.

    Args:
        region: (A, B) bool pixels of one slice, indexed along the frame's ``plane_axes``.
        to_plane_mm: :attr:`SliceFrame.to_plane_mm`.

    Returns:
        The axes, endpoints in the region's own index coordinates.

    Raises:
        ValueError: the region is empty.
    """
    boundary = _boundary_pixels(np.asarray(region, dtype=bool))
    if boundary.size == 0:
        raise ValueError("slice_axes needs a non-empty region")
    long_mm, long_ab = _longest(boundary, to_plane_mm)
    short_mm, short_ab = _short_axis(boundary, to_plane_mm, long_ab)
    return SliceAxes(long_mm, long_ab, short_mm, short_ab)


def _bound_mm(region_any_a: np.ndarray, region_any_b: np.ndarray, to_plane: np.ndarray) -> float:
    """Upper bound of a slice's Feret diameter: the diagonal of its index bounding box in mm."""
    ia, ib = np.flatnonzero(region_any_a), np.flatnonzero(region_any_b)
    box = np.array([[ia[0] - 0.5, ib[0] - 0.5], [ia[-1] + 0.5, ib[0] - 0.5], [ia[-1] + 0.5, ib[-1] + 0.5], [ia[0] - 0.5, ib[-1] + 0.5]])
    xy = box @ to_plane.T
    return float(max(np.linalg.norm(xy[0] - xy[2]), np.linalg.norm(xy[1] - xy[3])))


def _longest_slice(sub: np.ndarray, frame: SliceFrame) -> tuple[int, float, np.ndarray, np.ndarray]:
    """(slice index within ``sub``, length mm, its (2, 2) endpoints, boundary pixels) of the longest axial diameter.

    ``sub`` is (slices, A, B) bool. Slices are tried from the largest bounding-box diagonal down
    and the search stops once that bound is below the best length found.
    """
    present = np.flatnonzero(sub.any(axis=(1, 2)))
    bounds = [(_bound_mm(sub[t].any(axis=1), sub[t].any(axis=0), frame.to_plane_mm), int(t)) for t in present]
    bounds.sort(key=lambda item: (-item[0], item[1] * frame.superior_sign))
    best_t, best_len = (-1 if frame.superior_sign > 0 else sub.shape[0]), -1.0
    best_ab, best_boundary = np.zeros((2, 2)), np.empty((0, 2), dtype=int)
    for bound, t in bounds:
        if bound < best_len - _TIE_MM:
            break
        boundary = _boundary_pixels(sub[t])
        length, ends = _longest(boundary, frame.to_plane_mm)
        if length > best_len + _TIE_MM or (abs(length - best_len) <= _TIE_MM and t * frame.superior_sign < best_t * frame.superior_sign):
            best_t, best_len, best_ab, best_boundary = t, length, ends, boundary
    return best_t, best_len, best_ab, best_boundary



def longest_diameters_mm(labels: np.ndarray, count: int, affine: np.ndarray, source: str = "mask") -> np.ndarray:
    """Longest axial diameter (mm, edge to edge) of instances 1..count of a label array.

    Args:
        labels: integer instance labels (0 = background), e.g. from :func:`label_instances`.
        count: number of instances.
        affine: the grid's voxel -> RAS+ affine.
        source: file name for error messages.

    Returns:
        (count,) float64 lengths.
    """
    frame = slice_frame(affine, source)
    out = np.zeros(count, dtype=np.float64)
    crop_box = foreground_box(labels != 0) if count else None
    if crop_box is None:
        return out
    crop = labels[crop_box]
    for index, box in enumerate(ndimage.find_objects(crop, max_label=count)):
        if box is None:
            continue
        sub = to_slices_first(crop[box] == index + 1, frame)
        out[index] = _longest_slice(sub, frame)[1]
    return out



def size_band_index(diameters_mm: np.ndarray | Sequence[float]) -> np.ndarray:
    """Band of each longest diameter: 0 (< 10 mm), 1 (10-20), 2 (20-30), 3 (>= 30); half-open bands."""
    return np.digitize(np.asarray(diameters_mm, dtype=np.float64), SIZE_BAND_EDGES_MM, right=False)


def size_band(diameter_mm: float) -> str:
    """Name of the size band of one longest diameter (see :data:`SIZE_BAND_NAMES`)."""
    return SIZE_BAND_NAMES[int(size_band_index([diameter_mm])[0])]


# --------------------------------------------------------------------------------------------
# Per-lesion measurements


@dataclass(frozen=True)
class MeasuredLesion:
    """One lesion's measurements (all lengths mm, coordinates RAS+ mm, indices into the file's array).

    Attributes:
        id: 1..N by decreasing volume.
        voxels: voxel count.
        volume_ml: volume.
        longest_diameter_mm: RECIST long axis (edge to edge).
        short_axis_mm: longest diameter perpendicular to it on the same slice.
        slice_index: index along the slice axis of the slice holding both axes.
        slice_thickness_mm: distance between slice planes.
        measurable: RECIST 1.1 measurability (see the module docstring).
        size_band: one of :data:`SIZE_BAND_NAMES`.
        long_axis_ras_mm, short_axis_ras_mm: the two endpoints of each axis.
        long_axis_ijk, short_axis_ijk: the same endpoints as continuous voxel indices.
        centroid_ras_mm: mean voxel position.
        side: ``"right"``, ``"left"``, ``"midline"`` (the patient's), or None when unknown.
        side_source: how the side was decided (``"lung region"``, ``"lung midline"``,
            ``"body midline"``), or None.
        bbox_ijk_min, bbox_ijk_max: inclusive voxel index bounds.
        hu_mean, hu_max: CT values inside the lesion (None without a CT).
        prob_mean, prob_max: probabilities inside the lesion (None without them).
        score: the lesion's confidence score, :data:`lungtumor.lesions.score.LESION_SCORE` (None
            without probabilities).
    """

    id: int
    voxels: int
    volume_ml: float
    longest_diameter_mm: float
    short_axis_mm: float
    slice_index: int
    slice_thickness_mm: float
    measurable: bool
    size_band: str
    long_axis_ras_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    short_axis_ras_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    long_axis_ijk: tuple[tuple[float, float, float], tuple[float, float, float]]
    short_axis_ijk: tuple[tuple[float, float, float], tuple[float, float, float]]
    centroid_ras_mm: tuple[float, float, float]
    side: str | None
    side_source: str | None
    bbox_ijk_min: tuple[int, int, int]
    bbox_ijk_max: tuple[int, int, int]
    hu_mean: float | None = None
    hu_max: float | None = None
    prob_mean: float | None = None
    prob_max: float | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {
            "id": self.id,
            "voxels": self.voxels,
            "volume_ml": self.volume_ml,
            "longest_diameter_mm": self.longest_diameter_mm,
            "short_axis_mm": self.short_axis_mm,
            "slice_index": self.slice_index,
            "slice_thickness_mm": self.slice_thickness_mm,
            "measurable": self.measurable,
            "size_band": self.size_band,
            "long_axis_ras_mm": [list(p) for p in self.long_axis_ras_mm],
            "short_axis_ras_mm": [list(p) for p in self.short_axis_ras_mm],
            "long_axis_ijk": [list(p) for p in self.long_axis_ijk],
            "short_axis_ijk": [list(p) for p in self.short_axis_ijk],
            "centroid_ras_mm": list(self.centroid_ras_mm),
            "side": self.side,
            "side_source": self.side_source,
            "bbox_ijk_min": list(self.bbox_ijk_min),
            "bbox_ijk_max": list(self.bbox_ijk_max),
            "hu_mean": self.hu_mean,
            "hu_max": self.hu_max,
            "prob_mean": self.prob_mean,
            "prob_max": self.prob_max,
            "score": self.score,
        }


def is_measurable(longest_mm: float, slice_thickness_mm: float) -> bool:
    """RECIST 1.1: >= 10 mm, and >= 2 x the slice thickness where slices are thicker than 5 mm."""
    minimum = RECIST_MIN_DIAMETER_MM
    if slice_thickness_mm > RECIST_THICK_SLICE_MM:
        minimum = max(minimum, RECIST_THICKNESS_FACTOR * slice_thickness_mm)
    return bool(longest_mm >= minimum)


@dataclass
class LesionReport:
    """Every lesion of one mask, its instance labels and the scan's geometry.

    Attributes:
        lesions: by id (decreasing volume).
        instances: instance labels (0 = background) on the mask's grid.
        frame: the axial slice geometry.
        scan: the grid's facts (shape, spacing, orientation, affine, source files).
    """

    lesions: list[MeasuredLesion]
    instances: Volume
    frame: SliceFrame
    scan: dict[str, Any] = field(default_factory=dict)


def _triple(values: Any) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def measure_lesions(
    mask: Volume,
    ct: Volume | None = None,
    *,
    probabilities: Volume | None = None,
    lungs: Volume | None = None,
    lesion_scores: Volume | None = None,
) -> LesionReport:
    """Instances of a binary mask and every lesion's measurements (see the module docstring).

    Args:
        mask: binary tumour mask (0/1).
        ct: the CT (HU) on the mask's grid: HU statistics and the body midline for the side.
        probabilities: probability map on the grid: mean/max probability and the score
            (:data:`~lungtumor.lesions.score.LESION_SCORE`) per lesion.
        lungs: lung region mask on the grid (binary both lungs, or two labels): the side.
        lesion_scores: each lesion's score on its voxels (:func:`~lungtumor.lesions.score.score_map`,
            e.g. a re-scorer's), used as the score instead of the one from ``probabilities``.

    Returns:
        The lesions by decreasing volume, their instance labels and the scan's facts.

    Raises:
        InputError: the mask is not binary, probabilities outside [0, 1].
        GeometryError: a volume is not on the mask's grid, or the slices are not axial.
    """
    fg = require_binary(mask, "tumour")
    if ct is not None:
        require_same_grid(mask, ct, "mask", "CT")
    for role, other in (("probability map", probabilities), ("lung region", lungs), ("lesion score map", lesion_scores)):
        if other is not None:
            require_same_grid(other, mask, role, "mask")
    prob = check_probabilities(probabilities) if probabilities is not None else None
    frame = slice_frame(mask.affine, str(mask.meta.get("path", "mask")))
    found = label_cropped(fg)
    crop, crop_box = found.labels, found.box
    if lesion_scores is not None:  # scores that do not come from the probabilities (a re-scorer's), as a map
        scores = instance_scores(found, check_probabilities(lesion_scores), mask.voxel_volume_ml, "prob_max")
    else:
        scores = instance_scores(found, prob, mask.voxel_volume_ml) if prob is not None else None
    lung_info = prepare_lungs(lungs) if lungs is not None else None
    body_midline = BodyMidline(ct, frame) if ct is not None else None
    affine = mask.affine
    voxel_ml = mask.voxel_volume_ml
    lesions: list[MeasuredLesion] = []
    for index, local in enumerate(found.objects):
        lesion_id = index + 1
        instance = crop[local] == lesion_id
        box = tuple(slice(c.start + s.start, c.start + s.stop) for c, s in zip(crop_box, local))
        offset = np.array([s.start for s in box], dtype=np.float64)
        sub = to_slices_first(instance, frame)
        t, long_mm, long_ab, boundary = _longest_slice(sub, frame)
        short_mm, short_ab = _short_axis(boundary, frame.to_plane_mm, long_ab)
        long_ijk = lift_to_ijk(long_ab, t, frame, offset)
        short_ijk = lift_to_ijk(short_ab, t, frame, offset)
        slice_index = int(t + offset[frame.slice_axis])
        voxel_idx = np.argwhere(instance)
        centroid = ijk_to_ras(affine, voxel_idx.mean(axis=0) + offset)[0]
        side, side_source = decide_side(centroid, instance, box, lung_info, lungs, body_midline, slice_index)
        hu = np.asarray(ct.array[box])[instance] if ct is not None else None
        pr = np.asarray(prob[box])[instance] if prob is not None else None
        lesions.append(
            MeasuredLesion(
                id=lesion_id,
                voxels=int(voxel_idx.shape[0]),
                volume_ml=float(voxel_idx.shape[0] * voxel_ml),
                longest_diameter_mm=long_mm,
                short_axis_mm=short_mm,
                slice_index=slice_index,
                slice_thickness_mm=frame.thickness_mm,
                measurable=is_measurable(long_mm, frame.thickness_mm),
                size_band=size_band(long_mm),
                long_axis_ras_mm=tuple(_triple(p) for p in ijk_to_ras(affine, long_ijk)),  # type: ignore[arg-type]
                short_axis_ras_mm=tuple(_triple(p) for p in ijk_to_ras(affine, short_ijk)),  # type: ignore[arg-type]
                long_axis_ijk=tuple(_triple(p) for p in long_ijk),  # type: ignore[arg-type]
                short_axis_ijk=tuple(_triple(p) for p in short_ijk),  # type: ignore[arg-type]
                centroid_ras_mm=_triple(centroid),
                side=side,
                side_source=side_source,
                bbox_ijk_min=tuple(int(s.start) for s in box),  # type: ignore[arg-type]
                bbox_ijk_max=tuple(int(s.stop - 1) for s in box),  # type: ignore[arg-type]
                hu_mean=float(hu.mean(dtype=np.float64)) if hu is not None else None,
                hu_max=float(hu.max()) if hu is not None else None,
                prob_mean=float(pr.mean(dtype=np.float64)) if pr is not None else None,
                prob_max=float(pr.max()) if pr is not None else None,
                score=float(scores[index]) if scores is not None else None,
            )
        )
    instances = Volume(uncrop(crop, crop_box, mask.shape), mask.affine, {"path": None})
    scan = scan_facts(ct if ct is not None else mask, frame)
    scan["sources"] = {
        "ct": ct.meta.get("path") if ct is not None else None,
        "mask": mask.meta.get("path"),
        "probabilities": probabilities.meta.get("path") if probabilities is not None else None,
        "lungs": lungs.meta.get("path") if lungs is not None else None,
    }
    return LesionReport(lesions=lesions, instances=instances, frame=frame, scan=scan)


def instance_diameters_mm(inst: LabelledInstances, frame: SliceFrame) -> np.ndarray:
    """Longest axial diameter (mm) of each instance id 1..count."""
    out = np.zeros(inst.count, dtype=np.float64)
    for index, obj in enumerate(inst.objects):
        out[index] = _longest_slice(to_slices_first(inst.labels[obj] == index + 1, frame), frame)[1]
    return out

