"""The fast CPU path: coarse-to-fine, so that the model does less arithmetic, not faster arithmetic.

A CPU runs the full path (every slice of the lung region at the model's 1.5 mm, TTA on every
slice) at about 200 GFLOP/s in float32 (AVX2) or about 400 in bfloat16 (AVX-512 BF16); a
512x512x300 chest CT is 256 slices of 208x128 pixels, 8.8 TFLOP for a width-64 U-Net and twice
that with ``--tta flip``: 45-90 s of arithmetic alone on two AVX2 cores. Tumour occupies well under
1 % of those pixels, so the fast path spends its arithmetic where a tumour can be:

1. **Coarse pass** (finding candidates): the same model on a grid fitted exactly like the model's
   (same lung box, same slices, same 2.5D offsets in mm) but with pixels ``COARSE_FACTOR`` times
   larger (3 mm for a 1.5 mm model), on every k-th slice (k the slices in ``COARSE_SLICE_MM``),
   without TTA: 1/4 of the pixels on a third to a quarter of the slices of a thin-slice scan.
   A voxel is a candidate where its probability exceeds ``CANDIDATE_PROBABILITY`` (below the
   mask threshold: the coarse view of a small lesion is fainter).
2. **Fine pass** (the answer): the candidates' 3D boxes, widened by ``CANDIDATE_MARGIN_MM``
   (in-plane and along z), are re-segmented on the model's own grid (the full path's
   :class:`~lungtumor.preprocessing.grid.SliceGrid`, not a new one), each crop with ``HALO_PX`` pixels
   more image around it that the network sees and whose output is discarded (so the crop edge,
   where the network's zero padding differs from the full slice, lies outside the kept box), TTA
   only there. Outside the boxes the probability is 0. Where the crops would cover more than
   ``FULL_FALLBACK_FRACTION`` of the full path's pixels (a small scan, many candidates) the fine pass
   is the full path itself.
3. **Back**: the fine probabilities go back through the same ``SliceGrid.slices_to_volume`` as the
   full path, so the output geometry is the full path's, exactly (shape, affine, zero outside the
   crop and the kept slices).

Where every tumour voxel lies inside the boxes and the network's output on a crop equals its output
on the whole slice (a pointwise model; the tests use one), fast and full give the same mask. With a
real U-Net the crop's context differs beyond the halo, and a small lesion may not be a candidate at
all on the coarse grid (one real nodule of 25 mm was not): BENCHMARKS.md measures the difference.

This module plans (grids, slice choice, boxes) and assembles; the model is run by the caller's
``predict`` function (:func:`lungtumor.inference.predictor.segment` passes its own), so this file
does not import the predictor back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lungtumor.config import PreprocessConfig
from lungtumor.errors import ConfigError
from lungtumor.preprocessing.grid import SliceGrid

log = logging.getLogger(__name__)

#: ``--mode``: ``full`` is the default. Measured on real CT (BENCHMARKS.md, "Fast CPU path"), the coarse pass
#: of a model trained at 1.5 mm missed a 25 mm nodule that the full path found, while a width-16 model on
#: the full path answers in 7-11 s on two CPU cores: so a CPU user trains narrow, and ``fast`` stays opt-in.
#: ``auto`` is fast on a CPU and full on CUDA (a GPU runs the full path in well under a second of model time).
MODES = ("auto", "fast", "full")
#: Coarse pixel = this many model pixels per in-plane axis (1.5 mm -> 3 mm: 1/4 of the arithmetic).
COARSE_FACTOR = 2.0
#: The coarse pass runs on about one slice per this many mm (every slice of scans at least this thick).
COARSE_SLICE_MM = 3.0
#: Coarse probability above which a voxel is a candidate (the mask threshold is 0.5): measured on the
#: demo's phantoms in BENCHMARKS.md ("Fast CPU path").
CANDIDATE_PROBABILITY = 0.1
#: Kept box around a candidate, in mm, in-plane and along z: the fine pass's answer there replaces 0.
CANDIDATE_MARGIN_MM = 10.0
#: Image seen around the kept box, in model pixels, whose output is discarded (the crop's own edge
#: effects). In pixels, not mm: the network's receptive field is. Measured on the demo's model
#: (BENCHMARKS.md, "Fast CPU path"): 5 px changed 141 of 420 mask voxels inside the boxes, 16 px 8.
HALO_PX = 16
#: When the planned crops would cover more than this share of the full path's model pixels, the fine
#: pass runs the full path instead (no gain left, and no crop edges): small scans, many candidates.
FULL_FALLBACK_FRACTION = 0.5

#: A box on the model grid: ``(d0, d1, h0, h1, w0, w1)``, half-open model slice and pixel indices.
Box = tuple[int, int, int, int, int, int]
#: ``predict(slices (D, H, W), centres) -> probabilities (len(centres), H, W)``, TTA as the caller chose.
Predict = Callable[[np.ndarray, np.ndarray, bool], np.ndarray]


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a one-line ConfigError."""
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: expected one of {list(MODES)} (full: every slice at full resolution, the default; fast: coarse-to-fine; auto: fast on a CPU)")
    return mode


def resolve_mode(mode: str, device_type: str) -> str:
    """``fast`` or ``full``: ``auto`` is fast on a CPU, full elsewhere (CUDA)."""
    check_mode(mode)
    if mode == "auto":
        return "fast" if device_type == "cpu" else "full"
    return mode


def fast_supported(cfg: PreprocessConfig) -> str | None:
    """None where the fast path applies to a model trained on ``cfg``, else why not (the caller logs it
    and runs the full path): it needs the lung preset's physical grid (the seed preset resizes every
    slice to a fixed 256x256, so there is no coarser grid of the same kind)."""
    if cfg.preset != "lung" or cfg.spacing_mm is None or cfg.input_size_px is not None:
        return f"the checkpoint's preprocessing ({cfg.preset} preset, fixed size {cfg.input_size_px}) has no coarser grid of its kind"
    return None


def coarse_config(cfg: PreprocessConfig, factor: float = COARSE_FACTOR) -> PreprocessConfig:
    """The model's preprocessing with ``factor`` times larger in-plane pixels (same box, slices, context in mm)."""
    return dataclasses.replace(cfg, spacing_mm=float(cfg.spacing_mm) * float(factor))  # type: ignore[arg-type]


def coarse_centres(n_slices: int, slice_mm: float, every_mm: float = COARSE_SLICE_MM) -> np.ndarray:
    """Model slice indices of the coarse pass: about one every ``every_mm`` (every slice of thick scans),
    centred in the stack so that neither end is further than half a step from a coarse slice."""
    step = max(1, int(round(float(every_mm) / float(slice_mm))))
    if n_slices <= 0:
        return np.zeros(0, dtype=np.int64)
    first = min(n_slices - 1, ((n_slices - 1) % step) // 2)
    return np.arange(first, n_slices, step, dtype=np.int64)


def _fine_index(coarse: SliceGrid, fine: SliceGrid, axis: int, coarse_px: float) -> float:
    """Continuous fine model pixel index of the continuous coarse model pixel index ``coarse_px`` along in-plane ``axis``."""
    canonical = coarse.origin_index[axis] + coarse_px * coarse.step[axis]
    return (canonical - fine.origin_index[axis]) / fine.step[axis]


def candidate_boxes(
    candidates: np.ndarray,
    centres: np.ndarray,
    coarse: SliceGrid,
    fine: SliceGrid,
    margin_mm: float = CANDIDATE_MARGIN_MM,
) -> list[Box]:
    """Kept boxes on the fine (model) grid around every 26-connected component of ``candidates``.

    Args:
        candidates: ``(len(centres), H', W')`` bool, the coarse pass's candidate voxels on the coarse
            slices ``centres`` (consecutive coarse slices count as neighbours).
        centres: the model slice indices of the coarse slices (the two grids share their slices).
        coarse, fine: the coarse grid and the model's grid of the same scan.
        margin_mm: widening of every box, in mm, in-plane and along z (clipped to the grid).

    Returns:
        Half-open boxes ``(d0, d1, h0, h1, w0, w1)``, one per component (they may overlap).
    """
    from scipy import ndimage

    if not candidates.any():
        return []
    labels, _ = ndimage.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    depth, (height, width) = fine.n_slices, fine.out_shape
    gap = int(np.max(np.diff(centres))) if centres.size > 1 else 1  # slices from one coarse slice to the next
    mz = math.ceil(float(margin_mm) / fine.spacing_mm[2] - 1e-9)
    mh = math.ceil(float(margin_mm) / fine.pixel_spacing_mm[0] - 1e-9)
    mw = math.ceil(float(margin_mm) / fine.pixel_spacing_mm[1] - 1e-9)
    boxes: list[Box] = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        sd, sh, sw = sl
        # A coarse pixel covers +-0.5 of its index; a coarse slice stands for the slices up to the next one.
        d0 = int(centres[sd.start]) - (gap - 1) - mz
        d1 = int(centres[sd.stop - 1]) + (gap - 1) + mz + 1
        h0 = math.floor(_fine_index(coarse, fine, 0, sh.start - 0.5)) - mh
        h1 = math.ceil(_fine_index(coarse, fine, 0, sh.stop - 0.5)) + mh + 1
        w0 = math.floor(_fine_index(coarse, fine, 1, sw.start - 0.5)) - mw
        w1 = math.ceil(_fine_index(coarse, fine, 1, sw.stop - 0.5)) + mw + 1
        box = (max(0, d0), min(depth, d1), max(0, h0), min(height, h1), max(0, w0), min(width, w1))
        if box[0] < box[1] and box[2] < box[3] and box[4] < box[5]:
            boxes.append(box)
    return boxes


def _volume(b: Box) -> int:
    return (b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4])


def _union(a: Box, b: Box) -> Box:
    return tuple(min(a[k], b[k]) if k % 2 == 0 else max(a[k], b[k]) for k in range(6))  # type: ignore[return-value]


def _run_span(lo: int, hi: int, halo: int, size: int, multiple: int) -> tuple[int, int]:
    """``[lo - halo, hi + halo)`` clipped to ``[0, size)`` and grown to a multiple of ``multiple``
    (``size`` is one: the grid is padded to it), staying inside ``[0, size)``."""
    a, b = max(0, lo - halo), min(size, hi + halo)
    need = -(-(b - a) // multiple) * multiple
    b = min(size, a + need)
    a = max(0, b - need)
    return a, b


def run_box(kept: Box, shape: tuple[int, int, int], halo_px: tuple[int, int], multiple: int) -> Box:
    """The crop the network runs on for a kept box: the halo in-plane, sized to ``multiple``; the same slices."""
    h = _run_span(kept[2], kept[3], halo_px[0], shape[1], multiple)
    w = _run_span(kept[4], kept[5], halo_px[1], shape[2], multiple)
    return (kept[0], kept[1], *h, *w)


def plan_crops(boxes: list[Box], shape: tuple[int, int, int], halo_px: tuple[int, int], multiple: int) -> list[tuple[Box, Box]]:
    """(kept box, run box) pairs: two boxes are merged into their bounding box while running that costs
    no more model pixels than running both (greedy, largest saving first), so nearby candidates share
    one crop and distant ones never pull in the space between them. Kept boxes may still overlap."""
    kept = list(boxes)
    while len(kept) > 1:
        best, pair = 0, None
        runs = [_volume(run_box(b, shape, halo_px, multiple)) for b in kept]
        for i in range(len(kept)):
            for j in range(i + 1, len(kept)):
                saving = runs[i] + runs[j] - _volume(run_box(_union(kept[i], kept[j]), shape, halo_px, multiple))
                if saving >= best and (pair is None or saving > best):
                    best, pair = saving, (i, j)
        if pair is None or best < 0:
            break
        i, j = pair
        merged = _union(kept[i], kept.pop(j))
        kept[i] = merged
    return [(b, run_box(b, shape, halo_px, multiple)) for b in kept]


@dataclass
class FastStats:
    """What the fast path did, for the log and the benchmark."""

    coarse_slices: int = 0
    coarse_shape: tuple[int, int] = (0, 0)
    boxes: int = 0
    fine_slices: int = 0
    fine_pixels: int = 0
    full_pixels: int = 0
    coarse_seconds: float = 0.0
    fine_seconds: float = 0.0
    fell_back: bool = False

    @property
    def fine_fraction(self) -> float:
        """Model pixels of the fine pass (halo included) over those of the full path."""
        return self.fine_pixels / self.full_pixels if self.full_pixels else 0.0


def fast_probabilities(
    fine: SliceGrid,
    fine_slices: np.ndarray,
    coarse: SliceGrid,
    coarse_slices: np.ndarray,
    predict: Predict,
    *,
    tta: bool,
    multiple: int,
    candidate_probability: float = CANDIDATE_PROBABILITY,
    margin_mm: float = CANDIDATE_MARGIN_MM,
    halo_px: int = HALO_PX,
    every_mm: float = COARSE_SLICE_MM,
) -> tuple[np.ndarray, FastStats]:
    """Probabilities ``(D, H, W)`` on the fine (model) grid by the coarse-to-fine passes (module docstring).

    Args:
        fine, fine_slices: the model's grid and its slices (``fine.image_to_slices``).
        coarse, coarse_slices: the coarse grid of the same scan (:func:`coarse_config`) and its slices.
        predict: runs the model (an ensemble averages inside it) on the given slice indices of a stack.
        tta: test-time augmentation in the fine pass (never in the coarse one).
        multiple: crops are sized in multiples of this (the U-Net's ``2 ** depth``).
        candidate_probability, margin_mm, halo_px, every_mm: see the module constants.
    """
    import time

    stats = FastStats(full_pixels=fine.n_slices * fine.out_shape[0] * fine.out_shape[1])
    probs = np.zeros(fine.slice_shape, dtype=np.float32)
    if fine.n_slices == 0:
        return probs, stats
    t0 = time.perf_counter()
    centres = coarse_centres(coarse.n_slices, coarse.spacing_mm[2], every_mm)
    coarse_probs = predict(coarse_slices, centres, False)
    stats.coarse_slices, stats.coarse_shape = int(centres.size), coarse.out_shape
    boxes = candidate_boxes(coarse_probs > candidate_probability, centres, coarse, fine, margin_mm)
    t1 = time.perf_counter()
    stats.coarse_seconds = t1 - t0
    halo = (int(halo_px), int(halo_px))
    crops = plan_crops(boxes, fine.slice_shape, halo, multiple)
    planned = sum(_volume(run) for _, run in crops)
    if planned > FULL_FALLBACK_FRACTION * stats.full_pixels:
        stats.fell_back, stats.boxes, stats.fine_slices, stats.fine_pixels = True, len(crops), fine.n_slices, stats.full_pixels
        probs = predict(fine_slices, np.arange(fine.n_slices), tta)
        stats.fine_seconds = time.perf_counter() - t1
        return probs, stats
    count = np.zeros(fine.slice_shape, dtype=np.uint8) if len(crops) > 1 else None
    for (d0, d1, h0, h1, w0, w1), (_, _, r0, r1, c0, c1) in crops:
        # The crop keeps every slice (a view): the 2.5D context of slices d0..d1 is read as in the full path.
        crop = predict(fine_slices[:, r0:r1, c0:c1], np.arange(d0, d1), tta)
        probs[d0:d1, h0:h1, w0:w1] += crop[:, h0 - r0 : h1 - r0, w0 - c0 : w1 - c0]
        if count is not None:
            count[d0:d1, h0:h1, w0:w1] += 1
        stats.fine_slices += d1 - d0
        stats.fine_pixels += (d1 - d0) * (r1 - r0) * (c1 - c0)
    if count is not None and count.max() > 1:  # kept boxes that overlap: the mean of their crops' answers
        np.divide(probs, count, out=probs, where=count > 1)
    stats.boxes = len(crops)
    stats.fine_seconds = time.perf_counter() - t1
    return probs, stats
