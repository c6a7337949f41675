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

Presets (``PreprocessConfig.preset``; :func:`preset_config`):

* ``seed``: the seed's recipe, bit for bit (it calls :mod:`lungtumor.preprocessing.recipe`): no
  lung region, drop the 30 most inferior slices, resize every slice to 256x256 (bilinear with
  ``align_corners=False`` for the CT, ``floor(p * n / 256)`` for the mask). A documented property
  of that preset: its mask is shifted by ``(n / 256 - 1) / 2`` source voxels against its CT (half a
  voxel at 512 -> 256), and its pixel size depends on the field of view. Use it to reproduce old
  stores and checkpoints.
* ``lung``: physical and lung-aware; the choices were measured (``benchmarks/bench_grid.py``,
  BENCHMARKS.md) on FULL phantom cases and the shared real scans (LUNG1-002, LIDC-IDRI-0001):

  - ``spacing_mm = 1.5``: the seed's pixel is 1.43-1.66 mm on FULL phantoms, 1.41 mm on
    LIDC-IDRI-0001 and 1.95 mm on LUNG1's 500 mm field of view (about 1.56 mm on a typical MSD
    scan); 1.5 mm is as fine or finer on all of them and the same on every scan. Model pixels
    relative to the seed preset (lung crop x kept slices): 0.39-0.40 on FULL phantoms and
    0.62-0.64 on the real scans at 1.5 mm, against 0.56-0.59 / 0.86-0.94 at 1.25 mm and
    0.82-0.89 / 1.36-1.48 at 1.0 mm. 1.5 mm is the finest spacing at which whole-scan prediction
    is more than 2x faster than the seed preset on a FULL phantom; ``--spacing-mm 1.25`` buys
    finer small nodules at 1.4-1.5x the pixels.
  - ``margin_mm = 5``: the lung region is already tumour-inclusive and reaches 15 mm in-plane and
    10 mm along z beyond the lungs' hull (:mod:`lungtumor.preprocessing.lungs`); 5 mm more keeps
    the chest wall beside juxtapleural tumours in view. 10 mm costs 10-23 % more pixels and kept slices for no coverage:
    100 % of the tumour voxels of every measured scan lie inside the crop with either.
  - ``pad_multiple = 16``: any U-Net with up to 4 pools (the seed's has 3) takes the slices; the
    crop's own size per case is kept (no fixed input size), because a fixed size large enough for
    the largest chest (about 400 x 300 mm, 272 x 208 pixels) would spend 1.7-2.1x the pixels on the
    measured scans;
    training batches of cases with different sizes are padded with air by the loader
    (:class:`lungtumor.training.data.PadCollate`). ``input_size_px`` fixes the size instead.
  - 2.5D context by millimetres (``context_step_mm = 2.5``), not by slice count: the model
    predicts every native slice of the lung extent (slice thickness 0.6-5 mm: resampling z to a
    common grid would either drop through-plane detail on thin-slice scans or interpolate labels
    between slices) and its context channels are taken at ``+-n * 2.5 mm``, linearly interpolated
    between the two nearest native slices (:meth:`SliceGrid.context_offsets`, :func:`context_stack`).
    Rounding to the nearest slice instead would give 2.4 mm on 0.6 mm slices, 3 mm on 3 mm and
    5 mm on 5 mm slices (a 100 % error); interpolation is exact on every spacing.
  - HU clipped to [-1024, 3071] before the seed's scaling (HU / 3071): values of -2048/-3024
    outside a scanner's reconstruction circle read as air.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel import orientations as nio

from lungtumor.config import HU_AIR, PreprocessConfig, check_known_keys
from lungtumor.errors import GeometryError, InputError
from lungtumor.io.volume import Volume, orientation_transform, reorient, require_same_grid, undo_reorient_array

log = logging.getLogger(__name__)

#: The grid's config is the preprocessing config: one record, written into the store and the checkpoint.
GridConfig = PreprocessConfig
#: Canonical slices converted and resampled at a time (bounds the float32 working memory).
CHUNK_SLICES = 32
#: Tolerance when deciding that a step or an index is a whole number of voxels.
_INTEGER_TOL = 1e-9
#: A mask voxel is set where the bilinearly mapped-back value is above this.
MASK_THRESHOLD = 0.5


def preset_config(name: str, **overrides: Any) -> PreprocessConfig:
    """The config of preset ``name`` (``seed`` or ``lung``), with ``overrides`` (None values ignored)."""
    return PreprocessConfig.from_preset(name, **overrides)


def air_value(cfg: PreprocessConfig) -> float:
    """Air (HU_AIR, clipped as ``cfg`` clips) in the scaled units of the model slices."""
    hu = float(HU_AIR) if cfg.clip_hu is None else float(np.clip(HU_AIR, *cfg.clip_hu))
    return hu / float(cfg.hu_scale)


def check_model_input(cfg: PreprocessConfig, depth: int) -> None:
    """Raise ConfigError unless a U-Net with ``depth`` pools can take the slices of ``cfg``.

    Raises:
        ConfigError: slice sizes not divisible by ``2 ** depth``, with the fix.
    """
    from lungtumor.errors import ConfigError

    need = 2 ** int(depth)
    if cfg.preset == "seed":
        if cfg.size % need:
            raise ConfigError(f"slice size {cfg.size} is not divisible by 2**depth = {need}; preprocess with --size {-(-cfg.size // need) * need}")
        return
    sizes = [cfg.pad_multiple] if cfg.input_size_px is None else list(cfg.input_size_px)
    if any(int(s) % need for s in sizes):
        raise ConfigError(
            f"the store pads slices to multiples of {cfg.pad_multiple} (input_size_px {cfg.input_size_px}) but a U-Net of depth {depth} "
            f"needs multiples of {need}; re-run preprocess with pad_multiple={max(need, cfg.pad_multiple or 1)} or train with --depth "
            f"{int(math.log2(cfg.pad_multiple or 1))}"
        )


# --------------------------------------------------------------------------------------------
# The record


def _tuple2(x: Any) -> tuple:
    return tuple(tuple(float(v) for v in row) for row in x)


@dataclass(frozen=True)
class SliceGrid:
    """Every step from an input grid to model slices ``(D, H, W)`` and back (see the module docstring).

    Attributes:
        preset: ``seed`` or ``lung`` (the seed preset delegates to the seed's recipe).
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

        With ``context_step_mm`` the channels lie ``n * context_step_mm`` mm apart whatever the
        slice thickness (fractional offsets are linearly interpolated by :func:`context_stack`);
        without it (the seed) they are the adjacent slices ``-context .. context``.
        """
        n = np.arange(-int(context), int(context) + 1, dtype=np.float64)
        if self.context_step_mm is None:
            return n
        return n * (float(self.context_step_mm) / self.spacing_mm[2])

    def coverage(self, mask: Volume) -> tuple[int, int]:
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

    def _canonical(self, volume: Volume, what: str) -> np.ndarray:
        self._check_grid(volume, what)
        return nio.apply_orientation(volume.array, np.asarray(self.ornt))

    def _seed_config(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.out_shape[0], skip_inferior_slices=self.slice_start, hu_scale=self.hu_scale, clip_hu=self.clip_hu)

    def _centres(self, axis: int) -> np.ndarray:
        """Canonical continuous index of every model pixel centre along in-plane ``axis`` (float64)."""
        return self.origin_index[axis] + np.arange(self.out_shape[axis], dtype=np.float64) * self.step[axis]

    def image_to_slices(self, ct: Volume) -> np.ndarray:
        """The CT's model slices: (D, H, W) float32, HU clipped and divided by ``hu_scale``.

        Bilinear sampling at the model pixel centres; pixels beyond the scan read air (HU_AIR).
        """
        if self.preset == "seed":
            from lungtumor.preprocessing.recipe import prepare_ct

            self._check_grid(ct, "CT")
            return prepare_ct(ct, self._seed_config()).slices
        import torch
        import torch.nn.functional as F

        canon = self._canonical(ct, "CT")
        rows, cols = self._centres(0), self._centres(1)
        # Only the voxels the bilinear taps can reach are converted to float.
        win = [_window(c, n) for c, n in ((rows, canon.shape[0]), (cols, canon.shape[1]))]
        pad_hu = float(HU_AIR) if self.clip_hu is None else float(np.clip(HU_AIR, *self.clip_hu))
        out = np.full(self.slice_shape, pad_hu / self.hu_scale, dtype=np.float32)
        if win[0] is None or win[1] is None:
            return out
        (r0, r1), (c0, c1) = win
        grid = _sampling_grid(rows - r0, r1 - r0, cols - c0, c1 - c0)  # (1, H, W, 2)
        for s0 in range(self.slice_start, self.slice_stop, CHUNK_SLICES):
            s1 = min(self.slice_stop, s0 + CHUNK_SLICES)
            view = np.ascontiguousarray(np.moveaxis(canon[r0:r1, c0:c1, s0:s1], 2, 0))  # (n, I', J')
            t = torch.from_numpy(view).float()
            if self.clip_hu is not None:
                t.clamp_(self.clip_hu[0], self.clip_hu[1])
            # Sampled as (HU - pad) so grid_sample's zero padding reads as air beyond the scan.
            t = (t - pad_hu).unsqueeze(1)
            res = F.grid_sample(t, grid.expand(t.shape[0], -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=False)
            out[s0 - self.slice_start : s1 - self.slice_start] = ((res[:, 0] + pad_hu) / self.hu_scale).numpy()
        return out

    def mask_to_slices(self, mask: Volume) -> np.ndarray:
        """A mask's model slices: (D, H, W) uint8 {0, 1} by nearest neighbour (nonzero = 1).

        A model pixel takes the value of the voxel whose cell contains the pixel centre; pixels
        beyond the scan are 0.
        """
        if self.preset == "seed":
            from lungtumor.preprocessing.recipe import prepare_mask

            self._check_grid(mask, "mask")
            return prepare_mask(mask, self._seed_config())
        canon = self._canonical(mask, "mask")
        out = np.zeros(self.slice_shape, dtype=np.uint8)
        rows, rok = _nearest(self._centres(0), canon.shape[0])
        cols, cok = _nearest(self._centres(1), canon.shape[1])
        if not rok.any() or not cok.any():
            return out
        sub = canon[rows[rok]][:, cols[cok], self.slice_start : self.slice_stop] != 0  # (H', W', D)
        h_idx, w_idx = np.nonzero(rok)[0], np.nonzero(cok)[0]
        out[:, h_idx[0] : h_idx[-1] + 1, w_idx[0] : w_idx[-1] + 1] = np.moveaxis(sub, 2, 0)
        return out

    # -- backward: slices -> volume --------------------------------------------------------------
    def slices_to_volume(self, prob_slices: np.ndarray, *, threshold: float | None = None, meta: dict[str, Any] | None = None) -> Volume:
        """Model-grid values (D, H, W) back onto the input's exact grid (shape and affine).

        Values are sampled bilinearly at every canonical voxel centre of the cropped box and kept
        slices; everything else is 0. With ``threshold`` the result is a uint8 mask ``value >
        threshold`` (thresholded chunk by chunk, no full-size float copy), else float32.
        """
        if tuple(prob_slices.shape) != self.slice_shape:
            raise GeometryError(f"model output shape {tuple(prob_slices.shape)} differs from the slice grid's {self.slice_shape}")
        affine = np.asarray(self.input_affine)
        if self.preset == "seed":
            from lungtumor.preprocessing.recipe import PreparedCT, restore_slices

            prepared = PreparedCT(prob_slices, np.asarray(self.ornt), self.canonical_shape, self.slice_start)
            return Volume(restore_slices(prob_slices, prepared, self.input_shape, threshold=threshold), affine, dict(meta or {}))
        import torch
        import torch.nn.functional as F

        ci, cj, ck = self.canonical_shape
        canon = np.zeros((ci, cj, ck), dtype=np.float32 if threshold is None else np.uint8)
        (i0, i1), (j0, j1), _ = self.box_ijk
        h, w = self.out_shape
        # Model-grid continuous index of every canonical voxel centre of the box.
        ph = (np.arange(i0, i1, dtype=np.float64) - self.origin_index[0]) / self.step[0]
        pw = (np.arange(j0, j1, dtype=np.float64) - self.origin_index[1]) / self.step[1]
        grid = _sampling_grid(ph, h, pw, w)
        for s0 in range(0, self.n_slices, CHUNK_SLICES):
            s1 = min(self.n_slices, s0 + CHUNK_SLICES)
            t = torch.from_numpy(np.ascontiguousarray(prob_slices[s0:s1], dtype=np.float32)).unsqueeze(1)
            res = F.grid_sample(t, grid.expand(t.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False)
            chunk = res[:, 0].numpy()  # (n, I', J')
            if threshold is not None:
                chunk = chunk > threshold
            canon[i0:i1, j0:j1, self.slice_start + s0 : self.slice_start + s1] = np.moveaxis(chunk, 0, 2)
        out = np.ascontiguousarray(undo_reorient_array(canon, np.asarray(self.ornt)))
        if out.shape != self.input_shape:  # pragma: no cover - an internal invariant
            raise GeometryError(f"internal: restored shape {out.shape} != input {self.input_shape}")
        return Volume(out, affine, dict(meta or {}))


def json_list(value: Any) -> Any:
    """Nested tuples -> nested lists (JSON-able)."""
    if isinstance(value, (tuple, list)):
        return [json_list(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Sampling helpers (one centre convention)


def _normalised(index: np.ndarray, n: int) -> np.ndarray:
    """Continuous voxel index (voxel centres at integers) -> grid_sample's align_corners=False
    coordinate, in which -1 and +1 are the outer edges of voxels 0 and n - 1."""
    return (2.0 * index + 1.0) / n - 1.0


def _sampling_grid(rows: np.ndarray, n_rows: int, cols: np.ndarray, n_cols: int) -> Any:
    """(1, len(rows), len(cols), 2) float32 grid for ``grid_sample`` of an (n_rows, n_cols) image
    at the continuous indices ``rows x cols`` (grid_sample wants (x = column, y = row))."""
    import torch

    y = _normalised(np.asarray(rows, dtype=np.float64), n_rows)
    x = _normalised(np.asarray(cols, dtype=np.float64), n_cols)
    g = np.empty((1, y.size, x.size, 2), dtype=np.float32)
    g[0, :, :, 0] = x[None, :]
    g[0, :, :, 1] = y[:, None]
    return torch.from_numpy(g)


def _window(centres: np.ndarray, n: int) -> tuple[int, int] | None:
    """Half-open index range of the voxels a bilinear tap at ``centres`` can touch, clipped to [0, n)."""
    lo = max(0, int(math.floor(centres.min())))
    hi = min(n, int(math.floor(centres.max())) + 2)
    return (lo, hi) if hi > lo else None


def _nearest(centres: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the voxel whose cell ``[i - 0.5, i + 0.5)`` contains each centre, and whether it exists."""
    idx = np.floor(centres + 0.5 + _INTEGER_TOL).astype(np.int64)
    ok = (idx >= 0) & (idx < n)
    return np.clip(idx, 0, n - 1), ok


def context_stack(slices: np.ndarray, centre: np.ndarray | int, offsets: np.ndarray) -> np.ndarray:
    """2.5D input: (N, C, H, W) float32 channels at ``centre + offsets`` slices, C = len(offsets).

    Positions are clamped to the first and last slice (edges repeated); a fractional position is
    the linear blend of its two neighbouring slices. Whole-number offsets gather slices exactly
    (the seed's behaviour). Works on memory-mapped ``(D, H, W)`` arrays.
    """
    depth = slices.shape[0]
    pos = np.clip(np.atleast_1d(np.asarray(centre, dtype=np.float64))[:, None] + np.asarray(offsets, dtype=np.float64)[None, :], 0, depth - 1)
    lo = np.floor(pos + _INTEGER_TOL).astype(np.int64)
    frac = pos - lo
    if np.all(np.abs(frac) <= _INTEGER_TOL):
        return np.asarray(slices[lo], dtype=np.float32)
    hi = np.minimum(lo + 1, depth - 1)
    w = frac.astype(np.float32)[:, :, None, None]
    a = np.asarray(slices[lo], dtype=np.float32)
    b = np.asarray(slices[hi], dtype=np.float32)
    return a + w * (b - a)


# --------------------------------------------------------------------------------------------
# Fitting


def _box(axis_any: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(axis_any)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else None


def region_box(region_canonical: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Half-open canonical box ``((i0, i1), (j0, j1), (k0, k1))`` of a region's nonzero voxels, or None."""
    nz = region_canonical != 0
    bi = _box(nz.any(axis=(1, 2)))
    if bi is None:
        return None
    bj = _box(nz[bi[0] : bi[1]].any(axis=(0, 2)))
    bk = _box(nz[bi[0] : bi[1], bj[0] : bj[1]].any(axis=(0, 1)))  # type: ignore[index]
    return (bi, bj, bk)  # type: ignore[return-value]


def _in_plane(lo: int, hi: int, spacing_in_mm: float, cfg: PreprocessConfig, fixed: int | None) -> tuple[float, float, int]:
    """(origin index, step, pixels) of the model grid along one in-plane axis covering voxels [lo, hi)."""
    step = float(cfg.spacing_mm) / spacing_in_mm  # canonical voxels per model pixel
    # +1 voxel: room for snapping the origin to a voxel centre without uncovering the box.
    needed = max(1, math.ceil((hi - lo + 1) / step - _INTEGER_TOL))
    m = int(cfg.pad_multiple)
    n = -(-needed // m) * m
    if fixed is not None:
        if fixed < needed:
            log.warning(
                "the lung box needs %d model pixels but input_size_px is %d; this case's slices are %d pixels (the loader pads batches)",
                needed, fixed, n,
            )
        else:
            n = fixed
    centre = (lo + hi - 1) / 2.0
    origin = centre - (n - 1) / 2.0 * step
    return float(round(origin)), step, n


def fit_grid(ct: Volume, region: Volume | None, cfg: PreprocessConfig) -> SliceGrid:
    """Fit the slice grid of ``ct`` under ``cfg`` (a :data:`GridConfig`).

    Args:
        ct: the CT (any orientation).
        region: lung region mask on ``ct``'s grid (e.g. ``find_lung_region(ct).mask``); None or an
            empty mask = the whole scan. Ignored by the seed preset.
        cfg: the preprocessing / grid config.

    Raises:
        GeometryError: ``region`` is not on ``ct``'s grid.
        InputError: seed preset and a scan with no more slices than it drops.
    """
    ornt = orientation_transform(ct.affine, cfg.axcodes)
    shape = [0, 0, 0]
    for src, (dst, _) in enumerate(ornt):
        shape[int(dst)] = int(ct.shape[src])
    canon_shape = (shape[0], shape[1], shape[2])
    common = {
        "preset": cfg.preset,
        "input_shape": ct.shape,
        "input_affine": _tuple2(ct.affine),
        "ornt": _tuple2(ornt),
        "canonical_shape": canon_shape,
        "hu_scale": float(cfg.hu_scale),
        "clip_hu": tuple(float(v) for v in cfg.clip_hu) if cfg.clip_hu is not None else None,
    }
    ci, cj, ck = canon_shape
    if cfg.preset == "seed":
        if ck <= cfg.skip_inferior_slices:
            raise InputError(
                f"{ct.meta.get('path', 'CT')}: has {ck} axial slices, not more than the "
                f"{cfg.skip_inferior_slices} the seed preset drops; preprocess with --skip-inferior-slices below {ck}, or use the lung preset "
                "(it keeps the slices of the lung extent), and a model trained on it"
            )
        s = cfg.size
        # The CT's centre convention (bilinear, align_corners=False); the seed's mask differs (module docstring).
        return SliceGrid(
            **common,
            slice_start=cfg.skip_inferior_slices,
            slice_stop=ck,
            origin_index=(0.5 * ci / s - 0.5, 0.5 * cj / s - 0.5),
            step=(ci / s, cj / s),
            out_shape=(s, s),
            box_ijk=((0, ci), (0, cj), (cfg.skip_inferior_slices, ck)),
            context_step_mm=None,
        )
    canon_affine = ct.affine @ nio.inv_ornt_aff(ornt, ct.shape)
    spacing = np.linalg.norm(canon_affine[:3, :3], axis=0)
    box = None
    if region is not None:
        require_same_grid(region, ct, "lung region", "CT", fix="compute the lung region on the CT itself")
        box = region_box(reorient(region, cfg.axcodes)[0].array)
    if box is None:
        box = ((0, ci), (0, cj), (0, ck))
    margin = [math.ceil(float(cfg.margin_mm) / float(s) - _INTEGER_TOL) for s in spacing]
    box = tuple((max(0, lo - m), min(n, hi + m)) for (lo, hi), m, n in zip(box, margin, canon_shape))
    fixed = cfg.input_size_px or (None, None)
    oi, si, hi_px = _in_plane(*box[0], float(spacing[0]), cfg, fixed[0])
    oj, sj, wj_px = _in_plane(*box[1], float(spacing[1]), cfg, fixed[1])
    return SliceGrid(
        **common,
        slice_start=box[2][0],
        slice_stop=box[2][1],
        origin_index=(oi, oj),
        step=(si, sj),
        out_shape=(hi_px, wj_px),
        box_ijk=box,
        context_step_mm=cfg.context_step_mm,
    )
