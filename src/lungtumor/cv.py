"""``lungtumor cv``: k-fold cross-validation over a store, every fold (and seed) trained and scored.

For each seed and fold: train with the split chosen by the run (``TrainConfig(fold=k, folds=K,
split_seed=seed)``, recorded in every checkpoint), predict each validation case at its original
resolution from its source file (the store's ``meta.json`` names it) with the fold's last
checkpoint (not the best: choosing the epoch on the same cases that are then scored would flatter
the model), and evaluate per case. The report gives each fold's mean per-case Dice, the mean +- SD
over folds (per seed) and over seeds, and the per-case table.

Layout of ``OUT``::

    seed-<s>/fold-<k>/run/            the fold's training run (checkpoints, logs)
    seed-<s>/fold-<k>/predictions/    validation masks + probabilities at original resolution
    seed-<s>/fold-<k>/evaluation/     metrics.csv, summary.json
    seed-<s>/fold-<k>/done.json       written last: a finished fold is not trained again, and only
                                      finished folds join an ensemble (``predict OUT``)
    cv_config.json                    the split (folds, seeds), the source and the training options:
                                      a re-run with others is refused
    cv_cases.csv, cv_summary.json     every case of every fold; per fold, per seed, overall; the
                                      minimum lesion volume chosen on the folds' predictions

Resumable: a re-run with the options recorded in ``cv_config.json`` continues; one with another
split or other training options is refused (it would mix two experiments in one report). A fold
with ``done.json`` is reused; a fold with a run but no ``done.json`` resumes its
training from ``last.ckpt``. A fold that fails is listed with its one-line error and the others
still report.

Where several GPUs are visible, one fold trains on each at once (``parallel``, default one per
visible GPU; 1 on a CPU): every fold runs in its own process that sees one GPU
(``CUDA_VISIBLE_DEVICES``), logs to ``seed-<s>/fold-<k>/cv_worker.log``, and the next waiting fold
takes the GPU that frees first. On a CPU, ``parallel`` N > 1 splits the cores between N processes.
Across nodes, run disjoint ``--only-folds`` into one shared ``OUT``, then once more without it to
collect the report.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import queue
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lungtumor.atomic import write_text_atomic
from lungtumor.config import parse_list
from lungtumor.cvfolder import CONFIG_JSON, DONE_FILE, SUMMARY_JSON
from lungtumor.errors import ConfigError, InputError, LungTumorError
from lungtumor.runstate import check_recorded_config, config_differences, record_config, refuse_config_differences

log = logging.getLogger(__name__)

WORKER_LOG = "cv_worker.log"
CASES_CSV = "cv_cases.csv"
#: Training options that change how a fold runs but not what it learns: not recorded, free to change on a re-run.
RUNTIME_OPTIONS = ("store", "out", "progress", "num_workers", "accelerator", "devices", "strategy", "num_nodes", "log_every_n_steps", "image_every_n_steps")
#: Training options that ``cv`` sets per fold itself (not the user's to record).
PER_FOLD_OPTIONS = ("fold", "folds", "split_seed", "val_cases", "seed")
#: Per-case columns of the cross-validation table (a subset of the evaluation's).
CASE_COLUMNS = ("seed", "fold", "case", "dice", "surface_dice", "hd95_mm", "pred_volume_ml", "ref_volume_ml", "overlap_volume_ml")
#: cv_cases.csv column -> the key of an evaluation row it is read from (where the names differ).
_EVALUATION_KEYS = {"pred_volume_ml": "volume_pred_ml", "ref_volume_ml": "volume_ref_ml", "overlap_volume_ml": "volume_overlap_ml"}


def _mean_sd(values: list[float]) -> dict[str, float | int | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(vals)}


def _link_folder(folder: Path, files: dict[str, Path]) -> Path:
    """A folder of symbolic links ``name -> file`` (so that folder-level tools see just these cases)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, target in files.items():
        (folder / name).symlink_to(Path(target).resolve())
    return folder


def _fold_cases(run_dir: Path) -> list[str]:
    from lungtumor.model.checkpoint import read_checkpoint

    split = read_checkpoint(run_dir / "last.ckpt")["lungtumor"].get("split") or {}
    return list(split.get("val", []))


def run_fold(base: Any, store: Path, fold_dir: Path, fold: int, folds: int, seed: int, *, tta: str = "none") -> dict[str, Any]:
    """Train (or resume), predict and evaluate one fold; returns its ``done.json`` content."""
    from lungtumor.evaluation.evaluate import evaluate_folder
    from lungtumor.predict import predict_path
    from lungtumor.training.trainer import train

    done = fold_dir / DONE_FILE
    if done.exists():
        try:
            return json.loads(done.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{done}: unreadable ({exc}); delete it to redo fold {fold}") from exc
    run_dir = fold_dir / "run"
    cfg = dataclasses.replace(base, store=str(store), out=str(run_dir), fold=fold, folds=folds, split_seed=seed, seed=seed, val_cases=None)
    summary = train(cfg, resume=(run_dir / "last.ckpt").exists())
    ckpt = Path(summary["last_checkpoint"])
    val = _fold_cases(run_dir)
    images, labels = {}, {}
    for cid in val:
        meta = json.loads((store / "cases" / cid / "meta.json").read_text())
        image, label = Path(meta["image"]), Path(meta["label"])
        if not image.exists() or not label.exists():
            raise InputError(f"{store}: case {cid}'s source files ({image}, {label}) are gone; cross-validation scores at the original resolution")
        images[f"{cid}.nii.gz"] = image
        labels[f"{cid}.nii.gz"] = label
    inputs = _link_folder(fold_dir / "inputs", images)
    refs = _link_folder(fold_dir / "references", labels)
    pred_dir = fold_dir / "predictions"
    predict_path(ckpt, inputs, pred_dir, probabilities=True, tta=tta, progress=False)
    result = evaluate_folder(pred_dir, refs, out_dir=fold_dir / "evaluation", prob_dir=pred_dir / "probabilities", progress=False)
    rows = [{"seed": seed, "fold": fold, **{k: r.get(_EVALUATION_KEYS.get(k, k)) for k in CASE_COLUMNS if k not in ("seed", "fold")}} for r in result.rows]
    record = {
        "seed": seed,
        "fold": fold,
        "folds": folds,
        "checkpoint": str(ckpt),
        "val_cases": val,
        "dice_mean": result.summary.get("dice_mean"),
        "rows": rows,
        "train": {k: summary.get(k) for k in ("epochs", "global_step", "seconds", "precision")},
    }
    write_text_atomic(done, json.dumps(record, indent=2, default=str))
    return record


def cv_options(source: Path, base: Any, *, folds: int, tta: str) -> dict[str, Any]:
    """The options that decide a cross-validation folder's content (recorded in ``cv_config.json``).

    ``--seeds`` is not among them: each seed's folds stand alone, so a re-run may add seeds.
    """
    train = {k: v for k, v in base.to_dict().items() if k not in RUNTIME_OPTIONS and k not in PER_FOLD_OPTIONS}
    return {"folds": folds, "tta": tta, "source": str(source.resolve()), **train}


def check_cv_options(out: Path, options: dict[str, Any]) -> None:
    """Refuse a re-run of ``out`` with another split, source or training options (one line).

    A folder written before ``cv_config.json`` existed is checked against its finished folds'
    ``done.json`` (their fold count).
    """
    fix = "use a new --out for these options, or re-run with the options it was made with"
    if check_recorded_config(out, CONFIG_JSON, options, what="cross-validation folder", fix=fix):
        return
    for done in sorted(out.glob(f"seed-*/fold-*/{DONE_FILE}")):
        try:
            record = json.loads(done.read_text())
        except (OSError, ValueError):
            continue
        diff = config_differences({"folds": record.get("folds")} if record.get("folds") is not None else {}, options, ("folds",))
        refuse_config_differences(out, diff, what="cross-validation folder", fix=fix)


def parse_only_folds(only: str | None, folds: int) -> list[int]:
    """``--only-folds`` as fold numbers (every fold when not given); one-line errors for a bad list or range."""
    if not only:
        return list(range(folds))
    chosen = sorted(set(parse_list(only, "--only-folds", item=int, example="0,2")))
    bad = [k for k in chosen if not 0 <= k < folds]
    if bad:
        raise ConfigError(f"--only-folds {only!r}: folds are 0..{folds - 1}")
    return chosen


def cross_validate(
    store_or_dataset: str | Path,
    out: str | Path,
    base: Any,
    *,
    folds: int = 5,
    seeds: int = 1,
    only_folds: str | None = None,
    tta: str = "none",
    parallel: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the cross-validation; write and return the report.

    Args:
        store_or_dataset: a slice store, or a dataset folder (it is preprocessed into ``OUT/store``
            with the lung preset, `lungtumor preprocess`'s default, first).
        out: the cross-validation folder.
        base: a :class:`~lungtumor.training.options.TrainConfig` with the training options
            (``store``, ``out``, ``fold``, ``split_seed``, ``seed`` are set per fold).
        folds: number of folds (>= 2).
        seeds: seeds 0..seeds-1; each seed reshuffles the split and reinitialises the model.
        only_folds: comma-separated folds to run now (the rest are reported if already done).
        tta: prediction test-time augmentation.
        parallel: folds trained at once, each in its own process (None: one per visible GPU,
            1 on a CPU).
    """
    if folds < 2:
        raise ConfigError(f"--folds {folds}: need at least 2 folds")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least 1 seed")
    run_now = parse_only_folds(only_folds, folds)
    slots = _worker_slots(base, parallel)  # a bad --parallel is refused before anything is written
    out = Path(out)
    src = Path(store_or_dataset)
    if not src.is_dir():
        raise InputError(f"{src}: not found; pass a slice store (lungtumor preprocess) or a dataset folder")
    options = cv_options(src, base, folds=folds, tta=tta)
    check_cv_options(out, options)  # before anything is written or trained
    if (src / "store.json").exists():
        store = src
    else:
        from lungtumor.config import PreprocessConfig, SplitConfig
        from lungtumor.preprocessing.store import preprocess_task

        store = out / "store"
        preprocess_task(src, store, PreprocessConfig.from_preset("lung"), SplitConfig(folds=folds))  # `preprocess`'s default
    if not (out / CONFIG_JSON).exists():
        record_config(out, CONFIG_JSON, options)
    if base.phantoms:  # built once here for every fold (parallel folds would race for it), in --phantom-dir if given
        from lungtumor.preprocessing.store import SliceStore
        from lungtumor.training.phantoms import phantom_store

        phantom_root = Path(base.phantom_dir) if base.phantom_dir else out / "phantoms"
        phantom_store(phantom_root, base.phantoms, SliceStore(store).preprocess, size=base.phantom_size)
        base = dataclasses.replace(base, phantom_dir=str(phantom_root))
    records: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    jobs: list[tuple[int, int, Path]] = []
    for seed in range(seeds):
        for fold in range(folds):
            fold_dir = out / f"seed-{seed}" / f"fold-{fold}"
            if fold in run_now:
                jobs.append((seed, fold, fold_dir))
            elif (fold_dir / DONE_FILE).exists():
                records.append(json.loads((fold_dir / DONE_FILE).read_text()))
    todo = [j for j in jobs if not (j[2] / DONE_FILE).exists()]
    if len(slots) > 1 and todo:
        outcomes = _run_parallel(base, store, jobs, folds, tta, slots)
    else:
        outcomes = []
        for seed, fold, fold_dir in jobs:
            try:
                outcomes.append((seed, fold, run_fold(base, store, fold_dir, fold, folds, seed, tta=tta), None))
            except LungTumorError as exc:
                outcomes.append((seed, fold, None, " ".join(str(exc).split())))
    for seed, fold, record, error in outcomes:
        if record is not None:
            records.append(record)
        else:
            log.info("fold %d (seed %d) failed: %s", fold, seed, error)
            failures.append({"seed": seed, "fold": fold, "error": error})
    records.sort(key=lambda r: (r["seed"], r["fold"]))
    return write_report(out, records, failures, folds=folds, seeds=seeds, postprocessing=_choose_postprocessing(out, records, rescored=bool(base.rescorer_steps)))


#: Why a cv of folds with re-scorers chooses no minimum lesion score (cv_summary.json, the summary's line).
RESCORED_NO_SCORE_CHOICE = (
    "the folds carry re-scorers (--rescorer-steps), so their predictions and predict CV_FOLDER apply the re-scorers' own "
    "operating point (a score chosen on the U-Net's prob_max would not fit the re-scorer's scale)"
)


def _choose_postprocessing(out: Path, records: list[dict[str, Any]], *, rescored: bool = False) -> dict[str, Any] | None:
    """The minimum lesion volume, then the minimum lesion score, chosen on every finished fold's
    predictions (nnU-Net chooses its post-processing on its cross-validation the same way), and the
    reliability table of the lesion scores over those predictions (``lesion_calibration``);
    ``predict CV_FOLDER`` applies both choices. ``rescored`` (the folds carry re-scorers): no minimum
    lesion score is chosen, since it would be chosen on the U-Net's prob_max and applied to the
    re-scorer's scores; the folds' predictions, and ``predict CV_FOLDER``, apply the re-scorers' own
    operating point instead."""
    if not records:
        return None
    from lungtumor.evaluation.calibration import candidates_reliability
    from lungtumor.evaluation.postprocessing import choose_min_lesion_ml, choose_min_lesion_score, collect_lesion_candidates
    from lungtumor.lesions.export import json_safe

    dirs = [out / f"seed-{r['seed']}" / f"fold-{r['fold']}" for r in records]
    preds, refs = [d / "predictions" for d in dirs], [d / "references" for d in dirs]
    try:
        choice = choose_min_lesion_ml(preds, refs)
    except LungTumorError as exc:
        return {"min_lesion_ml": None, "min_lesion_score": None, "error": " ".join(str(exc).split())}
    if rescored:
        choice.update(min_lesion_score=None, min_lesion_score_error=RESCORED_NO_SCORE_CHOICE)
        return choice
    try:
        candidates = collect_lesion_candidates(preds, refs, min_lesion_ml=choice["min_lesion_ml"])
        by_score = choose_min_lesion_score(candidates)
        choice.update(min_lesion_score=by_score["min_lesion_score"], min_lesion_score_choice=by_score)
        choice["lesion_calibration"] = json_safe(candidates_reliability(candidates))  # empty bins: null, not NaN
    except LungTumorError as exc:
        choice.update(min_lesion_score=None, min_lesion_score_error=" ".join(str(exc).split()))
    return choice


def _visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as values for a child's ``CUDA_VISIBLE_DEVICES``."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install counts as no GPU
        count = 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if len(listed) >= count and listed else [str(i) for i in range(count)]


def _worker_slots(base: Any, parallel: int | None) -> list[dict[str, str]]:
    """One environment update per concurrent fold process (a single empty one = run in-process)."""
    if parallel is not None and (not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1):
        raise ConfigError(f"--parallel {parallel}: must be a whole number >= 1 (folds trained at once)")
    gpus = [] if base.accelerator == "cpu" else _visible_gpus()
    n = parallel if parallel is not None else max(1, len(gpus))
    if n == 1:
        return [{}]
    if str(base.devices) not in ("auto", "1") or base.num_nodes != 1:
        raise ConfigError(f"--parallel {n} trains one fold per device; drop --devices {base.devices} / --num-nodes, or use --parallel 1")
    if gpus:
        if n > len(gpus):
            raise ConfigError(f"--parallel {n}: only {len(gpus)} GPU(s) visible; use --parallel {len(gpus)} or fewer")
        return [{"CUDA_VISIBLE_DEVICES": g} for g in gpus[:n]]
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads} for _ in range(n)]


def _run_parallel(
    base: Any, store: Path, jobs: list[tuple[int, int, Path]], folds: int, tta: str, slots: list[dict[str, str]]
) -> list[tuple[int, int, dict[str, Any] | None, str | None]]:
    """Run each job in a child process, at most ``len(slots)`` at once, each on its own slot."""
    free: queue.Queue[dict[str, str]] = queue.Queue()
    for slot in slots:
        free.put(slot)
    base_dict = dataclasses.replace(base, progress=False).to_dict()

    def one(job: tuple[int, int, Path]) -> tuple[int, int, dict[str, Any] | None, str | None]:
        seed, fold, fold_dir = job
        if (fold_dir / DONE_FILE).exists():
            return seed, fold, json.loads((fold_dir / DONE_FILE).read_text()), None
        slot = free.get()
        try:
            fold_dir.mkdir(parents=True, exist_ok=True)
            spec = {"base": base_dict, "store": str(store), "fold_dir": str(fold_dir), "fold": fold, "folds": folds, "seed": seed, "tta": tta}
            where = f"GPU {slot['CUDA_VISIBLE_DEVICES']}" if slot.get("CUDA_VISIBLE_DEVICES") else f"{slot.get('OMP_NUM_THREADS')} CPU thread(s)"
            print(f"fold {fold} (seed {seed}): started on {where}; log {fold_dir / WORKER_LOG}", file=sys.stderr, flush=True)
            with open(fold_dir / WORKER_LOG, "a") as logf:
                rc = subprocess.run(
                    [sys.executable, "-m", "lungtumor.cv", json.dumps(spec)], env={**os.environ, **slot}, stdout=logf, stderr=subprocess.STDOUT, check=False
                ).returncode
        finally:
            free.put(slot)
        if rc == 0 and (fold_dir / DONE_FILE).exists():
            print(f"fold {fold} (seed {seed}): done", file=sys.stderr, flush=True)
            return seed, fold, json.loads((fold_dir / DONE_FILE).read_text()), None
        print(f"fold {fold} (seed {seed}): failed, see {fold_dir / WORKER_LOG}", file=sys.stderr, flush=True)
        return seed, fold, None, _last_error(fold_dir / WORKER_LOG, rc)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        return list(pool.map(one, jobs))


def _last_error(log_file: Path, rc: int) -> str:
    """The one-line error a fold process ended with (its last line), or its exit status."""
    try:
        lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    tail = lines[-1] if lines else ""
    return f"{tail} (see {log_file})" if tail else f"the fold's process exited with status {rc} (see {log_file})"


def _worker(argv: list[str]) -> int:
    """Entry of one fold's process (``python -m lungtumor.cv SPEC_JSON``): train, predict, score."""
    from lungtumor.training.options import TrainConfig

    spec = json.loads(argv[0])
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        run_fold(TrainConfig.from_dict(spec["base"]), Path(spec["store"]), Path(spec["fold_dir"]), spec["fold"], spec["folds"], spec["seed"], tta=spec["tta"])
    except LungTumorError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    return 0


def write_report(
    out: Path, records: list[dict[str, Any]], failures: list[dict[str, Any]], *, folds: int, seeds: int, postprocessing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Aggregate fold records into ``cv_summary.json`` and ``cv_cases.csv``."""
    from lungtumor.evaluation.evaluate import POOLED_DICE_LABEL, dice_spread

    per_seed: dict[str, Any] = {}
    for seed in sorted({r["seed"] for r in records}):
        fold_means = [r["dice_mean"] for r in records if r["seed"] == seed]
        per_seed[str(seed)] = {"folds": sorted(r["fold"] for r in records if r["seed"] == seed), "dice_over_folds": _mean_sd(fold_means)}
    seed_means = [v["dice_over_folds"]["mean"] for v in per_seed.values()]
    summary = {
        "metric": "mean per-case 3D Dice at the original resolution (both-empty cases excluded)",
        "folds": folds,
        "seeds": seeds,
        "per_fold": [{"seed": r["seed"], "fold": r["fold"], "dice_mean": r["dice_mean"], "cases": len(r["rows"])} for r in records],
        "per_seed": per_seed,
        "dice_over_seeds": _mean_sd([m for m in seed_means if m is not None]),
        "dice_over_all_cases": _mean_sd([row["dice"] for r in records for row in r["rows"]]),
        # The per-case spread as nnU-Net reports Task06 (median 0.784, 10th percentile 0.551), and
        # the pooled Dice on its own, labelled.
        "dice_per_case": dice_spread(row["dice"] for r in records for row in r["rows"] if row["dice"] is not None),
        "dice_pooled": _pooled(records),
        "dice_pooled_label": POOLED_DICE_LABEL,
        "failed": failures,
        "complete": not failures and len(records) == folds * seeds,
        "postprocessing": postprocessing,
    }
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CASE_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in records:
        for row in r["rows"]:
            w.writerow({k: row.get(k) for k in CASE_COLUMNS})
    write_text_atomic(out / CASES_CSV, buf.getvalue())
    write_text_atomic(out / SUMMARY_JSON, json.dumps(summary, indent=2, default=str))
    return summary


def _pooled(records: list[dict[str, Any]]) -> float | None:
    """Pooled hard Dice over every case of every fold and seed (None where a row lacks its volumes)."""
    from lungtumor.evaluation.evaluate import pooled_dice

    rows = [row for r in records for row in r["rows"]]
    if not rows or any(row.get(k) is None for row in rows for k in _EVALUATION_KEYS):  # records of an older version
        return None
    value = pooled_dice({"volume_overlap_ml": row["overlap_volume_ml"], "volume_pred_ml": row["pred_volume_ml"],
                         "volume_ref_ml": row["ref_volume_ml"]} for row in rows)
    return None if math.isnan(value) else value


def format_report(summary: dict[str, Any]) -> str:
    """A short human-readable table of the report."""
    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = ["seed fold  cases  mean Dice"]
    for r in summary["per_fold"]:
        lines.append(f"{r['seed']:>4} {r['fold']:>4}  {r['cases']:>5}  {f(r['dice_mean'])}")
    for seed, v in summary["per_seed"].items():
        d = v["dice_over_folds"]
        lines.append(f"seed {seed}: mean +- SD over {d['n']} folds  {f(d['mean'])} +- {f(d['sd'])}")
    d = summary["dice_over_seeds"]
    lines.append(f"over {d['n']} seeds: {f(d['mean'])} +- {f(d['sd'])}")
    spread = summary.get("dice_per_case")
    if spread:
        def g(x: Any) -> str:
            return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

        lines.append(f"Dice per case over all {spread['n']} cases: mean {g(spread['mean'])}, median {g(spread['median'])}, "
                     f"10th percentile {g(spread['q10'])}")
    if "dice_pooled" in summary:
        lines.append(f"Dice pooled: {f(summary['dice_pooled'])} ({summary['dice_pooled_label']})")
    post = summary.get("postprocessing") or {}
    if "dice_by_min_lesion_ml" in post:
        chosen = post["min_lesion_ml"] or 0.0
        dice_by = {float(k): v for k, v in post["dice_by_min_lesion_ml"].items()}
        lines.append(
            f"post-processing chosen on the folds' predictions: minimum lesion volume {chosen:g} ml "
            f"(mean Dice {f(dice_by.get(0.0))} -> {f(dice_by.get(float(chosen)))}); `predict` on this folder applies it"
        )
    elif post.get("error"):
        lines.append(f"post-processing not chosen: {post['error']}")
    if "min_lesion_score_choice" in post:
        by = post["min_lesion_score_choice"]
        lines.append(
            f"minimum lesion score chosen on the folds' predictions: {post['min_lesion_score'] or 0:.3f} (false-positive lesions "
            f"{by['false_positive_lesions']} -> {by['false_positive_lesions_at_min_lesion_score']}, found lesions "
            f"{by['lesions_found']}/{by['lesions_ref']} kept); `predict` on this folder applies it"
        )
    elif post.get("min_lesion_score_error"):
        lines.append(f"minimum lesion score not chosen: {post['min_lesion_score_error']}")
    if post.get("lesion_calibration"):
        from lungtumor.evaluation.calibration import format_reliability

        lines.extend(format_reliability(post["lesion_calibration"]))
    for fail in summary["failed"]:
        lines.append(f"FAILED seed {fail['seed']} fold {fail['fold']}: {fail['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
