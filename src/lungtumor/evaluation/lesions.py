"""Lesions of a binary mask: instances and their RECIST 1.1 measurements, in millimetres.

Conventions, stated once and used everywhere (the ``lesions`` command, ``evaluate``'s lesion
matching and size bands, the HTML report):

- **Instances** are the 26-connected components of the mask (3x3x3 structuring element: voxels
  touching by a face, an edge or a corner are one lesion), as :func:`lungtumor.evaluation.
  metrics.lesion_detection` counts them. Ids run 1..N by decreasing voxel count; equal counts
  keep the order in which ``scipy.ndimage.label`` meets them (C-order scan of the array), so the
  same mask always gets the same ids.
- **World coordinates** are RAS+ millimetres, the NIfTI/nibabel world of
  :class:`lungtumor.io.volume.Volume`: +x towards the patient's right, +y anterior, +z superior.
  (DICOM's LPS is x and y negated.)
- **Axial slices** are the acquired voxel planes whose normal is closest to the patient's
  superior axis (the voxel axis nibabel's ``io_orientation`` maps to S/I; the plane is spanned by
  the other two voxel axes). Distances are measured physically in that plane from the affine, so
  anisotropic pixels, in-plane rotation, axis flips (LAS, LPS, ...) and permuted axes give the
  same millimetres as an isotropic RAS grid. Planes tilted more than :data:`MAX_SLICE_TILT_DEG`
  from the true axial plane are refused (resample the scan to an axial grid first).
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
- **Side**: the patient's left or right lung. With a lung region mask, the lung the lesion
  touches (the two lungs are its two labels when it has exactly two non-zero values, else its two
  largest components); otherwise, or when it touches neither, which side of the midline its
  centroid lies on (the midline between the two lungs, else the body's midline on the lesion's
  key slice from the CT, voxels above :data:`BODY_HU`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import ConvexHull

from lungtumor.atomic import write_text_atomic
from lungtumor.config import GRID_ATOL_MM
from lungtumor.errors import GeometryError, InputError
from lungtumor.io.volume import Volume, foreground_box, voxel_orientation

#: Connectivity of lesion instances (3x3x3 structuring element).
CONNECTIVITY = 26
_STRUCTURE_3D = np.ones((3, 3, 3), dtype=bool)
#: The world frame of every coordinate written here.
WORLD_FRAME = "RAS+"
WORLD_FRAME_TEXT = "RAS+ mm (NIfTI/nibabel world: +x towards the patient's right, +y anterior, +z superior)"
#: RECIST 1.1: smallest measurable longest diameter, mm.
RECIST_MIN_DIAMETER_MM = 10.0
#: RECIST 1.1: slices thicker than this (mm) need a longest diameter of at least
#: RECIST_THICKNESS_FACTOR slice thicknesses.
RECIST_THICK_SLICE_MM = 5.0
RECIST_THICKNESS_FACTOR = 2.0
#: Slice planes tilted more than this from the true axial plane are refused.
MAX_SLICE_TILT_DEG = 20.0
#: Size bands of the longest axial diameter, mm: [0, 10), [10, 20), [20, 30), [30, inf).
SIZE_BAND_EDGES_MM = (10.0, 20.0, 30.0)
SIZE_BAND_NAMES = ("<10 mm", "10-20 mm", "20-30 mm", ">30 mm")
#: CT voxels above this (HU) are body (or table) when the body's midline is needed.
BODY_HU = -500.0
#: A centroid within this distance (mm) of the midline is on the "midline".
MIDLINE_TOLERANCE_MM = 1.0
#: A lesion touches the lungs it reaches within this many voxels (26-connected dilation).
LUNG_CONTACT_VOXELS = 2
#: The second-largest lung component counts as the other lung only when at least this fraction
#: of the largest (else the region is one merged component and only its midline is used).
LUNG_SECOND_FRACTION = 0.1
#: The lung region is labelled on a strided copy of at most this many voxels (only the
#: assignment of each lung to a side depends on it).
LUNG_LABEL_MAX_VOXELS = 8_000_000
#: Slack for probabilities stored as float16/float32 slightly outside [0, 1].
PROB_RANGE_SLACK = 1e-3
#: Cubic millimetres per millilitre.
MM3_PER_ML = 1000.0
#: Equal lengths (mm) within this are ties.
_TIE_MM = 1e-9
#: Perpendicular-span candidates evaluated per block (bounds the temporaries).
_SPAN_BLOCK = 128
#: Output file names of :func:`write_lesion_outputs`.
LESIONS_CSV = "lesions.csv"
LESIONS_JSON = "lesions.json"
INSTANCES_NIFTI = "instances.nii.gz"
LESIONS_FORMAT = "lungtumor-lesions"
LESIONS_FORMAT_VERSION = 1
DIAMETER_CONVENTION = (
    "edge to edge: between the outer corners of the mask's boundary pixels (Feret diameter of the union of "
    "the lesion's pixel squares in one slice); longest = max over the lesion's axial slices; short axis = "
    "longest segment perpendicular to it on that slice between the lesion's outermost boundary points"
)
MATCHING_RULE = (
    "a reference lesion is found when it is matched one-to-one to a predicted instance that overlaps it by "
    "at least one voxel (the matching maximises the number of found lesions, then the total IoU), so one "
    "prediction covering two lesions finds one of them; a predicted instance overlapping no reference voxel "
    "is a false positive; a further prediction on an already-found lesion is neither"
)


# --------------------------------------------------------------------------------------------
# Input checks


def _path(volume: Volume, role: str) -> str:
    return str(volume.meta.get("path", role))


def binary_mask(volume: Volume, role: str = "mask") -> np.ndarray:
    """The volume's voxels as a bool mask; only 0 and 1 are accepted.

    Args:
        volume: a mask volume (any integer, float or bool dtype).
        role: what the mask is, for the message ("mask", "prediction", "label").

    Returns:
        A bool array (no copy when already bool).

    Raises:
        InputError: a value other than 0 and 1 (a label map, probabilities, a 0/255 mask).
    """
    array = volume.array
    if array.dtype == bool:
        return array
    if array.dtype == np.uint8 and (array.size == 0 or array.max() <= 1):
        return array.view(bool)  # 0/1 bytes are valid bools: no copy of a whole scan
    if array.size:
        lo, hi = array.min(), array.max()
        # Integer masks: the range is enough. Float masks must also hold whole numbers.
        not_binary = lo < 0 or hi > 1 or (array.dtype.kind == "f" and not np.all((array == 0) | (array == 1)))
        if not_binary:
            values = np.unique(array)
            shown = ", ".join(f"{v:g}" for v in values[:8]) + (" ..." if values.size > 8 else "")
            raise InputError(
                f"{_path(volume, role)}: {role} mask must hold only 0 and 1, found values {shown}; "
                "threshold probabilities or map label values to {0, 1} first"
            )
    return array != 0


def check_same_grid(volume: Volume, reference: Volume, role: str, reference_role: str) -> None:
    """GeometryError naming both files when shapes or affines (to GRID_ATOL_MM) differ."""
    if volume.same_grid(reference, atol=GRID_ATOL_MM):
        return
    raise GeometryError(
        f"{role} {_path(volume, role)} (shape {volume.shape}, affine {np.round(volume.affine, 4).tolist()}) is not on "
        f"the grid of {reference_role} {_path(reference, reference_role)} (shape {reference.shape}, affine "
        f"{np.round(reference.affine, 4).tolist()}); pass the {role} made for this {reference_role} (same shape and affine)"
    )


def check_probabilities(probabilities: Volume) -> np.ndarray:
    """The probability voxels as an array, or InputError when outside [0, 1]."""
    array = probabilities.array
    if array.size:
        lo, hi = float(array.min()), float(array.max())
        if lo < -PROB_RANGE_SLACK or hi > 1.0 + PROB_RANGE_SLACK:
            raise InputError(
                f"{_path(probabilities, 'probabilities')}: probabilities must lie in [0, 1], found [{lo:g}, {hi:g}]; "
                "pass sigmoid probabilities (predict --probabilities), not logits or masks scaled to 255"
            )
    return array


# --------------------------------------------------------------------------------------------
# Geometry of the axial slices


@dataclass(frozen=True)
class SliceFrame:
    """Which voxel planes are the patient's axial slices, and their in-plane metric.

    Attributes:
        slice_axis: the voxel axis (0, 1, 2 = i, j, k) that runs across axial slices.
        plane_axes: the two in-plane voxel axes, in increasing order.
        to_plane_mm: (2, 2) matrix taking in-plane index offsets (along ``plane_axes``) to
            orthonormal in-plane millimetres (exact: distances computed there are world distances).
        thickness_mm: distance between consecutive slice planes.
        tilt_deg: angle between the slice planes' normal and the patient's superior axis.
        superior_sign: +1 when the slice index grows towards superior, -1 when towards inferior.
    """

    slice_axis: int
    plane_axes: tuple[int, int]
    to_plane_mm: np.ndarray
    thickness_mm: float
    tilt_deg: float
    superior_sign: int = 1

    @property
    def slice_axis_name(self) -> str:
        """``"i"``, ``"j"`` or ``"k"``."""
        return "ijk"[self.slice_axis]


def slice_frame(affine: np.ndarray, source: str = "volume") -> SliceFrame:
    """The axial slice geometry of a grid with this voxel-to-RAS affine.

    Args:
        affine: 4x4 voxel index -> RAS+ mm.
        source: file name for the error message.

    Raises:
        GeometryError: the voxel planes closest to axial are tilted more than
            :data:`MAX_SLICE_TILT_DEG` from it, or the orientation is unknown.
    """
    aff = np.asarray(affine, dtype=np.float64)
    ornt = voxel_orientation(aff, str(source))
    slice_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    a, b = (ax for ax in range(3) if ax != slice_axis)
    col_a, col_b = aff[:3, a], aff[:3, b]
    normal = np.cross(col_a, col_b)
    normal_norm = float(np.linalg.norm(normal))
    tilt_deg = float(np.degrees(np.arccos(min(1.0, abs(normal[2]) / normal_norm))))
    if tilt_deg > MAX_SLICE_TILT_DEG:
        raise GeometryError(
            f"{source}: the voxel planes closest to axial are tilted {tilt_deg:.1f} degrees from the patient's axial "
            f"plane (at most {MAX_SLICE_TILT_DEG:g} accepted); RECIST diameters need axial slices: resample the scan "
            "to an axial grid first"
        )
    thickness_mm = float(abs(np.linalg.det(aff[:3, :3])) / normal_norm)
    e1 = col_a / np.linalg.norm(col_a)
    rest = col_b - (col_b @ e1) * e1
    e2 = rest / np.linalg.norm(rest)
    to_plane = np.array([[col_a @ e1, col_b @ e1], [col_a @ e2, col_b @ e2]])
    superior_sign = 1 if aff[2, slice_axis] > 0 else -1
    return SliceFrame(slice_axis, (a, b), to_plane, thickness_mm, tilt_deg, superior_sign)


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


def _to_slices_first(array: np.ndarray, frame: SliceFrame) -> np.ndarray:
    """(slices, A, B) view with the in-plane axes in ``plane_axes`` order."""
    return np.moveaxis(array, frame.slice_axis, 0)


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
        sub = _to_slices_first(crop[box] == index + 1, frame)
        out[index] = _longest_slice(sub, frame)[1]
    return out


# --------------------------------------------------------------------------------------------
# Instances


def _label_dtype(count: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if count <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)  # pragma: no cover - more than 4e9 lesions


#: Boxes of at most this many voxels are labelled as they are, larger ones first split at empty planes.
_SPLIT_MIN_VOXELS = 32**3


def _split_boxes(fg: np.ndarray, box: tuple[slice, ...]) -> list[tuple[slice, ...]]:
    """Disjoint tight boxes holding all of the foreground in ``box``, cut at empty planes.

    Voxels on the two sides of an empty plane are at least two planes apart, so no 26-connected
    component crosses one: each box can be labelled on its own. Scattered false positives then
    cost their own small boxes instead of one box the size of the scan.
    """
    stack, out = [box], []
    while stack:
        current = stack.pop()
        sub = fg[current]
        if sub.size <= _SPLIT_MIN_VOXELS:
            out.append(current)
            continue
        for axis in range(3):
            present = np.flatnonzero(sub.any(axis=tuple(a for a in range(3) if a != axis)))
            gaps = np.flatnonzero(np.diff(present) > 1)
            if gaps.size or present[0] > 0 or present[-1] + 1 < sub.shape[axis]:
                starts = np.concatenate([[present[0]], present[gaps + 1]])
                stops = np.concatenate([present[gaps] + 1, [present[-1] + 1]])
                origin = current[axis].start
                for start, stop in zip(starts, stops):
                    piece = list(current)
                    piece[axis] = slice(origin + int(start), origin + int(stop))
                    stack.append(tuple(piece))
                break
        else:  # tight on every axis, no empty plane inside
            out.append(current)
    return out


@dataclass(frozen=True)
class _Labelled:
    """Instances of a mask, within the foreground's bounding box.

    Attributes:
        labels: ids 1..count by decreasing voxel count (0 = background), shaped like ``box``.
        box: the foreground's bounding box in the input array.
        count: number of instances.
        objects: per id, its bounding box within ``labels``.
        sizes: per id, its voxel count.
    """

    labels: np.ndarray
    box: tuple[slice, ...]
    count: int
    objects: list[tuple[slice, ...]]
    sizes: np.ndarray


def _label_cropped(fg: np.ndarray) -> _Labelled:
    """26-connected instances of a bool array, ids by decreasing size (ties: C-order of the first voxel).

    The same ids as ``ndimage.label`` on the whole array followed by a stable sort on size
    (ndimage numbers components by their first voxel in C order), computed box by box.
    """
    box = foreground_box(fg)
    if box is None:
        return _Labelled(np.zeros((0, 0, 0), dtype=np.uint8), (slice(0, 0),) * fg.ndim, 0, [], np.zeros(0, dtype=np.int64))
    pieces = []
    for piece in _split_boxes(fg, box):
        # C order: ndimage.label is about 3x slower on nibabel's Fortran-ordered arrays.
        local, n = ndimage.label(np.ascontiguousarray(fg[piece]), structure=_STRUCTURE_3D)
        if n == 0:  # pragma: no cover - every piece holds foreground
            continue
        flat = local.ravel()
        # ndimage numbers components in scan order, so each label first appears where the
        # running maximum grows: that is the component's first voxel in C order.
        running = np.maximum.accumulate(flat)
        first = np.flatnonzero(flat > np.concatenate(([0], running[:-1])))
        first_ijk = np.stack(np.unravel_index(first, local.shape)) + np.array([s.start for s in piece])[:, None]
        pieces.append((piece, local, n, np.bincount(flat, minlength=n + 1)[1:], np.ravel_multi_index(first_ijk, fg.shape), ndimage.find_objects(local)))
    sizes = np.concatenate([p[3] for p in pieces])
    firsts = np.concatenate([p[4] for p in pieces])
    count = int(sizes.size)
    order = np.lexsort((firsts, -sizes))  # by size, then by first voxel
    dtype = _label_dtype(count)
    new_id = np.empty(count, dtype=np.int64)
    new_id[order] = np.arange(1, count + 1)
    labels = np.zeros(tuple(s.stop - s.start for s in box), dtype=dtype)
    objects: list[tuple[slice, ...]] = [()] * count
    offset = 0
    for piece, local, n, _, _, found in pieces:
        remap = np.zeros(n + 1, dtype=dtype)
        remap[1:] = new_id[offset : offset + n]
        rel = tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(piece, box))
        labels[rel] = remap[local]  # pieces are disjoint
        for k, obj in enumerate(found):
            objects[int(remap[k + 1]) - 1] = tuple(slice(o.start + r.start, o.stop + r.start) for o, r in zip(obj, rel))
        offset += n
    return _Labelled(labels, box, count, objects, sizes[order])


def _uncrop(crop: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=crop.dtype)
    if crop.size:
        labels[box] = crop
    return labels


def label_instances(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components with ids 1..N by decreasing voxel count.

    Labels only the foreground's bounding box (``ndimage.label`` on a whole 512x512x300 scan
    takes seconds; the tumours' box takes milliseconds).

    Args:
        mask: 3D array, non-zero = foreground.

    Returns:
        ``(labels, count)``: labels the mask's shape, the smallest unsigned dtype that holds
        ``count`` (uint8 up to 255 lesions), 0 = background.
    """
    fg = np.asarray(mask)
    fg = fg if fg.dtype == bool else fg != 0
    found = _label_cropped(fg)
    return _uncrop(found.labels, found.box, fg.shape), found.count


# --------------------------------------------------------------------------------------------
# Matching predicted to reference instances


@dataclass(frozen=True)
class InstanceMatch:
    """One-to-one matching of predicted to reference instances (see :data:`MATCHING_RULE`).

    Attributes:
        ref_found: (n_ref,) bool, reference instance id-1 was found.
        pred_false_positive: (n_pred,) bool, predicted instance id-1 overlaps no reference voxel.
        pairs: matched (reference id, predicted id) pairs.
    """

    ref_found: np.ndarray
    pred_false_positive: np.ndarray
    pairs: list[tuple[int, int]]


def match_instances(pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int) -> InstanceMatch:
    """Match predicted instances to reference lesions by :data:`MATCHING_RULE`.

    Args:
        pred_labels: predicted instance labels 0..n_pred.
        n_pred: number of predicted instances.
        ref_labels: reference instance labels 0..n_ref, same shape.
        n_ref: number of reference lesions.

    Returns:
        The matching.
    """
    if n_pred == 0 or n_ref == 0:
        return InstanceMatch(np.zeros(n_ref, dtype=bool), np.ones(n_pred, dtype=bool), [])
    ref_sizes = np.bincount(ref_labels.ravel().astype(np.int64), minlength=n_ref + 1)[1:]
    pred_sizes = np.bincount(pred_labels.ravel().astype(np.int64), minlength=n_pred + 1)[1:]
    return _match_overlaps(_overlaps(pred_labels, n_pred, ref_labels, n_ref), ref_sizes, pred_sizes)


def _overlaps(pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int) -> np.ndarray:
    """(n_ref, n_pred) voxel counts of every reference x predicted instance intersection."""
    both = (pred_labels != 0) & (ref_labels != 0)
    r = ref_labels[both].astype(np.int64)
    p = pred_labels[both].astype(np.int64)
    return np.bincount(r * (n_pred + 1) + p, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)[1:, 1:]


def _match_overlaps(overlap: np.ndarray, ref_sizes: np.ndarray, pred_sizes: np.ndarray) -> InstanceMatch:
    """:data:`MATCHING_RULE` on an (n_ref, n_pred) overlap matrix and the instances' voxel counts."""
    n_ref, n_pred = overlap.shape
    ref_found = np.zeros(n_ref, dtype=bool)
    pred_fp = ~overlap.any(axis=0)
    if not overlap.any():
        return InstanceMatch(ref_found, pred_fp, [])
    iou = overlap / (ref_sizes[:, None] + pred_sizes[None, :] - overlap)
    # Any match outweighs every IoU sum (IoU <= 1 per pair): the count of found lesions first.
    weight = np.where(overlap > 0, (min(n_ref, n_pred) + 1) + iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = overlap[rows, cols] > 0
    ref_found[rows[keep]] = True
    pairs = [(int(a) + 1, int(b) + 1) for a, b in zip(rows[keep], cols[keep])]
    return InstanceMatch(ref_found, pred_fp, pairs)


def size_band_index(diameters_mm: np.ndarray | Sequence[float]) -> np.ndarray:
    """Band of each longest diameter: 0 (< 10 mm), 1 (10-20), 2 (20-30), 3 (>= 30); half-open bands."""
    return np.digitize(np.asarray(diameters_mm, dtype=np.float64), SIZE_BAND_EDGES_MM, right=False)


def size_band(diameter_mm: float) -> str:
    """Name of the size band of one longest diameter (see :data:`SIZE_BAND_NAMES`)."""
    return SIZE_BAND_NAMES[int(size_band_index([diameter_mm])[0])]


# --------------------------------------------------------------------------------------------
# Per-lesion measurements


@dataclass(frozen=True)
class Lesion:
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

    lesions: list[Lesion]
    instances: Volume
    frame: SliceFrame
    scan: dict[str, Any] = field(default_factory=dict)


def _ijk_to_ras(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    return pts @ affine[:3, :3].T + affine[:3, 3]


def _triple(values: Any) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _lift(ab: np.ndarray, t: int, frame: SliceFrame, offset: np.ndarray) -> np.ndarray:
    """(n, 2) in-plane coordinates on slice t of a crop -> (n, 3) file voxel indices."""
    out = np.zeros((ab.shape[0], 3))
    out[:, frame.slice_axis] = t
    out[:, frame.plane_axes[0]] = ab[:, 0]
    out[:, frame.plane_axes[1]] = ab[:, 1]
    return out + offset


@dataclass(frozen=True)
class _Lungs:
    """The lung region reduced to what the side decision needs."""

    labels: np.ndarray  # strided labels: 0 none, 1 right lung, 2 left lung
    step: int
    midline_x_mm: float | None
    two_lungs: bool


_RIGHT, _LEFT = 1, 2


def _prepare_lungs(lungs: Volume) -> _Lungs:
    """Find the two lungs of a region mask and which is the patient's right."""
    array = lungs.array
    step = max(1, math.ceil((array.size / LUNG_LABEL_MAX_VOXELS) ** (1.0 / 3.0)))
    strided = np.asarray(array[::step, ::step, ::step])
    values = np.unique(strided[strided != 0])
    if values.size == 2:
        comp = np.zeros(strided.shape, dtype=np.int32)
        comp[strided == values[0]], comp[strided == values[1]] = 1, 2
        n = 2
    else:
        comp, n = ndimage.label(strided != 0, structure=_STRUCTURE_3D)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    sub_affine = lungs.affine @ np.diag([step, step, step, 1.0])
    if n == 0:
        return _Lungs(np.zeros(strided.shape, dtype=np.uint8), step, None, False)
    order = np.argsort(-sizes, kind="stable")
    first = order[0] + 1
    two = n >= 2 and sizes[order[1]] >= LUNG_SECOND_FRACTION * sizes[order[0]]
    if not two:
        centroid = _ijk_to_ras(sub_affine, np.argwhere(comp != 0).mean(axis=0))[0]
        return _Lungs(np.zeros(strided.shape, dtype=np.uint8), step, float(centroid[0]), False)
    second = order[1] + 1
    xs = [float(_ijk_to_ras(sub_affine, np.argwhere(comp == c).mean(axis=0))[0][0]) for c in (first, second)]
    right, left = (first, second) if xs[0] > xs[1] else (second, first)
    labels = np.zeros(strided.shape, dtype=np.uint8)
    labels[comp == right], labels[comp == left] = _RIGHT, _LEFT
    return _Lungs(labels, step, (xs[0] + xs[1]) / 2.0, True)


def _side_from_x(x_mm: float, midline_mm: float) -> str:
    if abs(x_mm - midline_mm) < MIDLINE_TOLERANCE_MM:
        return "midline"
    return "right" if x_mm > midline_mm else "left"  # RAS+: +x towards the patient's right


def _lung_contact(lungs: _Lungs, lung_array: np.ndarray, instance: np.ndarray, box: tuple[slice, ...]) -> str | None:
    """Side of the lung the lesion touches (majority of touched lung voxels), None if none."""
    grown_box = tuple(slice(max(s.start - LUNG_CONTACT_VOXELS, 0), min(s.stop + LUNG_CONTACT_VOXELS, n)) for s, n in zip(box, lung_array.shape))
    local = np.zeros(tuple(s.stop - s.start for s in grown_box), dtype=bool)
    inner = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown_box))
    local[inner] = instance
    touched = ndimage.binary_dilation(local, structure=_STRUCTURE_3D, iterations=LUNG_CONTACT_VOXELS)
    touched &= np.asarray(lung_array[grown_box]) != 0
    idx = np.argwhere(touched) + np.array([g.start for g in grown_box])
    if idx.size == 0:
        return None
    sub = np.minimum(idx // lungs.step, np.array(lungs.labels.shape) - 1)
    sides = lungs.labels[sub[:, 0], sub[:, 1], sub[:, 2]]
    right, left = int(np.count_nonzero(sides == _RIGHT)), int(np.count_nonzero(sides == _LEFT))
    if right == left:
        return None
    return "right" if right > left else "left"


class _BodyMidline:
    """World x of the body's centroid per axial slice, computed once per slice (many small lesions share slices)."""

    def __init__(self, ct: Volume, frame: SliceFrame) -> None:
        self.ct, self.frame, self.cache = ct, frame, {}

    def __call__(self, slice_index: int) -> float | None:
        if slice_index not in self.cache:
            self.cache[slice_index] = _body_midline_x(self.ct, self.frame, slice_index)
        return self.cache[slice_index]


def _body_midline_x(ct: Volume, frame: SliceFrame, slice_index: int) -> float | None:
    """World x of the body's centroid on one axial slice (CT voxels above BODY_HU)."""
    index: list[int | slice] = [slice(None)] * 3
    index[frame.slice_axis] = slice_index
    plane = ct.array[tuple(index)]  # a view (np.take would copy the whole scan first)
    body = np.argwhere(plane > BODY_HU)
    if body.size == 0:
        return None
    ab = body.mean(axis=0)
    ijk = np.zeros(3)
    ijk[frame.slice_axis] = slice_index
    ijk[frame.plane_axes[0]], ijk[frame.plane_axes[1]] = ab
    return float(_ijk_to_ras(ct.affine, ijk)[0][0])


def scan_facts(volume: Volume, frame: SliceFrame) -> dict[str, Any]:
    """Shape, spacing, orientation and affine of a grid, with its slice geometry."""
    return {
        "path": volume.meta.get("path"),
        "shape": list(volume.shape),
        "spacing_mm": list(volume.spacing_mm),
        "axcodes": "".join(volume.axcodes),
        "affine_ras": np.asarray(volume.affine).tolist(),
        "slice_axis": frame.slice_axis_name,
        "slice_thickness_mm": frame.thickness_mm,
        "slice_tilt_deg": frame.tilt_deg,
        "voxel_volume_ml": volume.voxel_volume_ml,
    }


def measure_lesions(
    mask: Volume,
    ct: Volume | None = None,
    *,
    probabilities: Volume | None = None,
    lungs: Volume | None = None,
) -> LesionReport:
    """Instances of a binary mask and every lesion's measurements (see the module docstring).

    Args:
        mask: binary tumour mask (0/1).
        ct: the CT (HU) on the mask's grid: HU statistics and the body midline for the side.
        probabilities: probability map on the grid: mean/max probability per lesion.
        lungs: lung region mask on the grid (binary both lungs, or two labels): the side.

    Returns:
        The lesions by decreasing volume, their instance labels and the scan's facts.

    Raises:
        InputError: the mask is not binary, probabilities outside [0, 1].
        GeometryError: a volume is not on the mask's grid, or the slices are not axial.
    """
    fg = binary_mask(mask, "tumour")
    if ct is not None:
        check_same_grid(mask, ct, "mask", "CT")
    for role, other in (("probability map", probabilities), ("lung region", lungs)):
        if other is not None:
            check_same_grid(other, mask, role, "mask")
    prob = check_probabilities(probabilities) if probabilities is not None else None
    frame = slice_frame(mask.affine, _path(mask, "mask"))
    found = _label_cropped(fg)
    crop, crop_box = found.labels, found.box
    lung_info = _prepare_lungs(lungs) if lungs is not None else None
    body_midline = _BodyMidline(ct, frame) if ct is not None else None
    affine = mask.affine
    voxel_ml = mask.voxel_volume_ml
    lesions: list[Lesion] = []
    for index, local in enumerate(found.objects):
        lesion_id = index + 1
        instance = crop[local] == lesion_id
        box = tuple(slice(c.start + s.start, c.start + s.stop) for c, s in zip(crop_box, local))
        offset = np.array([s.start for s in box], dtype=np.float64)
        sub = _to_slices_first(instance, frame)
        t, long_mm, long_ab, boundary = _longest_slice(sub, frame)
        short_mm, short_ab = _short_axis(boundary, frame.to_plane_mm, long_ab)
        long_ijk = _lift(long_ab, t, frame, offset)
        short_ijk = _lift(short_ab, t, frame, offset)
        slice_index = int(t + offset[frame.slice_axis])
        voxel_idx = np.argwhere(instance)
        centroid = _ijk_to_ras(affine, voxel_idx.mean(axis=0) + offset)[0]
        side, side_source = _decide_side(centroid, instance, box, lung_info, lungs, body_midline, slice_index)
        hu = np.asarray(ct.array[box])[instance] if ct is not None else None
        pr = np.asarray(prob[box])[instance] if prob is not None else None
        lesions.append(
            Lesion(
                id=lesion_id,
                voxels=int(voxel_idx.shape[0]),
                volume_ml=float(voxel_idx.shape[0] * voxel_ml),
                longest_diameter_mm=long_mm,
                short_axis_mm=short_mm,
                slice_index=slice_index,
                slice_thickness_mm=frame.thickness_mm,
                measurable=is_measurable(long_mm, frame.thickness_mm),
                size_band=size_band(long_mm),
                long_axis_ras_mm=tuple(_triple(p) for p in _ijk_to_ras(affine, long_ijk)),  # type: ignore[arg-type]
                short_axis_ras_mm=tuple(_triple(p) for p in _ijk_to_ras(affine, short_ijk)),  # type: ignore[arg-type]
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
            )
        )
    instances = Volume(_uncrop(crop, crop_box, mask.shape), mask.affine, {"path": None})
    scan = scan_facts(ct if ct is not None else mask, frame)
    scan["sources"] = {
        "ct": ct.meta.get("path") if ct is not None else None,
        "mask": mask.meta.get("path"),
        "probabilities": probabilities.meta.get("path") if probabilities is not None else None,
        "lungs": lungs.meta.get("path") if lungs is not None else None,
    }
    return LesionReport(lesions=lesions, instances=instances, frame=frame, scan=scan)


def _decide_side(
    centroid: np.ndarray,
    instance: np.ndarray,
    box: tuple[slice, ...],
    lung_info: _Lungs | None,
    lungs: Volume | None,
    body_midline: _BodyMidline | None,
    slice_index: int,
) -> tuple[str | None, str | None]:
    """(side, how it was decided); see the module docstring."""
    if lung_info is not None and lungs is not None:
        if lung_info.two_lungs:
            touched = _lung_contact(lung_info, lungs.array, instance, box)
            if touched is not None:
                return touched, "lung region"
        if lung_info.midline_x_mm is not None:
            return _side_from_x(float(centroid[0]), lung_info.midline_x_mm), "lung midline"
    if body_midline is not None:
        midline = body_midline(slice_index)
        if midline is not None:
            return _side_from_x(float(centroid[0]), midline), "body midline"
    return None, None


# --------------------------------------------------------------------------------------------
# Output


#: CSV columns of lesions.csv, in order (coordinates RAS+ mm, indices into the file's array).
CSV_COLUMNS = (
    "id",
    "voxels",
    "volume_ml",
    "longest_diameter_mm",
    "short_axis_mm",
    "measurable",
    "size_band",
    "slice_axis",
    "slice_index",
    "slice_thickness_mm",
    "side",
    "side_source",
    "centroid_x_ras_mm",
    "centroid_y_ras_mm",
    "centroid_z_ras_mm",
    "long_start_x_ras_mm",
    "long_start_y_ras_mm",
    "long_start_z_ras_mm",
    "long_end_x_ras_mm",
    "long_end_y_ras_mm",
    "long_end_z_ras_mm",
    "short_start_x_ras_mm",
    "short_start_y_ras_mm",
    "short_start_z_ras_mm",
    "short_end_x_ras_mm",
    "short_end_y_ras_mm",
    "short_end_z_ras_mm",
    "bbox_i_min",
    "bbox_j_min",
    "bbox_k_min",
    "bbox_i_max",
    "bbox_j_max",
    "bbox_k_max",
    "hu_mean",
    "hu_max",
    "prob_mean",
    "prob_max",
)


def _csv_row(lesion: Lesion, frame: SliceFrame) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": lesion.id,
        "voxels": lesion.voxels,
        "volume_ml": lesion.volume_ml,
        "longest_diameter_mm": lesion.longest_diameter_mm,
        "short_axis_mm": lesion.short_axis_mm,
        "measurable": lesion.measurable,
        "size_band": lesion.size_band,
        "slice_axis": frame.slice_axis_name,
        "slice_index": lesion.slice_index,
        "slice_thickness_mm": lesion.slice_thickness_mm,
        "side": lesion.side,
        "side_source": lesion.side_source,
        "hu_mean": lesion.hu_mean,
        "hu_max": lesion.hu_max,
        "prob_mean": lesion.prob_mean,
        "prob_max": lesion.prob_max,
    }
    for axis, name in enumerate("xyz"):
        row[f"centroid_{name}_ras_mm"] = lesion.centroid_ras_mm[axis]
        for kind, points in (("long", lesion.long_axis_ras_mm), ("short", lesion.short_axis_ras_mm)):
            row[f"{kind}_start_{name}_ras_mm"] = points[0][axis]
            row[f"{kind}_end_{name}_ras_mm"] = points[1][axis]
    for axis, name in enumerate("ijk"):
        row[f"bbox_{name}_min"] = lesion.bbox_ijk_min[axis]
        row[f"bbox_{name}_max"] = lesion.bbox_ijk_max[axis]
    return row


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: the CSV equals the JSON
    return str(value)


def lesions_csv_text(report: LesionReport) -> str:
    """lesions.csv as text: one row per lesion, :data:`CSV_COLUMNS`, empty cells for unknowns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for lesion in report.lesions:
        row = _csv_row(lesion, report.frame)
        writer.writerow([_csv_cell(row[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """JSON-safe copy: NaN -> null, +-inf -> "inf"/"-inf", numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def lesions_document(report: LesionReport, model_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lesions.json document: conventions, scan geometry, model facts, lesions."""
    facts = dict(model_facts or {})
    return json_safe(
        {
            "format": LESIONS_FORMAT,
            "version": LESIONS_FORMAT_VERSION,
            "coordinate_system": WORLD_FRAME_TEXT,
            "conventions": {
                "instances": f"{CONNECTIVITY}-connected components; ids by decreasing voxel count",
                "diameters": DIAMETER_CONVENTION,
                "axial_slices": "acquired voxel planes whose normal is closest to the patient's superior axis, "
                f"measured physically in that plane; at most {MAX_SLICE_TILT_DEG:g} degrees tilt",
                "measurable": f"RECIST 1.1: longest >= {RECIST_MIN_DIAMETER_MM:g} mm and >= "
                f"{RECIST_THICKNESS_FACTOR:g} x slice thickness where slices are thicker than {RECIST_THICK_SLICE_MM:g} mm",
                "size_bands_mm": list(SIZE_BAND_NAMES),
                "indices": "voxel indices (i, j, k) into the file's array, bbox inclusive; *_ijk endpoints are "
                "continuous (pixel centres at integers)",
            },
            "scan": report.scan,
            "model": facts or None,
            "threshold": facts.get("threshold"),
            "lesion_count": len(report.lesions),
            "lesions": [lesion.to_dict() for lesion in report.lesions],
        }
    )


def write_lesion_outputs(
    report: LesionReport,
    out_dir: str | os.PathLike[str],
    model_facts: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> list[Path]:
    """Write lesions.csv, lesions.json and instances.nii.gz (each atomically) into ``out_dir``.

    Everything is rendered in memory first, so a failure before the first write leaves nothing.

    Args:
        report: from :func:`measure_lesions`.
        out_dir: output folder (created if missing).
        model_facts: checkpoint, preprocessing, threshold, ... recorded in lesions.json.
        extra_files: more files to write into ``out_dir`` (name -> bytes), e.g. report.html.

    Returns:
        The written paths.

    Raises:
        InputError: ``out_dir`` exists and is not a folder.
    """
    from lungtumor.atomic import atomic_output
    from lungtumor.io.nifti import write_nifti

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; pass a folder for the lesion outputs")
    csv_text = lesions_csv_text(report)
    json_text = json.dumps(lesions_document(report, model_facts), indent=2, allow_nan=False) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    written = [write_nifti(report.instances, out / INSTANCES_NIFTI)]
    written.append(write_text_atomic(out / LESIONS_CSV, csv_text))
    written.append(write_text_atomic(out / LESIONS_JSON, json_text))
    for name, data in (extra_files or {}).items():
        with atomic_output(out / name, suffix=".tmp") as tmp:
            Path(tmp).write_bytes(data)
        written.append(out / name)
    return written


# --------------------------------------------------------------------------------------------
# Lesion-wise evaluation (used by lungtumor.evaluation.evaluate)


#: FROC: probability thresholds whose connected components are the lesion candidates.
FROC_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: FROC: false positives per scan at which the sensitivity is reported (LUNA16's seven points;
#: their mean is the competition performance metric, Setio et al., Med. Image Anal. 2017).
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FROC_METHOD = (
    "lesion candidates are the 26-connected components of probability >= t for each threshold t, matched to "
    "the reference lesions by the lesion matching rule; the sensitivity at a false-positive rate is the "
    "highest sensitivity among the thresholds whose false positives per scan do not exceed it (0 where none "
    "does: the curve starts at 0 sensitivity and 0 false positives, above every probability); cpm = mean "
    "sensitivity over the seven rates"
)
SIZE_MEASURE = (
    "longest axial diameter (RECIST 1.1) of the reference lesion for sensitivity and of the predicted instance "
    f"for false positives; bands half-open [0, 10), [10, 20), [20, 30), [30, inf) mm; {DIAMETER_CONVENTION}"
)


def _window(inst: _Labelled, box: tuple[slice, ...]) -> np.ndarray:
    """The instance labels over a box of the full array (zeros outside the instances' box)."""
    out = np.zeros(tuple(s.stop - s.start for s in box), dtype=inst.labels.dtype)
    inner = [(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, inst.box)]
    if inst.count and all(lo < hi for lo, hi in inner):
        out[tuple(slice(lo - a.start, hi - a.start) for (lo, hi), a in zip(inner, box))] = inst.labels[
            tuple(slice(lo - b.start, hi - b.start) for (lo, hi), b in zip(inner, inst.box))
        ]
    return out


def _diameters(inst: _Labelled, frame: SliceFrame) -> np.ndarray:
    """Longest axial diameter (mm) of each instance id 1..count."""
    out = np.zeros(inst.count, dtype=np.float64)
    for index, obj in enumerate(inst.objects):
        out[index] = _longest_slice(_to_slices_first(inst.labels[obj] == index + 1, frame), frame)[1]
    return out


def lesion_matching(pred: np.ndarray, ref: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Lesion-wise counts of one case: instances, :data:`MATCHING_RULE`, longest diameters.

    Args:
        pred: predicted mask (bool).
        ref: reference mask (bool), same shape.
        affine: the grid's voxel -> RAS+ affine (for the longest axial diameters).

    Returns:
        ``lesions_ref``, ``lesions_found``, ``false_positive_lesions`` and the per-instance lists
        ``ref_lesion_diameters_mm``, ``ref_lesion_found``, ``pred_lesion_diameters_mm``,
        ``pred_lesion_false_positive`` (by instance id).
    """
    pred_inst, ref_inst = _label_cropped(pred), _label_cropped(ref)
    # Overlaps only occur inside the reference lesions' box.
    overlap = _overlaps(_window(pred_inst, ref_inst.box), pred_inst.count, ref_inst.labels, ref_inst.count)
    match = _match_overlaps(overlap, ref_inst.sizes, pred_inst.sizes)
    frame = slice_frame(affine) if pred_inst.count or ref_inst.count else None
    return {
        "lesions_ref": ref_inst.count,
        "lesions_found": int(match.ref_found.sum()),
        "false_positive_lesions": int(match.pred_false_positive.sum()),
        "ref_lesion_diameters_mm": _diameters(ref_inst, frame).tolist() if frame else [],
        "ref_lesion_found": match.ref_found.tolist(),
        "pred_lesion_diameters_mm": _diameters(pred_inst, frame).tolist() if frame else [],
        "pred_lesion_false_positive": match.pred_false_positive.tolist(),
    }


def size_band_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sensitivity and false positives per scan in each size band, pooled over the cases of ``rows``.

    Args:
        rows: one :func:`lesion_matching` dict (or a row holding its keys) per case.

    Returns:
        One dict per band of :data:`SIZE_BAND_NAMES`: band, diameter_min_mm, diameter_max_mm,
        lesions_ref, lesions_found, sensitivity (NaN without reference lesions in the band),
        false_positive_lesions, false_positives_per_scan.
    """
    def joined(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate([np.asarray(r.get(key, []), dtype=dtype) for r in rows] + [np.empty(0, dtype=dtype)])

    n_cases = len(rows)
    ref_band, ref_found = size_band_index(joined("ref_lesion_diameters_mm", np.float64)), joined("ref_lesion_found", bool)
    pred_band, pred_fp = size_band_index(joined("pred_lesion_diameters_mm", np.float64)), joined("pred_lesion_false_positive", bool)
    edges = (0.0, *SIZE_BAND_EDGES_MM, math.inf)
    bands = []
    for index, name in enumerate(SIZE_BAND_NAMES):
        in_ref = ref_band == index
        n_ref, n_found = int(in_ref.sum()), int((ref_found & in_ref).sum())
        n_fp = int((pred_fp & (pred_band == index)).sum())
        bands.append(
            {
                "band": name,
                "diameter_min_mm": edges[index],
                "diameter_max_mm": edges[index + 1],
                "lesions_ref": n_ref,
                "lesions_found": n_found,
                "sensitivity": n_found / n_ref if n_ref else float("nan"),
                "false_positive_lesions": n_fp,
                "false_positives_per_scan": n_fp / n_cases if n_cases else float("nan"),
            }
        )
    return bands


def froc_counts(prob: np.ndarray, ref: np.ndarray, thresholds: Sequence[float] = FROC_THRESHOLDS) -> dict[str, Any]:
    """Found reference lesions and false-positive candidates of one case at each threshold.

    Candidates at threshold t are the 26-connected components of ``prob >= t``, matched to the
    reference lesions by :data:`MATCHING_RULE`. Components at a higher threshold lie inside
    those at the lowest, so the scan is labelled once, at the lowest threshold, and every other
    threshold only inside each of those components' boxes.

    Args:
        prob: probability map in [0, 1].
        ref: reference mask (bool), same shape.
        thresholds: probability thresholds.

    Returns:
        ``{"lesions_ref": int, "found": [int per threshold], "false_positives": [int per threshold]}``.
    """
    ref_inst = _label_cropped(ref)
    ref_sizes = ref_inst.sizes
    base = _label_cropped(prob >= min(thresholds))
    windows = []  # per lowest-threshold component: (its mask, its probabilities, the reference labels there)
    for index, obj in enumerate(base.objects):
        full = tuple(slice(o.start + b.start, o.stop + b.start) for o, b in zip(obj, base.box))
        windows.append((base.labels[obj] == index + 1, np.asarray(prob[full]), _window(ref_inst, full)))
    found, false_pos = [], []
    for t in thresholds:
        blocks, sizes = [np.zeros((ref_inst.count, 0), dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for component, p, r in windows:
            cand, n_cand = ndimage.label(component & (p >= t), structure=_STRUCTURE_3D)
            if n_cand:
                blocks.append(_overlaps(cand, n_cand, r, ref_inst.count))
                sizes.append(np.bincount(cand.ravel(), minlength=n_cand + 1)[1:])
        match = _match_overlaps(np.concatenate(blocks, axis=1), ref_sizes, np.concatenate(sizes))
        found.append(int(match.ref_found.sum()))
        false_pos.append(int(match.pred_false_positive.sum()))
    return {"lesions_ref": ref_inst.count, "found": found, "false_positives": false_pos}


def froc_summary(per_case: Sequence[dict[str, Any]], thresholds: Sequence[float] = FROC_THRESHOLDS) -> dict[str, Any]:
    """Pool :func:`froc_counts` over cases: the curve, the sensitivity at :data:`FROC_FP_RATES`, the CPM.

    Sensitivity pools lesions over cases (sum found / sum reference lesions); false positives
    are per scan (sum / cases). See :data:`FROC_METHOD`. NaN sensitivities without reference lesions.
    """
    n_cases, n_t = len(per_case), len(thresholds)
    n_ref = int(sum(c["lesions_ref"] for c in per_case))
    found = np.sum([c["found"] for c in per_case], axis=0) if per_case else np.zeros(n_t)
    false_pos = np.sum([c["false_positives"] for c in per_case], axis=0) if per_case else np.zeros(n_t)
    sensitivity = found / n_ref if n_ref else np.full(n_t, np.nan)
    fp_per_scan = false_pos / n_cases if n_cases else np.full(n_t, np.nan)
    at_rates = []
    for rate in FROC_FP_RATES:
        ok = fp_per_scan <= rate
        if not n_ref:
            at_rates.append(float("nan"))
        else:
            at_rates.append(float(sensitivity[ok].max()) if ok.any() else 0.0)
    return {
        "method": FROC_METHOD,
        "cases": n_cases,
        "lesions_ref": n_ref,
        "thresholds": [float(t) for t in thresholds],
        "sensitivity": [float(v) for v in sensitivity],
        "false_positives_per_scan": [float(v) for v in fp_per_scan],
        "fp_rates": [float(r) for r in FROC_FP_RATES],
        "sensitivity_at_fp_rates": at_rates,
        "cpm": float(np.mean(at_rates)) if n_ref else float("nan"),
    }


def froc_png(froc: dict[str, Any]) -> bytes:
    """The FROC curve as PNG bytes (pyplot-free Agg figure): sensitivity vs false positives per scan."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fp = np.asarray(froc["false_positives_per_scan"], dtype=np.float64)
    sens = np.asarray(froc["sensitivity"], dtype=np.float64)
    rates = np.asarray(froc["fp_rates"])
    floor = rates[0] / 2  # 0 FP/scan drawn at the left edge of the log axis
    ok = np.isfinite(fp) & np.isfinite(sens)
    right = max(rates[-1] * 2, float(fp[ok].max()) * 1.2 if ok.any() else 0.0)
    if ok.any():
        # The curve the reported points are read from: the best sensitivity with at most x FP/scan.
        xs = np.unique(np.concatenate([[0.0], fp[ok]]))
        envelope = [max([0.0, *sens[ok][fp[ok] <= x]]) for x in xs]
        ax.step(np.append(np.maximum(xs, floor), right), [*envelope, envelope[-1]], where="post", color="tab:blue", label="best at <= x FP/scan")
        ax.plot(np.maximum(fp[ok], floor), sens[ok], marker="o", linestyle="none", color="tab:blue", alpha=0.5, label="thresholds")
    ax.plot(rates, froc["sensitivity_at_fp_rates"], marker="s", linestyle="none", color="tab:red", label="reported points")
    ax.set_xscale("log", base=2)
    ax.set_xlim(floor, right)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positives per scan (0 drawn at the left edge)")
    ax.set_ylabel("lesion sensitivity")
    cpm = froc.get("cpm")
    cpm_text = f", CPM {cpm:.3f}" if isinstance(cpm, float) and not math.isnan(cpm) else ""
    ax.set_title(f"FROC: {froc['lesions_ref']} lesions, {froc['cases']} scans{cpm_text}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
