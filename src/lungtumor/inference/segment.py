"""Whole-scan inference: a CT Volume in, a mask Volume with the input's exact grid out.

``segment`` fits the slice grid of the preprocessing embedded in the checkpoint
(:class:`~lungtumor.preprocessing.grid.SliceGrid`: for the lung preset the lung region is found
first), runs the slices through the U-Net in batches (bfloat16 autocast where the hardware
supports it), maps the *probabilities* back through the same grid, thresholds, and so returns a
mask with the input's shape and affine (and, for DICOM input, the series' DICOM geometry in
``meta``), zero outside the grid's crop and kept slices. Post-processing (on by default) drops
predicted components that do not touch the lung region and, optionally, lesions under a volume.
For the seed preset this is exactly the seed's recipe (no lung region).

TTA ``flip`` mirrors the patient's left-right axis: in the canonical ('L','A','S') slices
``(N, C, H, W)`` that is H (axis -2), not W (anterior-posterior).
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.config import LEFT_RIGHT_AXIS
from lungtumor.errors import ConfigError, InputError, LungTumorError
from lungtumor.io.nifti import check_nifti_affine, is_nifti, nifti_stem, write_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import Volume, foreground_box
from lungtumor.model.checkpoint import LoadedModel, load_model
from lungtumor.model.device import bf16_native, default_device, resolve_device  # noqa: F401 (re-exported)
from lungtumor.preprocessing.grid import SliceGrid, context_stack, fit_grid
from lungtumor.preprocessing.presets import preset_for

log = logging.getLogger(__name__)

#: Default slices per forward pass on each kind of device.
DEFAULT_BATCH = {"cpu": 4, "cuda": 32}
TTA_MODES = ("none", "flip")
#: Connectivity of predicted lesions in post-processing: 26 neighbours (faces, edges, corners).
LESION_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


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
) -> np.ndarray:
    """Sigmoid probabilities (D, H, W) float32 for preprocessed slices (D, H, W).

    Args:
        model: from :func:`~lungtumor.model.checkpoint.load_model`.
        slices: output of :meth:`SliceGrid.image_to_slices`.
        batch_size: slices per forward pass (default 4 on CPU, 32 on CUDA).
        device: torch device (default: CUDA if available).
        tta: ``none`` or ``flip`` (average with the prediction of the patient's left-right mirror image).
        precision: ``auto`` (bf16 where supported), ``bf16`` or ``fp32``.
        offsets: 2.5D channel offsets in slices (:meth:`SliceGrid.context_offsets`); None = adjacent slices.

    The model's network is moved to ``device`` and to the channels-last memory format in place
    (``nn.Module.to`` does that), so that repeated calls do not copy the weights again.
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"--tta {tta!r}: expected one of {TTA_MODES}")
    dev = resolve_device(device)
    bs = int(batch_size or DEFAULT_BATCH.get(dev.type, 8))
    if bs < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {bs}")
    net = model.net.to(dev).to(memory_format=torch.channels_last).eval()
    bf16 = use_bf16(dev) if precision == "auto" else precision == "bf16"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    depth = slices.shape[0]
    out = np.empty(slices.shape, dtype=np.float32)
    with autocast:
        for start in range(0, depth, bs):
            stop = min(depth, start + bs)
            x = torch.from_numpy(np.ascontiguousarray(context_batch(slices, start, stop, model.context, offsets), dtype=np.float32))
            x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            prob = torch.sigmoid(net(x).float())
            if tta == "flip":
                lr = LEFT_RIGHT_AXIS
                prob = 0.5 * (prob + torch.sigmoid(net(x.flip(lr)).float()).flip(lr))
            out[start:stop] = prob[:, 0].cpu().numpy()
    return out


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
    region: Volume | None = None,
) -> Volume | tuple[Volume, Volume]:
    """Segment tumours in a CT Volume (HU).

    Args:
        volume: the CT, any orientation (from :func:`~lungtumor.io.readers.read_volume`).
        model: a loaded model or a checkpoint path, or several (a list, or a folder of runs such as a
            ``lungtumor cv`` folder): an ensemble whose probabilities are averaged (one preprocessing).
        threshold: probability threshold (default: the checkpoint's, 0.5).
        tta, batch_size, device, precision: see :func:`predict_slices`.
        return_probabilities: also return the float32 probability Volume.
        postprocess: drop predicted lesions (26-connected components) that do not touch the lung
            region, and those under ``min_lesion_ml``. The seed preset has no lung region, so
            there only ``min_lesion_ml`` acts (unless ``region`` is given).
        min_lesion_ml: with ``postprocess``, drop lesions smaller than this many ml (None = keep all).
        region: the lung region mask on ``volume``'s grid (e.g. ``find_lung_region(ct).mask``, as
            ``lungtumor lungs`` writes it); None = found here for the lung preset.

    Returns:
        uint8 {0, 1} mask Volume with exactly ``volume``'s shape and affine (and its meta), zero
        outside the slice grid's crop and kept slices, plus the probability Volume when asked
        (not post-processed).
    """
    models = load_ensemble(model)
    loaded = models[0]
    thr = float(threshold if threshold is not None else loaded.info.get("threshold", 0.5))
    if not 0.0 <= thr <= 1.0:
        raise ConfigError(f"--threshold {thr} must be between 0 and 1")
    if not np.issubdtype(volume.array.dtype, np.number):
        raise InputError(f"{volume.meta.get('path', 'CT')}: voxel type {volume.array.dtype} is not numeric")
    if volume.array.dtype.kind == "f" and not np.all(np.isfinite(volume.array)):
        raise InputError(f"{volume.meta.get('path', 'CT')}: contains NaN or infinite voxels; fix the CT first")
    if min_lesion_ml is not None and not (np.isfinite(min_lesion_ml) and min_lesion_ml >= 0):
        raise ConfigError(f"--min-lesion-ml {min_lesion_ml} must be a volume in ml >= 0")
    for message in hu_range_warnings(volume):
        log.warning("%s", message)
    cfg = loaded.preprocess
    if region is None and preset_for(cfg).needs_lung_region:
        region = lung_region(volume)
    grid: SliceGrid = fit_grid(volume, region, cfg)
    slices = grid.image_to_slices(volume)
    probs = predict_slices(
        loaded, slices, batch_size=batch_size, device=device, tta=tta, precision=precision, offsets=grid.context_offsets(loaded.context)
    )
    for member in models[1:]:  # an ensemble: the mean of the members' probabilities
        probs += predict_slices(
            member, slices, batch_size=batch_size, device=device, tta=tta, precision=precision, offsets=grid.context_offsets(member.context)
        )
    if len(models) > 1:
        probs /= len(models)
    meta = dict(volume.meta)
    if not return_probabilities:
        # Thresholded chunk by chunk: no full-size float copy of the scan is ever made.
        mask_vol = grid.slices_to_volume(probs, threshold=thr, meta=meta)
        prob_vol = None
    else:
        prob_vol = grid.slices_to_volume(probs, meta=meta)
        mask_vol = Volume((prob_vol.array > thr).astype(np.uint8), prob_vol.affine, dict(meta))
    if postprocess and (region is not None or min_lesion_ml):
        kept = postprocess_mask(mask_vol.array, None if region is None else region.array, mask_vol.voxel_volume_ml, min_lesion_ml)
        mask_vol = Volume(kept, mask_vol.affine, dict(meta))
    return mask_vol if prob_vol is None else (mask_vol, prob_vol)


#: A CT in Hounsfield units spans about -1024 (air) to 3071 (dense bone, the 12-bit top); scanners
#: write -2048/-3024 outside the reconstruction circle and metal may reach ~30,000.
PLAUSIBLE_HU = (-4000.0, 40000.0)
#: Every chest CT holds air (lungs, outside the body) well below this.
AIR_BELOW_HU = -500.0


def hu_range_warnings(volume: Volume) -> list[str]:
    """Warnings for a volume that does not look like CT in HU (scaled values, or no air at all)."""
    if volume.array.size == 0:
        return []
    lo, hi = float(volume.array.min()), float(volume.array.max())
    where = volume.meta.get("path", "CT")
    out = []
    if lo < PLAUSIBLE_HU[0] or hi > PLAUSIBLE_HU[1]:
        out.append(f"{where}: values span {lo:g} to {hi:g}, far outside CT's Hounsfield range; is the file scaled (e.g. x1000) or not a CT?")
    elif lo > AIR_BELOW_HU:
        out.append(f"{where}: no voxel below {AIR_BELOW_HU:g} HU (lowest {lo:g}): no air, so not a chest CT in HU? The result may be meaningless")
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


def lung_region(ct: Volume) -> Volume | None:
    """The lung region mask that the lung preset crops to, or None (with a logged warning) when no
    lungs are found: then the whole scan is segmented and no lesion is dropped for lying outside."""
    from lungtumor.preprocessing.lungs import find_lung_region

    found = find_lung_region(ct)
    for message in found.warnings:
        log.warning("%s", message)
    if not found.found:
        log.warning("%s: no lungs found; segmenting the whole field of view", ct.meta.get("path", "CT"))
        return None
    return found.mask


#: Masks with at most this many voxels are split into lesions on their voxel list (a sparse graph,
#: cost by voxels); larger ones by labelling their bounding box (cost by the box's volume).
SPARSE_LESION_VOXELS = 2_000_000
#: The 13 "forward" neighbours of a voxel under 26-connectivity (each edge is listed once).
_FORWARD_26 = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)]


def _sparse_components(lin: np.ndarray, shape: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """26-connected components of the voxels with sorted linear indices ``lin`` in ``shape``:
    (number of components, component of every voxel)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ijk = np.unravel_index(lin, shape)
    rows, cols = [], []
    for step in _FORWARD_26:
        nb = [c + d for c, d in zip(ijk, step)]
        ok = np.ones(lin.size, dtype=bool)
        for c, n in zip(nb, shape):
            ok &= (c >= 0) & (c < n)
        src = np.flatnonzero(ok)
        target = np.ravel_multi_index(tuple(c[ok] for c in nb), shape)
        pos = np.minimum(np.searchsorted(lin, target), lin.size - 1)
        hit = lin[pos] == target
        rows.append(src[hit])
        cols.append(pos[hit])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(lin.size, lin.size))
    return connected_components(graph, directed=False)


def postprocess_mask(mask: np.ndarray, region: np.ndarray | None, voxel_ml: float, min_lesion_ml: float | None = None) -> np.ndarray:
    """Keep the 26-connected components of ``mask`` that touch ``region`` (if given) and hold at
    least ``min_lesion_ml`` (if given). Returns a new uint8 {0, 1} array of the same shape."""
    from scipy import ndimage

    nz = mask.view(bool) if mask.dtype == np.uint8 and mask.max(initial=0) <= 1 else mask != 0
    out = np.zeros(mask.shape, dtype=np.uint8)
    # Work on a C-ordered view (the transpose of a Fortran-ordered NIfTI array): no 80M-voxel copy.
    flip = nz.flags.f_contiguous and not nz.flags.c_contiguous
    view = nz.T if flip else nz
    count = int(np.count_nonzero(view))
    if count == 0:
        return out
    if count <= SPARSE_LESION_VOXELS:
        lin = np.flatnonzero(view)
        n, comp = _sparse_components(lin, view.shape)
        keep = np.ones(n, dtype=bool)
        coords = np.unravel_index(lin, view.shape)
        if region is not None:
            reg = np.asarray(region)
            inside = (reg.T if flip else reg)[coords] != 0
            keep &= np.bincount(comp[inside], minlength=n) > 0
        if min_lesion_ml:
            keep &= np.bincount(comp, minlength=n) * float(voxel_ml) >= float(min_lesion_ml)
        sel = keep[comp]
        (out.T if flip else out)[tuple(c[sel] for c in coords)] = 1
        return out
    box = foreground_box(nz)  # not None: count > 0
    labels, n = ndimage.label(nz[tuple(box)], structure=LESION_CONNECTIVITY)  # components never leave the box
    keep = np.ones(n + 1, dtype=bool)
    if region is not None:
        keep &= np.bincount(labels[np.asarray(region)[tuple(box)] != 0], minlength=n + 1) > 0
    if min_lesion_ml:
        keep &= np.bincount(labels.ravel(), minlength=n + 1) * float(voxel_ml) >= float(min_lesion_ml)
    keep[0] = False
    out[tuple(box)] = keep[labels]
    return out


def _probability_path(mask_path: Path) -> Path:
    """``NAME_prob.nii.gz`` beside ``NAME.nii.gz`` (or beside ``NAME.dcm`` when only a DICOM-SEG is written)."""
    stem = nifti_stem(mask_path)
    if stem.lower().endswith(".dcm"):
        stem = stem[: -len(".dcm")]
    return mask_path.with_name(f"{stem}_prob.nii.gz")


def predict_path(
    checkpoint: Any,
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    probabilities: bool = False,
    threshold: float | None = None,
    tta: str = "none",
    batch_size: int | None = None,
    device: str | None = None,
    series_uid: str | None = None,
    progress: bool = True,
    output_format: str = "nifti",
    postprocess: bool = True,
    min_lesion_ml: float | None = None,
    report: bool = False,
    skip_bad: bool = False,
) -> list[dict[str, Any]]:
    """Segment a NIfTI file, a folder of NIfTI files, or a DICOM series folder.

    A NIfTI file or DICOM folder -> OUTPUT is a ``.nii.gz`` file (probabilities beside it as
    ``NAME_prob.nii.gz``). A folder of NIfTI files -> OUTPUT is a folder with the same file
    names (probabilities in ``OUTPUT/probabilities/``). ``output_format`` ``dicom-seg`` or
    ``nifti,dicom-seg`` (DICOM input only) also writes a DICOM-SEG beside OUTPUT as ``NAME.dcm``
    (see :func:`lungtumor.io.dicom_seg.prediction_seg_path`); ``dicom-seg`` alone skips the NIfTI.
    ``postprocess`` and ``min_lesion_ml``: see :func:`segment`. ``checkpoint`` may be several
    checkpoints (or a ``lungtumor cv`` folder): an ensemble; a cv folder brings the minimum lesion
    volume its cross-validation chose, unless ``min_lesion_ml`` is given (0 keeps every lesion). ``report`` also writes, per input, the
    lesion table and the self-contained HTML report into ``OUTPUT_NAME_report/``
    (:func:`lungtumor.reporting.html.write_lesions_folder`). ``skip_bad`` (folders): a case that fails
    is reported in its result (``error``) and the others go on; without it the first failure stops
    the run (outputs already written are complete files: every writer is atomic).

    Returns:
        One dict per input: input, output, shape, tumour volume (ml), seconds (and ``dicom_seg``,
        ``report``, or ``error`` for a skipped case).

    Sharded: started by a launcher (``torchrun --nproc-per-node N -m lungtumor.cli predict ...``, or N
    SLURM tasks), each process predicts every N-th input of a folder (:func:`shard_of_this_process`),
    on its own GPU where there are several; no input is predicted twice, and every output is
    written atomically, so the shards never see each other's partial files.
    """
    from lungtumor.io.dicom_seg import parse_output_formats, prediction_seg_path
    from lungtumor.io.nifti import list_niftis
    from lungtumor.progress import progress_bar

    src = Path(input_path)
    out = Path(output)
    if not src.exists():
        raise InputError(f"{src}: input not found; pass a .nii/.nii.gz file, a folder of them, or a DICOM series folder")
    formats = parse_output_formats(output_format)
    seg_path = prediction_seg_path(src, out, formats)  # None unless a DICOM-SEG is asked for (DICOM input only)
    if device is not None:
        resolve_device(device)  # a bad --device is refused before any work
    models = load_ensemble(checkpoint)
    if min_lesion_ml is None:
        min_lesion_ml = cv_min_lesion_ml(checkpoint)
    jobs: list[tuple[Path, Path, Path | None]] = []
    if src.is_dir():
        niftis = list_niftis(src)
        if niftis:
            if is_nifti(out):
                raise InputError(f"{out}: INPUT {src} is a folder of NIfTI files, so OUTPUT must be a folder, not a .nii.gz file")
            for p in niftis:
                jobs.append((p, out / p.name, out / "probabilities" / p.name if probabilities else None))
        else:  # a DICOM series folder
            if not is_nifti(out) and out != seg_path:
                raise InputError(f"{out}: OUTPUT for a DICOM series must be a .nii.gz file")
            jobs.append((src, out, _probability_path(out) if probabilities else None))
    else:
        if not is_nifti(src):
            raise InputError(f"{src}: unknown input type; pass a .nii/.nii.gz file, a folder of them, or a DICOM series folder")
        if not is_nifti(out):
            raise InputError(f"{out}: OUTPUT must end in .nii.gz (or .nii) when INPUT is a file")
        jobs.append((src, out, _probability_path(out) if probabilities else None))

    rank, world = shard_of_this_process()
    if world > 1:  # torchrun / SLURM / Lightning launchers: each rank predicts every world-th case, none twice
        jobs = jobs[rank::world]
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    options = dict(
        threshold=threshold, tta=tta, batch_size=batch_size, device=device, series_uid=series_uid,
        postprocess=postprocess, min_lesion_ml=min_lesion_ml, report=report,
    )
    results = []
    with progress_bar(total=len(jobs), description="predict", enabled=progress and len(jobs) > 1) as advance:
        for in_path, mask_path, prob_path in jobs:
            try:
                results.append(_predict_one(models, checkpoint, in_path, mask_path, prob_path, seg_path, formats, **options))
            except LungTumorError as exc:
                if not skip_bad or len(jobs) == 1:
                    raise
                log.warning("skipping %s: %s", in_path, " ".join(str(exc).split()))
                results.append({"input": str(in_path), "output": None, "error": " ".join(str(exc).split())})
            advance()
    return results


def cv_min_lesion_ml(checkpoint: Any) -> float | None:
    """The minimum lesion volume that a ``lungtumor cv`` folder chose on its folds' predictions
    (``cv_summary.json``), when ``checkpoint`` is such a folder; else None."""
    if not isinstance(checkpoint, (str, os.PathLike)) or not Path(checkpoint).is_dir():
        return None
    summary = Path(checkpoint) / "cv_summary.json"
    if not summary.is_file():
        return None
    import json

    try:
        value = (json.loads(summary.read_text()).get("postprocessing") or {}).get("min_lesion_ml")
    except (OSError, ValueError, AttributeError):
        log.warning("%s: unreadable; no minimum lesion volume taken from it", summary)
        return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        log.info("minimum lesion volume %g ml, chosen by the cross-validation (%s); --min-lesion-ml 0 keeps every lesion", value, summary)
        return float(value)
    return None


def shard_of_this_process() -> tuple[int, int]:
    """(rank, world size) of this process: from an initialised torch.distributed group, else from the
    launcher's environment (torchrun's RANK/WORLD_SIZE, SLURM's SLURM_PROCID/SLURM_NTASKS), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            try:
                rank, world = int(os.environ[rank_key]), int(os.environ[world_key])
            except ValueError:
                continue
            if 0 <= rank < world:
                return rank, world
    return 0, 1


def _predict_one(
    models: list[LoadedModel],
    checkpoint: Any,
    in_path: Path,
    mask_path: Path,
    prob_path: Path | None,
    seg_path: Path | None,
    formats: Any,
    *,
    threshold: float | None,
    tta: str,
    batch_size: int | None,
    device: str | None,
    series_uid: str | None,
    postprocess: bool,
    min_lesion_ml: float | None,
    report: bool,
) -> dict[str, Any]:
    """One input of :func:`predict_path`: read, check, segment, write."""
    from lungtumor.io.dicom_seg import OUTPUT_NIFTI, check_dicom_seg_source

    t0 = time.perf_counter()
    ct = read_volume(in_path, series_uid=series_uid)
    if seg_path is not None:  # refused before the model runs: no Frame of Reference, ...
        check_dicom_seg_source(ct)
    if OUTPUT_NIFTI in formats:  # ... or a gantry tilt NIfTI cannot hold
        check_nifti_affine(ct, mask_path)
    res = segment(
        ct, models, threshold=threshold, tta=tta, batch_size=batch_size, device=device, return_probabilities=prob_path is not None or report,
        postprocess=postprocess, min_lesion_ml=min_lesion_ml,
    )
    mask, prob = res if isinstance(res, tuple) else (res, None)
    used = threshold if threshold is not None else models[0].info.get("threshold", 0.5)
    if seg_path is not None:
        from lungtumor import __version__
        from lungtumor.io.dicom_seg import write_dicom_seg

        write_dicom_seg(mask, ct, seg_path, algorithm_version=__version__, checkpoint_name=_checkpoint_names(checkpoint), threshold=used)
    if OUTPUT_NIFTI in formats:
        write_nifti(mask, mask_path, dtype=np.uint8)
    if prob is not None and prob_path is not None:
        write_nifti(prob, prob_path, dtype=np.float32)
    report_dir = None
    if report:
        from lungtumor.reporting.html import write_lesions_folder

        report_dir = mask_path.with_name(f"{nifti_stem(mask_path)}_report")
        facts = {
            "checkpoint": _checkpoint_names(checkpoint),
            "preprocessing": models[0].preprocess.to_dict(),
            "threshold": used,
            "ensemble_members": len(models),
            "tta": tta,
        }
        written = Volume(mask.array, mask.affine, {**mask.meta, "path": str(mask_path)})  # the report names the mask file
        write_lesions_folder(ct, written, report_dir, probabilities=prob, model_facts=facts, html_report=True)
    return {
        "input": str(in_path),
        "output": str(mask_path) if OUTPUT_NIFTI in formats else str(seg_path),
        "dicom_seg": str(seg_path) if seg_path is not None else None,
        "probabilities": str(prob_path) if prob_path else None,
        "report": str(report_dir / "report.html") if report_dir is not None else None,
        "shape": mask.shape,
        "volume_ml": float(mask.array.sum(dtype=np.int64)) * mask.voxel_volume_ml,
        "seconds": time.perf_counter() - t0,
    }


def _checkpoint_names(checkpoint: Any) -> str:
    items = checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    return ", ".join(Path(c).name if isinstance(c, (str, os.PathLike)) else "model" for c in items)
