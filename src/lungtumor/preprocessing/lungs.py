"""A classical lung-region finder (thresholds and connected components, no learned weights).

:func:`find_lung_region` turns a CT in Hounsfield units into a **tumour-inclusive** region around
the lungs, on the CT's own grid: the region that preprocessing crops to and that inference keeps.

How (every step runs on a coarse analysis grid of about 3 mm, in the canonical ('L', 'A', 'S')
orientation; the result is mapped back onto the input grid exactly):

1. **Air**: voxels below ``air_hu`` (-400 HU) are air-density (lung parenchyma and gas).
2. **Outside air, per axial slice**: in-plane 4-connected air components that touch the image
   border *and* are mostly pure gas (below ``gas_hu``, -950 HU) are outside air. Lung
   parenchyma is not pure gas (its median is about -870 to -810 HU on real scans, outside air
   about -1000), so a lung that touches the edge of a field of view cropped to one hemithorax
   survives, and the trachea stays separate from the air in front of an open mouth.
3. **3D components** (6-connected) of the remaining air: a component is lung when it is
   parenchyma (at most ``max_gas_fraction`` pure gas; this drops the air inside the table,
   bowel and stomach gas and an isolated trachea), holds at least ``min_component_ml`` and does not lie below the
   lungs (its mean slice is above the lowest 5 % of the largest component's voxels). Fewer than
   ``min_lung_ml`` in total: no lungs (a warning, an empty region, never an exception).
   Small in-plane cross-sections of pure gas (trachea, main bronchi) are then taken out, so the
   trachea does not carry the region up the neck.
4. **Tumour-inclusive region**: per axial slice, the convex hull of the lungs of that slice and
   of the slices within ``hull_window_mm`` above and below it (both lungs together, so hilar
   and mediastinal masses, masses on the pleura and nodules lie inside; the window carries the
   lung's outline over a lobe that a tumour has filled or collapsed, and below the lowest
   aerated slice, but not above the apices), then dilated by an ellipsoid of ``margin_mm``
   in-plane and ``margin_z_mm`` along the slice axis.

The region is stored as one interval of the left-right axis per (anterior-posterior, slice) row,
which makes the hull, the Euclidean (ellipsoid) dilation in mm, the volume, the bounding box and
the mapping onto the input grid cheap: about 0.15-0.25 s for a 512x512x300 CT on two cores (see
``benchmarks/bench_lungs.py``).

The approach (thresholding, removal of air that touches the border, size and position rules for
the lung components, per-slice hulls) follows S. Hu, E. A. Hoffman, J. M. Reinhardt, "Automatic
lung segmentation for accurate quantitation of volumetric X-ray CT images", IEEE TMI 20(6), 2001,
and the convex-hull correction for juxtapleural nodules of lung CAD systems.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from lungtumor.config import CANONICAL_AXCODES
from lungtumor.errors import ConfigError
from lungtumor.io.volume import (
    CanonicalVolume,
    Volume,
    require_same_grid,
    to_canonical,
    undo_reorient,
    undo_reorient_array,
)

__all__ = ["LungRegion", "LungRegionConfig", "find_lung_region", "include_label"]

log = logging.getLogger(__name__)

#: Share of the largest lung component's voxels (lowest slices first) below which the mean
#: slice of a further component must not lie: gas and partial-volume bits under the diaphragm.
LOWEST_LUNG_QUANTILE = 0.05
#: Total lung air below this (ml) is reported as a field of view that covers little lung.
SMALL_LUNG_ML = 500.0
#: Largest in-plane cross-section (mm^2) of a pure-gas lung component still taken for an airway
#: (the adult trachea is about 15-25 mm across, 200-500 mm^2; at 3 mm pixels partial volume adds
#: a ring), so a bulla or a pneumothorax, larger, stays.
AIRWAY_MAX_AREA_MM2 = 1000.0
#: A hull vertex or a span end within this many voxels of a voxel centre counts as covering it.
_SPAN_EPS = 1e-6


@dataclass(frozen=True)
class LungRegionConfig:
    """Thresholds and distances of :func:`find_lung_region` (HU and mm; validated on creation).

    Attributes:
        air_hu: voxels below this are air-density (lung and gas).
        gas_hu: voxels below this are pure gas (outside air, trachea, bowel gas; lung parenchyma
            has vessels and tissue and is mostly above it).
        max_gas_fraction: an air component with a larger share of pure-gas voxels is gas, not lung.
        working_spacing_mm: in-plane spacing of the analysis grid (an integer stride of the CT's).
        working_slice_mm: slice spacing of the analysis grid (an integer stride of the CT's).
        min_component_ml: smaller air components are never lung.
        min_lung_ml: with less lung air in total the scan is reported as having no lungs.
        hull_window_mm: each slice's hull also takes in the lungs of the slices this far above
            and below it (0 = that slice alone); it extends the region below the lowest lung
            slice, not above the highest.
        margin_mm: in-plane dilation of the hull (ellipsoid semi-axis), > 0.
        margin_z_mm: dilation along the slice axis (ellipsoid semi-axis), > 0.
    """

    air_hu: float = -400.0
    gas_hu: float = -950.0
    max_gas_fraction: float = 0.5
    working_spacing_mm: float = 3.0
    working_slice_mm: float = 3.0
    min_component_ml: float = 20.0
    min_lung_ml: float = 100.0
    hull_window_mm: float = 20.0
    margin_mm: float = 15.0
    margin_z_mm: float = 10.0

    def __post_init__(self) -> None:
        for name in ("working_spacing_mm", "working_slice_mm", "margin_mm", "margin_z_mm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"lung region: {name} must be a positive number of mm, got {value!r}; "
                    f"use e.g. {getattr(LungRegionConfig, name)}"
                )
        for name in ("hull_window_mm", "min_component_ml", "min_lung_ml"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"lung region: {name} must be >= 0, got {value!r}; use e.g. {getattr(LungRegionConfig, name)}")
        if not (math.isfinite(self.gas_hu) and math.isfinite(self.air_hu) and self.gas_hu < self.air_hu):
            raise ConfigError(
                f"lung region: gas_hu ({self.gas_hu}) must be below air_hu ({self.air_hu}); e.g. gas_hu=-950, air_hu=-400"
            )
        if not (0.0 < self.max_gas_fraction < 1.0):
            raise ConfigError(f"lung region: max_gas_fraction must lie in (0, 1), got {self.max_gas_fraction!r}; e.g. 0.5")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LungRegionConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"lung region: unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class LungRegion:
    """The tumour-inclusive lung region of one CT.

    Attributes:
        mask: uint8 {0, 1} on exactly the CT's grid (shape and affine), 1 = inside the region.
        lung_mask: uint8 {0, 1} air-lung components on the coarse analysis grid (its own affine,
            in the CT's axis order), before the hull and the margin.
        volume_ml: volume of ``mask`` in ml.
        lung_volume_ml: volume of the air-lung components in ml.
        found: False when no lungs were found (then ``mask`` is empty, see ``warnings``).
        warnings: one-line messages for the user (no lungs, lungs cut by the field of view, ...).
        bbox_ijk: ``((i0, i1), (j0, j1), (k0, k1))``, start inclusive and stop exclusive, the
            smallest index box of ``mask`` on the CT's grid; None when the mask is empty.
    """

    mask: Volume
    lung_mask: Volume
    volume_ml: float
    lung_volume_ml: float
    found: bool
    warnings: tuple[str, ...]
    bbox_ijk: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None


# --------------------------------------------------------------------------------------------
# Public API


def find_lung_region(ct: Volume | CanonicalVolume, *, config: LungRegionConfig | None = None) -> LungRegion:
    """Find the lungs of a CT and return a tumour-inclusive region on the CT's grid.

    Args:
        ct: CT in Hounsfield units, any orientation (reoriented internally to
            ('L', 'A', 'S') without resampling and mapped back exactly), or the CT already
            reoriented by :func:`~lungtumor.io.volume.to_canonical` (not reoriented again; the
            region is on the source CT's grid all the same).
        config: thresholds and distances (default :class:`LungRegionConfig`).

    Returns:
        The region. A scan without lungs gives ``found=False``, an empty mask and a warning.

    Raises:
        GeometryError: the CT's orientation is unknown (raised by the reorientation).
    """
    cfg = config or LungRegionConfig()
    canon = to_canonical(ct, CANONICAL_AXCODES)
    ct, las, ornt = canon.source, canon.canonical, canon.ornt
    where = ct.meta.get("path", "CT")
    spacing = las.spacing_mm
    full_shape = las.shape
    stride = (
        max(1, round(cfg.working_spacing_mm / spacing[0])),
        max(1, round(cfg.working_spacing_mm / spacing[1])),
        max(1, round(cfg.working_slice_mm / spacing[2])),
    )
    offset = tuple(s // 2 for s in stride)
    # Sample one voxel per block (the block's centre): for air against tissue (a gap of 500 HU
    # against CT noise of 10-50 HU) this is as good as a block mean and an order faster.
    low = np.ascontiguousarray(las.array[offset[0] :: stride[0], offset[1] :: stride[1], offset[2] :: stride[2]])
    low_spacing = tuple(s * t for s, t in zip(spacing, stride))
    low_voxel_ml = float(np.prod(low_spacing)) / 1000.0
    low_affine = las.affine @ _block_affine(stride, offset)

    lungs = _lung_components(low, low_spacing, cfg)
    lung_volume_ml = float(np.count_nonzero(lungs)) * low_voxel_ml
    lung_mask = undo_reorient(Volume(lungs.view(np.uint8), low_affine, {"kind": "lung air", "source": where}), ornt)

    warnings: list[str] = []
    if lung_volume_ml < cfg.min_lung_ml:
        hu_range = (float(np.min(low)), float(np.max(low))) if low.size else (math.nan, math.nan)
        warnings.append(
            f"{where}: no lungs found (air-lung volume {lung_volume_ml:.0f} ml < {cfg.min_lung_ml:g} ml, "
            f"values {hu_range[0]:.0f}..{hu_range[1]:.0f}); the lung region is empty: check that the CT is in HU "
            "and that its field of view covers the chest"
        )
        empty = np.zeros(ct.shape, dtype=np.uint8, order="F")
        zero_lungs = lung_mask.with_array(np.zeros_like(lung_mask.array))
        return LungRegion(
            mask=Volume(empty, ct.affine.copy(), _mask_meta(ct)),
            lung_mask=zero_lungs,
            volume_ml=0.0,
            lung_volume_ml=0.0,
            found=False,
            warnings=tuple(warnings),
            bbox_ijk=None,
        )
    if lung_volume_ml < SMALL_LUNG_ML:
        warnings.append(
            f"{where}: only {lung_volume_ml:.0f} ml of lung found; the field of view may cover little of the lungs"
        )

    lo, hi = _row_extremes(lungs)
    window = round(cfg.hull_window_mm / low_spacing[2])
    if window > 0:  # the hull of a slice and its neighbours = the hull of their row extremes
        top = int(np.flatnonzero(np.isfinite(lo).any(axis=0))[-1])
        lo = ndimage.minimum_filter1d(lo, 2 * window + 1, axis=1, mode="constant", cval=np.inf)
        hi = ndimage.maximum_filter1d(hi, 2 * window + 1, axis=1, mode="constant", cval=-np.inf)
        # Not above the apices (only the z margin goes there): a lobe that a tumour fills or
        # collapses lies at the base or beside aerated lung, and above the apices is the neck.
        lo[:, top + 1 :] = np.inf
        hi[:, top + 1 :] = -np.inf
    lo, hi = _hull_spans(lo, hi)
    lo, hi = _dilate_spans(lo, hi, low_spacing, cfg.margin_mm, cfg.margin_z_mm)
    full_lo, full_hi = _spans_to_full(lo, hi, stride, full_shape)

    mask_array = np.zeros(ct.shape, dtype=np.uint8, order="F")
    # A view of mask_array in the canonical orientation: writing into it fills the CT-grid mask.
    mask_las = nio.apply_orientation(mask_array, ornt)
    if np.shares_memory(mask_las, mask_array):
        count, bbox_las = _fill_spans(mask_las, full_lo, full_hi)
    else:  # pragma: no cover - nibabel returns flipped/transposed views; fill a copy otherwise
        mask_las = np.zeros(full_shape, dtype=np.uint8)
        count, bbox_las = _fill_spans(mask_las, full_lo, full_hi)
        mask_array[...] = undo_reorient_array(mask_las, ornt)
    if _touches_edge(lungs):
        warnings.append(
            f"{where}: the lungs reach the edge of the field of view; the region ends there (tumour beyond it cannot be found)"
        )
    voxel_ml = ct.voxel_volume_ml
    return LungRegion(
        mask=Volume(mask_array, ct.affine.copy(), _mask_meta(ct)),
        lung_mask=lung_mask,
        volume_ml=count * voxel_ml,
        lung_volume_ml=lung_volume_ml,
        found=True,
        warnings=tuple(warnings),
        bbox_ijk=None if bbox_las is None else _bbox_to_input(bbox_las, ornt, ct.shape),
    )


def include_label(region: LungRegion, label: Volume) -> tuple[LungRegion, int]:
    """Grow ``region`` to include every labelled voxel (label != 0) that lies outside it.

    Args:
        region: from :func:`find_lung_region`.
        label: tumour label on the same grid as the CT the region was found on.

    Returns:
        ``(region, n_outside)``: the grown region (the same object when nothing was outside)
        and the number of labelled voxels that lay outside the original region.

    Raises:
        GeometryError: the label is not on the region's grid.
    """
    require_same_grid(label, region.mask, "label", "the CT's lung region", fix="resample the label onto the CT grid")
    tumour = np.asarray(label.array) != 0
    outside = tumour & (region.mask.array == 0)
    n_outside = int(np.count_nonzero(outside))
    if n_outside == 0:
        return region, 0
    grown = np.asfortranarray(region.mask.array | outside.view(np.uint8))
    where = label.meta.get("path", "label")
    message = (
        f"{where}: {n_outside} labelled voxels lay outside the lung region; "
        "the region was grown to include them (check the label and the CT belong together)"
    )
    return (
        dataclasses.replace(
            region,
            mask=region.mask.with_array(grown),
            volume_ml=float(np.count_nonzero(grown)) * region.mask.voxel_volume_ml,
            warnings=(*region.warnings, message),
            bbox_ijk=_bbox_of(grown),
        ),
        n_outside,
    )


#: What ``predict`` does where no lungs are found (the end of its warning).
PREDICT_FALLBACK = "segmenting the whole field of view"


def prediction_region(ct: Volume | CanonicalVolume) -> Volume | None:
    """The lung region ``predict`` crops to (:func:`lung_region_or_whole_scan`), or None where no lungs
    are found: the whole scan is then segmented and no lesion is dropped for lying outside."""
    found, _ = lung_region_or_whole_scan(ct, fallback=PREDICT_FALLBACK)
    return found.mask if found.found else None


class _HoldThisThread(logging.Filter):
    """Holds back (and keeps) the records that the current thread logs through one logger."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread:
            self.records.append(record)
            return False
        return True


def prediction_region_ahead(volume: Volume, axcodes: tuple[str, str, str] = CANONICAL_AXCODES) -> tuple[tuple[str, str, str], Volume | None, list[logging.LogRecord]]:
    """:func:`prediction_region` of ``volume`` reoriented to ``axcodes``, computed ahead in a background
    thread (``predict``'s start-up, :mod:`lungtumor.io.prefetch`): its warnings are held back and
    returned, so that they are logged when (and only if) the region is used.

    Returns:
        ``(axcodes, region or None, the held log records)``.
    """
    hold = _HoldThisThread()
    log.addFilter(hold)
    try:
        region = prediction_region(to_canonical(volume, axcodes))
    finally:
        log.removeFilter(hold)
    return tuple(axcodes), region, hold.records  # type: ignore[return-value]


def lung_region_or_whole_scan(ct: Volume | CanonicalVolume, label: Volume | None = None, *, fallback: str) -> tuple[LungRegion, int]:
    """The lung region that ``preprocess`` and ``predict`` crop to: find it, warn, or fall back.

    The one policy both commands follow: find the region (:func:`find_lung_region`); when lungs are
    found, grow it over ``label`` if one is given (:func:`include_label`) and log each of the
    region's warnings; when none are found, log the finder's warnings and then
    ``"<path>: no lungs found; <fallback>"``: the caller then uses the whole scan (never an
    exception: a scan without lungs is the user's to judge, not a failure).

    Args:
        ct: CT in Hounsfield units, any orientation.
        label: tumour label on the CT's grid (preprocessing), or None (prediction).
        fallback: what the caller does with the whole scan, ending the "no lungs found" warning
            (e.g. ``"segmenting the whole field of view"``).

    Returns:
        ``(region, n_outside)``: the region (``found=False`` when no lungs were found) and the
        number of labelled voxels that lay outside the region found (0 without ``label``).

    Raises:
        GeometryError: the CT's orientation is unknown, or ``label`` is not on the CT's grid.
    """
    region = find_lung_region(ct)
    if not region.found:
        for message in region.warnings:
            log.warning("%s", message)
        log.warning("%s: no lungs found; %s", ct.meta.get("path", "CT"), fallback)
        return region, 0
    n_outside = 0
    if label is not None:
        region, n_outside = include_label(region, label)
    for message in region.warnings:
        log.warning("%s", message)
    return region, n_outside


# --------------------------------------------------------------------------------------------
# Lung components on the analysis grid


def _lung_components(low: np.ndarray, spacing_mm: tuple[float, float, float], cfg: LungRegionConfig) -> np.ndarray:
    """Boolean air-lung mask on the analysis grid (I, J, K) of voxel size ``spacing_mm``."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    pixel_area_mm2 = float(spacing_mm[0] * spacing_mm[1])
    air = low < cfg.air_hu
    gas = low < cfg.gas_hu
    if not air.any():
        return air
    # 1. Per axial slice: outside air = border-touching, mostly pure-gas in-plane components.
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    labels2d, n2d = ndimage.label(air, structure=in_plane)
    total2d = np.bincount(labels2d.ravel(), minlength=n2d + 1)
    gas2d = np.bincount(labels2d[gas], minlength=n2d + 1)
    border = np.zeros(n2d + 1, dtype=bool)
    for face in (labels2d[0], labels2d[-1], labels2d[:, 0], labels2d[:, -1]):
        border[face.ravel()] = True
    border[0] = False
    outside = border & (gas2d > cfg.max_gas_fraction * total2d)
    if outside.any():
        air &= ~outside[labels2d]
    del labels2d
    # 2. 3D components of the rest: parenchyma, large enough, not below the lungs.
    labels, n = ndimage.label(air)
    if n == 0:
        return air
    flat = labels.ravel()
    total = np.bincount(flat, minlength=n + 1)
    total[0] = 0
    gas_count = np.bincount(labels[gas], minlength=n + 1)
    parenchyma = (gas_count <= cfg.max_gas_fraction * total) & (total * voxel_ml >= cfg.min_component_ml)
    parenchyma[0] = False
    if not parenchyma.any():
        return np.zeros_like(air)
    candidates = np.flatnonzero(parenchyma)
    boxes = ndimage.find_objects(labels)
    per_slice = {}
    for c in candidates:  # few: the lungs and whatever else passed the size and gas rules
        box = boxes[c - 1]
        counts = np.zeros(low.shape[2], dtype=np.int64)
        counts[box[2]] = np.count_nonzero(labels[box] == c, axis=(0, 1))
        per_slice[int(c)] = counts
    largest = int(candidates[np.argmax(total[candidates])])
    cumulative = np.cumsum(per_slice[largest])
    lowest_slice = int(np.searchsorted(cumulative, LOWEST_LUNG_QUANTILE * cumulative[-1]))
    k_index = np.arange(low.shape[2], dtype=np.float64)
    keep = np.zeros(n + 1, dtype=bool)
    dropped: list[int] = []
    for c, counts in per_slice.items():
        mean_k = float(counts @ k_index) / float(counts.sum())
        if c == largest or mean_k >= lowest_slice:
            keep[c] = True
        else:
            dropped.append(c)
    if dropped:
        log.debug("left out %d air component(s) below the lungs (%.0f ml)", len(dropped), float(np.sum(total[dropped])) * voxel_ml)
    lungs = keep[labels]
    del labels
    # 3. Airways: in-plane components of the lungs that are small and pure gas are the trachea
    #    and bronchi (walled tubes). Inside the chest the hull covers them again; above the
    #    apices they would carry the region up the neck.
    labels2d, n2d = ndimage.label(lungs, structure=in_plane)
    total2d = np.bincount(labels2d.ravel(), minlength=n2d + 1)
    gas2d = np.bincount(labels2d[gas & lungs], minlength=n2d + 1)
    airway = (gas2d > cfg.max_gas_fraction * total2d) & (total2d * pixel_area_mm2 <= AIRWAY_MAX_AREA_MM2)
    airway[0] = False
    if airway.any():
        lungs &= ~airway[labels2d]
        # what the airways held on to (the upper trachea and larynx, where partial volume
        # makes them less than pure gas) is now a set of small pieces of its own
        labels, n = ndimage.label(lungs)
        total = np.bincount(labels.ravel(), minlength=n + 1)
        small = total * voxel_ml < cfg.min_component_ml
        small[0] = False
        if small.any():
            lungs &= ~small[labels]
    return lungs


def _touches_edge(lungs: np.ndarray) -> bool:
    """True when the lungs touch the in-plane border of the image."""
    return bool(lungs[0].any() or lungs[-1].any() or lungs[:, 0].any() or lungs[:, -1].any())


# --------------------------------------------------------------------------------------------
# The region as one left-right interval per (anterior-posterior, slice) row


def _row_extremes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest i of ``mask`` (I, J, K) per (j, k) row; (+inf, -inf) for empty rows."""
    n_i = mask.shape[0]
    present = mask.any(axis=0)
    lo = np.argmax(mask, axis=0).astype(np.float64)
    hi = (n_i - 1 - np.argmax(mask[::-1], axis=0)).astype(np.float64)
    lo[~present] = np.inf
    hi[~present] = -np.inf
    return lo, hi


def _lower_chain(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
    """Vertices of the lower convex envelope of points (x, y) sorted by strictly increasing x."""
    hx: list[float] = []
    hy: list[float] = []
    for px, py in zip(x, y):
        while len(hx) >= 2 and (hx[-1] - hx[-2]) * (py - hy[-2]) - (hy[-1] - hy[-2]) * (px - hx[-2]) <= 0:
            hx.pop()
            hy.pop()
        hx.append(px)
        hy.append(py)
    return hx, hy


def _hull_spans(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice convex hull of the row intervals ``[lo, hi]`` (J, K), as row intervals again.

    In each slice k, the hull's left edge as a function of j is the lower convex envelope of the
    points (j, lo[j]); its right edge is the upper envelope of (j, hi[j]) (computed as the lower
    envelope of -hi). Rows between the first and last non-empty row are filled in.
    """
    out_lo = np.full_like(lo, np.inf)
    out_hi = np.full_like(hi, -np.inf)
    present = np.isfinite(lo)
    for k in np.flatnonzero(present.any(axis=0)):
        rows = np.flatnonzero(present[:, k])
        j = rows.astype(np.float64).tolist()
        left_x, left_y = _lower_chain(j, lo[rows, k].tolist())
        right_x, right_y = _lower_chain(j, (-hi[rows, k]).tolist())
        span = np.arange(rows[0], rows[-1] + 1)
        out_lo[span, k] = np.interp(span, left_x, left_y)
        out_hi[span, k] = -np.interp(span, right_x, right_y)
    return out_lo, out_hi


def _dilate_spans(
    lo: np.ndarray, hi: np.ndarray, spacing_mm: tuple[float, float, float], margin_mm: float, margin_z_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Dilate a row-interval region by an ellipsoid (semi-axes margin_mm, margin_mm, margin_z_mm).

    A voxel row (j, k) takes in the interval of each neighbouring row (j + dj, k + dk) inside the
    ellipsoid, widened along i by the ellipsoid's half-chord at that offset: the exact Euclidean
    dilation of each row, and a superset (the gaps between the intervals filled) of the union.
    """
    sx, sy, sz = spacing_mm
    rj = int(math.floor(margin_mm / sy))
    rk = int(math.floor(margin_z_mm / sz))
    n_j, n_k = lo.shape
    pad_lo = np.pad(lo, ((rj, rj), (rk, rk)), constant_values=np.inf)
    pad_hi = np.pad(hi, ((rj, rj), (rk, rk)), constant_values=-np.inf)
    out_lo = np.full_like(lo, np.inf)
    out_hi = np.full_like(hi, -np.inf)
    for dj in range(-rj, rj + 1):
        for dk in range(-rk, rk + 1):
            q = 1.0 - (dj * sy / margin_mm) ** 2 - (dk * sz / margin_z_mm) ** 2
            if q < 0:
                continue
            half = margin_mm * math.sqrt(q) / sx
            src_lo = pad_lo[rj + dj : rj + dj + n_j, rk + dk : rk + dk + n_k]
            src_hi = pad_hi[rj + dj : rj + dj + n_j, rk + dk : rk + dk + n_k]
            np.minimum(out_lo, src_lo - half, out=out_lo)
            np.maximum(out_hi, src_hi + half, out=out_hi)
    return out_lo, out_hi


def _spans_to_full(
    lo: np.ndarray, hi: np.ndarray, stride: tuple[int, int, int], full_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Row intervals on the analysis grid -> integer inclusive intervals on the full grid (J, K).

    An analysis voxel stands for its whole block of ``stride`` input voxels (block b covers
    input indices ``b*s .. b*s + s - 1``; voxels past the last sampled block belong to it).
    """
    si, sj, sk = stride
    n_i, n_j, n_k = full_shape
    j_block = np.minimum(np.arange(n_j) // sj, lo.shape[0] - 1)
    k_block = np.minimum(np.arange(n_k) // sk, lo.shape[1] - 1)
    rows_lo = lo[np.ix_(j_block, k_block)]
    rows_hi = hi[np.ix_(j_block, k_block)]
    last_block = math.ceil((n_i - si // 2) / si) - 1
    with np.errstate(invalid="ignore"):
        full_lo = np.ceil(rows_lo * si - _SPAN_EPS)
        # the last block also owns the voxels past its own end
        full_hi = np.where(rows_hi >= last_block - _SPAN_EPS, n_i - 1.0 + (rows_hi - last_block) * si, rows_hi * si + si - 1)
        full_hi = np.floor(full_hi + _SPAN_EPS)
    empty = ~(np.isfinite(rows_lo) & np.isfinite(rows_hi))
    full_lo = np.clip(np.where(empty, n_i, full_lo), 0, n_i).astype(np.int64)
    full_hi = np.clip(np.where(empty, -1, full_hi), -1, n_i - 1).astype(np.int64)
    return full_lo, full_hi


def _fill_spans(
    mask_las: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[int, tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None]:
    """Set ``mask_las[lo[j,k]:hi[j,k]+1, j, k] = 1``; return the voxel count and the (canonical) box."""
    lengths = np.maximum(hi - lo + 1, 0)
    count = int(lengths.sum())
    if count == 0:
        return 0, None
    rows = lengths > 0
    j_any = np.flatnonzero(rows.any(axis=1))
    k_any = np.flatnonzero(rows.any(axis=0))
    i0, i1 = int(lo[rows].min()), int(hi[rows].max()) + 1
    j0, j1 = int(j_any[0]), int(j_any[-1]) + 1
    k0, k1 = int(k_any[0]), int(k_any[-1]) + 1
    i = np.arange(i0, i1)[:, None]
    for k in range(k0, k1):  # one axial slice at a time keeps the temporaries small
        s_lo, s_hi = lo[j0:j1, k], hi[j0:j1, k]
        if s_hi.max() < 0:
            continue
        mask_las[i0:i1, j0:j1, k] = (i >= s_lo) & (i <= s_hi)
    return count, ((i0, i1), (j0, j1), (k0, k1))


# --------------------------------------------------------------------------------------------
# Geometry helpers


def _block_affine(stride: tuple[int, int, int], offset: tuple[int, int, int]) -> np.ndarray:
    """Voxel (analysis grid) -> voxel (input grid): index b -> b * stride + offset."""
    m = np.eye(4)
    m[:3, :3] = np.diag(np.asarray(stride, dtype=np.float64))
    m[:3, 3] = offset
    return m


def _bbox_to_input(
    bbox_las: tuple[tuple[int, int], ...], ornt: np.ndarray, input_shape: tuple[int, ...]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A box on the canonical grid -> the same voxels' box on the input grid."""
    out: list[tuple[int, int]] = []
    for axis in range(3):
        canonical_axis, flip = int(ornt[axis, 0]), int(ornt[axis, 1])
        start, stop = bbox_las[canonical_axis]
        if flip == -1:
            n = int(input_shape[axis])
            start, stop = n - stop, n - start
        out.append((int(start), int(stop)))
    return out[0], out[1], out[2]


def _bbox_of(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """Smallest inclusive-exclusive box of the nonzero voxels, or None."""
    box: list[tuple[int, int]] = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=others))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return box[0], box[1], box[2]


def _mask_meta(ct: Volume) -> dict[str, Any]:
    """Metadata of the region mask: where it came from, nothing that suggests HU."""
    meta = {k: v for k, v in ct.meta.items() if k in ("path", "series_uid", "frame_of_reference_uid", "patient_id", "study_uid")}
    meta["kind"] = "lung region"
    return meta
