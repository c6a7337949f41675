"""Evaluate a folder of predicted masks against a folder of reference masks.

Files are matched by name (``lung_001.nii.gz`` with ``lung_001.nii.gz``; ``.nii`` and
``.nii.gz`` compare equal, ``._*`` files are ignored). Each case is scored in 3D at its own
resolution and voxel spacing (no resampling: a prediction must be on its label's grid); see
:mod:`lungtumor.metrics` for the definitions and edge cases. The per-case table goes to
``metrics.csv`` and the summary to ``summary.json``, both written atomically.

In ``summary.json`` an undefined value (NaN, e.g. the mean of no defined Dice) is ``null`` and
an infinite distance is the string ``"inf"``; ``metrics.csv`` writes ``nan`` and ``inf``.

Lesion-wise results use the instances and the one-to-one matching rule of
:mod:`lungtumor.evaluation.matching` (26-connected components; ``MATCHING_RULE``): the per-case
``lesions_*`` columns, sensitivity and false positives per scan by size band of the longest axial
diameter (``lesion_size_bands``), and, with probability maps, two FROC curves: the voxel-threshold
FROC (``froc`` in ``summary.json`` and ``froc.png``: candidates are the components of
``probability >= t`` on a fixed grid of t) and the lesion-level FROC from per-lesion scores
(``lesion_froc``: candidates are the predicted lesions, each scored by
:data:`lungtumor.lesions.score.LESION_SCORE`, exact over every score; :mod:`lungtumor.evaluation.lesion_froc`),
each with LUNA16's CPM, and the reliability table of those scores (``lesion_calibration``,
:mod:`lungtumor.evaluation.calibration`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import atomic_output, refuse_overwriting_inputs, write_text_atomic
from lungtumor.errors import InputError
from lungtumor.evaluation.calibration import candidates_reliability, format_reliability
from lungtumor.evaluation.froc import froc_counts, froc_summary
from lungtumor.evaluation.lesion_froc import lesion_candidates, lesion_froc_summary
from lungtumor.evaluation.matching import MATCHING_RULE, SIZE_MEASURE, lesion_matching, size_band_summary
from lungtumor.evaluation.metrics import (
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_RESAMPLES,
    SURFACE_DICE_DEFINITION,
    bootstrap_ci,
    dice,
    hd95,
    pooled_dice_from_terms,
    soft_dice_terms,
    surface_dice,
    volume_ml,
)
from lungtumor.io.nifti import list_niftis, nifti_stem, read_nifti
from lungtumor.io.readers import check_voxels
from lungtumor.io.volume import Volume, require_same_grid
from lungtumor.lesions.components import CONNECTIVITY, require_binary
from lungtumor.lesions.export import json_safe
from lungtumor.reporting.figures import froc_png

#: Default normalised-surface-Dice tolerance, mm.
DEFAULT_TOLERANCE_MM = 2.0
#: A probability map for case NAME may be called NAME + this suffix (``NAME_prob.nii.gz``).
PROB_SUFFIX = "_prob"
#: Output file names inside ``out_dir``.
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
FROC_PNG = "froc.png"
#: Per-case columns, in CSV order.
CSV_COLUMNS = (
    "case",
    "dice",
    "surface_dice",
    "hd95_mm",
    "volume_ref_ml",
    "volume_pred_ml",
    "volume_abs_diff_ml",
    "volume_overlap_ml",
    "lesions_ref",
    "lesions_found",
    "false_positive_lesions",
)
#: How the seed's number is labelled wherever it appears.
POOLED_SOFT_DICE_LABEL = "pooled (seed's definition), not comparable with per-case Dice"
#: How the pooled hard Dice is labelled wherever it appears.
POOLED_DICE_LABEL = "pooled over all cases' voxels (2 x sum overlap ml / sum (pred + ref) ml), not a per-case mean"
#: The low percentile of the per-case Dice spread (nnU-Net's Task06 reports: median 0.784, 10th percentile 0.551).
DICE_LOW_PERCENTILE = 10
#: Names listed in full in an error message before "... and N more".
_MAX_NAMES_IN_MESSAGE = 20
#: Significant digits for floats in metrics.csv (float32 distances carry about 7).
_CSV_SIGNIFICANT_DIGITS = 6
#: Slack for probabilities written as float16/float32 slightly outside [0, 1].
_PROB_RANGE_SLACK = 1e-3


@dataclass
class EvaluationResult:
    """Per-case rows and the summary of one evaluation.

    Attributes:
        rows: one dict per case with the keys of :data:`CSV_COLUMNS` (sorted by case name), plus
            the per-lesion lists of :func:`lungtumor.evaluation.matching.lesion_matching` (not in the CSV).
        summary: aggregate numbers (see :func:`summarize`).
        files: paths written (``metrics.csv``, ``summary.json``); empty when not written.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Finding and matching files


def _names(names: Iterable[str]) -> str:
    """A short, sorted list of names for an error message."""
    items = sorted(names)
    shown = ", ".join(items[:_MAX_NAMES_IN_MESSAGE])
    more = len(items) - _MAX_NAMES_IN_MESSAGE
    return shown + (f" ... and {more} more" if more > 0 else "")


def nifti_cases(folder: str | os.PathLike[str], role: str) -> dict[str, Path]:
    """NIfTI files in ``folder`` keyed by name without suffix; skips ``._*`` and hidden files.

    Args:
        folder: folder to list (not recursive).
        role: what the folder holds, for messages ("prediction", "label", ...).

    Raises:
        InputError: the folder is missing, or two files share a name (``a.nii`` and
            ``a.nii.gz``).
    """
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{path}: {role} folder not found; pass a folder of .nii/.nii.gz files")
    return {nifti_stem(entry): entry for entry in list_niftis(path)}


def probability_file(prob_dir: Path, name: str) -> Path | None:
    """``NAME_prob.nii[.gz]`` if present, else ``NAME.nii[.gz]``, else None.

    ``NAME_prob`` is tried first because a folder that holds both the masks and the
    probabilities (the prediction folder) has ``NAME.nii.gz`` as the mask.
    """
    for stem in (name + PROB_SUFFIX, name):
        for suffix in (".nii.gz", ".nii"):
            candidate = prob_dir / (stem + suffix)
            if candidate.is_file():
                return candidate
    return None


def match_cases(pred_dir: str | os.PathLike[str], label_dir: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """Pair predictions with labels by name.

    A prediction-folder file ``NAME_prob`` is taken for a probability map, not a mask, when
    ``NAME`` is also a prediction and no label is called ``NAME_prob``.

    Returns:
        ``[(name, prediction_path, label_path), ...]`` sorted by name.

    Raises:
        InputError: a folder is missing or empty, or a prediction has no label or a label has
            no prediction (all such names are listed).
    """
    preds = nifti_cases(pred_dir, "prediction")
    labels = nifti_cases(label_dir, "label")
    preds = {
        name: path
        for name, path in preds.items()
        if not (name.endswith(PROB_SUFFIX) and name[: -len(PROB_SUFFIX)] in preds and name not in labels)
    }
    if not preds:
        raise InputError(f"{pred_dir}: no .nii/.nii.gz prediction files found; run predict into this folder first")
    if not labels:
        raise InputError(f"{label_dir}: no .nii/.nii.gz label files found; pass the folder of reference masks")
    no_label = set(preds) - set(labels)
    no_pred = set(labels) - set(preds)
    if no_label or no_pred:
        parts = []
        if no_label:
            parts.append(
                f"{len(no_label)} prediction(s) in {pred_dir} have no label in {label_dir}: {_names(no_label)}"
            )
        if no_pred:
            parts.append(f"{len(no_pred)} label(s) in {label_dir} have no prediction in {pred_dir}: {_names(no_pred)}")
        raise InputError(
            "; ".join(parts) + "; every case needs one file of the same name (without .nii/.nii.gz) in both folders"
        )
    return [(name, preds[name], labels[name]) for name in sorted(preds)]


# --------------------------------------------------------------------------------------------
# Reading and checking


#: The fix named when a prediction or probability map is not on its label's grid.
EVALUATION_GRID_FIX = "evaluation never resamples: predict on the label's own CT so the mask has its exact shape and affine"


# --------------------------------------------------------------------------------------------
# Per case and summary


def evaluate_case(name: str, pred: Volume, label: Volume, tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict[str, Any]:
    """Metrics of one case at its own resolution (see :mod:`lungtumor.metrics`).

    Args:
        name: case name for the ``case`` column.
        pred: predicted mask (0/1) on the label's grid.
        label: reference mask (0/1).
        tolerance_mm: surface Dice tolerance, mm.

    Returns:
        A row with the keys of :data:`CSV_COLUMNS`.

    Raises:
        GeometryError: the grids differ. InputError: a mask is not binary, or has no voxels.
    """
    check_voxels(label, "label")  # a zero-sized pair would score as an empty case: a row of nothing
    check_voxels(pred, "prediction")
    require_same_grid(pred, label, "prediction", "label", fix=EVALUATION_GRID_FIX)
    p, r = require_binary(pred, "prediction"), require_binary(label, "label")
    spacing = label.spacing_mm
    vol_ref, vol_pred = volume_ml(r, spacing), volume_ml(p, spacing)
    vol_overlap = volume_ml(np.logical_and(p, r), spacing)
    return {
        "case": name,
        "dice": dice(p, r),
        "surface_dice": surface_dice(p, r, spacing, tolerance_mm),
        "hd95_mm": hd95(p, r, spacing),
        "volume_ref_ml": vol_ref,
        "volume_pred_ml": vol_pred,
        "volume_abs_diff_ml": abs(vol_pred - vol_ref),
        "volume_overlap_ml": vol_overlap,
        **lesion_matching(p, r, label.affine),
    }


def _defined(values: Iterable[float]) -> np.ndarray:
    """The values that are not NaN (inf stays), as float64."""
    v = np.asarray(list(values), dtype=np.float64)
    return v[~np.isnan(v)]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


def dice_spread(dices: Iterable[float]) -> dict[str, float | int]:
    """The spread of per-case Dice: mean, median and 10th percentile over the defined cases.

    NaN (both masks empty) is left out; all three are NaN when no case is defined. The percentile is
    numpy's default (linear interpolation between order statistics).

    Args:
        dices: one Dice per case.

    Returns:
        ``{"n", "mean", "median", "q10"}``.
    """
    v = _defined(dices)
    q10 = float(np.percentile(v, DICE_LOW_PERCENTILE)) if v.size else float("nan")
    return {"n": int(v.size), "mean": _mean(v), "median": _median(v), "q10": q10}


def pooled_dice(rows: Iterable[dict[str, Any]]) -> float:
    """Hard Dice pooled over every case: 2 x sum of overlap volumes / sum of predicted + reference volumes.

    Volumes (ml), not voxel counts, so that cases of different spacing weigh by their size in the
    body. Large lesions dominate it; report it beside the per-case spread, labelled "pooled"
    (:data:`POOLED_DICE_LABEL`). NaN when every mask is empty.

    Args:
        rows: per-case rows with ``volume_overlap_ml``, ``volume_pred_ml`` and ``volume_ref_ml``.
    """
    overlap = total = 0.0
    for r in rows:
        overlap += float(r["volume_overlap_ml"])
        total += float(r["volume_pred_ml"]) + float(r["volume_ref_ml"])
    return 2.0 * overlap / total if total > 0 else float("nan")


def summarize(rows: list[dict[str, Any]], tolerance_mm: float) -> dict[str, Any]:
    """Aggregate per-case rows.

    Dice, surface Dice and HD95 statistics are over the cases where the metric is defined
    (both-empty cases are counted in ``cases_both_empty`` and left out); HD95's median keeps
    the inf of one-empty cases. Lesion sensitivity pools lesions over cases (sum found / sum
    reference lesions); false positives are per scan (sum / cases).
    """
    dices = _defined(r["dice"] for r in rows)
    spread = dice_spread(dices)
    lo, hi = bootstrap_ci(dices)
    n_cases = len(rows)
    lesions_ref = sum(int(r["lesions_ref"]) for r in rows)
    lesions_found = sum(int(r["lesions_found"]) for r in rows)
    false_pos = sum(int(r["false_positive_lesions"]) for r in rows)
    empty_ref = [r["volume_ref_ml"] == 0 for r in rows]
    empty_pred = [r["volume_pred_ml"] == 0 for r in rows]
    return {
        "cases": n_cases,
        "cases_both_empty": sum(a and b for a, b in zip(empty_ref, empty_pred)),
        "cases_one_empty": sum(a != b for a, b in zip(empty_ref, empty_pred)),
        "dice_cases": int(dices.size),
        "dice_mean": _mean(dices),
        "dice_median": spread["median"],
        "dice_q10": spread["q10"],
        "dice_ci95": [lo, hi],
        "dice_ci95_method": f"percentile bootstrap of the mean over cases, {BOOTSTRAP_RESAMPLES} resamples, "
        f"level {BOOTSTRAP_LEVEL}, seed 0",
        "dice_pooled": pooled_dice(rows),
        "dice_pooled_label": POOLED_DICE_LABEL,
        "surface_dice_mean": _mean(_defined(r["surface_dice"] for r in rows)),
        "tolerance_mm": float(tolerance_mm),
        "surface_dice_definition": SURFACE_DICE_DEFINITION,
        "hd95_median_mm": _median(_defined(r["hd95_mm"] for r in rows)),
        "volume_abs_diff_ml_mean": _mean(_defined(r["volume_abs_diff_ml"] for r in rows)),
        "lesions_ref": lesions_ref,
        "lesions_found": lesions_found,
        "lesion_sensitivity": lesions_found / lesions_ref if lesions_ref else float("nan"),
        "false_positive_lesions": false_pos,
        "false_positive_lesions_per_scan": false_pos / n_cases if n_cases else float("nan"),
        "lesion_matching": {"rule": MATCHING_RULE, "connectivity": CONNECTIVITY, "size": SIZE_MEASURE},
        "lesion_size_bands": size_band_summary(rows),
    }


# --------------------------------------------------------------------------------------------
# The folder evaluation


def _progress(items: list[Any], enabled: bool, description: str) -> Iterator[Any]:
    """Iterate with a rich progress bar on stderr (stdout stays free for the table)."""
    if not enabled:
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def evaluate_folder(
    pred_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    prob_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Score every prediction in ``pred_dir`` against the label of the same name.

    Args:
        pred_dir: folder of predicted masks (0/1 NIfTI).
        label_dir: folder of reference masks with the same names.
        out_dir: where ``metrics.csv`` and ``summary.json`` go (created if needed); None
            writes nothing.
        tolerance_mm: normalised surface Dice tolerance, mm.
        prob_dir: optional folder of float probability maps, ``NAME_prob.nii.gz`` or
            ``NAME.nii.gz`` per case, on the label's grid; adds the seed's pooled soft Dice to
            the summary (``dice_pooled_soft_seed``), labelled as not comparable, the
            voxel-threshold FROC curve (``froc`` in the summary, ``froc.png`` in ``out_dir``),
            the lesion-level FROC from per-lesion scores (``lesion_froc``) and their reliability
            table (``lesion_calibration``).
        progress: show a progress bar on stderr.

    Returns:
        The per-case rows and the summary.

    Raises:
        InputError: missing folder, unmatched names, unreadable or non-binary mask, missing or
            out-of-range probability map.
        GeometryError: a prediction (or probability map) is not on its label's grid.
    """
    pairs = match_cases(pred_dir, label_dir)
    prob_files: dict[str, Path] = {}
    if prob_dir is not None:
        prob_root = Path(prob_dir)
        if not prob_root.is_dir():
            raise InputError(
                f"{prob_root}: probability folder not found; pass the folder predict wrote probabilities to"
            )
        found = {name: probability_file(prob_root, name) for name, _, _ in pairs}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise InputError(
                f"{prob_root}: no probability map for {len(missing)} case(s): {_names(missing)}; "
                f"expected NAME{PROB_SUFFIX}.nii.gz or NAME.nii.gz for each, or leave out the probability folder"
            )
        prob_files = {name: path for name, path in found.items() if path is not None}
    if out_dir is not None:
        refuse_overwriting_inputs(
            [Path(out_dir) / name for name in (METRICS_CSV, SUMMARY_JSON, FROC_PNG)],
            [path for _, pred, label in pairs for path in (pred, label)] + list(prob_files.values()),
            command="lungtumor evaluate",
        )

    rows: list[dict[str, Any]] = []
    froc_cases: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    pooled_terms = np.zeros(3)  # sum p*y, sum p, sum y over every case
    for name, pred_path, label_path in _progress(pairs, progress, "evaluating"):
        label = read_nifti(label_path)
        pred = read_nifti(pred_path)
        rows.append(evaluate_case(name, pred, label, tolerance_mm))
        if prob_files:
            terms, froc, scored = _prob_terms(prob_files[name], label, pred)
            pooled_terms += terms
            froc_cases.append(froc)
            candidates.append(scored)

    summary = summarize(rows, tolerance_mm)
    if prob_files:
        summary["dice_pooled_soft_seed"] = pooled_dice_from_terms(*pooled_terms)
        summary["dice_pooled_soft_seed_label"] = POOLED_SOFT_DICE_LABEL
        summary["froc"] = froc_summary(froc_cases)
        summary["lesion_froc"] = lesion_froc_summary(candidates)
        summary["lesion_calibration"] = candidates_reliability(candidates)
    result = EvaluationResult(rows=rows, summary=summary)
    if out_dir is not None:
        result.files = write_results(result, out_dir)
    return result


def check_distinct_folders(
    pred_dir: str | os.PathLike[str], label_dir: str | os.PathLike[str], prob_dir: str | os.PathLike[str] | None = None
) -> None:
    """Refuse the label folder given as the predictions or as the probability maps (``lungtumor
    evaluate``): every label would be scored against itself (Dice 1, a perfect FROC), a table
    that looks like a result and measures nothing.

    Raises:
        InputError: naming the folder and the fix.
    """
    pairs = [(pred_dir, "the prediction folder", "every label would be scored against itself (Dice 1)")]
    if prob_dir is not None:
        pairs.append((prob_dir, "--prob-dir", "every label would be scored as its own probability map"))
    b = Path(label_dir)
    for folder, role, why in pairs:
        a = Path(folder)
        try:
            same = a.resolve() == b.resolve() or (a.is_dir() and b.is_dir() and os.path.samefile(a, b))
        except OSError:
            same = False
        if same:
            raise InputError(f"{folder}: {role} is the label folder {label_dir}; {why}: pass the folder predict wrote")


def _prob_terms(path: Path, label: Volume, pred: Volume) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """(sum p*y, sum p, sum y) of one probability map against its label, its voxel-threshold FROC
    counts, and the predicted lesions scored from it (:func:`~lungtumor.evaluation.lesion_froc.lesion_candidates`)."""
    prob = read_nifti(path, dtype=np.float32)
    require_same_grid(prob, label, "probability map", "label", fix=EVALUATION_GRID_FIX)
    lo, hi = float(prob.array.min()), float(prob.array.max())
    if lo < -_PROB_RANGE_SLACK or hi > 1.0 + _PROB_RANGE_SLACK:
        raise InputError(
            f"{path}: probabilities must lie in [0, 1], found [{lo:g}, {hi:g}]; "
            "pass sigmoid probabilities, not logits or masks scaled to 255"
        )
    ref = require_binary(label, "label")
    mask = require_binary(pred, "prediction")
    scored = lesion_candidates(mask, prob.array, ref, label.voxel_volume_ml)
    return np.asarray(soft_dice_terms(prob.array, ref)), froc_counts(prob.array, ref), scored


# --------------------------------------------------------------------------------------------
# Output


def _atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder + os.replace."""
    return write_text_atomic(path, text)


def _csv_value(value: Any) -> Any:
    """Floats with 6 significant digits; NaN -> 'nan', inf -> 'inf'."""
    if isinstance(value, float):
        return format(value, f".{_CSV_SIGNIFICANT_DIGITS}g")
    return value


def write_results(result: EvaluationResult, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``metrics.csv``, ``summary.json`` and, with an FROC, ``froc.png`` into ``out_dir`` (atomically, each)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; pass a folder for the evaluation results")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: _csv_value(row[k]) for k in CSV_COLUMNS})
    csv_path = _atomic_write_text(out / METRICS_CSV, buffer.getvalue())
    summary_text = json.dumps(json_safe(result.summary), indent=2, allow_nan=False) + "\n"
    froc = froc_png(result.summary["froc"]) if "froc" in result.summary else None  # rendered before any write
    json_path = _atomic_write_text(out / SUMMARY_JSON, summary_text)
    written = [csv_path, json_path]
    if froc is not None:
        with atomic_output(out / FROC_PNG) as tmp:
            tmp.write_bytes(froc)
        written.append(out / FROC_PNG)
    return written


def _fmt(value: Any, digits: int = 3) -> str:
    """Human formatting for the table: '-' for undefined, 'inf' for infinite."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def format_table(result: EvaluationResult, width: int = 120) -> str:
    """Per-case table and summary as plain text (rich layout, no colour codes).

    Undefined values (both masks empty) show as ``-``.
    """
    from rich.console import Console
    from rich.table import Table

    s = result.summary
    tol = _fmt(s.get("tolerance_mm"), 1)
    table = Table(title="Per-case metrics (3D, original resolution)")
    headers = ("case", "Dice", f"NSD@{tol}mm", "HD95 mm", "vol ref ml", "vol pred ml", "lesions found/ref", "FP lesions")
    for header in headers:
        table.add_column(header, justify="left" if header == "case" else "right")
    for row in result.rows:
        table.add_row(
            row["case"],
            _fmt(row["dice"]),
            _fmt(row["surface_dice"]),
            _fmt(row["hd95_mm"], 1),
            _fmt(row["volume_ref_ml"], 1),
            _fmt(row["volume_pred_ml"], 1),
            f"{row['lesions_found']}/{row['lesions_ref']}",
            str(row["false_positive_lesions"]),
        )
    lo, hi = s["dice_ci95"]
    lines = [
        f"cases: {s['cases']} (both masks empty: {s['cases_both_empty']}, excluded from Dice; "
        f"one mask empty: {s['cases_one_empty']})",
        f"Dice per case: mean {_fmt(s['dice_mean'])} (95% CI {_fmt(lo)}-{_fmt(hi)}), median {_fmt(s['dice_median'])}, "
        f"10th percentile {_fmt(s['dice_q10'])}",
        f"Dice pooled: {_fmt(s['dice_pooled'])} ({s['dice_pooled_label']})",
        f"surface Dice @ {tol} mm: mean {_fmt(s['surface_dice_mean'])}; HD95 median {_fmt(s['hd95_median_mm'], 1)} mm; "
        f"volume |difference| mean {_fmt(s['volume_abs_diff_ml_mean'], 1)} ml",
        f"lesions: sensitivity {_fmt(s['lesion_sensitivity'])} ({s['lesions_found']}/{s['lesions_ref']}), "
        f"false positives per scan {_fmt(s['false_positive_lesions_per_scan'], 2)}",
    ]
    bands = s.get("lesion_size_bands") or []
    for b in bands:
        lines.append(
            f"  longest axial diameter {b['band']}: sensitivity {_fmt(b['sensitivity'])} "
            f"({b['lesions_found']}/{b['lesions_ref']}), false positives per scan {_fmt(b['false_positives_per_scan'], 2)}"
        )
    if "dice_pooled_soft_seed" in s:
        lines.append(f"soft Dice {s['dice_pooled_soft_seed_label']}: {_fmt(s['dice_pooled_soft_seed'], 4)}")
    if "froc" in s:
        froc = s["froc"]
        points = ", ".join(f"{_fmt(r, 3).rstrip('0').rstrip('.')}: {_fmt(v)}" for r, v in zip(froc["fp_rates"], froc["sensitivity_at_fp_rates"]))
        lines.append(f"FROC (voxel thresholds) sensitivity at FP/scan {points}; CPM {_fmt(froc['cpm'])}")
    if "lesion_froc" in s:
        lf = s["lesion_froc"]
        points = ", ".join(f"{_fmt(r, 3).rstrip('0').rstrip('.')}: {_fmt(v)}" for r, v in zip(lf["fp_rates"], lf["sensitivity_at_fp_rates"]))
        lines.append(
            f"lesion FROC (per-lesion scores, {lf['candidates']} predicted lesions) sensitivity at FP/scan {points}; CPM {_fmt(lf['cpm'])}"
        )
    if "lesion_calibration" in s:
        lines.extend(format_reliability(s["lesion_calibration"]))
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(table)
    for line in lines:
        console.print(line, highlight=False, markup=False)
    return console.file.getvalue()  # type: ignore[attr-defined]

