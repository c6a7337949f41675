"""The slice grid: one invertible record of how a CT becomes model slices and how outputs go back.

A :class:`SliceGrid` is fitted once per scan (:func:`fit_grid`) and then used identically by the
store writer, training and inference:

1. **Reorient** to ('L','A','S') by permuting/flipping axes (no resampling; ``ornt`` undoes it).
   Canonical slices are laid out ``(D, H, W) = (k, i, j)``: H runs from the patient's right to
   the patient's left (canonical ``i``), W from posterior to anterior (``j``), D from inferior to
   superior (``k``). A left-right flip of a model slice is a flip of H (axis -2 of ``(N, C, H, W)``).
2. **Crop** to the lung region's box plus ``margin_mm`` (in-plane and along z; clipped to the scan).
3. **Resample in-plane** to ``spacing_mm``: model pixel ``(h, w)`` has its centre at the canonical
   continuous voxel index ``(origin_index[0] + h * step[0], origin_index[1] + w * step[1])``, where
   integer indices are voxel centres. The same map is used for every kind of image: the CT is
   sampled bilinearly there (``torch.nn.functional.grid_sample``), a mask takes the value of the
   voxel whose cell ``[i - 0.5, i + 0.5)`` contains that centre (nearest neighbour computed in float64
   index arithmetic), and probabilities go back by bilinear sampling of the model grid at every
   canonical voxel centre. So a mask resampled with the grid lands exactly where its CT does. The
   grid origin is snapped to a voxel centre: at the input's own spacing the round trip is exact.
4. **Pad** to a multiple of ``pad_multiple`` (or to a fixed ``input_size_px``): the model grid is
   centred on the box and simply extends further; pixels beyond the scan read air.
5. **Select slices** by lung extent: the native axial slices ``slice_start:slice_stop`` (no
   resampling along z, so labels are never interpolated between slices).

The steps above are the ``lung`` preset's; the ``seed`` preset (the seed's recipe, bit for bit) fills
the same record with its own layout. Each preset is a strategy class behind one protocol
(:mod:`lungtumor.preprocessing.presets`, which also gives the measurements behind the lung
preset's choices): the record's ``preset`` name selects it, and every method here delegates to it.
A CT (or mask) is reoriented once on its way to slices (:func:`~lungtumor.io.volume.to_canonical`);
every method takes either the Volume or that :class:`~lungtumor.io.volume.CanonicalVolume`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel import orientations as nio

from lungtumor.config import HU_AIR, PreprocessConfig, check_known_keys
from lungtumor.errors import GeometryError
from lungtumor.io.volume import CanonicalVolume, Volume, require_same_grid, to_canonical, undo_reorient_array
from lungtumor.preprocessing.presets import INTEGER_TOL, SlicePreset, preset_for


def air_value(cfg: PreprocessConfig) -> float:
    """Air (HU_AIR, clipped as ``cfg`` clips) in the scaled units of the model slices."""
    hu = float(HU_AIR) if cfg.clip_hu is None else float(np.clip(HU_AIR, *cfg.clip_hu))
    return hu / float(cfg.hu_scale)


# --------------------------------------------------------------------------------------------
# The record


def _tuple2(x: Any) -> tuple:
    return tuple(tuple(float(v) for v in row) for row in x)


@dataclass(frozen=True)
class SliceGrid:
    """Every step from an input grid to model slices ``(D, H, W)`` and back (see the module docstring).

    Attributes:
        preset: ``seed`` or ``lung``: the name of the :class:`~lungtumor.preprocessing.presets.SlicePreset`
            the slicing methods delegate to.
        input_shape: shape of the input volume (I, J, K).
        input_affine: 4x4 voxel -> RAS+ mm affine of the input volume.
        ornt: nibabel orientation transform input -> canonical ('L','A','S').
        canonical_shape: shape after reorientation.
        slice_start, slice_stop: kept canonical axial slices ``k`` (model slice ``d`` is ``k = slice_start + d``).
        origin_index: canonical continuous (i, j) index of the centre of model pixel (0, 0).
        step: canonical voxels per model pixel along (i, j).
        out_shape: model slice size (H, W).
        box_ijk: canonical box ``((i0, i1), (j0, j1), (k0, k1))`` (half-open) that was cropped:
            the lung region's box plus the margin, clipped to the scan; outputs are zero outside it.
        hu_scale, clip_hu: intensity scaling of the CT (HU clipped, then / hu_scale).
        context_step_mm: 2.5D context distance in mm; None = adjacent slices.
    """

    preset: str
    input_shape: tuple[int, int, int]
    input_affine: tuple[tuple[float, ...], ...]
    ornt: tuple[tuple[float, ...], ...]
    canonical_shape: tuple[int, int, int]
    slice_start: int
    slice_stop: int
    origin_index: tuple[float, float]
    step: tuple[float, float]
    out_shape: tuple[int, int]
    box_ijk: tuple[tuple[int, int], ...]
    hu_scale: float
    clip_hu: tuple[float, float] | None = None
    context_step_mm: float | None = None

    @property
    def strategy(self) -> SlicePreset:
        """The preset's strategy (:func:`~lungtumor.preprocessing.presets.preset_for`)."""
        return preset_for(self.preset)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def n_slices(self) -> int:
        """Number of model slices D."""
        return self.slice_stop - self.slice_start

    @property
    def slice_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of the model slices."""
        return (self.n_slices, *self.out_shape)

    @property
    def canonical_affine(self) -> np.ndarray:
        """4x4 affine of the reoriented (canonical) grid."""
        return np.asarray(self.input_affine) @ nio.inv_ornt_aff(np.asarray(self.ornt), self.input_shape)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Canonical voxel size along (i, j, k) in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.canonical_affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        """Model pixel size along (H, W) in mm."""
        sp = self.spacing_mm
        return (self.step[0] * sp[0], self.step[1] * sp[1])

    @property
    def slice_affine(self) -> np.ndarray:
        """4x4 affine mapping model indices (h, w, d) to RAS+ mm (a Volume of the slices moved to
        (H, W, D) with this affine sits where the CT does)."""
        to_canon = np.array(
            [
                [self.step[0], 0.0, 0.0, self.origin_index[0]],
                [0.0, self.step[1], 0.0, self.origin_index[1]],
                [0.0, 0.0, 1.0, float(self.slice_start)],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        return self.canonical_affine @ to_canon

    def context_offsets(self, context: int) -> np.ndarray:
        """Offsets (in slices, float) of the ``2 * context + 1`` 2.5D channels around a slice.

        By ``context_step_mm`` (lung preset; fractional offsets are linearly interpolated by
        :func:`context_stack`), else the adjacent slices ``-context .. context`` (the seed).
        """
        return self.strategy.context_offsets(self, context)

    def coverage(self, mask: Volume | CanonicalVolume) -> tuple[int, int]:
        """(voxels of ``mask`` inside the cropped box and kept slices, all voxels of ``mask``)."""
        canon = self._canonical(mask, "mask")
        (i0, i1), (j0, j1), _ = self.box_ijk
        total = int(np.count_nonzero(canon))
        inside = int(np.count_nonzero(canon[i0:i1, j0:j1, self.slice_start : self.slice_stop]))
        return inside, total

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (goes into each case's meta.json)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = json_list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceGrid:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError."""
        check_known_keys(cls, d, "slice grid")
        d = dict(d)
        d["input_shape"] = tuple(int(v) for v in d["input_shape"])
        d["canonical_shape"] = tuple(int(v) for v in d["canonical_shape"])
        d["input_affine"] = _tuple2(d["input_affine"])
        d["ornt"] = _tuple2(d["ornt"])
        d["origin_index"] = tuple(float(v) for v in d["origin_index"])
        d["step"] = tuple(float(v) for v in d["step"])
        d["out_shape"] = tuple(int(v) for v in d["out_shape"])
        d["box_ijk"] = tuple(tuple(int(v) for v in b) for b in d["box_ijk"])
        if d.get("clip_hu") is not None:
            d["clip_hu"] = tuple(float(v) for v in d["clip_hu"])
        return cls(**d)

    # -- forward: volume -> slices ---------------------------------------------------------------
    def _check_grid(self, volume: Volume, what: str) -> None:
        # A zero-stride stand-in: the grid the slice grid was fitted to, without its voxels.
        fitted = Volume(np.broadcast_to(np.zeros((), np.uint8), self.input_shape), np.asarray(self.input_affine), {"path": "(fitted grid)"})
        require_same_grid(
            volume, fitted, what, "the volume the slice grid was fitted to",
            fix=f"fit the grid to this volume (fit_grid) or resample the {what} onto the CT first",
        )

    def _canonical(self, volume: Volume | CanonicalVolume, what: str) -> np.ndarray:
        """The canonical array of ``volume`` (on the grid this record was fitted to), reoriented by the
        recorded transform unless it already is."""
        self._check_grid(volume.source if isinstance(volume, CanonicalVolume) else volume, what)
        return to_canonical(volume, ornt=np.asarray(self.ornt)).canonical.array

    def image_to_slices(self, ct: Volume | CanonicalVolume) -> np.ndarray:
        """The CT's model slices: (D, H, W) float32, HU clipped and divided by ``hu_scale``.

        Lung preset: bilinear sampling at the model pixel centres; pixels beyond the scan read air
        (HU_AIR). Seed preset: the seed's resize of every slice.
        """
        return self.strategy.image_to_slices(self, self._canonical(ct, "CT"))

    def mask_to_slices(self, mask: Volume | CanonicalVolume) -> np.ndarray:
        """A mask's model slices: (D, H, W) uint8 {0, 1} by nearest neighbour (nonzero = 1).

        Lung preset: a model pixel takes the value of the voxel whose cell contains the pixel
        centre; pixels beyond the scan are 0. Seed preset: the seed's ``floor(p * n / size)``.
        """
        return self.strategy.mask_to_slices(self, self._canonical(mask, "mask"))

    # -- backward: slices -> volume --------------------------------------------------------------
    def slices_to_volume(self, prob_slices: np.ndarray, *, threshold: float | None = None, meta: dict[str, Any] | None = None) -> Volume:
        """Model-grid values (D, H, W) back onto the input's exact grid (shape and affine).

        Lung preset: values are sampled bilinearly at every canonical voxel centre of the cropped
        box and kept slices; everything else is 0. Seed preset: the seed's bilinear resize back,
        dropped slices 0. With ``threshold`` the result is a uint8 mask ``value > threshold``
        (thresholded chunk by chunk, no full-size float copy), else float32.
        """
        if tuple(prob_slices.shape) != self.slice_shape:
            raise GeometryError(f"model output shape {tuple(prob_slices.shape)} differs from the slice grid's {self.slice_shape}")
        canon = self.strategy.slices_to_canonical(self, prob_slices, threshold)
        out = np.ascontiguousarray(undo_reorient_array(canon, np.asarray(self.ornt)))
        if out.shape != self.input_shape:  # pragma: no cover - an internal invariant
            raise GeometryError(f"internal: restored shape {out.shape} != input {self.input_shape}")
        return Volume(out, np.asarray(self.input_affine), dict(meta or {}))


def json_list(value: Any) -> Any:
    """Nested tuples -> nested lists (JSON-able)."""
    if isinstance(value, (tuple, list)):
        return [json_list(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# 2.5D context


def context_stack(slices: np.ndarray, centre: np.ndarray | int, offsets: np.ndarray) -> np.ndarray:
    """2.5D input: (N, C, H, W) float32 channels at ``centre + offsets`` slices, C = len(offsets).

    Positions are clamped to the first and last slice (edges repeated); a fractional position is
    the linear blend of its two neighbouring slices. Whole-number offsets gather slices exactly
    (the seed's behaviour). Works on memory-mapped ``(D, H, W)`` arrays.
    """
    depth = slices.shape[0]
    pos = np.clip(np.atleast_1d(np.asarray(centre, dtype=np.float64))[:, None] + np.asarray(offsets, dtype=np.float64)[None, :], 0, depth - 1)
    lo = np.floor(pos + INTEGER_TOL).astype(np.int64)
    frac = pos - lo
    if np.all(np.abs(frac) <= INTEGER_TOL):
        return np.asarray(slices[lo], dtype=np.float32)
    hi = np.minimum(lo + 1, depth - 1)
    w = frac.astype(np.float32)[:, :, None, None]
    a = np.asarray(slices[lo], dtype=np.float32)
    b = np.asarray(slices[hi], dtype=np.float32)
    return a + w * (b - a)


# --------------------------------------------------------------------------------------------
# Fitting


def fit_grid(ct: Volume | CanonicalVolume, region: Volume | None, cfg: PreprocessConfig) -> SliceGrid:
    """Fit the slice grid of ``ct`` under ``cfg`` (the preprocessing config, recorded in the store and the checkpoint): the preset's layout
    (:meth:`~lungtumor.preprocessing.presets.SlicePreset.fit`) in the one record.

    Args:
        ct: the CT (any orientation), or the CT already reoriented by
            :func:`~lungtumor.io.volume.to_canonical` (not reoriented again).
        region: lung region mask on ``ct``'s grid (e.g. ``find_lung_region(ct).mask``); None or an
            empty mask = the whole scan. Ignored by the seed preset.
        cfg: the preprocessing / grid config.

    Raises:
        ConfigError: an unknown preset.
        GeometryError: ``region`` is not on ``ct``'s grid.
        InputError: seed preset and a scan with no more slices than it drops.
    """
    strategy = preset_for(cfg)
    canon = to_canonical(ct, cfg.axcodes)
    layout = strategy.fit(canon, region, cfg)
    return SliceGrid(
        preset=strategy.name,
        input_shape=canon.source.shape,
        input_affine=_tuple2(canon.source.affine),
        ornt=_tuple2(canon.ornt),
        canonical_shape=canon.canonical.shape,
        hu_scale=float(cfg.hu_scale),
        clip_hu=tuple(float(v) for v in cfg.clip_hu) if cfg.clip_hu is not None else None,
        **layout.fields(),
    )
