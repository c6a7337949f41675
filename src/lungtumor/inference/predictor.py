"""Whole-scan inference: a CT Volume in, a mask Volume with the input's exact grid out.

``segment`` fits the slice grid of the preprocessing embedded in the checkpoint
(:class:`~lungtumor.preprocessing.grid.SliceGrid`: for the lung preset the lung region is found
first), runs the slices through the U-Net in batches (bfloat16 autocast where the hardware
supports it), maps the *probabilities* back through the same grid, thresholds, and so returns a
mask with the input's shape and affine (and, for DICOM input, the series' DICOM geometry in
``meta``), zero outside the grid's crop and kept slices. Post-processing (on by default) drops
predicted components that do not touch the lung region and, optionally, lesions under a volume
and lesions whose score (:data:`~lungtumor.lesions.score.LESION_SCORE`) is under a minimum.
For the seed preset this is exactly the seed's recipe (no lung region).

``segment`` is three stages, each usable alone: :func:`prepare` (CPU: checks, lung region, slice
grid, slices; a picklable :class:`PreparedScan`, so a worker process can do it while the device
runs another scan), :func:`run_models` (the device) and :func:`finish` (back onto the input's grid,
threshold, post-processing).

TTA ``flip`` mirrors the patient's left-right axis: in the canonical ('L','A','S') slices
``(N, C, H, W)`` that is H (axis -2), not W (anterior-posterior).

Files and folders in, files out (output formats, DICOM-SEG, reports, sharding): :mod:`lungtumor.predict`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.config import (
    AIR_TISSUE_HU,
    LEFT_RIGHT_AXIS,
    PreprocessConfig,
    check_batch_size,
    check_min_lesion_score,
    check_threshold,
)
from lungtumor.errors import ConfigError, InputError
from lungtumor.inference.fast import check_mode, coarse_config, fast_probabilities, fast_supported, resolve_mode
from lungtumor.io import prefetch
from lungtumor.io.volume import Volume, to_canonical
from lungtumor.lesions.components import postprocess_mask
from lungtumor.lesions.score import keep_scored_lesions, remove_low_score_lesions
from lungtumor.model.checkpoint import LoadedModel, load_model
from lungtumor.model.device import bf16_native, resolve_device
from lungtumor.model.rescorer import Rescorer
from lungtumor.preprocessing.grid import SliceGrid, context_stack, fit_grid
from lungtumor.preprocessing.presets import preset_for

log = logging.getLogger(__name__)

#: Default slices per forward pass on each kind of device.
DEFAULT_BATCH = {"cpu": 4, "cuda": 32}
TTA_MODES = ("none", "flip")


def use_bf16(device: torch.device) -> bool:
    """bfloat16 autocast where the hardware runs it natively (fast and, for this U-Net, agreeing
    with float32 to well under 1 % of mask voxels; see the tests and BENCHMARKS.md)."""
    return bf16_native(device.type)


def context_batch(slices: np.ndarray, start: int, stop: int, context: int, offsets: np.ndarray | None = None) -> np.ndarray:
    """(stop - start, C, H, W) input for slices ``start:stop`` (edges repeated).

    ``offsets`` (slices, possibly fractional; :meth:`SliceGrid.context_offsets`) place the C
    channels; None = the adjacent slices ``-context .. context``.
    """
    if offsets is None:
        if context == 0:
            return slices[start:stop, None]
        offsets = np.arange(-context, context + 1, dtype=np.float64)
    if len(offsets) == 1 and offsets[0] == 0:
        return slices[start:stop, None]
    return context_stack(slices, np.arange(start, stop), offsets)


def _offsets(context: int, offsets: np.ndarray | None) -> np.ndarray:
    return np.arange(-context, context + 1, dtype=np.float64) if offsets is None else np.asarray(offsets, dtype=np.float64)


@torch.no_grad()
def predict_slices(
    model: LoadedModel,
    slices: np.ndarray,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    tta: str = "none",
    precision: str = "auto",
    offsets: np.ndarray | None = None,
    centres: np.ndarray | None = None,
) -> np.ndarray:
    """Sigmoid probabilities (D, H, W) float32 for preprocessed slices (D, H, W).

    Args:
        model: from :func:`~lungtumor.model.checkpoint.load_model`.
        slices: output of :meth:`SliceGrid.image_to_slices`.
        batch_size: slices per forward pass, a whole number >= 1 (None: 4 on CPU, 32 on CUDA).
        device: torch device (default: CUDA if available).
        tta: ``none`` or ``flip`` (average with the prediction of the patient's left-right mirror image).
        precision: ``auto`` (bf16 where supported), ``bf16`` or ``fp32``.
        offsets: 2.5D channel offsets in slices (:meth:`SliceGrid.context_offsets`); None = adjacent slices.
        centres: predict only these slice indices (their context still read from all of ``slices``,
            edges repeated as for the whole stack); the result is then ``(len(centres), H, W)``.
            None = every slice. The fast path (:mod:`lungtumor.inference.fast`) predicts every
            k-th slice of a coarse grid and crops of the fine one this way.

    The model's network is moved to ``device`` and to the channels-last memory format in place
    (``nn.Module.to`` does that), so that repeated calls do not copy the weights again.
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"--tta {tta!r}: expected one of {TTA_MODES}")
    dev = resolve_device(device)
    bs = DEFAULT_BATCH.get(dev.type, 8) if batch_size is None else check_batch_size(batch_size)
    net = model.net.to(dev).to(memory_format=torch.channels_last).eval()
    bf16 = use_bf16(dev) if precision == "auto" else precision == "bf16"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    idx = np.arange(slices.shape[0]) if centres is None else np.asarray(centres, dtype=np.int64)
    out = np.empty((idx.size, *slices.shape[1:]), dtype=np.float32)
    contiguous = idx.size == 0 or bool(np.all(np.diff(idx) == 1))
    with autocast:
        for start in range(0, idx.size, bs):
            stop = min(idx.size, start + bs)
            if contiguous:
                batch = context_batch(slices, int(idx[start]), int(idx[start]) + stop - start, model.context, offsets)
            else:
                batch = context_stack(slices, idx[start:stop], _offsets(model.context, offsets))
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            prob = torch.sigmoid(net(x).float())
            if tta == "flip":
                lr = LEFT_RIGHT_AXIS
                prob = 0.5 * (prob + torch.sigmoid(net(x.flip(lr)).float()).flip(lr))
            out[start:stop] = prob[:, 0].cpu().numpy()
    return out


@dataclass(frozen=True)
class PreparedScan:
    """The CPU work of :func:`segment` before the model: a plain, picklable record.

    :func:`prepare` makes it (lung region, slice grid, model slices), possibly in a worker process
    (``lungtumor predict --workers``); :func:`run_models` turns its slices into probabilities on
    the device and :func:`finish` maps them back onto the input's grid. ``segment`` is exactly
    ``finish(prepared, run_models(prepared, models), ...)`` with ``prepared = prepare(...)``.

    Attributes:
        grid: the slice grid (input shape and affine, crop, kept slices; JSON-serialisable).
        slices: ``(D, H, W)`` float32 model slices (:meth:`SliceGrid.image_to_slices`).
        region: the lung region on the input's grid (post-processing keeps lesions touching it),
            or None (seed preset, or no lungs found: the whole scan).
        meta: the input Volume's meta (the outputs carry it: DICOM geometry, path).
        seconds: wall seconds of the stages done here: ``lungs`` (the lung finder, 0 when not
            needed) and ``grid`` (the grid's fit and the slices).
        coarse_grid, coarse_slices: ``--mode fast`` only: the grid with 2x larger pixels over the same
            box and its slices (:mod:`lungtumor.inference.fast`); :func:`run_models` then runs the
            coarse-to-fine path. None: the full path.
    """

    grid: SliceGrid
    slices: np.ndarray
    region: Volume | None
    meta: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    coarse_grid: SliceGrid | None = None
    coarse_slices: np.ndarray | None = None


def check_ct(volume: Volume) -> None:
    """Refuse a CT that cannot be segmented (non-numeric, NaN or infinite voxels); warn about one that
    does not look like CT in HU (:func:`hu_range_warnings`, logged).

    Raises:
        InputError: non-numeric voxels, or NaN / infinite ones.
    """
    if not np.issubdtype(volume.array.dtype, np.number):
        raise InputError(f"{volume.meta.get('path', 'CT')}: voxel type {volume.array.dtype} is not numeric")
    if volume.array.dtype.kind == "f" and not np.all(np.isfinite(volume.array)):
        raise InputError(f"{volume.meta.get('path', 'CT')}: contains NaN or infinite voxels; fix the CT first")
    for message in hu_range_warnings(volume):
        log.warning("%s", message)


def fast_mode_for(mode: str, preprocess: PreprocessConfig, device: str | torch.device | None) -> str:
    """``fast`` or ``full`` for ``--mode`` on ``device`` with a model trained on ``preprocess``: ``auto``
    resolves by the device; a model the fast path cannot take runs the full path (logged)."""
    run_mode = resolve_mode(mode, resolve_device(device).type)
    why_not = fast_supported(preprocess) if run_mode == "fast" else None
    if why_not:
        log.info("fast mode: %s; running the full path", why_not)
        return "full"
    return run_mode


def prepare(
    volume: Volume, preprocess: PreprocessConfig, *, region: Volume | None = None, checked: bool = False, coarse: bool = False
) -> PreparedScan:
    """The CPU stage of :func:`segment`: checks, the lung region, the slice grid and the model slices.

    Needs no model, only its preprocessing (``LoadedModel.preprocess``), so it can run in a worker
    process while the device runs another scan; the result is picklable.

    Args:
        volume: the CT, any orientation.
        preprocess: the checkpoint's preprocessing (one for every member of an ensemble).
        region: the lung region on ``volume``'s grid, or None = found here for the lung preset.
        checked: :func:`check_ct` was already called on ``volume``.
        coarse: also the coarse grid and slices of ``--mode fast`` (see :func:`fast_mode_for`).

    Raises:
        InputError: see :func:`check_ct`; a seed-preset scan with no more slices than it drops.
    """
    if not checked:
        check_ct(volume)
    seconds = {"lungs": 0.0, "grid": 0.0}
    canonical = to_canonical(volume, preprocess.axcodes)  # the one reorientation: the lung finder, the fit and the slicing share it
    if region is None and preset_for(preprocess).needs_lung_region:
        from lungtumor.preprocessing.lungs import prediction_region

        t0 = time.perf_counter()
        # Found while torch was imported (predict of one NIfTI file: io/prefetch.py), else here. No lungs
        # found: None, the whole scan is segmented and no lesion is dropped for lying outside.
        ahead = prefetch.after(volume)
        if ahead is not None and tuple(ahead[0][0]) == tuple(preprocess.axcodes):
            _, region, held = ahead[0]
            for record in held:  # its warnings, now that the region is used
                logging.getLogger(record.name).handle(record)
        else:
            region = prediction_region(canonical)
        seconds["lungs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid: SliceGrid = fit_grid(canonical, region, preprocess)
    slices = grid.image_to_slices(canonical)
    coarse_grid = coarse_slices = None
    if coarse:  # the same box and slices, 2x larger pixels
        coarse_grid = fit_grid(canonical, region, coarse_config(preprocess))
        coarse_slices = coarse_grid.image_to_slices(canonical)
    seconds["grid"] = time.perf_counter() - t0
    return PreparedScan(
        grid=grid, slices=slices, region=region, meta=dict(volume.meta), seconds=seconds, coarse_grid=coarse_grid, coarse_slices=coarse_slices
    )


def run_models(
    prepared: PreparedScan,
    models: list[LoadedModel],
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    tta: str = "none",
    precision: str = "auto",
) -> np.ndarray:
    """The device stage of :func:`segment`: ``(D, H, W)`` float32 probabilities of the prepared
    slices, the mean over the ensemble's members (see :func:`predict_slices` for the options); the
    coarse-to-fine path of ``--mode fast`` when ``prepared`` holds the coarse slices."""
    grid, slices = prepared.grid, prepared.slices

    def predict(stack: np.ndarray, centres: np.ndarray | None, flip: bool) -> np.ndarray:
        """The models' mean probability (an ensemble) on ``stack``'s slices ``centres`` (None = all)."""
        runs = (
            predict_slices(
                member, stack, batch_size=batch_size, device=device, tta="flip" if flip else "none", precision=precision,
                offsets=grid.context_offsets(member.context), centres=centres,
            )
            for member in models
        )
        out = next(runs)
        for p in runs:
            out += p
        if len(models) > 1:
            out /= len(models)
        return out

    if prepared.coarse_grid is None or prepared.coarse_slices is None:
        return predict(slices, None, tta == "flip")
    multiple = max(getattr(getattr(m.net, "config", None), "multiple", 1) for m in models)
    probs, stats = fast_probabilities(grid, slices, prepared.coarse_grid, prepared.coarse_slices, predict, tta=tta == "flip", multiple=multiple)
    log.info(
        "fast mode: coarse pass %d slices of %dx%d (%.1f s), %d candidate box(es), fine pass %.1f %% of the full path's pixels (%.1f s)%s",
        stats.coarse_slices, *stats.coarse_shape, stats.coarse_seconds, stats.boxes, 100 * stats.fine_fraction, stats.fine_seconds,
        " (the full path: the crops would have covered most of the scan)" if stats.fell_back else "",
    )
    return probs


def check_finish_options(min_lesion_ml: float | None, min_lesion_score: float | None) -> None:
    """Refuse post-processing options out of range (before any work is done).

    Raises:
        ConfigError: a negative or non-finite minimum lesion volume, or a score outside [0, 1].
    """
    if min_lesion_ml is not None and not (np.isfinite(min_lesion_ml) and min_lesion_ml >= 0):
        raise ConfigError(f"--min-lesion-ml {min_lesion_ml} must be a volume in ml >= 0")
    if min_lesion_score is not None:
        check_min_lesion_score(min_lesion_score)


def finish(
    prepared: PreparedScan,
    probs: np.ndarray,
    *,
    threshold: float,
    return_probabilities: bool = False,
    postprocess: bool = True,
    min_lesion_ml: float | None = None,
    min_lesion_score: float | None = None,
    rescorers: Sequence[Rescorer] = (),
) -> Volume | tuple[Volume, Volume]:
    """The last stage of :func:`segment`: probabilities back onto the input's grid, threshold, post-processing.

    Args:
        prepared: from :func:`prepare`.
        probs: from :func:`run_models` (modified in place by nothing here).
        threshold: the probability threshold, already checked.
        return_probabilities, postprocess, min_lesion_ml, min_lesion_score: see :func:`segment`.
        rescorers: the models' second-stage re-scorers (``LoadedModel.rescorer``); when any, the
            lesion score of ``min_lesion_score`` is their mean probability at each lesion's centroid
            for lesions that fit in their patch, ``prob_max`` for larger ones
            (:func:`lungtumor.inference.rescore.lesion_scores`).
    """
    grid, region, meta = prepared.grid, prepared.region, prepared.meta
    thr = threshold
    by_score = bool(postprocess and min_lesion_score)
    if not (return_probabilities or by_score):
        # Thresholded chunk by chunk: no full-size float copy of the scan is ever made.
        mask_vol = grid.slices_to_volume(probs, threshold=thr, meta=meta)
        prob_vol = None
    else:
        prob_vol = grid.slices_to_volume(probs, meta=meta)
        mask_vol = Volume((prob_vol.array > thr).astype(np.uint8), prob_vol.affine, dict(meta))
    if postprocess and (region is not None or min_lesion_ml):
        kept = postprocess_mask(mask_vol.array, None if region is None else region.array, mask_vol.voxel_volume_ml, min_lesion_ml)
        mask_vol = Volume(kept, mask_vol.affine, dict(meta))
    if by_score:  # after the other post-processing: the lesions that remain are scored
        if rescorers:  # the lesions' scores as the re-scorers give them: no score map to label and read again
            from lungtumor.inference.rescore import lesion_scores

            inst, scores = lesion_scores(mask_vol, prob_vol, prepared.slices, grid, rescorers)  # type: ignore[arg-type]
            kept = keep_scored_lesions(np.asarray(mask_vol.array) != 0, inst, scores, float(min_lesion_score))
        else:
            kept = remove_low_score_lesions(mask_vol.array, prob_vol.array, float(min_lesion_score), mask_vol.voxel_volume_ml)  # type: ignore[union-attr]
        mask_vol = Volume(kept, mask_vol.affine, dict(meta))
    if not return_probabilities:
        prob_vol = None
    return mask_vol if prob_vol is None else (mask_vol, prob_vol)


def segment(
    volume: Volume,
    model: LoadedModel | str | os.PathLike[str] | list[Any],
    *,
    threshold: float | None = None,
    tta: str = "none",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    return_probabilities: bool = False,
    postprocess: bool = True,
    min_lesion_ml: float | None = None,
    min_lesion_score: float | None = None,
    region: Volume | None = None,
    mode: str = "full",
) -> Volume | tuple[Volume, Volume]:
    """Segment tumours in a CT Volume (HU).

    Three stages, each usable alone (``lungtumor predict --workers`` runs the first in worker
    processes while the device runs another scan): :func:`prepare` (CPU: lung region, slice grid,
    slices), :func:`run_models` (the device), :func:`finish` (back onto the input's grid,
    threshold, post-processing).

    Args:
        volume: the CT, any orientation (from :func:`~lungtumor.io.readers.read_volume`).
        model: a loaded model or a checkpoint path, or several (a list, or a folder of runs such as a
            ``lungtumor cv`` folder): an ensemble whose probabilities are averaged (one preprocessing).
        threshold: probability threshold, strictly between 0 and 1 (a voxel is tumour where its
            probability exceeds it; default: the checkpoint's, 0.5).
        tta, batch_size, device, precision: see :func:`predict_slices`.
        return_probabilities: also return the float32 probability Volume.
        postprocess: drop predicted lesions (26-connected components) that do not touch the lung
            region, and those under ``min_lesion_ml``. The seed preset has no lung region, so
            there only ``min_lesion_ml`` acts (unless ``region`` is given).
        min_lesion_ml: with ``postprocess``, drop lesions smaller than this many ml (None = keep all).
        min_lesion_score: with ``postprocess``, then drop lesions whose score
            (:data:`~lungtumor.lesions.score.LESION_SCORE`, from the probabilities; the re-scorer's
            when the checkpoint carries one, :func:`lungtumor.inference.rescore.lesion_scores`) is below
            this, a number in [0, 1] (0 = keep all; None = the operating point the checkpoint's
            re-scorer carries, :func:`rescorer_min_lesion_score`, else keep all).
        region: the lung region mask on ``volume``'s grid (e.g. ``find_lung_region(ct).mask``, as
            ``lungtumor lungs`` writes it); None = found here for the lung preset.
        mode: ``fast`` (coarse-to-fine: candidates on a 2x coarser grid, then only their
            neighbourhood at the model's resolution, TTA only there; :mod:`lungtumor.inference.fast`),
            ``full`` (default: every slice at the model's resolution), or ``auto`` (fast on a CPU,
            full on CUDA). A checkpoint whose preprocessing has no coarser grid (the seed preset)
            runs the full path, with a logged note.

    Returns:
        uint8 {0, 1} mask Volume with exactly ``volume``'s shape and affine (and its meta), zero
        outside the slice grid's crop and kept slices, plus the probability Volume when asked
        (not post-processed).
    """
    if batch_size is not None:
        check_batch_size(batch_size)
    if tta not in TTA_MODES:
        raise ConfigError(f"--tta {tta!r}: expected one of {TTA_MODES}")
    check_mode(mode)
    models = load_ensemble(model)
    loaded = models[0]
    thr = check_threshold(threshold if threshold is not None else loaded.info.get("threshold", 0.5))
    check_finish_options(min_lesion_ml, min_lesion_score)
    if min_lesion_score is None:
        min_lesion_score = rescorer_min_lesion_score(models)
    run_mode = fast_mode_for(mode, loaded.preprocess, device)
    prepared = prepare(volume, loaded.preprocess, region=region, coarse=run_mode == "fast")
    probs = run_models(prepared, models, batch_size=batch_size, device=device, tta=tta, precision=precision)
    return finish(
        prepared, probs, threshold=thr, return_probabilities=return_probabilities, postprocess=postprocess,
        min_lesion_ml=min_lesion_ml, min_lesion_score=min_lesion_score, rescorers=model_rescorers(models),
    )


def model_rescorers(models: Sequence[LoadedModel]) -> list[Rescorer]:
    """The second-stage re-scorers the models carry (none for checkpoints without one)."""
    return [m.rescorer for m in models if m.rescorer is not None]  # type: ignore[misc]


def rescorer_min_lesion_score(models: Sequence[LoadedModel]) -> float | None:
    """The operating point the models' re-scorers carry (the lowest where an ensemble's differ: it
    removes no lesion that a member's own point would keep); None when no re-scorer carries one."""
    points = [r.min_lesion_score for r in model_rescorers(models) if r.min_lesion_score is not None]
    return min(points) if points else None


#: A CT in Hounsfield units spans about -1024 (air) to 3071 (dense bone, the 12-bit top); scanners
#: write -2048/-3024 outside the reconstruction circle and metal may reach ~30,000.
PLAUSIBLE_HU = (-4000.0, 40000.0)


def hu_range_warnings(volume: Volume) -> list[str]:
    """Warnings for a volume that does not look like CT in HU (scaled values, or no air at all)."""
    if volume.array.size == 0:
        return []
    lo, hi = float(volume.array.min()), float(volume.array.max())
    where = volume.meta.get("path", "CT")
    out = []
    if lo < PLAUSIBLE_HU[0] or hi > PLAUSIBLE_HU[1]:
        out.append(f"{where}: values span {lo:g} to {hi:g}, far outside CT's Hounsfield range; is the file scaled (e.g. x1000) or not a CT?")
    elif lo > AIR_TISSUE_HU:  # every chest CT holds air (lungs, outside the body) well below it
        out.append(f"{where}: no voxel below {AIR_TISSUE_HU:g} HU (lowest {lo:g}): no air, so not a chest CT in HU? The result may be meaningless")
    return out


def load_ensemble(model: Any, device: str | torch.device | None = None) -> list[LoadedModel]:
    """One or several models (loaded, checkpoint paths, or folders holding ``last.ckpt`` files such as a
    ``lungtumor cv`` folder) as a list; all must share one preprocessing, else a one-line ConfigError."""
    items = list(model) if isinstance(model, (list, tuple)) else [model]
    paths: list[Any] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            found = sorted(Path(item).rglob("last.ckpt"))
            if not found:
                raise InputError(f"{item}: no last.ckpt below this folder; pass checkpoint files or a `lungtumor cv` / `train` folder")
            paths.extend(found)
        else:
            paths.append(item)
    if not paths:
        raise ConfigError("no checkpoint given; pass at least one")
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    loaded = [p if isinstance(p, LoadedModel) else load_model(p, device=dev) for p in paths]
    first = loaded[0]
    for other, path in zip(loaded[1:], paths[1:]):
        if other.preprocess != first.preprocess:
            a, b = first.preprocess.to_dict(), other.preprocess.to_dict()
            diff = sorted(k for k in a if a[k] != b.get(k))
            raise ConfigError(
                f"{path}: its preprocessing differs from {paths[0]} ({', '.join(diff[:4])}); an ensemble averages models "
                "trained on the same slices, so pass checkpoints of one preprocessing"
            )
    return loaded


