"""Synthetic chest CT with lung tumours, written in the MSD Task06_Lung layout.

This is the project's built-in demo data: every case is drawn from a seed, so the same seed
always gives the same bytes, and no download is needed. The anatomy is analytic (ellipses,
paraboloids, tubes) and is rendered one axial slice at a time with vectorised NumPy; nothing
loops over voxels (a SMALL case takes ~0.4 s, a FULL 512x512x~250 case ~2 s on 2 cores).

Geometry: ``Volume.array`` is ``[i, j, k]`` with an MSD-like affine ``diag(-sx, +sy, +sz)``
(nibabel axis codes ``('L', 'A', 'S')``): ``i`` runs towards the patient's left, ``j`` towards
anterior, ``k`` towards superior, so ``k = 0`` is the most inferior slice. Arrays are
Fortran-ordered (axial slices contiguous), as nibabel returns them. Internally the
anatomy is described in a body frame in mm: ``u`` towards the patient's left, ``v`` anterior,
``w`` superior (``w = 0`` at slice 0), with ``u = v = 0`` at the centre of the body outline.

Anatomy and Hounsfield units (base value; a smooth texture and Gaussian CT noise,
sigma 12-25 HU, are added everywhere):

======================  =========  =====================================================
tissue                   HU         where
======================  =========  =====================================================
air                      -1000      outside the body, trachea, main bronchi, stomach gas
patient table            150        thin slab under the back
subcutaneous fat         -100       outer band of the body outline (6-20 mm), an ellipse
                                    in front and a flatter superellipse behind
muscle                   45         chest/abdominal wall between the fat and an elliptical
                                    rib cage (thick paraspinal muscles behind), neck
mediastinal fat          -90        between the lungs, around heart and great vessels
lungs                    -880..-830 two lungs, widest near the base, narrowing to the
                                    apices, on a two-dome diaphragm (right dome higher);
                                    dependent (posterior) lung is denser by up to ~50 HU
pulmonary vessels        40         an artery and a vein tree per lung from the hilum,
                                    space-filling (recursive split of random lung points),
                                    radii by Murray's law so they thin towards the
                                    periphery, partial-volume blended into the lung
heart, aorta, SVC        40         heart (rotated ellipsoid, left-anterior), ascending
                                    aorta, arch, descending aorta left of the spine
vertebra                 300 / 900  cancellous body / cortical rim, discs (85), spinal
                                    canal (CSF 12), posterior arch and processes
ribs, sternum, scapula   300 / 900  oblique rib arcs in the chest wall (descending
                                    anteriorly), costal cartilage 120 anteriorly
liver / spleen           60 / 50    below the diaphragm (the 20-30 most inferior slices of
kidneys / stomach        35 / 15    a SMALL case are abdomen with no or little lung)
bowel and fat            25 / -100  rest of the abdomen
tumours                  15..55     0-3 lobulated masses (union of overlapping ellipsoids
                                    with a noisy boundary) inside the lungs, some abutting
                                    the chest wall or mediastinum; the first is 20-50 mm,
                                    others 3-30 mm but at least ~3.5 in-plane voxels
======================  =========  =====================================================

The label is 1 exactly where a tumour replaced lung tissue, 0 elsewhere. Tumours never reach
the :data:`~lungtumor.config.SEED_SKIP_INFERIOR_SLICES` most inferior slices, which the seed's
preprocessing drops. Vessels are as bright as tumours, so a model must learn shape (tubes
versus blobs), not a threshold.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, special

from lungtumor.config import HU_AIR, SEED_SKIP_INFERIOR_SLICES
from lungtumor.atomic import write_text_atomic
from lungtumor.errors import ConfigError
from lungtumor.io.volume import Volume
from lungtumor.io.nifti import write_nifti

__all__ = ["PHANTOM_SIZES", "make_case", "write_phantom_dataset", "case_ids"]

# --------------------------------------------------------------------------------------------
# Sizes


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

# --------------------------------------------------------------------------------------------
# Tissue classes and their HU (base value, texture amplitude)

_AIR, _TABLE, _FAT, _MUSCLE, _MED_FAT, _LUNG, _HEART, _BLOOD = range(8)
_BONE, _CORTEX, _CARTILAGE, _DISC, _CSF, _LIVER, _SPLEEN, _KIDNEY = range(8, 16)
_STOMACH, _BOWEL, _TUMOUR, _AIRWAY = range(16, 20)
_N_CLASSES = 20

#: Base HU of every tissue class (lung and tumour are overridden per case / per tumour).
_CLASS_HU = {
    _AIR: float(HU_AIR),
    _TABLE: 150.0,
    _FAT: -100.0,
    _MUSCLE: 45.0,
    _MED_FAT: -90.0,
    _LUNG: -850.0,
    _HEART: 40.0,
    _BLOOD: 40.0,
    _BONE: 300.0,
    _CORTEX: 900.0,
    _CARTILAGE: 120.0,
    _DISC: 85.0,
    _CSF: 12.0,
    _LIVER: 60.0,
    _SPLEEN: 50.0,
    _KIDNEY: 35.0,
    _STOMACH: 15.0,
    _BOWEL: 25.0,
    _TUMOUR: 35.0,  # only a placeholder: each tumour has its own HU_TUMOUR_RANGE value
    _AIRWAY: float(HU_AIR),
}
#: Amplitude (HU per unit of the smooth texture field, std 1) of every class.
_CLASS_TEXTURE_HU = {
    _FAT: 12.0,
    _MUSCLE: 8.0,
    _MED_FAT: 12.0,
    _LUNG: 18.0,
    _HEART: 5.0,
    _BLOOD: 3.0,
    _BONE: 60.0,
    _CORTEX: 60.0,
    _CARTILAGE: 10.0,
    _DISC: 8.0,
    _CSF: 3.0,
    _LIVER: 6.0,
    _SPLEEN: 5.0,
    _KIDNEY: 6.0,
    _STOMACH: 4.0,
    _BOWEL: 25.0,
    _TUMOUR: 9.0,
}

HU_VESSEL = 40.0
"""Pulmonary vessels (blood, no contrast agent)."""
HU_LUNG_RANGE = (-880.0, -830.0)
"""Base HU of the non-dependent (anterior) lung, drawn per case."""
HU_TUMOUR_RANGE = (15.0, 55.0)
"""Base HU of a tumour, drawn per tumour."""
CT_NOISE_SIGMA_HU = (12.0, 25.0)
"""Range of the Gaussian CT noise standard deviation, drawn per case."""
CT_HU_RANGE = (-1024, 3071)
"""int16 CT values are clipped to the 12-bit range of a CT scanner."""
LUNG_DEPENDENT_HU_PER_MM = 0.3
"""Gravity: supine lungs get denser towards the back (HU per mm posterior)."""
TEXTURE_CORRELATION_MM = 6.0
"""Correlation length of the smooth tissue texture."""
BOWEL_TEXTURE_THRESHOLD = 0.4
"""Where the texture exceeds this, abdominal fat becomes bowel."""

# Tumours
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

# Vessels
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
_TUMOUR_WALL_MARGIN = 1.35  # a tumour's extent is at most this many radii from its centre


# --------------------------------------------------------------------------------------------
# Geometry of one case


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


@dataclass(frozen=True)
class _Ellipsoid:
    """Axis-aligned ellipsoid in the body frame (mm)."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]

    def q2d(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """In-plane normalised squared radius."""
        return ((u - self.centre[0]) / self.semi[0]) ** 2 + ((v - self.centre[1]) / self.semi[1]) ** 2

    def limit(self, w: float) -> float:
        """The in-plane q2d below which a point of slice ``w`` is inside."""
        return 1.0 - ((w - self.centre[2]) / self.semi[2]) ** 2


@dataclass(frozen=True)
class _Anatomy:
    """Every random anatomical parameter of one case (mm, body frame)."""

    body_a: float  # lateral semi-axis of the body outline
    body_b_ant: float  # anterior semi-axis
    body_b_post: float  # posterior semi-axis
    fat_mm: float
    muscle_mm: float
    cage_v: float  # centre of the rib-cage ellipse (v)
    cage_semi: tuple[float, float, float]  # rib-cage semi-axes: lateral, anterior, posterior
    rib_zone_mm: float
    w_low: float  # lowest lung point (posterior costophrenic recess)
    lung_height_mm: float
    w_dome: tuple[float, float]  # (right, left) diaphragm dome heights
    dome_u: float
    dome_radius_mm: float
    dome_tilt: float  # mm of diaphragm height per mm anterior
    apex_centre: tuple[float, float]  # (|u|, v) of the lung apex
    apex_semi: tuple[float, float]
    v_spine: float
    r_vertebra: float
    spine_pitch_mm: float
    spine_phase_mm: float
    med_half_width: float
    med_half_width_ant: float
    heart_centre: tuple[float, float, float]
    heart_semi: tuple[float, float, float]
    heart_angle_rad: float
    r_aorta: float
    aorta_desc_uv: tuple[float, float]
    aorta_asc_uv: tuple[float, float]
    aorta_abd_uv: tuple[float, float]
    w_arch: float
    svc_uv: tuple[float, float]
    r_svc: float
    v_trachea: float
    r_trachea: float
    w_carina: float
    w_hilum: float
    hilum_u: float
    r_bronchus: float
    esophagus_uv: tuple[float, float]
    rib_pitch_mm: float
    rib_phase_mm: float
    rib_drop_mm: float
    rib_height_mm: float
    liver: _Ellipsoid
    spleen: _Ellipsoid
    stomach: _Ellipsoid
    kidneys: tuple[_Ellipsoid, _Ellipsoid]
    v_table: float
    lung_hu: float
    bone_hu: float
    noise_sigma_hu: float

    @property
    def w_apex(self) -> float:
        return self.w_low + self.lung_height_mm

    @property
    def w_heart_top(self) -> float:
        return self.heart_centre[2] + 0.7 * self.heart_semi[2]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_case_geometry(rng: np.random.Generator, spec: _SizeSpec) -> tuple[_Grid, _Anatomy]:
    """Draw the grid (spacing, slices, affine) and the anatomy of one case.

    The literal numbers below are ranges (mm) of adult chest anatomy, each used once; they are
    the phantom's parameters and live next to the structure they shape rather than as ~80
    module constants.
    """
    a = _u(rng, 140.0, 170.0)
    b_ant = _u(rng, 105.0, 130.0)
    b_post = _u(rng, 95.0, 115.0)
    n = spec.n_inplane
    # Widen the field of view when the body (plus the table and a margin) would not fit.
    sxy = max(_u(rng, *spec.spacing_xy_mm), (2.0 * a + 30.0) / n, (b_ant + b_post + 40.0) / n)

    lung_height = _u(rng, 190.0, 250.0)
    top_margin = _u(rng, 10.0, 30.0)
    abd_mm = _u(rng, *spec.abdomen_mm)
    abd_slices = int(rng.integers(spec.abdomen_slices[0], spec.abdomen_slices[1] + 1))
    # Thick enough slices that the scan fits the slice budget.
    sz_needed = (abd_mm + lung_height + top_margin) / (spec.slices[1] - 1)
    sz = max(_u(rng, *spec.spacing_z_mm), sz_needed)
    n_abd = max(abd_slices, int(np.ceil(abd_mm / sz)))
    n_thorax = int(np.ceil((lung_height + top_margin) / sz)) + 1
    n_abd += max(0, spec.slices[0] - (n_abd + n_thorax))
    n_abd -= max(0, n_abd + n_thorax - spec.slices[1])
    n_slices = n_abd + n_thorax
    w_low = n_abd * sz

    # Body centre slightly off the FOV centre; keep the back above the table and in the FOV.
    half_fov = 0.5 * n * sxy
    u0 = _u(rng, -6.0, 6.0)
    v0 = _u(rng, -15.0, 10.0)
    v0 = max(v0, -half_fov + b_post + 20.0)
    v0 = min(v0, half_fov - b_ant - 5.0)
    centre_ij = ((n - 1) / 2.0 + u0 / sxy, (n - 1) / 2.0 + v0 / sxy)
    # MSD-like affine: x decreases with i (axis code 'L'); origin near the scanner isocentre.
    affine = np.array(
        [
            [-sxy, 0.0, 0.0, sxy * (n - 1) / 2.0 + _u(rng, -10.0, 10.0)],
            [0.0, sxy, 0.0, -sxy * (n - 1) / 2.0 + _u(rng, -30.0, 30.0)],
            [0.0, 0.0, sz, -_u(rng, 100.0, 400.0)],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    grid = _Grid((n, n, n_slices), (sxy, sxy, sz), centre_ij, affine)

    fat = _u(rng, 6.0, 20.0)
    muscle = _u(rng, 8.0, 14.0)
    r_vb = _u(rng, 14.0, 18.0)
    v_spine = -b_post + fat + _u(rng, 70.0, 80.0)
    med_hw = _u(rng, 18.0, 26.0)
    rib_zone = _u(rng, 9.0, 12.0)
    # The rib cage is rounder than the body behind: its back lies level with the spinal canal.
    cage_v = v_spine + 5.0
    cage_back = v_spine - r_vb - _u(rng, 35.0, 42.0)
    cage_a = a - fat - muscle - rib_zone
    cage_ant = b_ant - fat - 0.8 * muscle - rib_zone - cage_v
    dome_right = w_low + _u(rng, 55.0, 75.0)
    dome_left = dome_right - _u(rng, 5.0, 20.0)
    heart_w = w_low + _u(rng, 55.0, 70.0)
    heart_semi = (_u(rng, 55.0, 68.0), _u(rng, 42.0, 52.0), _u(rng, 50.0, 60.0))
    v_trachea = v_spine + r_vb + _u(rng, 12.0, 16.0)
    w_carina = w_low + lung_height * _u(rng, 0.55, 0.62)
    r_aorta = _u(rng, 10.0, 13.0)
    aorta_desc = (r_vb + r_aorta * 0.5 + 2.0, v_spine + _u(rng, 2.0, 8.0))
    aorta_asc = (_u(rng, -14.0, -6.0), v_trachea + _u(rng, 24.0, 32.0))
    anatomy = _Anatomy(
        body_a=a,
        body_b_ant=b_ant,
        body_b_post=b_post,
        fat_mm=fat,
        muscle_mm=muscle,
        cage_v=cage_v,
        cage_semi=(cage_a, cage_ant, cage_v - cage_back),
        rib_zone_mm=rib_zone,
        w_low=w_low,
        lung_height_mm=lung_height,
        w_dome=(dome_right, dome_left),
        dome_u=0.35 * a,
        dome_radius_mm=_u(rng, 65.0, 80.0),
        dome_tilt=_u(rng, 0.1, 0.2),
        apex_centre=(0.45 * cage_a, cage_v - 0.2 * (cage_v - cage_back)),
        apex_semi=(0.55 * cage_a, 0.6 * (cage_ant + cage_v - cage_back)),
        v_spine=v_spine,
        r_vertebra=r_vb,
        spine_pitch_mm=_u(rng, 24.0, 30.0),
        spine_phase_mm=_u(rng, 0.0, 30.0),
        med_half_width=med_hw,
        med_half_width_ant=_u(rng, 6.0, 12.0),
        heart_centre=(_u(rng, 15.0, 30.0), v_trachea + _u(rng, 35.0, 50.0), heart_w),
        heart_semi=heart_semi,
        heart_angle_rad=np.deg2rad(_u(rng, 20.0, 40.0)),
        r_aorta=r_aorta,
        aorta_desc_uv=aorta_desc,
        aorta_asc_uv=aorta_asc,
        aorta_abd_uv=(_u(rng, 0.0, 8.0), v_spine + r_vb + r_aorta + 3.0),
        w_arch=w_carina + _u(rng, 20.0, 30.0),
        svc_uv=(aorta_asc[0] - r_aorta - 10.0, aorta_asc[1] - _u(rng, 0.0, 6.0)),
        r_svc=_u(rng, 7.0, 10.0),
        v_trachea=v_trachea,
        r_trachea=_u(rng, 8.0, 10.0),
        w_carina=w_carina,
        w_hilum=w_carina - _u(rng, 15.0, 25.0),
        hilum_u=med_hw + _u(rng, 8.0, 14.0),
        r_bronchus=_u(rng, 5.0, 7.0),
        esophagus_uv=(_u(rng, 0.0, 6.0), v_trachea - _u(rng, 12.0, 15.0)),
        rib_pitch_mm=_u(rng, 24.0, 30.0),
        rib_phase_mm=_u(rng, 0.0, 30.0),
        rib_drop_mm=_u(rng, 90.0, 120.0),
        rib_height_mm=_u(rng, 10.0, 14.0),
        liver=_Ellipsoid(
            (-0.3 * a, 0.05 * b_ant, dome_right - 75.0), (0.72 * a, 0.9 * b_ant, _u(rng, 80.0, 95.0))
        ),
        spleen=_Ellipsoid((0.6 * a, -0.35 * b_post, dome_left - 50.0), (0.2 * a, 0.4 * b_post, _u(rng, 40.0, 55.0))),
        stomach=_Ellipsoid((0.38 * a, 0.35 * b_ant, dome_left - 40.0), (0.28 * a, 0.35 * b_ant, _u(rng, 35.0, 50.0))),
        kidneys=tuple(  # type: ignore[arg-type]
            _Ellipsoid((s * 0.42 * a, v_spine + 5.0, w_low - _u(rng, 40.0, 60.0)), (28.0, 30.0, 55.0)) for s in (-1, 1)
        ),
        v_table=-b_post - _u(rng, 2.0, 8.0),
        lung_hu=_u(rng, *HU_LUNG_RANGE),
        bone_hu=_u(rng, 220.0, 350.0),
        noise_sigma_hu=_u(rng, *CT_NOISE_SIGMA_HU),
    )
    return grid, anatomy


# --------------------------------------------------------------------------------------------
# Analytic lung (shared by the slice renderer and by the tumour/vessel placement)


@dataclass(frozen=True)
class _LungMaps:
    """w-independent fields needed to decide "inside a lung" (any broadcastable shape)."""

    cavity: np.ndarray  # inside the thoracic wall
    zd: np.ndarray  # diaphragm height
    qa: np.ndarray  # apex ellipse, normalised squared radius
    mediastinum: np.ndarray  # central band + spine zone (never lung)
    heart_q: np.ndarray  # heart, rotated in-plane, normalised squared radius
    heart_q_margin: np.ndarray  # the same with a pericardial margin
    aorta_desc: np.ndarray
    aorta_desc_margin: np.ndarray
    aorta_asc_margin: np.ndarray
    svc_margin: np.ndarray
    arch_margin: np.ndarray
    depth: np.ndarray  # mm inside the body outline (negative outside)
    cage_depth: np.ndarray  # mm inside the rib cage (negative outside)


_PLEURA_MM = 1.0
_RIB_CORTEX = 0.6  # outer part of the rib's normalised squared radius that is cortical bone
_BACK_EXPONENT = 2.6
_PERICARDIUM_MM = 4.0
_VESSEL_MARGIN_MM = 2.0


def _outline_depth(
    u: np.ndarray, v: np.ndarray, a: float, b_ant: float, b_post: float, back_exponent: float = 2.0
) -> np.ndarray:
    """Depth (mm) inside an outline along the ray from its centre (exact for circles).

    The outline is an ellipse in front (``v > 0``) and a superellipse with ``back_exponent``
    behind; negative outside.
    """
    b = np.where(v > 0, b_ant, b_post)
    p = np.where(v > 0, 2.0, back_exponent)
    rho = (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1.0 / p)
    r = np.sqrt(u * u + v * v)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(rho > 1e-6, r / np.maximum(rho, 1e-6) - r, min(a, b_ant, b_post))
    return d


def _disc(u: np.ndarray, v: np.ndarray, centre: tuple[float, float], r: float) -> np.ndarray:
    return (u - centre[0]) ** 2 + (v - centre[1]) ** 2 < r * r


def _segment_distance_2d(u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """In-plane distance (mm) to the segment a-b."""
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.sqrt((u - a[0] - t * du) ** 2 + (v - a[1] - t * dv) ** 2)


def _lung_maps(an: _Anatomy, u: np.ndarray, v: np.ndarray) -> _LungMaps:
    """The w-independent lung fields at in-plane positions ``u``, ``v`` (broadcastable)."""
    # A supine patient's back is flattened by the table (superellipse behind).
    depth = _outline_depth(u, v, an.body_a, an.body_b_ant, an.body_b_post, _BACK_EXPONENT)
    cage_depth = _outline_depth(u, v - an.cage_v, *an.cage_semi)
    cavity = cage_depth > _PLEURA_MM

    # Diaphragm: two paraboloid domes (right higher), lowest at the posterior periphery.
    zd = np.full(np.broadcast_shapes(np.shape(u), np.shape(v)), an.w_low, dtype=np.float64)
    for side, dome in ((-1.0, an.w_dome[0]), (1.0, an.w_dome[1])):
        rel = ((u - side * an.dome_u) ** 2 + v * v) / an.dome_radius_mm**2
        zd = np.maximum(zd, dome - (dome - an.w_low) * rel + an.dome_tilt * v)

    qa = ((np.abs(u) - an.apex_centre[0]) / an.apex_semi[0]) ** 2 + ((v - an.apex_centre[1]) / an.apex_semi[1]) ** 2

    # Mediastinum: narrow anteriorly (junction line), wider in the middle, the spine behind.
    v_post = an.v_spine + an.r_vertebra + 10.0
    hw = np.interp(
        v,
        [an.v_spine, v_post, 0.5 * (v_post + an.heart_centre[1]), an.heart_centre[1], an.body_b_ant],
        [an.r_vertebra + 6.0, 0.75 * an.med_half_width, an.med_half_width, 0.8 * an.med_half_width,
         an.med_half_width_ant],
    )
    band = np.abs(u) < hw
    spine_zone = (u * u + (v - an.v_spine) ** 2 < (an.r_vertebra + 8.0) ** 2) | (
        (v < an.v_spine) & (np.abs(u) < an.r_vertebra + 12.0)
    )

    hc, hs = an.heart_centre, an.heart_semi
    cos, sin = np.cos(an.heart_angle_rad), np.sin(an.heart_angle_rad)
    uh = (u - hc[0]) * cos + (v - hc[1]) * sin
    vh = -(u - hc[0]) * sin + (v - hc[1]) * cos
    heart_q = (uh / hs[0]) ** 2 + (vh / hs[1]) ** 2
    heart_q_margin = (uh / (hs[0] + _PERICARDIUM_MM)) ** 2 + (vh / (hs[1] + _PERICARDIUM_MM)) ** 2

    m = _VESSEL_MARGIN_MM
    return _LungMaps(
        cavity=cavity,
        zd=zd,
        qa=qa,
        mediastinum=band | spine_zone,
        heart_q=heart_q,
        heart_q_margin=heart_q_margin,
        aorta_desc=_disc(u, v, an.aorta_desc_uv, an.r_aorta),
        aorta_desc_margin=_disc(u, v, an.aorta_desc_uv, an.r_aorta + m),
        aorta_asc_margin=_disc(u, v, an.aorta_asc_uv, an.r_aorta + 2.0 + m),
        svc_margin=_disc(u, v, an.svc_uv, an.r_svc + m),
        arch_margin=_segment_distance_2d(u, v, an.aorta_asc_uv, an.aorta_desc_uv) < an.r_aorta + m,
        depth=depth,
        cage_depth=cage_depth,
    )


_APEX_SCALE_AT_BASE = 1.15  # the apex ellipse at the base is about the cavity half
_APEX_EXPONENT = 1.6  # lung half-width ~ sqrt(1 - t**_APEX_EXPONENT), t = height / lung height


def _apex_limit(an: _Anatomy, w: np.ndarray | float) -> np.ndarray | float:
    """Squared scale of the apex ellipse at height ``w``: full near the base, 0 at the apex."""
    t = np.clip((np.asarray(w, dtype=np.float64) - an.w_low) / an.lung_height_mm, 0.0, None)
    return _APEX_SCALE_AT_BASE**2 * np.clip(1.0 - t**_APEX_EXPONENT, 0.0, None)


def _heart_limit(an: _Anatomy, w: np.ndarray | float, margin: float = 0.0) -> np.ndarray | float:
    return 1.0 - ((np.asarray(w, dtype=np.float64) - an.heart_centre[2]) / (an.heart_semi[2] + margin)) ** 2


def _lung_mask(an: _Anatomy, lm: _LungMaps, w: np.ndarray | float) -> np.ndarray:
    """True inside a lung at height(s) ``w`` (scalar for a slice, or an array of points)."""
    w = np.asarray(w, dtype=np.float64)
    inside = lm.cavity & (lm.zd < w) & (lm.qa < _apex_limit(an, w)) & ~lm.mediastinum
    inside &= ~(lm.heart_q_margin < _heart_limit(an, w, _PERICARDIUM_MM))
    inside &= ~(lm.aorta_desc_margin & (w < an.w_arch))
    inside &= ~(lm.aorta_asc_margin & (w > an.w_heart_top) & (w < an.w_arch))
    inside &= ~(lm.svc_margin & (w > an.w_heart_top))
    inside &= ~(lm.arch_margin & (np.abs(w - an.w_arch) < an.r_aorta + _VESSEL_MARGIN_MM))
    return inside


def _inside_lung_points(an: _Anatomy, p: np.ndarray) -> np.ndarray:
    """Lung test for body-frame points of shape (..., 3)."""
    lm = _lung_maps(an, p[..., 0], p[..., 1])
    return _lung_mask(an, lm, p[..., 2])


# --------------------------------------------------------------------------------------------
# Smooth texture


class _SmoothField:
    """Smooth random field with unit variance, produced one axial slice at a time.

    A coarse Gaussian-smoothed white-noise grid (spacing = the correlation length) is
    interpolated linearly. Only element-wise NumPy is used (no BLAS), so the bytes do not
    depend on the number of threads.
    """

    def __init__(self, rng: np.random.Generator, grid: _Grid, corr_mm: float) -> None:
        sx, sy, sz = grid.spacing_mm
        nx, ny, nz = grid.shape
        self._pos = [np.arange(n) * s / corr_mm + 1.0 for n, s in ((nx, sx), (ny, sy), (nz, sz))]
        coarse_shape = tuple(int(np.floor(p[-1])) + 3 for p in self._pos)
        coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
        self._coarse = (coarse / coarse.std()).astype(np.float32)
        self._ix = np.floor(self._pos[0]).astype(np.intp)
        self._wx = (self._pos[0] - self._ix).astype(np.float32)[None, :]
        self._iy = np.floor(self._pos[1]).astype(np.intp)
        self._wy = (self._pos[1] - self._iy).astype(np.float32)[:, None]
        self._cache: dict[int, np.ndarray] = {}

    def _plane(self, c: int) -> np.ndarray:
        if c not in self._cache:
            if len(self._cache) > 2:  # slices are visited in order: keep the last few planes
                self._cache.pop(min(self._cache))
            a = self._coarse[:, :, c].T  # (coarse j, coarse i)
            ay = a[self._iy] * (1.0 - self._wy) + a[self._iy + 1] * self._wy
            self._cache[c] = ay[:, self._ix] * (1.0 - self._wx) + ay[:, self._ix + 1] * self._wx
        return self._cache[c]

    def slice(self, k: int) -> np.ndarray:
        """The field on axial slice ``k``, shape (J, I) (the renderer's slice layout), float32."""
        pos = self._pos[2][k]
        c = int(np.floor(pos))
        f = np.float32(pos - c)
        return self._plane(c) * (np.float32(1.0) - f) + self._plane(c + 1) * f


# --------------------------------------------------------------------------------------------
# Vessel trees


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
                segments += _vessel_tree(rng, root, targets, _u(rng, *VESSEL_ROOT_RADIUS_MM), r_min)
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


# --------------------------------------------------------------------------------------------
# Tumours


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
                    tumours.append(_Tumour(c[hits[0]], radius, _u(rng, *HU_TUMOUR_RANGE)))
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


# --------------------------------------------------------------------------------------------
# Rendering


_NOISE_TABLE_SIZE = 1 << 16
#: Standard normal quantiles at the centres of 2**16 equal-probability bins: indexing this table
#: with uniform uint16 draws gives Gaussian noise (to +-4.3 sigma) about 4x faster than
#: ``Generator.standard_normal``.
_GAUSS_TABLE = special.ndtri((np.arange(_NOISE_TABLE_SIZE) + 0.5) / _NOISE_TABLE_SIZE).astype(np.float32)
_BLUR_MIN_SIGMA_PX = 0.5  # below this the point-spread function is not worth a filter pass


def _blur_binomial(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur (sigma = 0.71 px), edges replicated; float32 in and out."""
    for axis in (0, 1):
        a = np.moveaxis(img, axis, 0)
        out = 0.5 * a
        out[1:] += 0.25 * a[:-1]
        out[:-1] += 0.25 * a[1:]
        out[0] += 0.25 * a[0]
        out[-1] += 0.25 * a[-1]
        img = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(img)


class _Painter:
    """Static (w-independent) maps of one case and the per-slice class painter.

    A slice is handled as a flat array in (J, I) order, so that slice ``k`` of a volume stored
    as (K, J, I) is contiguous; region masks are kept as flat index arrays (assigning through
    indices is ~10x faster than through full boolean masks). Everything that depends on the
    height ``w`` is evaluated on the pixels inside the rib cage only.
    """

    def __init__(self, grid: _Grid, an: _Anatomy) -> None:
        nx, ny, _ = grid.shape
        self.an = an
        u2d = np.broadcast_to(grid.u(np.arange(nx, dtype=np.float64))[None, :], (ny, nx))
        v2d = np.broadcast_to(grid.v(np.arange(ny, dtype=np.float64))[:, None], (ny, nx))
        u, v = u2d.ravel(), v2d.ravel()
        self.n_pixels = u.size
        depth = _outline_depth(u, v, an.body_a, an.body_b_ant, an.body_b_post, _BACK_EXPONENT)
        cage_depth = _outline_depth(u, v - an.cage_v, *an.cage_semi)

        base = np.full(u.size, _AIR, dtype=np.uint8)
        base[(v < an.v_table) & (v > an.v_table - _TABLE_MM)] = _TABLE
        base[depth > 0] = _FAT
        base[depth > an.fat_mm] = _MUSCLE
        spine_zone = (u * u + (v - an.v_spine) ** 2 < (an.r_vertebra + 8.0) ** 2) & (cage_depth > 0)
        base[spine_zone] = _MUSCLE
        self.base = base

        # Pixels inside the rib cage (thorax above the diaphragm, abdomen below it).
        self.cav = np.flatnonzero(cage_depth > 0)
        uc, vc = u[self.cav], v[self.cav]
        self.uc, self.vc = uc, vc
        self.lm = _lung_maps(an, uc, vc)
        self.organs = [(_KIDNEY, e, e.q2d(uc, vc)) for e in an.kidneys] + [
            (_SPLEEN, an.spleen, an.spleen.q2d(uc, vc)),
            (_LIVER, an.liver, an.liver.q2d(uc, vc)),
        ]
        self.stomach_q = an.stomach.q2d(uc, vc)
        self.stomach_gas = vc > an.stomach.centre[1] + 0.45 * an.stomach.semi[1]
        self.gravity = (
            LUNG_DEPENDENT_HU_PER_MM * (np.clip(an.body_b_ant - v, 0.0, None) - 0.6 * an.body_b_ant)
        ).astype(np.float32)

        # Ribs: an oval cross-section in (radial, height-along-the-rib) coordinates; they
        # descend anteriorly, so their height shifts with the angle around the body (0 at the
        # spine, pi at the sternum).
        rib_zone = (depth > 0) & (cage_depth < 0) & (cage_depth > -an.rib_zone_mm)
        rib_zone &= ~((np.abs(u) < an.r_vertebra + 10.0) & (v < an.v_spine))
        rib_zone &= ~((np.abs(u) < 22.0) & (v > 0))
        self.rib_idx = np.flatnonzero(rib_zone)
        ri = self.rib_idx
        self.rib_radial = ((cage_depth[ri] + 0.5 * an.rib_zone_mm) / (0.5 * an.rib_zone_mm)) ** 2
        self.rib_shift = an.rib_drop_mm * np.arctan2(np.abs(u[ri]), -v[ri]) / np.pi
        self.rib_cartilage = v[ri] > 0.5 * an.body_b_ant

        def where(mask: np.ndarray) -> np.ndarray:
            return np.flatnonzero(mask)

        sternum_q = (u / 16.0) ** 2 + ((cage_depth + 6.0) / 6.0) ** 2
        self.sternum = where((v > 0) & (sternum_q < 1.0))
        self.sternum_spongy = where((v > 0) & (sternum_q < 0.5))
        self.scapula = where(
            (np.abs(u) > 0.45 * an.body_a)
            & (v < an.cage_v)
            & (cage_depth < -an.rib_zone_mm - 6.0)
            & (cage_depth > -an.rib_zone_mm - 11.0)
            & (depth > an.fat_mm)
        )
        self.vb = where(_disc(u, v, (0.0, an.v_spine), an.r_vertebra))
        self.vb_spongy = where(_disc(u, v, (0.0, an.v_spine), an.r_vertebra - 2.0))
        canal_c = (0.0, an.v_spine - an.r_vertebra - 9.0)
        canal = _disc(u, v, canal_c, 8.0)
        self.canal = where(canal)
        arch_ring = _disc(u, v, canal_c, 13.0) & ~canal & (v < canal_c[1] + 6.0)
        spinous = ((u / 4.5) ** 2 + ((v - canal_c[1] + 22.0) / 12.0) ** 2) < 1.0
        transverse = (((np.abs(u) - 18.0) / 10.0) ** 2 + ((v - canal_c[1] + 2.0) / 4.0) ** 2) < 1.0
        self.posterior_elements = where(arch_ring | spinous | transverse)

        self.trachea = where(_disc(u, v, (0.0, an.v_trachea), an.r_trachea))
        self.trachea_wall = where(_disc(u, v, (0.0, an.v_trachea), an.r_trachea + 2.0))
        self.esophagus = where(_disc(u, v, an.esophagus_uv, 7.0))
        self.aorta_asc = where(_disc(u, v, an.aorta_asc_uv, an.r_aorta + 2.0))
        self.svc = where(_disc(u, v, an.svc_uv, an.r_svc))
        self.arch = where(_segment_distance_2d(u, v, an.aorta_asc_uv, an.aorta_desc_uv) < an.r_aorta)
        self.aorta_desc = where(_disc(u, v, an.aorta_desc_uv, an.r_aorta))
        self.aorta_abd = where(_disc(u, v, an.aorta_abd_uv, an.r_aorta - 1.0) & (cage_depth > 0))
        self.ivc = where(_disc(u, v, (-an.aorta_abd_uv[0] - 25.0, an.aorta_abd_uv[1]), 11.0) & (cage_depth > 0))
        zd = self._zd(u, v)
        self.zd_aorta_desc = zd[self.aorta_desc]
        self.zd_aorta_abd = zd[self.aorta_abd]
        self.zd_ivc = zd[self.ivc]

    def _zd(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _lung_maps(self.an, u, v).zd

    def paint(self, flat: np.ndarray, w: float, tex: np.ndarray) -> np.ndarray | None:
        """Paint the classes of the slice at height ``w`` into ``flat``.

        Returns:
            Flat indices of the lung pixels (before tumours), or None above the chest.
        """
        an, lm, cav = self.an, self.lm, self.cav
        flat[:] = self.base
        thorax = lm.zd < w
        in_chest = w < an.w_apex + 10.0
        if in_chest:
            flat[cav[thorax & lm.cavity]] = _MED_FAT
        abdomen = ~thorax
        if abdomen.any():
            ab = cav[abdomen]
            flat[ab] = _FAT
            flat[ab[tex[ab] > BOWEL_TEXTURE_THRESHOLD]] = _BOWEL
            for organ_cls, ell, q in self.organs[:3]:  # kidneys, spleen
                lim = ell.limit(w)
                if lim > 0:
                    flat[cav[abdomen & (q < lim)]] = organ_cls
            lim = an.stomach.limit(w)
            if lim > 0:
                stomach = abdomen & (self.stomach_q < lim)
                flat[cav[stomach]] = _STOMACH
            organ_cls, ell, q = self.organs[3]  # the liver covers the others where they meet
            lim = ell.limit(w)
            if lim > 0:
                flat[cav[abdomen & (q < lim)]] = organ_cls
            if an.stomach.limit(w) > 0:
                flat[cav[stomach & self.stomach_gas]] = _AIRWAY

        if an.w_low - 40.0 < w < an.w_apex + 10.0:
            phase = np.mod(w - an.rib_phase_mm + self.rib_shift, an.rib_pitch_mm) - 0.5 * an.rib_pitch_mm
            rib_r = self.rib_radial + (phase / (0.5 * an.rib_height_mm)) ** 2
            in_rib = rib_r < 1.0
            flat[self.rib_idx[in_rib]] = np.where(
                self.rib_cartilage[in_rib], _CARTILAGE, np.where(rib_r[in_rib] > _RIB_CORTEX, _CORTEX, _BONE)
            )
        if an.heart_centre[2] - 20.0 < w < an.w_apex - 15.0:
            flat[self.sternum] = _CORTEX
            flat[self.sternum_spongy] = _BONE
        if an.w_apex - 120.0 < w < an.w_apex + 10.0:
            flat[self.scapula] = _CORTEX

        # Spine: vertebral bodies with discs between them, canal and posterior arch.
        if np.mod(w - an.spine_phase_mm, an.spine_pitch_mm) < _DISC_FRACTION * an.spine_pitch_mm:
            flat[self.vb] = _DISC
        else:
            flat[self.vb] = _CORTEX
            flat[self.vb_spongy] = _BONE
            flat[self.posterior_elements] = _CORTEX
        flat[self.canal] = _CSF

        # Mediastinum and great vessels.
        lim = _heart_limit(an, w)
        if lim > 0:
            flat[cav[(lm.heart_q < lim) & thorax & lm.cavity]] = _HEART
        if w < an.w_arch:
            flat[self.aorta_desc[self.zd_aorta_desc < w]] = _BLOOD
        flat[self.aorta_abd[self.zd_aorta_abd >= w]] = _BLOOD
        flat[self.ivc[self.zd_ivc >= w]] = _BLOOD
        if an.w_heart_top < w < an.w_arch:
            flat[self.aorta_asc] = _BLOOD
        if an.w_heart_top < w:
            flat[self.svc] = _BLOOD
        if abs(w - an.w_arch) < an.r_aorta:
            flat[self.arch] = _BLOOD
        if w > an.heart_centre[2]:
            flat[self.esophagus] = _MUSCLE
        if w > an.w_carina:
            flat[self.trachea_wall] = _MUSCLE
            flat[self.trachea] = _AIRWAY

        if not in_chest:
            return None
        lung = cav[_lung_mask(an, lm, w)]
        flat[lung] = _LUNG
        if an.w_hilum < w <= an.w_carina:  # main bronchi, carina to hilum
            t = (an.w_carina - w) / (an.w_carina - an.w_hilum)
            for side in (-1.0, 1.0):
                d2 = (self.uc - side * t * an.hilum_u) ** 2 + (self.vc - an.v_trachea - 5.0 * t) ** 2
                flat[cav[d2 < (an.r_bronchus + 1.5) ** 2]] = _MUSCLE
                flat[cav[d2 < an.r_bronchus**2]] = _AIRWAY
        return lung


_TABLE_MM = 6.0
_DISC_FRACTION = 0.22  # intervertebral disc height / vertebral pitch


def _render(
    rng: np.random.Generator,
    grid: _Grid,
    an: _Anatomy,
    spec: _SizeSpec,
    tumours: list[_Tumour],
    vessel_kji: np.ndarray,
    tumour_kji: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint tissue classes slice by slice, then HU = base + texture + vessels + blur + noise.

    Args:
        vessel_kji: vessel occupancy 0..255, stored (K, J, I).
        tumour_kji: tumour index (1..n, 0 = none), stored (K, J, I).

    Returns:
        CT int16 and label uint8, shape (I, J, K) (Fortran-ordered views of (K, J, I) memory,
        the layout nibabel itself returns).
    """
    nx, ny, nz = grid.shape
    painter = _Painter(grid, an)
    hu_lut = np.array([_CLASS_HU[c] for c in range(_N_CLASSES)], dtype=np.float32)
    hu_lut[_LUNG] = an.lung_hu
    hu_lut[_BONE] = an.bone_hu
    amp_lut = np.array([_CLASS_TEXTURE_HU.get(c, 0.0) for c in range(_N_CLASSES)], dtype=np.float32)
    tumour_hu = np.array([0.0] + [t.hu for t in tumours], dtype=np.float32)
    noise_table = _GAUSS_TABLE * np.float32(an.noise_sigma_hu)
    texture = _SmoothField(rng, grid, TEXTURE_CORRELATION_MM)
    blur = spec.blur_mm / grid.spacing_mm[0] >= _BLUR_MIN_SIGMA_PX
    vessel_gain = np.float32(1.0 / _BYTE)
    tumour_slices = tumour_kji.reshape(nz, -1).any(axis=1)

    ct = np.empty((nz, ny, nx), dtype=np.int16)
    label = np.zeros((nz, ny, nx), dtype=np.uint8)
    flat = np.empty(nx * ny, dtype=np.uint8)
    for k in range(nz):
        tex = texture.slice(k).ravel()
        lung = painter.paint(flat, float(grid.w(k)), tex)
        hu = np.take(hu_lut, flat)
        hu += np.take(amp_lut, flat) * tex
        if lung is not None:
            # Tumours replace lung tissue only: the label is exactly where that happened.
            if tumour_slices[k]:
                tum = tumour_kji[k].ravel()
                t_idx = np.flatnonzero(tum)
                t_idx = t_idx[flat[t_idx] == _LUNG]
                flat[t_idx] = _TUMOUR
                label[k].ravel()[t_idx] = 1
                hu[t_idx] = tumour_hu[tum[t_idx]] + amp_lut[_TUMOUR] * tex[t_idx]
            lung = lung[flat[lung] == _LUNG]
            hu[lung] += painter.gravity[lung]
            occ = vessel_kji[k].ravel()[lung]
            vessel = occ > 0
            if vessel.any():
                v_idx = lung[vessel]
                hu[v_idx] += occ[vessel] * vessel_gain * (np.float32(HU_VESSEL) - hu[v_idx])
        if blur:  # the scanner's point-spread function (negligible on coarse grids)
            hu = _blur_binomial(hu.reshape(ny, nx)).ravel()
        hu += np.take(noise_table, rng.integers(0, _NOISE_TABLE_SIZE, hu.size, dtype=np.uint16))
        np.clip(np.rint(hu), CT_HU_RANGE[0], CT_HU_RANGE[1], out=hu)
        ct[k] = hu.reshape(ny, nx)
    return ct.transpose(2, 1, 0), label.transpose(2, 1, 0)


# --------------------------------------------------------------------------------------------
# Public API


def _size_spec(size: str) -> _SizeSpec:
    spec = PHANTOM_SIZES.get(str(size).upper())
    if spec is None:
        raise ConfigError(f"unknown phantom size {size!r}; expected one of {sorted(PHANTOM_SIZES)}")
    return spec


def make_case(seed: int, size: str = "SMALL", n_tumours: int | None = None) -> tuple[Volume, Volume]:
    """Generate one synthetic chest CT and its tumour label.

    Args:
        seed: any non-negative integer; the same seed always gives the same arrays.
        size: ``"SMALL"`` (128x128, 60-110 slices of 3.5-5 mm) or ``"FULL"`` (512x512,
            100-300 slices of 1-2.5 mm, MSD-like).
        n_tumours: number of tumours; None draws 0-3 (P = 0.15, 0.5, 0.25, 0.10). Fewer may
            be placed when a lung has no room left (rare, small lungs with 3 large tumours).

    Returns:
        ``(ct, label)``: CT in HU (int16) and label (uint8, 1 = tumour) on the same grid, affine
        ``diag(-sx, sy, sz)`` plus an origin, nibabel axis codes ``('L', 'A', 'S')``.

    Raises:
        ConfigError: unknown ``size``, negative ``seed`` or ``n_tumours``.
    """
    spec = _size_spec(size)
    if int(seed) < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed}")
    if n_tumours is not None and int(n_tumours) < 0:
        raise ConfigError(f"n_tumours must be >= 0 or None (random), got {n_tumours}")
    rng = np.random.default_rng(int(seed))
    grid, anatomy = _sample_case_geometry(rng, spec)
    count = _draw_tumour_count(rng) if n_tumours is None else int(n_tumours)
    tumours = _place_tumours(rng, anatomy, grid, spec, count)

    r_min = max(VESSEL_MIN_RADIUS_MM, spec.min_vessel_radius_voxels * grid.spacing_mm[0])
    # Stored (K, J, I) so that an axial slice is contiguous for the renderer; drawn through
    # (I, J, K) views.
    kji = grid.shape[::-1]
    vessel_kji = np.zeros(kji, dtype=np.uint8)
    _draw_segments(vessel_kji.transpose(2, 1, 0), grid, _vessel_segments(rng, anatomy, r_min))
    tumour_kji = np.zeros(kji, dtype=np.uint8)
    for index, tumour in enumerate(tumours, start=1):
        _draw_tumour(rng, tumour_kji.transpose(2, 1, 0), grid, tumour, index)
    # Placement already keeps tumours above the dropped slices; this makes it a guarantee.
    tumour_kji[: SEED_SKIP_INFERIOR_SLICES + 1] = 0

    ct, label = _render(rng, grid, anatomy, spec, tumours, vessel_kji, tumour_kji)
    meta: dict[str, Any] = {"source": "lungtumor.phantom", "seed": int(seed), "size": _spec_name(spec),
                            "n_tumours": len(tumours)}
    return Volume(ct, grid.affine.copy(), dict(meta)), Volume(label, grid.affine.copy(), dict(meta))


def _spec_name(spec: _SizeSpec) -> str:
    """Name of a size spec in :data:`PHANTOM_SIZES`."""
    return next(name for name, s in PHANTOM_SIZES.items() if s is spec)


def case_ids(cases: int, test_cases: int) -> tuple[list[int], list[int]]:
    """MSD-like 3-digit case ids: test ids are spread among the training ids.

    Returns:
        (training ids, test ids), disjoint, sorted, all in 1..999.
    """
    total = cases + test_cases
    test = {int((n + 0.5) * total / test_cases) + 1 for n in range(test_cases)} if test_cases else set()
    ids = list(range(1, total + 1))
    return [i for i in ids if i not in test], sorted(test)


def _case_seed(seed: int, case_id: int) -> int:
    """Independent per-case seed derived from (dataset seed, case id)."""
    return int(np.random.SeedSequence([int(seed), int(case_id)]).generate_state(1)[0])


_MAX_CASE_ID = 999


def write_phantom_dataset(
    out_dir: str | os.PathLike[str],
    cases: int = 10,
    test_cases: int = 2,
    size: str = "SMALL",
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the MSD Task06_Lung layout.

    Layout: ``imagesTr/lung_XXX.nii.gz`` (int16 HU), ``labelsTr/lung_XXX.nii.gz`` (uint8),
    ``imagesTs/lung_XXX.nii.gz`` (no labels) and ``dataset.json``. Every file is written
    atomically. Case ``lung_XXX`` is generated from a seed derived from ``(seed, XXX)``.

    Args:
        out_dir: dataset folder (created if missing; existing phantom files are overwritten).
        cases: number of labelled training cases (>= 1).
        test_cases: number of unlabelled test cases (>= 0).
        size: ``"SMALL"`` or ``"FULL"`` (see :func:`make_case`).
        seed: dataset seed.
        progress: show a rich progress bar.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: bad counts, size or seed.
    """
    spec = _size_spec(size)
    if cases < 1 or test_cases < 0 or cases + test_cases > _MAX_CASE_ID:
        raise ConfigError(
            f"phantom dataset needs cases >= 1 and test_cases >= 0 with at most {_MAX_CASE_ID} in total "
            f"(3-digit ids), got cases={cases}, test_cases={test_cases}"
        )
    if int(seed) < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed}")
    out = Path(out_dir)
    train_ids, test_ids = case_ids(cases, test_cases)
    jobs = [(i, True) for i in train_ids] + [(i, False) for i in test_ids]
    training, test = [], []

    def work(case_id: int, labelled: bool) -> None:
        ct, label = make_case(_case_seed(seed, case_id), _spec_name(spec))
        name = f"lung_{case_id:03d}.nii.gz"
        if labelled:
            write_nifti(ct, out / "imagesTr" / name)
            write_nifti(label, out / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_nifti(ct, out / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")

    out.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(exist_ok=True)
    if progress:
        from rich.progress import track

        for case_id, labelled in track(jobs, description=f"phantom {_spec_name(spec)} cases"):
            work(case_id, labelled)
    else:
        for case_id, labelled in jobs:
            work(case_id, labelled)

    dataset = {
        "name": "LungPhantom",
        "description": (
            "Synthetic chest CT with lung tumours generated by lungtumor.phantom (not patient data); "
            f"MSD Task06_Lung layout, size {_spec_name(spec)}, seed {int(seed)}"
        ),
        "reference": "lungtumor.phantom",
        "licence": "CC0 (synthetic)",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    _write_json_atomic(dataset, out / "dataset.json")
    return out


def _write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=4) + "\n")
