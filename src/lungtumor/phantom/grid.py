"""Phantom sizes and the voxel grid of one case, with its mapping to the body frame (mm).

The body frame: ``u`` towards the patient's left, ``v`` anterior, ``w`` superior (``w = 0`` at
slice 0), ``u = v = 0`` at the centre of the body outline. Every other phantom module builds on
this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PHANTOM_SIZES"]


@dataclass(frozen=True)
class _SizeSpec:
    """Grid ranges of one phantom size.

    Attributes:
        n_inplane: voxels along i and j.
        spacing_xy_mm: in-plane spacing range (the FOV is widened when the body would not fit).
        spacing_z_mm: slice spacing range.
        slices: allowed range of the number of slices.
        abdomen_slices: range of the number of slices below the lowest lung voxel.
        abdomen_mm: range of the scan length below the lowest lung voxel (the larger of the
            two abdomen rules wins).
        min_tumour_voxels: smallest tumour diameter in in-plane voxels (so a model at this
            resolution can see it).
        min_vessel_radius_voxels: vessels thinner than this (in-plane voxels) are not drawn;
            they would be invisible after partial-volume dilution anyway.
        blur_mm: Gaussian point-spread function of the scanner (sigma, in-plane).
    """

    n_inplane: int
    spacing_xy_mm: tuple[float, float]
    spacing_z_mm: tuple[float, float]
    slices: tuple[int, int]
    abdomen_slices: tuple[int, int]
    abdomen_mm: tuple[float, float]
    min_tumour_voxels: float
    min_vessel_radius_voxels: float
    blur_mm: float


#: Phantom sizes. SMALL is the demo/test size (128x128, 60-110 slices); FULL is MSD-like.
PHANTOM_SIZES: dict[str, _SizeSpec] = {
    "SMALL": _SizeSpec(
        n_inplane=128,
        spacing_xy_mm=(2.6, 3.4),
        spacing_z_mm=(3.5, 5.0),
        slices=(60, 110),
        abdomen_slices=(23, 27),
        abdomen_mm=(60.0, 100.0),
        min_tumour_voxels=3.5,
        min_vessel_radius_voxels=0.3,
        blur_mm=0.5,
    ),
    "FULL": _SizeSpec(
        n_inplane=512,
        spacing_xy_mm=(0.6, 0.9),
        spacing_z_mm=(1.0, 2.5),
        slices=(100, 300),
        abdomen_slices=(0, 0),
        abdomen_mm=(40.0, 110.0),
        min_tumour_voxels=4.0,
        min_vessel_radius_voxels=0.6,
        blur_mm=0.5,
    ),
}


@dataclass(frozen=True)
class _Grid:
    """Voxel grid and its mapping to the body frame (u left, v anterior, w superior; mm)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    centre_ij: tuple[float, float]
    affine: np.ndarray

    def u(self, i: np.ndarray | float) -> np.ndarray | float:
        """Index i -> u (mm towards the patient's left)."""
        return (i - self.centre_ij[0]) * self.spacing_mm[0]

    def v(self, j: np.ndarray | float) -> np.ndarray | float:
        """Index j -> v (mm anterior)."""
        return (j - self.centre_ij[1]) * self.spacing_mm[1]

    def w(self, k: np.ndarray | float) -> np.ndarray | float:
        """Index k -> w (mm superior of slice 0)."""
        return k * self.spacing_mm[2]

    def to_index(self, p_mm: np.ndarray) -> np.ndarray:
        """Body-frame points (..., 3) -> fractional voxel indices (..., 3)."""
        sx, sy, sz = self.spacing_mm
        return np.stack(
            [p_mm[..., 0] / sx + self.centre_ij[0], p_mm[..., 1] / sy + self.centre_ij[1], p_mm[..., 2] / sz],
            axis=-1,
        )
