"""The slice recipes ("presets") as strategy classes behind one protocol, and their registry.

A :class:`~lungtumor.preprocessing.grid.SliceGrid` records which preset made it (its ``preset``
name, as stores and checkpoints record it); :func:`preset_for` maps that name (or a config) to its
:class:`SlicePreset`, which fits the grid's layout, turns a canonical CT or mask into model slices,
takes model outputs back to the canonical grid, gives the 2.5D context offsets and checks that a
U-Net can take the slices. The grid record is the same frozen JSON for both; only these methods
differ. Every array a preset receives is already in the canonical ('L','A','S') orientation
(:func:`~lungtumor.io.volume.to_canonical`, once per volume); the grid undoes it.

Presets (``PreprocessConfig.preset``):

* ``seed`` (:class:`SeedPreset`): the seed's recipe, bit for bit (it calls
  :mod:`lungtumor.preprocessing.recipe`): no lung region, drop the 30 most inferior slices, resize
  every slice to 256x256 (bilinear with ``align_corners=False`` for the CT, ``floor(p * n / 256)``
  for the mask). A documented property of that preset: its mask is shifted by ``(n / 256 - 1) / 2``
  source voxels against its CT (half a voxel at 512 -> 256), and its pixel size depends on the
  field of view. Use it to reproduce old stores and checkpoints.
* ``lung`` (:class:`LungPreset`, the default): physical and lung-aware; the choices were measured
  (``benchmarks/bench_grid.py``, BENCHMARKS.md) on FULL phantom cases and the shared real scans
  (LUNG1-002, LIDC-IDRI-0001):

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
    between the two nearest native slices (:meth:`LungPreset.context_offsets`,
    :func:`~lungtumor.preprocessing.grid.context_stack`). Rounding to the nearest slice instead
    would give 2.4 mm on 0.6 mm slices, 3 mm on 3 mm and 5 mm on 5 mm slices (a 100 % error);
    interpolation is exact on every spacing.
  - HU clipped to [-1024, 3071] before the seed's scaling (HU / 3071): values of -2048/-3024
    outside a scanner's reconstruction circle read as air.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from lungtumor.config import HU_AIR, PRESET_NAMES, PreprocessConfig
from lungtumor.errors import ConfigError, InputError
from lungtumor.io.volume import CanonicalVolume, Volume, require_same_grid
from lungtumor.preprocessing.recipe import prepare_stack, restore_canonical

log = logging.getLogger(__name__)


class GridRecord(Protocol):
    """What a strategy reads of the slice-grid record: the fields and derived sizes of
    :class:`~lungtumor.preprocessing.grid.SliceGrid` (which imports this module; this module never
    imports it, so the two files do not form an import circle)."""

    preset: str
    canonical_shape: tuple[int, int, int]
    slice_start: int
    slice_stop: int
    origin_index: tuple[float, float]
    step: tuple[float, float]
    out_shape: tuple[int, int]
    box_ijk: tuple[tuple[int, int], ...]
    hu_scale: float
    clip_hu: tuple[float, float] | None
    context_step_mm: float | None

    @property
    def n_slices(self) -> int: ...

    @property
    def slice_shape(self) -> tuple[int, int, int]: ...

    @property
    def spacing_mm(self) -> tuple[float, float, float]: ...

#: Canonical slices converted and resampled at a time (bounds the float32 working memory).
CHUNK_SLICES = 32
#: Tolerance when deciding that a step or an index is a whole number of voxels.
INTEGER_TOL = 1e-9

#: A canonical box ``((i0, i1), (j0, j1), (k0, k1))``, half-open.
Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SliceLayout:
    """What a preset decides when it fits a scan: the preset-specific fields of the slice grid.

    Attributes (as on :class:`~lungtumor.preprocessing.grid.SliceGrid`):
        slice_start, slice_stop: kept canonical axial slices.
        origin_index: canonical continuous (i, j) index of the centre of model pixel (0, 0).
        step: canonical voxels per model pixel along (i, j).
        out_shape: model slice size (H, W).
        box_ijk: the canonical box that was cropped (outputs are zero outside it).
        context_step_mm: 2.5D context distance in mm; None = adjacent slices.
    """

    slice_start: int
    slice_stop: int
    origin_index: tuple[float, float]
    step: tuple[float, float]
    out_shape: tuple[int, int]
    box_ijk: Box
    context_step_mm: float | None

    def fields(self) -> dict[str, Any]:
        """The layout as keyword arguments of the grid record."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class SlicePreset(Protocol):
    """One slice recipe: how a canonical CT becomes model slices and how outputs go back.

    Attributes:
        name: the preset's name, as configs, stores and checkpoints record it.
        needs_lung_region: the grid crops to a lung region (find it before :meth:`fit`).
        fixed_size: every slice is ``size`` pixels square (``--size`` applies; the model's input
            size is the config's), rather than a physical spacing and the crop's own size.
    """

    name: ClassVar[str]
    needs_lung_region: ClassVar[bool]
    fixed_size: ClassVar[bool]

    def fit(self, ct: CanonicalVolume, region: Volume | None, cfg: PreprocessConfig) -> SliceLayout:
        """The layout of ``ct``'s model slices under ``cfg`` (``region``: the lung region on ``ct``'s
        source grid, or None)."""
        ...

    def image_to_slices(self, grid: GridRecord, canonical: np.ndarray) -> np.ndarray:
        """The canonical CT's model slices: (D, H, W) float32, HU clipped and divided by ``hu_scale``."""
        ...

    def mask_to_slices(self, grid: GridRecord, canonical: np.ndarray) -> np.ndarray:
        """A canonical mask's model slices: (D, H, W) uint8 {0, 1}."""
        ...

    def slices_to_canonical(self, grid: GridRecord, prob_slices: np.ndarray, threshold: float | None) -> np.ndarray:
        """Model-grid values (D, H, W) on the canonical grid (float32, or uint8 ``> threshold``)."""
        ...

    def context_offsets(self, grid: GridRecord, context: int) -> np.ndarray:
        """Offsets (in slices, float) of the ``2 * context + 1`` 2.5D channels around a slice."""
        ...

    def check_model_input(self, cfg: PreprocessConfig, depth: int) -> None:
        """Raise ConfigError unless a U-Net with ``depth`` pools can take the slices of ``cfg``."""
        ...


def _adjacent(context: int) -> np.ndarray:
    return np.arange(-int(context), int(context) + 1, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# The seed's recipe


class SeedPreset:
    """The seed's recipe, bit for bit (see the module docstring): no lung region, drop the
    ``skip_inferior_slices`` most inferior slices, resize every slice to ``size`` square."""

    name: ClassVar[str] = "seed"
    needs_lung_region: ClassVar[bool] = False
    fixed_size: ClassVar[bool] = True

    def fit(self, ct: CanonicalVolume, region: Volume | None, cfg: PreprocessConfig) -> SliceLayout:
        """The seed's layout; ``region`` is ignored.

        Raises:
            InputError: a scan with no more slices than the preset drops.
        """
        ci, cj, ck = ct.canonical.shape
        if ck <= cfg.skip_inferior_slices:
            raise InputError(
                f"{ct.meta.get('path', 'CT')}: has {ck} axial slices, not more than the "
                f"{cfg.skip_inferior_slices} the seed preset drops; preprocess with --skip-inferior-slices below {ck}, or use the lung preset "
                "(it keeps the slices of the lung extent), and a model trained on it"
            )
        s = cfg.size
        # The CT's centre convention (bilinear, align_corners=False); the seed's mask differs (module docstring).
        return SliceLayout(
            slice_start=cfg.skip_inferior_slices,
            slice_stop=ck,
            origin_index=(0.5 * ci / s - 0.5, 0.5 * cj / s - 0.5),
            step=(ci / s, cj / s),
            out_shape=(s, s),
            box_ijk=((0, ci), (0, cj), (cfg.skip_inferior_slices, ck)),
            context_step_mm=None,
        )

    @staticmethod
    def _recipe_config(grid: GridRecord) -> PreprocessConfig:
        return PreprocessConfig(
            preset=SeedPreset.name, size=grid.out_shape[0], skip_inferior_slices=grid.slice_start, hu_scale=grid.hu_scale, clip_hu=grid.clip_hu
        )

    def image_to_slices(self, grid: GridRecord, canonical: np.ndarray) -> np.ndarray:
        """The seed's CT slices (:func:`~lungtumor.preprocessing.recipe.prepare_stack`)."""
        return prepare_stack(canonical, grid.slice_start, self._recipe_config(grid), is_mask=False)

    def mask_to_slices(self, grid: GridRecord, canonical: np.ndarray) -> np.ndarray:
        """The seed's mask slices (nearest, ``floor(p * n / size)``)."""
        return prepare_stack(canonical, grid.slice_start, self._recipe_config(grid), is_mask=True)

    def slices_to_canonical(self, grid: GridRecord, prob_slices: np.ndarray, threshold: float | None) -> np.ndarray:
        """The seed's inverse (:func:`~lungtumor.preprocessing.recipe.restore_canonical`)."""
        return restore_canonical(prob_slices, grid.canonical_shape, grid.slice_start, threshold)

    def context_offsets(self, grid: GridRecord, context: int) -> np.ndarray:
        """The adjacent slices ``-context .. context``."""
        return _adjacent(context)

    def check_model_input(self, cfg: PreprocessConfig, depth: int) -> None:
        """Raises:
        ConfigError: ``size`` not divisible by ``2 ** depth``, with the fix.
        """
        need = 2 ** int(depth)
        if cfg.size % need:
            raise ConfigError(f"slice size {cfg.size} is not divisible by 2**depth = {need}; preprocess with --size {-(-cfg.size // need) * need}")


# --------------------------------------------------------------------------------------------
# The lung-aware physical grid


class LungPreset:
    """Crop to the lung region's box plus a margin, resample in-plane to ``spacing_mm``, pad, keep the
    slices of the lung extent (the steps: :mod:`lungtumor.preprocessing.grid`; the choices: the
    module docstring)."""

    name: ClassVar[str] = "lung"
    needs_lung_region: ClassVar[bool] = True
    fixed_size: ClassVar[bool] = False

    def fit(self, ct: CanonicalVolume, region: Volume | None, cfg: PreprocessConfig) -> SliceLayout:
        """The lung-aware layout; ``region`` None or empty = the whole scan.

        Raises:
            GeometryError: ``region`` is not on ``ct``'s source grid.
        """
        canon_shape = ct.canonical.shape
        spacing = ct.canonical.spacing_mm
        box: Box | None = None
        if region is not None:
            require_same_grid(region, ct.source, "lung region", "CT", fix="compute the lung region on the CT itself")
            box = canonical_box(region_box(region.array), ct.ornt, ct.source.shape)
        if box is None:
            box = tuple((0, n) for n in canon_shape)
        margin = [math.ceil(float(cfg.margin_mm) / float(s) - INTEGER_TOL) for s in spacing]
        box = tuple((max(0, lo - m), min(n, hi + m)) for (lo, hi), m, n in zip(box, margin, canon_shape))
        fixed = cfg.input_size_px or (None, None)
        oi, si, hi_px = _in_plane(*box[0], float(spacing[0]), cfg, fixed[0])
        oj, sj, wj_px = _in_plane(*box[1], float(spacing[1]), cfg, fixed[1])
        return SliceLayout(
            slice_start=box[2][0],
            slice_stop=box[2][1],
            origin_index=(oi, oj),
            step=(si, sj),
            out_shape=(hi_px, wj_px),
            box_ijk=box,
            context_step_mm=cfg.context_step_mm,
        )

    def image_to_slices(self, grid: GridRecord, canonical: np.ndarray) -> np.ndarray:
        """Bilinear sampling at the model pixel centres; pixels beyond the scan read air (HU_AIR)."""
        import torch
        import torch.nn.functional as F

        rows, cols = _centres(grid, 0), _centres(grid, 1)
        # Only the voxels the bilinear taps can reach are converted to float.
        win = [_window(c, n) for c, n in ((rows, canonical.shape[0]), (cols, canonical.shape[1]))]
        pad_hu = float(HU_AIR) if grid.clip_hu is None else float(np.clip(HU_AIR, *grid.clip_hu))
        out = np.full(grid.slice_shape, pad_hu / grid.hu_scale, dtype=np.float32)
        if win[0] is None or win[1] is None:
            return out
        (r0, r1), (c0, c1) = win
        sampling = _sampling_grid(rows - r0, r1 - r0, cols - c0, c1 - c0)  # (1, H, W, 2)
        for s0 in range(grid.slice_start, grid.slice_stop, CHUNK_SLICES):
            s1 = min(grid.slice_stop, s0 + CHUNK_SLICES)
            view = np.ascontiguousarray(np.moveaxis(canonical[r0:r1, c0:c1, s0:s1], 2, 0))  # (n, I', J')
            t = torch.from_numpy(view).float()
            if grid.clip_hu is not None:
                t.clamp_(grid.clip_hu[0], grid.clip_hu[1])
            # Sampled as (HU - pad) so grid_sample's zero padding reads as air beyond the scan.
            t = (t - pad_hu).unsqueeze(1)
            res = F.grid_sample(t, sampling.expand(t.shape[0], -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=False)
            out[s0 - grid.slice_start : s1 - grid.slice_start] = ((res[:, 0] + pad_hu) / grid.hu_scale).numpy()
        return out

    def mask_to_slices(self, grid: GridRecord, canonical: np.ndarray) -> np.ndarray:
        """A model pixel takes the value of the voxel whose cell contains the pixel centre; pixels
        beyond the scan are 0."""
        out = np.zeros(grid.slice_shape, dtype=np.uint8)
        rows, rok = _nearest(_centres(grid, 0), canonical.shape[0])
        cols, cok = _nearest(_centres(grid, 1), canonical.shape[1])
        if not rok.any() or not cok.any():
            return out
        sub = canonical[rows[rok]][:, cols[cok], grid.slice_start : grid.slice_stop] != 0  # (H', W', D)
        h_idx, w_idx = np.nonzero(rok)[0], np.nonzero(cok)[0]
        out[:, h_idx[0] : h_idx[-1] + 1, w_idx[0] : w_idx[-1] + 1] = np.moveaxis(sub, 2, 0)
        return out

    def slices_to_canonical(self, grid: GridRecord, prob_slices: np.ndarray, threshold: float | None) -> np.ndarray:
        """Values sampled bilinearly at every canonical voxel centre of the cropped box and kept
        slices; everything else is 0 (thresholded chunk by chunk, no full-size float copy)."""
        import torch
        import torch.nn.functional as F

        ci, cj, ck = grid.canonical_shape
        canon = np.zeros((ci, cj, ck), dtype=np.float32 if threshold is None else np.uint8)
        (i0, i1), (j0, j1), _ = grid.box_ijk
        h, w = grid.out_shape
        # Model-grid continuous index of every canonical voxel centre of the box.
        ph = (np.arange(i0, i1, dtype=np.float64) - grid.origin_index[0]) / grid.step[0]
        pw = (np.arange(j0, j1, dtype=np.float64) - grid.origin_index[1]) / grid.step[1]
        sampling = _sampling_grid(ph, h, pw, w)
        for s0 in range(0, grid.n_slices, CHUNK_SLICES):
            s1 = min(grid.n_slices, s0 + CHUNK_SLICES)
            t = torch.from_numpy(np.ascontiguousarray(prob_slices[s0:s1], dtype=np.float32)).unsqueeze(1)
            res = F.grid_sample(t, sampling.expand(t.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False)
            chunk = res[:, 0].numpy()  # (n, I', J')
            if threshold is not None:
                chunk = chunk > threshold
            canon[i0:i1, j0:j1, grid.slice_start + s0 : grid.slice_start + s1] = np.moveaxis(chunk, 0, 2)
        return canon

    def context_offsets(self, grid: GridRecord, context: int) -> np.ndarray:
        """With ``context_step_mm`` the channels lie ``n * context_step_mm`` mm apart whatever the
        slice thickness (fractional offsets are linearly interpolated by
        :func:`~lungtumor.preprocessing.grid.context_stack`); without it the adjacent slices."""
        n = _adjacent(context)
        if grid.context_step_mm is None:
            return n
        return n * (float(grid.context_step_mm) / grid.spacing_mm[2])

    def check_model_input(self, cfg: PreprocessConfig, depth: int) -> None:
        """Raises:
        ConfigError: ``pad_multiple`` (or ``input_size_px``) not a multiple of ``2 ** depth``, with the fix.
        """
        need = 2 ** int(depth)
        sizes = [cfg.pad_multiple] if cfg.input_size_px is None else list(cfg.input_size_px)
        if any(int(s) % need for s in sizes):
            raise ConfigError(
                f"the store pads slices to multiples of {cfg.pad_multiple} (input_size_px {cfg.input_size_px}) but a U-Net of depth {depth} "
                f"needs multiples of {need}; re-run preprocess with pad_multiple={max(need, cfg.pad_multiple or 1)} or train with --depth "
                f"{int(math.log2(cfg.pad_multiple or 1))}"
            )


# --------------------------------------------------------------------------------------------
# The registry

#: Every preset by the name that configs, stores and checkpoints record.
PRESETS: dict[str, SlicePreset] = {p.name: p for p in (SeedPreset(), LungPreset())}
if tuple(sorted(PRESETS)) != tuple(sorted(PRESET_NAMES)):  # pragma: no cover - a programming error
    raise RuntimeError(f"presets {sorted(PRESETS)} differ from config.PRESET_NAMES {sorted(PRESET_NAMES)}")


def preset_for(cfg_or_name: PreprocessConfig | GridRecord | str) -> SlicePreset:
    """The preset of a config, a slice grid or a recorded preset name.

    Raises:
        ConfigError: an unknown name (the message names the valid ones).
    """
    name = cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name.preset
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"preset {name!r} is unknown; use one of {list(PRESETS)} (--preset)")
    return preset


# --------------------------------------------------------------------------------------------
# Lung-grid helpers (one centre convention)


def _centres(grid: GridRecord, axis: int) -> np.ndarray:
    """Canonical continuous index of every model pixel centre along in-plane ``axis`` (float64)."""
    return grid.origin_index[axis] + np.arange(grid.out_shape[axis], dtype=np.float64) * grid.step[axis]


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
    idx = np.floor(centres + 0.5 + INTEGER_TOL).astype(np.int64)
    ok = (idx >= 0) & (idx < n)
    return np.clip(idx, 0, n - 1), ok


def _box(axis_any: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(axis_any)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else None


def region_box(region: np.ndarray) -> Box | None:
    """Half-open box ``((i0, i1), (j0, j1), (k0, k1))`` of a region's nonzero voxels, or None."""
    nz = region != 0
    bi = _box(nz.any(axis=(1, 2)))
    if bi is None:
        return None
    bj = _box(nz[bi[0] : bi[1]].any(axis=(0, 2)))
    bk = _box(nz[bi[0] : bi[1], bj[0] : bj[1]].any(axis=(0, 1)))  # type: ignore[index]
    return (bi, bj, bk)  # type: ignore[return-value]


def canonical_box(box: Box | None, ornt: np.ndarray, source_shape: tuple[int, ...]) -> Box | None:
    """A half-open box on the source grid -> the same voxels' box on the canonical grid (``ornt``:
    source -> canonical), so a region on the CT's grid need not be reoriented to find its box."""
    if box is None:
        return None
    out: list[tuple[int, int]] = [(0, 0)] * len(box)
    for axis, (lo, hi) in enumerate(box):
        dst, flip = int(ornt[axis][0]), float(ornt[axis][1])
        n = int(source_shape[axis])
        out[dst] = (n - hi, n - lo) if flip < 0 else (lo, hi)
    return tuple(out)


def _in_plane(lo: int, hi: int, spacing_in_mm: float, cfg: PreprocessConfig, fixed: int | None) -> tuple[float, float, int]:
    """(origin index, step, pixels) of the model grid along one in-plane axis covering voxels [lo, hi)."""
    step = float(cfg.spacing_mm) / spacing_in_mm  # canonical voxels per model pixel
    # +1 voxel: room for snapping the origin to a voxel centre without uncovering the box.
    needed = max(1, math.ceil((hi - lo + 1) / step - INTEGER_TOL))
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
