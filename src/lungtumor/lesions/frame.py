"""The geometry of a lesion's grid: which voxel planes are axial, their metric, and RAS+ world points.

- **World coordinates** are RAS+ millimetres, the NIfTI/nibabel world of
  :class:`lungtumor.io.volume.Volume`: +x towards the patient's right, +y anterior, +z superior.
  (DICOM's LPS is x and y negated.)
- **Axial slices** are the acquired voxel planes whose normal is closest to the patient's
  superior axis (the voxel axis nibabel's ``io_orientation`` maps to S/I; the plane is spanned by
  the other two voxel axes). Distances are measured physically in that plane from the affine, so
  anisotropic pixels, in-plane rotation, axis flips (LAS, LPS, ...) and permuted axes give the
  same millimetres as an isotropic RAS grid. Planes tilted more than :data:`MAX_SLICE_TILT_DEG`
  from the true axial plane are refused (resample the scan to an axial grid first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lungtumor.errors import GeometryError
from lungtumor.io.volume import Volume, voxel_orientation

#: The world frame of every coordinate written here.
WORLD_FRAME_TEXT = "RAS+ mm (NIfTI/nibabel world: +x towards the patient's right, +y anterior, +z superior)"
#: Slice planes tilted more than this from the true axial plane are refused.
MAX_SLICE_TILT_DEG = 20.0


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


def to_slices_first(array: np.ndarray, frame: SliceFrame) -> np.ndarray:
    """(slices, A, B) view with the in-plane axes in ``plane_axes`` order."""
    return np.moveaxis(array, frame.slice_axis, 0)


def ijk_to_ras(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """(n, 3) RAS+ mm of (n, 3) (or one (3,)) continuous voxel indices under ``affine``."""
    pts = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    return pts @ affine[:3, :3].T + affine[:3, 3]


def lift_to_ijk(ab: np.ndarray, t: int, frame: SliceFrame, offset: np.ndarray) -> np.ndarray:
    """(n, 2) in-plane coordinates on slice t of a crop -> (n, 3) file voxel indices."""
    out = np.zeros((ab.shape[0], 3))
    out[:, frame.slice_axis] = t
    out[:, frame.plane_axes[0]] = ab[:, 0]
    out[:, frame.plane_axes[1]] = ab[:, 1]
    return out + offset


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

