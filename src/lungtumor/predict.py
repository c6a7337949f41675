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

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.atomic import refuse_overwriting_inputs
from lungtumor.config import PreprocessConfig, check_batch_size, check_min_lesion_score, check_threshold
from lungtumor.cvfolder import cv_min_lesion_ml, cv_min_lesion_score, ensemble_checkpoints
from lungtumor.errors import ConfigError, InputError, LungTumorError
from lungtumor.inference.predictor import (
    PreparedScan,
    fast_mode_for,
    finish,
    load_ensemble,
    model_rescorers,
    prepare,
    rescorer_min_lesion_score,
    run_models,
)
from lungtumor.io.nifti import check_nifti_affine, is_nifti, nifti_stem, write_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import Volume
from lungtumor.model.checkpoint import LoadedModel
from lungtumor.model.device import resolve_device
from lungtumor.workers import pool_context, single_threaded

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
    workers: int = 0,
    skip_existing: bool = False,
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
    lesion). Without a cv folder's choice, a checkpoint whose re-scorer carries an operating point
    (``train --rescorer-steps``) brings that one. ``report`` also writes, per input, the
    lesion table and the self-contained HTML report into ``OUTPUT_NAME_report/``
    (:func:`lungtumor.reporting.html.write_lesions_folder`). ``skip_bad`` (folders): a case that fails
    is reported in its result (``error``) and the others go on; without it the first failure stops
    the run (outputs already written are complete files: every writer is atomic).

    ``workers`` (a folder of scans): that many worker processes read and prepare the next scans
    (reading and decompression, the lung finder, the slice grid: :func:`~lungtumor.inference.predictor.prepare`)
    while this process runs the model on the current one, and map each result back onto its grid
    and write it (and its report) while the model runs the next; the outputs are the same as with
    ``workers=0`` (everything in this process, one scan after the other, today's behaviour).
    ``skip_existing``: an input whose outputs all exist already is not predicted again (every
    writer is atomic, so an existing output is a whole one): a run that was killed is completed by
    running it again with this option.

    Returns:
        One dict per input: input, output, shape, tumour volume (ml), seconds, ``timings`` (seconds
        per stage: read, lungs, grid, model, back, write, report; with workers the first three ran in
        a worker) (and ``dicom_seg``, ``report``, ``error`` for a failed case, or ``skipped: True``
        for one already done).

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
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"--workers {workers}: must be a whole number >= 0 (0 = read and prepare each scan in this process)")
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
    if min_lesion_score is None:  # the operating point a re-scorer was written with
        min_lesion_score = rescorer_min_lesion_score(models)
        if min_lesion_score is not None:
            log.info("keeping lesions scoring >= %g, the operating point of the checkpoint's re-scorer (--min-lesion-score 0 keeps every lesion)", min_lesion_score)

    rank, world = shard_of_this_process()
    if world > 1:  # torchrun / SLURM / Lightning launchers: each rank predicts every world-th case, none twice
        jobs = jobs[rank::world]
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    options = dict(
        threshold=threshold, tta=tta, mode=mode, batch_size=batch_size, device=device, series_uid=series_uid,
        postprocess=postprocess, min_lesion_ml=min_lesion_ml, min_lesion_score=min_lesion_score, report=report,
    )
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo = []
    for k, (in_path, mask_path, prob_path) in enumerate(jobs):
        outputs = job_outputs(mask_path, prob_path, seg_path, formats, report)
        if skip_existing and all(p.is_file() for p in outputs):
            results[k] = {"input": str(in_path), "output": str(outputs[0]), "skipped": True}
        else:
            todo.append(k)
    if len(todo) < len(jobs):
        log.info("skipping %d of %d inputs whose outputs exist (--skip-existing)", len(jobs) - len(todo), len(jobs))
    cohort = _Cohort(models, checkpoint, seg_path, formats, options, skip_bad=skip_bad and len(jobs) > 1)
    with progress_bar(total=len(jobs), description="predict", enabled=progress and len(jobs) > 1, completed=len(jobs) - len(todo)) as advance:
        cohort.run([(k, *jobs[k]) for k in todo], results, advance, workers=workers)
    return [r for r in results if r is not None]


def job_outputs(mask_path: Path, prob_path: Path | None, seg_path: Path | None, formats: Any, report: bool) -> list[Path]:
    """Every file one input's prediction writes (the first is its main output): what ``--skip-existing`` looks for.

    The report folder counts as written when its ``report.html`` is, the last of its files.
    """
    from lungtumor.io.dicom_seg import OUTPUT_NIFTI

    outputs = [mask_path] if OUTPUT_NIFTI in formats else []
    if seg_path is not None:
        outputs.append(seg_path)
    if prob_path is not None:
        outputs.append(prob_path)
    if report:
        from lungtumor.reporting.html import REPORT_HTML

        outputs.append(_report_dir(mask_path) / REPORT_HTML)
    return outputs


def _report_dir(mask_path: Path) -> Path:
    return mask_path.with_name(f"{nifti_stem(mask_path)}_report")


@dataclass
class _Read:
    """What the CPU stage hands to the device: the prepared scan, the CT itself when a writer needs
    it (report, DICOM-SEG), the seconds of reading, and (from a worker) the warnings it logged."""

    prepared: PreparedScan
    ct: Volume | None
    read_s: float
    logs: list[tuple[str, int, str]] = field(default_factory=list)


class _LogCollector(logging.Handler):
    """Collects the package's warnings in a worker process, to be logged again by the main process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


def read_and_prepare(
    in_path: Path, mask_path: Path, *, series_uid: str | None, preprocess: PreprocessConfig, check_seg: bool, check_nifti: bool,
    keep_ct: bool, coarse: bool = False, collect_logs: bool = False,
) -> tuple[_Read | None, LungTumorError | None]:
    """The CPU stage of one input: read, check what its outputs need, :func:`prepare`.

    Runs in a worker process under ``--workers``: a user error (:class:`LungTumorError`) comes back
    as a value with the same message, so that ``--skip-bad`` decides and the CLI prints its one line.
    """
    from lungtumor.io.dicom_seg import check_dicom_seg_source

    collector = _LogCollector() if collect_logs else None
    package_log = logging.getLogger("lungtumor")
    if collector is not None:
        package_log.addHandler(collector)
    try:
        t0 = time.perf_counter()
        ct = read_volume(in_path, series_uid=series_uid)
        read_s = time.perf_counter() - t0
        if check_seg:  # refused before the model runs: no Frame of Reference, ...
            check_dicom_seg_source(ct)
        if check_nifti:  # ... or a gantry tilt NIfTI cannot hold
            check_nifti_affine(ct, mask_path)
        prepared = prepare(ct, preprocess, coarse=coarse)  # coarse: --mode fast's coarse grid too
        return _Read(prepared, ct if keep_ct else None, read_s, collector.records if collector else []), None
    except LungTumorError as exc:
        if collector is not None:
            exc.worker_logs = collector.records  # type: ignore[attr-defined]
        return None, exc
    finally:
        if collector is not None:
            package_log.removeHandler(collector)


@dataclass(frozen=True)
class _WriteSpec:
    """What the last stage of every input needs besides the input itself: small and picklable (a
    worker process gets it with each scan; the models stay in the main process)."""

    checkpoint_names: str
    preprocess: dict[str, Any]
    members: int
    threshold: float
    seg_path: Path | None
    nifti: bool
    options: dict[str, Any]
    rescorers: tuple[Any, ...] = ()


def finish_and_write(
    spec: _WriteSpec, in_path: Path, mask_path: Path, prob_path: Path | None, read: _Read, model_out: tuple[np.ndarray, float],
    *, collect_logs: bool = False,
) -> tuple[dict[str, Any], list[tuple[str, int, str]]]:
    """The last stage of one input: back onto its grid and post-processing
    (:func:`~lungtumor.inference.predictor.finish`), then its outputs (mask, probabilities,
    DICOM-SEG, report), each written atomically. Runs in a worker process under ``--workers``.

    Returns:
        The input's result and (from a worker) the warnings it logged.
    """
    collector = _LogCollector() if collect_logs else None
    package_log = logging.getLogger("lungtumor")
    if collector is not None:
        package_log.addHandler(collector)
    try:
        return _finish_and_write(spec, in_path, mask_path, prob_path, read, model_out), collector.records if collector else []
    except LungTumorError as exc:
        if collector is not None:  # the warnings are not lost with the failed case
            exc.worker_logs = [*getattr(exc, "worker_logs", []), *collector.records]  # type: ignore[attr-defined]
        raise
    finally:
        if collector is not None:
            package_log.removeHandler(collector)


def _finish_and_write(spec: _WriteSpec, in_path: Path, mask_path: Path, prob_path: Path | None, read: _Read, model_out: tuple[np.ndarray, float]) -> dict[str, Any]:
    o = spec.options
    probs, model_s = model_out
    report = bool(o["report"])
    t0 = time.perf_counter()
    res = finish(
        read.prepared, probs, threshold=spec.threshold, return_probabilities=prob_path is not None or report,
        postprocess=o["postprocess"], min_lesion_ml=o["min_lesion_ml"], min_lesion_score=o["min_lesion_score"],
        rescorers=spec.rescorers,
    )
    back_s = time.perf_counter() - t0
    mask, prob = res if isinstance(res, tuple) else (res, None)
    t0 = time.perf_counter()
    if spec.seg_path is not None:
        from lungtumor import __version__
        from lungtumor.io.dicom_seg import write_dicom_seg

        write_dicom_seg(mask, read.ct, spec.seg_path, algorithm_version=__version__, checkpoint_name=spec.checkpoint_names, threshold=spec.threshold)
    if spec.nifti:
        write_nifti(mask, mask_path, dtype=np.uint8)
    if prob is not None and prob_path is not None:
        write_nifti(prob, prob_path, dtype=np.float32)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report_dir = None
    if report:
        from lungtumor.reporting.html import write_lesions_folder

        report_dir = _report_dir(mask_path)
        facts = {
            "checkpoint": spec.checkpoint_names,
            "preprocessing": spec.preprocess,
            "threshold": spec.threshold,
            "ensemble_members": spec.members,
            "tta": o["tta"],
            "min_lesion_score": o["min_lesion_score"] if o["postprocess"] and o["min_lesion_score"] else None,
        }
        lesion_scores = None
        if spec.rescorers:  # the lesion score is the re-scorer's (lungtumor.inference.rescore)
            from lungtumor.inference.rescore import lesion_score_volume
            from lungtumor.lesions.score import RESCORER_SCORE_TEXT

            lesion_scores = lesion_score_volume(mask, prob, read.prepared.slices, read.prepared.grid, spec.rescorers)  # type: ignore[arg-type]
            facts["score_definition"] = RESCORER_SCORE_TEXT
        written = Volume(mask.array, mask.affine, {**mask.meta, "path": str(mask_path)})  # the report names the mask file
        write_lesions_folder(
            read.ct, written, report_dir, probabilities=prob, model_facts=facts, html_report=True, lesion_scores=lesion_scores,  # type: ignore[arg-type]
        )
    report_s = time.perf_counter() - t0
    timings = {"read": read.read_s, **read.prepared.seconds, "model": model_s, "back": back_s, "write": write_s, "report": report_s}
    return {
        "input": str(in_path),
        "output": str(mask_path) if spec.nifti else str(spec.seg_path),
        "dicom_seg": str(spec.seg_path) if spec.seg_path is not None else None,
        "probabilities": str(prob_path) if prob_path else None,
        "report": str(report_dir / "report.html") if report_dir is not None else None,
        "shape": mask.shape,
        "volume_ml": float(mask.array.sum(dtype=np.int64)) * mask.voxel_volume_ml,
        "seconds": sum(timings.values()),
        "timings": timings,
    }


def _without_slices(read: _Read) -> _Read:
    """``read`` without its model slices (the last stage does not need them unless a re-scorer cuts its
    patches from them; a worker gets less to unpickle)."""
    light = dataclasses.replace(read.prepared, slices=np.empty((0, 0, 0), np.float32))
    return dataclasses.replace(read, prepared=light, logs=[])


def _relog(records: list[tuple[str, int, str]]) -> None:
    for name, level, message in records:
        logging.getLogger(name).log(level, "%s", message)


class _Cohort:
    """The pipeline of :func:`predict_path`: the CPU stage (read, prepare) -> the model (this
    process, loaded once) -> the last stage (back onto the grid, writers). With workers, the CPU
    and last stages of other scans run in worker processes while the device runs this one."""

    def __init__(self, models: list[LoadedModel], checkpoint: Any, seg_path: Path | None, formats: Any, options: dict[str, Any], *, skip_bad: bool) -> None:
        from lungtumor.io.dicom_seg import OUTPUT_NIFTI

        self.models = models
        self.seg_path = seg_path
        self.options = options
        self.skip_bad = skip_bad
        self.nifti = OUTPUT_NIFTI in formats
        threshold = check_threshold(options["threshold"] if options["threshold"] is not None else models[0].info.get("threshold", 0.5))
        # --mode resolved once for the cohort (by the device and the model), so every scan runs the same path.
        self.coarse = fast_mode_for(options.get("mode", "full"), models[0].preprocess, options.get("device")) == "fast"
        self.spec = _WriteSpec(
            checkpoint_names=_checkpoint_names(checkpoint), preprocess=models[0].preprocess.to_dict(), members=len(models),
            threshold=threshold, seg_path=seg_path, nifti=self.nifti, options=dict(options), rescorers=tuple(model_rescorers(models)),
        )

    def _prepare_args(self, in_path: Path, mask_path: Path) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (in_path, mask_path), dict(
            series_uid=self.options["series_uid"], preprocess=self.models[0].preprocess, check_seg=self.seg_path is not None,
            check_nifti=self.nifti, keep_ct=self.seg_path is not None or bool(self.options["report"]), coarse=self.coarse,
        )

    def _failed(self, in_path: Path, exc: LungTumorError) -> dict[str, Any]:
        if not self.skip_bad:
            raise exc
        message = " ".join(str(exc).split())
        log.warning("skipping %s: %s", in_path, message)
        return {"input": str(in_path), "output": None, "error": message}

    def run(self, items: list[tuple[int, Path, Path, Path | None]], results: list[Any], advance: Any, *, workers: int) -> None:
        """Predict ``items`` (index, input, mask path, probability path) into ``results[index]``."""
        if workers == 0 or len(items) <= 1:
            for k, in_path, mask_path, prob_path in items:
                args, kwargs = self._prepare_args(in_path, mask_path)
                read, err = read_and_prepare(*args, **kwargs)
                if err is not None:
                    results[k] = self._failed(in_path, err)
                else:
                    try:
                        results[k] = _finish_and_write(self.spec, in_path, mask_path, prob_path, read, self._model(read))
                    except LungTumorError as exc:
                        results[k] = self._failed(in_path, exc)
                advance()
            return
        self._run_pipelined(items, results, advance, workers)

    def _model(self, read: _Read) -> tuple[np.ndarray, float]:
        o = self.options
        t0 = time.perf_counter()
        probs = run_models(read.prepared, self.models, batch_size=o["batch_size"], device=o["device"], tta=o["tta"])
        return probs, time.perf_counter() - t0

    def _run_pipelined(self, items: list[tuple[int, Path, Path, Path | None]], results: list[Any], advance: Any, workers: int) -> None:
        import concurrent.futures as cf
        from collections import deque

        # One pool for both CPU stages: each worker takes the oldest task, a scan to prepare or one to
        # write. Scans prepared ahead of the device: every worker busy and one ready; scans written
        # at once: as many as workers (each holds its probabilities, and the CT for a report).
        lookahead, backlog = workers + 1, workers
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=pool_context("lungtumor.predict"), initializer=single_threaded)
        prepared: deque[Any] = deque()
        writing: deque[tuple[int, Path, Any]] = deque()
        pending = iter(items)

        def submit_next() -> None:
            item = next(pending, None)
            if item is not None:
                args, kwargs = self._prepare_args(item[1], item[2])
                prepared.append((item, pool.submit(read_and_prepare, *args, **kwargs, collect_logs=True)))

        def collect(block_until: int) -> None:
            while len(writing) > block_until:
                k, in_path, fut = writing.popleft()
                try:
                    results[k], logs = fut.result()
                    _relog(logs)
                except LungTumorError as exc:
                    _relog(getattr(exc, "worker_logs", []))
                    results[k] = self._failed(in_path, exc)
                advance()

        try:
            for _ in range(lookahead):
                submit_next()
            while prepared:
                (k, in_path, mask_path, prob_path), fut = prepared.popleft()
                read, err = fut.result()
                _relog(read.logs if read is not None else getattr(err, "worker_logs", []))
                if err is not None:
                    submit_next()
                    collect(0)  # in order: the cases before this one are reported first
                    results[k] = self._failed(in_path, err)
                    advance()
                    continue
                model_out = self._model(read)
                collect(backlog - 1)
                writing.append((k, in_path, pool.submit(
                    finish_and_write, self.spec, in_path, mask_path, prob_path, read if self.spec.rescorers else _without_slices(read), model_out,
                    collect_logs=True,
                )))
                submit_next()  # after the write: a worker that frees up writes this scan before preparing a later one
            collect(0)
        except BaseException:
            for _, fut in prepared:
                fut.cancel()
            # Writes in flight end whole (atomic) or leave nothing under the final name.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


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


def _checkpoint_names(checkpoint: Any) -> str:
    items = checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    return ", ".join(Path(c).name if isinstance(c, (str, os.PathLike)) else "model" for c in items)
