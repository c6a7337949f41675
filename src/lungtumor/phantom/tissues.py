"""Tissue classes, their HU, and the painter that fills one axial slice with classes.

The painter turns the analytic anatomy into a class per pixel: table, fat, muscle, ribs and
costal cartilage, sternum, scapulae, spine, mediastinum, heart, great vessels, airways, lungs
and the abdominal organs. Vessels and tumours are added by the renderer.
"""

from __future__ import annotations

import numpy as np

from lungtumor.config import HU_AIR
from lungtumor.phantom.anatomy import (
    _BACK_EXPONENT,
    _Anatomy,
    _disc,
    _heart_limit,
    _lung_maps,
    _lung_mask,
    _outline_depth,
    _segment_distance_2d,
)
from lungtumor.phantom.grid import _Grid

__all__ = ["BOWEL_TEXTURE_THRESHOLD", "LUNG_DEPENDENT_HU_PER_MM"]

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

LUNG_DEPENDENT_HU_PER_MM = 0.3
"""Gravity: supine lungs get denser towards the back (HU per mm posterior)."""
BOWEL_TEXTURE_THRESHOLD = 0.4
"""Where the texture exceeds this, abdominal fat becomes bowel."""

_RIB_CORTEX = 0.6  # outer part of the rib's normalised squared radius that is cortical bone
_TABLE_MM = 6.0  # thickness of the patient table
_DISC_FRACTION = 0.22  # intervertebral disc height / vertebral pitch


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
        zd = _lung_maps(an, u, v).zd  # diaphragm height of every pixel
        self.zd_aorta_desc = zd[self.aorta_desc]
        self.zd_aorta_abd = zd[self.aorta_abd]
        self.zd_ivc = zd[self.ivc]

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
