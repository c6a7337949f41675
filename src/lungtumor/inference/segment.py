"""Whole-scan inference: a CT Volume in, a mask Volume with the input's exact grid out.

``segment`` applies exactly the preprocessing embedded in the checkpoint, runs the slices
through the U-Net in batches (bfloat16 autocast where the hardware supports it), resizes the
*probabilities* back to the original in-plane size, thresholds, puts the slices the recipe
dropped back as zeros and undoes the reorientation, so the mask has the input's shape and
affine (and, for DICOM input, the series' DICOM geometry in ``meta``).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.errors import ConfigError, InputError
from lungtumor.io.nifti import check_nifti_affine, is_nifti, nifti_stem, write_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import Volume
from lungtumor.model.checkpoint import LoadedModel, load_model
from lungtumor.preprocessing.recipe import PreparedCT, prepare_ct, restore_slices

#: Default slices per forward pass on each kind of device.
DEFAULT_BATCH = {"cpu": 4, "cuda": 32}
TTA_MODES = ("none", "flip")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (None = default), or a ConfigError a user can act on."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device!r}: not a device name; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def use_bf16(device: torch.device) -> bool:
    """bfloat16 autocast where the hardware runs it natively (fast and, for this U-Net, agreeing
    with float32 to well under 1 % of mask voxels; see the tests and BENCHMARKS.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def context_batch(slices: np.ndarray, start: int, stop: int, context: int) -> np.ndarray:
    """(stop - start, 2 * context + 1, S, S) input for slices ``start:stop`` (edges repeated)."""
    if context == 0:
        return slices[start:stop, None]
    depth = slices.shape[0]
    idx = np.clip(np.arange(start, stop)[:, None] + np.arange(-context, context + 1)[None, :], 0, depth - 1)
    return slices[idx]


@torch.no_grad()
def predict_slices(
    model: LoadedModel,
    slices: np.ndarray,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    tta: str = "none",
    precision: str = "auto",
) -> np.ndarray:
    """Sigmoid probabilities (D, S, S) float32 for preprocessed slices (D, S, S).

    Args:
        model: from :func:`~lungtumor.model.checkpoint.load_model`.
        slices: output of :func:`~lungtumor.preprocessing.recipe.prepare_ct`.
        batch_size: slices per forward pass (default 4 on CPU, 32 on CUDA).
        device: torch device (default: CUDA if available).
        tta: ``none`` or ``flip`` (average with the left-right mirrored prediction).
        precision: ``auto`` (bf16 where supported), ``bf16`` or ``fp32``.
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
            x = torch.from_numpy(np.ascontiguousarray(context_batch(slices, start, stop, model.context), dtype=np.float32))
            x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            prob = torch.sigmoid(net(x).float())
            if tta == "flip":
                prob = 0.5 * (prob + torch.sigmoid(net(x.flip(-1)).float()).flip(-1))
            out[start:stop] = prob[:, 0].cpu().numpy()
    return out


def segment(
    volume: Volume,
    model: LoadedModel | str | os.PathLike[str],
    *,
    threshold: float | None = None,
    tta: str = "none",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    return_probabilities: bool = False,
) -> Volume | tuple[Volume, Volume]:
    """Segment tumours in a CT Volume (HU).

    Args:
        volume: the CT, any orientation (from :func:`~lungtumor.io.readers.read_volume`).
        model: a loaded model or a checkpoint path.
        threshold: probability threshold (default: the checkpoint's, 0.5).
        tta, batch_size, device, precision: see :func:`predict_slices`.
        return_probabilities: also return the float32 probability Volume.

    Returns:
        uint8 {0, 1} mask Volume with exactly ``volume``'s shape and affine (and its meta),
        plus the probability Volume when asked.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    thr = float(threshold if threshold is not None else loaded.info.get("threshold", 0.5))
    if not 0.0 <= thr <= 1.0:
        raise ConfigError(f"--threshold {thr} must be between 0 and 1")
    if not np.issubdtype(volume.array.dtype, np.number):
        raise InputError(f"{volume.meta.get('path', 'CT')}: voxel type {volume.array.dtype} is not numeric")
    if volume.array.dtype.kind == "f" and not np.all(np.isfinite(volume.array)):
        raise InputError(f"{volume.meta.get('path', 'CT')}: contains NaN or infinite voxels; fix the CT first")
    prepared: PreparedCT = prepare_ct(volume, loaded.preprocess)
    probs = predict_slices(loaded, prepared.slices, batch_size=batch_size, device=device, tta=tta, precision=precision)
    if not return_probabilities:
        # Thresholded chunk by chunk: no full-size float copy of the scan is ever made.
        return Volume(restore_slices(probs, prepared, volume.shape, threshold=thr), volume.affine, dict(volume.meta))
    prob = restore_slices(probs, prepared, volume.shape)
    mask_vol = Volume((prob > thr).astype(np.uint8), volume.affine, dict(volume.meta))
    prob_vol = Volume(prob, volume.affine, dict(volume.meta))
    return mask_vol, prob_vol


def _probability_path(mask_path: Path) -> Path:
    return mask_path.with_name(f"{nifti_stem(mask_path)}_prob.nii.gz")


def predict_path(
    checkpoint: str | os.PathLike[str],
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
) -> list[dict[str, Any]]:
    """Segment a NIfTI file, a folder of NIfTI files, or a DICOM series folder.

    A NIfTI file or DICOM folder -> OUTPUT is a ``.nii.gz`` file (probabilities beside it as
    ``NAME_prob.nii.gz``). A folder of NIfTI files -> OUTPUT is a folder with the same file
    names (probabilities in ``OUTPUT/probabilities/``). ``output_format`` ``dicom-seg`` or
    ``nifti,dicom-seg`` (DICOM input only) also writes a DICOM-SEG beside OUTPUT as ``NAME.dcm``
    (see :func:`lungtumor.io.dicom_seg.prediction_seg_path`); ``dicom-seg`` alone skips the NIfTI.

    Returns:
        One dict per input: input, output, shape, tumour volume (ml), seconds (and ``dicom_seg``).
    """
    from lungtumor.io.dicom_seg import OUTPUT_NIFTI, check_dicom_seg_source, parse_output_formats, prediction_seg_path

    src = Path(input_path)
    out = Path(output)
    if not src.exists():
        raise InputError(f"{src}: input not found; pass a .nii/.nii.gz file, a folder of them, or a DICOM series folder")
    formats = parse_output_formats(output_format)
    seg_path = prediction_seg_path(src, out, formats)  # None unless a DICOM-SEG is asked for (DICOM input only)
    model = load_model(checkpoint, device=resolve_device(device))
    jobs: list[tuple[Path, Path, Path | None]] = []
    if src.is_dir():
        niftis = sorted(p for p in src.iterdir() if is_nifti(p) and not p.name.startswith("."))
        if niftis:
            if is_nifti(out):
                raise InputError(f"{out}: INPUT {src} is a folder of NIfTI files, so OUTPUT must be a folder, not a .nii.gz file")
            for p in niftis:
                target = out / p.name
                jobs.append((p, target, out / "probabilities" / p.name if probabilities else None))
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

    from lungtumor.progress import progress_bar

    results = []
    with progress_bar(total=len(jobs), description="predict", enabled=progress and len(jobs) > 1) as advance:
        for in_path, mask_path, prob_path in jobs:
            t0 = time.perf_counter()
            ct = read_volume(in_path, series_uid=series_uid)
            if seg_path is not None:  # refused before the model runs: no Frame of Reference, ...
                check_dicom_seg_source(ct)
            if OUTPUT_NIFTI in formats:  # ... or a gantry tilt NIfTI cannot hold
                check_nifti_affine(ct, mask_path)
            res = segment(
                ct, model, threshold=threshold, tta=tta, batch_size=batch_size, device=device, return_probabilities=prob_path is not None
            )
            mask, prob = res if isinstance(res, tuple) else (res, None)
            if seg_path is not None:
                from lungtumor import __version__
                from lungtumor.io.dicom_seg import write_dicom_seg

                used = threshold if threshold is not None else model.info.get("threshold", 0.5)
                write_dicom_seg(mask, ct, seg_path, algorithm_version=__version__, checkpoint_name=Path(checkpoint).name, threshold=used)
            if OUTPUT_NIFTI in formats:
                write_nifti(mask, mask_path, dtype=np.uint8)
            if prob is not None and prob_path is not None:
                write_nifti(prob, prob_path, dtype=np.float32)
            results.append(
                {
                    "input": str(in_path),
                    "output": str(mask_path) if OUTPUT_NIFTI in formats else str(seg_path),
                    "dicom_seg": str(seg_path) if seg_path is not None else None,
                    "probabilities": str(prob_path) if prob_path else None,
                    "shape": mask.shape,
                    "volume_ml": float(mask.array.sum(dtype=np.int64)) * mask.voxel_volume_ml,
                    "seconds": time.perf_counter() - t0,
                }
            )
            advance()
    return results
