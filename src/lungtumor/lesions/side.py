"""The patient's side of each lesion: the lung it touches, else the side of a midline.

**Side**: the patient's left or right lung. With a lung region mask, the lung the lesion
touches (the two lungs are its two labels when it has exactly two non-zero values, else its two
largest components); otherwise, or when it touches neither, which side of the midline its
centroid lies on (the midline between the two lungs, else the body's midline on the lesion's
key slice from the CT, voxels above :data:`lungtumor.config.AIR_TISSUE_HU`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungtumor.config import AIR_TISSUE_HU
from lungtumor.io.volume import Volume
from lungtumor.lesions.components import CONNECTIVITY_STRUCTURE
from lungtumor.lesions.frame import SliceFrame, ijk_to_ras

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


@dataclass(frozen=True)
class Lungs:
    """The lung region reduced to what the side decision needs."""

    labels: np.ndarray  # strided labels: 0 none, 1 right lung, 2 left lung
    step: int
    midline_x_mm: float | None
    two_lungs: bool


_RIGHT, _LEFT = 1, 2


def prepare_lungs(lungs: Volume) -> Lungs:
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
        comp, n = ndimage.label(strided != 0, structure=CONNECTIVITY_STRUCTURE)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    sub_affine = lungs.affine @ np.diag([step, step, step, 1.0])
    if n == 0:
        return Lungs(np.zeros(strided.shape, dtype=np.uint8), step, None, False)
    order = np.argsort(-sizes, kind="stable")
    first = order[0] + 1
    two = n >= 2 and sizes[order[1]] >= LUNG_SECOND_FRACTION * sizes[order[0]]
    if not two:
        centroid = ijk_to_ras(sub_affine, np.argwhere(comp != 0).mean(axis=0))[0]
        return Lungs(np.zeros(strided.shape, dtype=np.uint8), step, float(centroid[0]), False)
    second = order[1] + 1
    xs = [float(ijk_to_ras(sub_affine, np.argwhere(comp == c).mean(axis=0))[0][0]) for c in (first, second)]
    right, left = (first, second) if xs[0] > xs[1] else (second, first)
    labels = np.zeros(strided.shape, dtype=np.uint8)
    labels[comp == right], labels[comp == left] = _RIGHT, _LEFT
    return Lungs(labels, step, (xs[0] + xs[1]) / 2.0, True)


def _side_from_x(x_mm: float, midline_mm: float) -> str:
    if abs(x_mm - midline_mm) < MIDLINE_TOLERANCE_MM:
        return "midline"
    return "right" if x_mm > midline_mm else "left"  # RAS+: +x towards the patient's right


def _lung_contact(lungs: Lungs, lung_array: np.ndarray, instance: np.ndarray, box: tuple[slice, ...]) -> str | None:
    """Side of the lung the lesion touches (majority of touched lung voxels), None if none."""
    grown_box = tuple(slice(max(s.start - LUNG_CONTACT_VOXELS, 0), min(s.stop + LUNG_CONTACT_VOXELS, n)) for s, n in zip(box, lung_array.shape))
    local = np.zeros(tuple(s.stop - s.start for s in grown_box), dtype=bool)
    inner = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown_box))
    local[inner] = instance
    touched = ndimage.binary_dilation(local, structure=CONNECTIVITY_STRUCTURE, iterations=LUNG_CONTACT_VOXELS)
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


class BodyMidline:
    """World x of the body's centroid per axial slice, computed once per slice (many small lesions share slices)."""

    def __init__(self, ct: Volume, frame: SliceFrame) -> None:
        self.ct, self.frame, self.cache = ct, frame, {}

    def __call__(self, slice_index: int) -> float | None:
        if slice_index not in self.cache:
            self.cache[slice_index] = _body_midline_x(self.ct, self.frame, slice_index)
        return self.cache[slice_index]


def _body_midline_x(ct: Volume, frame: SliceFrame, slice_index: int) -> float | None:
    """World x of the body's centroid on one axial slice (CT voxels above AIR_TISSUE_HU)."""
    index: list[int | slice] = [slice(None)] * 3
    index[frame.slice_axis] = slice_index
    plane = ct.array[tuple(index)]  # a view (np.take would copy the whole scan first)
    body = np.argwhere(plane > AIR_TISSUE_HU)
    if body.size == 0:
        return None
    ab = body.mean(axis=0)
    ijk = np.zeros(3)
    ijk[frame.slice_axis] = slice_index
    ijk[frame.plane_axes[0]], ijk[frame.plane_axes[1]] = ab
    return float(ijk_to_ras(ct.affine, ijk)[0][0])



def decide_side(
    centroid: np.ndarray,
    instance: np.ndarray,
    box: tuple[slice, ...],
    lung_info: Lungs | None,
    lungs: Volume | None,
    body_midline: BodyMidline | None,
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

