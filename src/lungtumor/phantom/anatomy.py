"""Random anatomy of one case and the analytic lung.

:func:`_sample_case_geometry` draws the grid and every anatomical parameter (body outline, rib
cage, lungs, diaphragm, mediastinum, heart, great vessels, airways, spine, ribs, abdominal
organs, per-case lung HU and noise level) in mm in the body frame. The analytic lung
(:func:`_lung_mask`, :func:`_inside_lung_points`) is shared by the slice painter and by the
vessel and tumour placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungtumor.phantom.grid import _Grid, _SizeSpec

__all__ = ["CT_NOISE_SIGMA_HU", "HU_LUNG_RANGE"]

HU_LUNG_RANGE = (-880.0, -830.0)
"""Base HU of the non-dependent (anterior) lung, drawn per case."""
CT_NOISE_SIGMA_HU = (12.0, 25.0)
"""Range of the Gaussian CT noise standard deviation, drawn per case."""


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
# Analytic lung (shared by the slice painter and by the tumour/vessel placement)


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
