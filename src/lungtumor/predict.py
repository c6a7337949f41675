"""``lungtumor predict``'s file driver: files and folders in, masks, probability maps and reports out.

:func:`predict_path` reads a NIfTI file, a folder of NIfTI files or a DICOM series folder, runs
:func:`~lungtumor.inference.predictor.segment` (one model or an ensemble) on each input, and writes
the outputs the caller asked for: the mask as NIfTI and/or DICOM-SEG, the probability map, and the
lesion table with the self-contained HTML report. A ``lungtumor cv`` folder as the checkpoint brings
the minimum lesion volume and the minimum lesion score its cross-validation chose (``cv_summary.json``). Under a launcher
(torchrun, SLURM) each process predicts its own share of a folder.

A top-level module: it may import every room (inference, io, reporting), while ``inference/``
itself stays below ``evaluation/`` and ``reporting/``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.atomic import refuse_overwriting_inputs
from lungtumor.config import check_batch_size, check_threshold
from lungtumor.cvfolder import cv_min_lesion_ml, cv_min_lesion_score, ensemble_checkpoints
from lungtumor.errors import InputError, LungTumorError
from lungtumor.inference.predictor import load_ensemble, segment
from lungtumor.io.nifti import check_nifti_affine, is_nifti, nifti_stem, write_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import Volume
from lungtumor.lesions.score import check_min_lesion_score
from lungtumor.model.checkpoint import LoadedModel
from lungtumor.model.device import resolve_device

log = logging.getLogger(__name__)


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
    mode: str = "full",
    output_format: str = "nifti",
    postprocess: bool = True,
    min_lesion_ml: float | None = None,
    min_lesion_score: float | None = None,
    report: bool = False,
    skip_bad: bool = False,
) -> list[dict[str, Any]]:
    """Segment a NIfTI file, a folder of NIfTI files, or a DICOM series folder.

    A NIfTI file or DICOM folder -> OUTPUT is a ``.nii.gz`` file (probabilities beside it as
    ``NAME_prob.nii.gz``). A folder of NIfTI files -> OUTPUT is a folder with the same file
    names (probabilities in ``OUTPUT/probabilities/``). ``output_format`` ``dicom-seg`` or
    ``nifti,dicom-seg`` (DICOM input only) also writes a DICOM-SEG beside OUTPUT as ``NAME.dcm``
    (see :func:`lungtumor.io.dicom_seg.prediction_seg_path`); ``dicom-seg`` alone skips the NIfTI.
    ``postprocess``, ``min_lesion_ml`` and ``mode`` (fast/full/auto): see :func:`~lungtumor.inference.predictor.segment`. ``checkpoint`` may be several
    checkpoints (or a ``lungtumor cv`` folder): an ensemble; a cv folder brings the minimum lesion
    volume its cross-validation chose, unless ``min_lesion_ml`` is given (0 keeps every lesion), and
    likewise the minimum lesion score (``min_lesion_score``, in [0, 1]: lesions scoring below it are
    removed after the other post-processing, so the mask and the lesion table agree; 0 keeps every
    lesion). ``report`` also writes, per input, the
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
    if threshold is not None:
        check_threshold(threshold)
    if batch_size is not None:
        check_batch_size(batch_size)
    if min_lesion_score is not None:
        check_min_lesion_score(min_lesion_score)
    formats = parse_output_formats(output_format)
    seg_path = prediction_seg_path(src, out, formats)  # None unless a DICOM-SEG is asked for (DICOM input only)
    if device is not None:
        resolve_device(device)  # a bad --device is refused before any work
    jobs: list[tuple[Path, Path, Path | None]] = []
    read: list[Path] = []  # what predict reads: the NIfTI files of a folder, or the whole DICOM series folder
    if src.is_dir():
        niftis = list_niftis(src)
        if niftis:
            if is_nifti(out):
                raise InputError(f"{out}: INPUT {src} is a folder of NIfTI files, so OUTPUT must be a folder, not a .nii.gz file")
            for p in niftis:
                jobs.append((p, out / p.name, out / "probabilities" / p.name if probabilities else None))
            read = list(niftis)
        else:  # a DICOM series folder
            if not is_nifti(out) and out != seg_path:
                raise InputError(f"{out}: OUTPUT for a DICOM series must be a .nii.gz file")
            jobs.append((src, out, _probability_path(out) if probabilities else None))
            read = [src]
    else:
        if not is_nifti(src):
            raise InputError(f"{src}: unknown input type; pass a .nii/.nii.gz file, a folder of them, or a DICOM series folder")
        if not is_nifti(out):
            raise InputError(f"{out}: OUTPUT must end in .nii.gz (or .nii) when INPUT is a file")
        jobs.append((src, out, _probability_path(out) if probabilities else None))
        read = [src]
    refuse_overwriting_inputs(
        _outputs_of(jobs, seg_path, formats, report), [*read, *_checkpoint_files(checkpoint)], command="lungtumor predict"
    )
    models = load_ensemble(ensemble_checkpoints(checkpoint))  # a cv folder: its finished folds only
    if min_lesion_ml is None:
        min_lesion_ml = cv_min_lesion_ml(checkpoint)
    if min_lesion_score is None:
        min_lesion_score = cv_min_lesion_score(checkpoint)

    rank, world = shard_of_this_process()
    if world > 1:  # torchrun / SLURM / Lightning launchers: each rank predicts every world-th case, none twice
        jobs = jobs[rank::world]
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    options = dict(
        threshold=threshold, tta=tta, mode=mode, batch_size=batch_size, device=device, series_uid=series_uid,
        postprocess=postprocess, min_lesion_ml=min_lesion_ml, min_lesion_score=min_lesion_score, report=report,
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


def _report_dir(mask_path: Path) -> Path:
    """``NAME_report/`` beside ``NAME.nii.gz``: where ``--report`` writes the lesion table and report.html."""
    return mask_path.with_name(f"{nifti_stem(mask_path)}_report")


def _outputs_of(jobs: list[tuple[Path, Path, Path | None]], seg_path: Path | None, formats: Any, report: bool) -> list[Path]:
    """Every file :func:`predict_path` will write for ``jobs``: masks, probability maps, the SEG, the reports."""
    from lungtumor.io.dicom_seg import OUTPUT_NIFTI
    from lungtumor.reporting.html import lesions_folder_files

    outputs: list[Path] = [seg_path] if seg_path is not None else []
    for _, mask_path, prob_path in jobs:
        if OUTPUT_NIFTI in formats:
            outputs.append(mask_path)
        if prob_path is not None:
            outputs.append(prob_path)
        if report:
            outputs += lesions_folder_files(_report_dir(mask_path), html_report=True)
    return outputs


def _checkpoint_files(checkpoint: Any) -> list[Path]:
    """The checkpoint files ``checkpoint`` names (a folder stands for its ``last.ckpt`` files, as in
    :func:`~lungtumor.inference.predictor.load_ensemble`); loaded models have none."""
    items = checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    files: list[Path] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            files += sorted(path.rglob("last.ckpt")) if path.is_dir() else [path]
    return files


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
    mode: str,
    batch_size: int | None,
    device: str | None,
    series_uid: str | None,
    postprocess: bool,
    min_lesion_ml: float | None,
    min_lesion_score: float | None,
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
        ct, models, threshold=threshold, tta=tta, mode=mode, batch_size=batch_size, device=device, return_probabilities=prob_path is not None or report,
        postprocess=postprocess, min_lesion_ml=min_lesion_ml, min_lesion_score=min_lesion_score,
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

        report_dir = _report_dir(mask_path)
        facts = {
            "checkpoint": _checkpoint_names(checkpoint),
            "preprocessing": models[0].preprocess.to_dict(),
            "threshold": used,
            "ensemble_members": len(models),
            "tta": tta,
            "min_lesion_score": min_lesion_score if postprocess and min_lesion_score else None,
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
