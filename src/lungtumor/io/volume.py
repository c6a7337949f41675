"""The Volume type (array + affine) and NIfTI reading/writing.

Axis convention (documented once, here): ``Volume.array`` is indexed ``[i, j, k]`` and
``Volume.affine`` is the 4x4 nibabel affine mapping voxel indices ``(i, j, k, 1)`` to RAS+
millimetres (+x towards the patient's right, +y anterior, +z superior). DICOM's LPS is converted to
RAS once, in the DICOM reader. CT arrays hold Hounsfield units.

Reorientation (:func:`reorient`) only permutes and flips axes (no resampling) and returns the
orientation transform so that :func:`undo_reorient` restores the exact original array and
affine. On its way to model slices a CT (and its mask) is reoriented once, by
:func:`to_canonical`, and the :class:`CanonicalVolume` it returns is passed down.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from lungtumor.config import CANONICAL_AXCODES, GRID_ATOL_MM
from lungtumor.errors import GeometryError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: sizeof_hdr of a NIfTI-2 header (NIfTI-1: 348).
NIFTI2_HEADER_BYTES = 540

try:  # optional fast inflate (a declared dependency; the stdlib path stays as a fallback)
    from isal.igzip import decompress as _gunzip
except ImportError:  # pragma: no cover
    _gunzip = None


@dataclass(frozen=True)
class Volume:
    """A 3D voxel array with its geometry.

    Attributes:
        array: voxel values, shape (I, J, K); CT in HU, masks uint8 {0, 1}.
        affine: 4x4 float64, voxel index -> RAS+ mm (nibabel convention).
        meta: free-form metadata (source path, DICOM series UID, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError(
                f"{self.meta.get('path', 'volume')}: expected a 3D volume, found {self.array.ndim}D "
                f"shape {tuple(self.array.shape)}; pass a single 3D CT (squeeze or split 4D series first)"
            )
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise GeometryError(f"{self.meta.get('path', 'volume')}: affine must be a finite 4x4 matrix, got {aff!r}")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise GeometryError(
                f"{self.meta.get('path', 'volume')}: affine is singular, the orientation is unknown; "
                "fix the file's sform/qform (or DICOM orientation tags)"
            )
        object.__setattr__(self, "affine", aff)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (I, J, K)."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Closest anatomical axis codes, e.g. ('L', 'A', 'S')."""
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """Same geometry, new voxels (shape must match)."""
        if array.shape != self.array.shape:
            raise GeometryError(f"new array shape {array.shape} differs from the volume's {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def same_grid(self, other: Volume, atol: float = GRID_ATOL_MM) -> bool:
        """True when shape and affine agree (affine to ``atol`` mm; :func:`require_same_grid` raises instead)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))


# --------------------------------------------------------------------------------------------
# Input checks shared by every room


def require_same_grid(volume: Volume, reference: Volume, role: str, reference_role: str, *, fix: str | None = None) -> None:
    """The one same-grid guard: shapes equal and affines within :data:`lungtumor.config.GRID_ATOL_MM`.

    Args:
        volume: the volume that must lie on ``reference``'s grid (a mask, a label, a region ...).
        reference: the grid it must match (usually the CT).
        role: what ``volume`` is, for the message ("mask", "label", "lung region").
        reference_role: what ``reference`` is ("CT", "label", "crop").
        fix: how to fix a mismatch, for the message; default: pass the ``role`` made for this
            ``reference_role``.

    Raises:
        GeometryError: the shapes differ or the affines differ by more than ``GRID_ATOL_MM``; the
            one-line message names both files (``meta["path"]``, else the role), both shapes and
            affines, and the fix.
    """
    if volume.same_grid(reference, atol=GRID_ATOL_MM):
        return
    fix = fix if fix is not None else f"pass the {role} made for this {reference_role} (same shape and affine)"
    def named(v: Volume, what: str) -> str:  # "mask /data/m.nii.gz", or "mask" alone for a volume without a file
        return f"{what} {v.meta['path']}" if v.meta.get("path") else what

    raise GeometryError(
        f"{named(volume, role)} (shape {volume.shape}, affine {np.round(volume.affine, 4).tolist()}) is not on "
        f"the grid of {named(reference, reference_role)} (shape {reference.shape}, affine "
        f"{np.round(reference.affine, 4).tolist()}); {fix}"
    )


def is_binary(array: np.ndarray) -> bool:
    """True when every value is 0 or 1 (min/max for integers and bools: no sort of 80M voxels)."""
    if array.dtype.kind in "iub":
        return array.size == 0 or (int(array.min()) >= 0 and int(array.max()) <= 1)
    return bool(np.all((array == 0) | (array == 1)))


# --------------------------------------------------------------------------------------------
# Orientation


def foreground_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box (one slice per axis, stop exclusive) of the non-zero voxels; None when empty."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def voxel_orientation(affine: np.ndarray, source: str = "volume") -> np.ndarray:
    """nibabel's orientation (axis, flip) of each voxel axis of ``affine``, or a one-line GeometryError."""
    aff = np.asarray(affine, dtype=np.float64)
    try:
        ornt = nio.io_orientation(aff)
    except Exception as exc:  # nibabel raises for degenerate affines
        raise GeometryError(f"{source}: cannot determine the orientation of affine {aff.tolist()}: {exc}") from exc
    if np.any(np.isnan(ornt)):
        raise GeometryError(f"{source}: the orientation of affine {aff.tolist()} is unknown (an axis has no direction)")
    return ornt


def orientation_transform(affine: np.ndarray, axcodes: tuple[str, ...]) -> np.ndarray:
    """nibabel orientation transform taking an array with ``affine`` to ``axcodes``."""
    return nio.ornt_transform(voxel_orientation(affine), nio.axcodes2ornt(axcodes))


def reorient(volume: Volume, axcodes: tuple[str, ...]) -> tuple[Volume, np.ndarray]:
    """Permute/flip the array (no resampling) so its closest orientation is ``axcodes``.

    Returns:
        The reoriented Volume (a view where possible) and the orientation transform to pass
        to :func:`undo_reorient`.
    """
    canon = to_canonical(volume, axcodes)
    return canon.canonical, canon.ornt


@dataclass(frozen=True)
class CanonicalVolume:
    """A volume together with its canonical-orientation view and what is needed to go back.

    It stands for the source volume where only its grid is read (``shape``, ``affine`` and
    ``meta`` are the source's: the grid outputs go back to), and carries the voxels already
    reoriented (``canonical``) so that nothing downstream reorients them again.

    Attributes:
        source: the volume as given.
        canonical: the same voxels permuted/flipped to the canonical orientation (a view where
            nibabel allows), with its affine.
        ornt: nibabel orientation transform ``source -> canonical``.
    """

    source: Volume
    canonical: Volume
    ornt: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """The source's shape."""
        return self.source.shape

    @property
    def affine(self) -> np.ndarray:
        """The source's affine."""
        return self.source.affine

    @property
    def meta(self) -> dict[str, Any]:
        """The source's metadata (the same in every orientation)."""
        return self.source.meta

    def undo(self, array: np.ndarray) -> np.ndarray:
        """An array on the canonical grid back onto the source grid (layout only)."""
        return undo_reorient_array(array, self.ornt)


def to_canonical(
    volume: Volume | CanonicalVolume, axcodes: tuple[str, ...] = CANONICAL_AXCODES, *, ornt: np.ndarray | None = None
) -> CanonicalVolume:
    """Reorient ``volume`` to ``axcodes`` (or by a recorded ``ornt``) once, keeping the record to undo it.

    The one reorientation on a CT's way to model slices: the lung-region finder, the slice grid's
    fit and its slicing all take the result instead of reorienting again. A
    :class:`CanonicalVolume` with the same transform is returned as it is (no second reorientation).

    Args:
        volume: any orientation.
        axcodes: the canonical orientation (nibabel axis codes).
        ornt: a recorded orientation transform (e.g. a slice grid's) to apply instead of the one
            computed from ``axcodes``.

    Raises:
        GeometryError: the orientation of the affine is unknown.
    """
    source = volume.source if isinstance(volume, CanonicalVolume) else volume
    transform = orientation_transform(source.affine, axcodes) if ornt is None else np.asarray(ornt, dtype=np.float64)
    if isinstance(volume, CanonicalVolume):
        if np.array_equal(transform, volume.ornt):
            return volume
        volume = source
    array = nio.apply_orientation(volume.array, transform)
    affine = volume.affine @ nio.inv_ornt_aff(transform, volume.array.shape)
    return CanonicalVolume(volume, Volume(array, affine, dict(volume.meta)), transform)


def undo_reorient_array(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Map an array on the reoriented grid back onto the original grid (layout only)."""
    return nio.apply_orientation(array, _invert_ornt(ornt))


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (a signed permutation)."""
    inv = np.zeros_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inv[int(dst_axis)] = (src_axis, flip)
    return inv


def undo_reorient(volume: Volume, ornt: np.ndarray) -> Volume:
    """Inverse of :func:`reorient`: exact original array layout and affine."""
    inverse = _invert_ornt(ornt)
    array = nio.apply_orientation(volume.array, inverse)
    affine = volume.affine @ nio.inv_ornt_aff(inverse, volume.array.shape)
    return Volume(array, affine, dict(volume.meta))


