"""Choosing the post-processing on validation cases, as nnU-Net does on its cross-validation.

A model trained for minutes leaves a few small false-positive components (a round vessel beside
the mediastinum looks like a juxtamediastinal nodule on a few slices). On a tumour-free case one
such component turns the case's Dice from undefined into 0, so the mean per-case Dice rests on
them. :func:`choose_min_lesion_ml` tries minimum lesion volumes on cases that took no part in the
final score (validation cases). A volume that removes a reference lesion the model found (on any
validation case) is never chosen, however much it helps the Dice: a few hundredths of mean Dice
are not worth a missed nodule. Of the rest, the one with the highest mean per-case Dice wins; ties
go to the smaller volume, which keeps more small lesions.

:func:`choose_min_lesion_score` chooses the operating point on the per-lesion score
(:data:`lungtumor.lesions.score.LESION_SCORE`, ``predict --min-lesion-score``) in the same spirit:
never drop a lesion found on the validation cases, and of the thresholds that drop none, remove as
many false positives as possible (:data:`MIN_LESION_SCORE_RULE`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.errors import ConfigError

__all__ = ["MIN_LESION_CANDIDATES_ML", "MIN_LESION_SCORE_RULE", "choose_min_lesion_ml", "choose_min_lesion_score", "collect_lesion_candidates"]

#: Minimum lesion volumes (ml) tried by default: none, then up to a sphere of about 12 mm.
MIN_LESION_CANDIDATES_ML: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def _case_counts(mask: np.ndarray, ref: np.ndarray, voxel_ml: float, values: list[float]) -> list[tuple[float, int, int, int]]:
    """Per candidate volume: (Dice, reference lesions found, false-positive lesions, reference lesions).

    The same definitions as :func:`~lungtumor.evaluation.metrics.dice` and
    :func:`~lungtumor.evaluation.metrics.lesion_detection` applied to the mask that
    :func:`~lungtumor.lesions.components.postprocess_mask` keeps, computed from one labelling of
    the case (cropped to the union of both masks) instead of one per candidate.
    """
    from scipy import ndimage

    from lungtumor.io.volume import foreground_box
    from lungtumor.lesions.components import CONNECTIVITY_STRUCTURE

    box = foreground_box(mask | ref)
    if box is None:
        return [(float("nan"), 0, 0, 0)] * len(values)
    m, r = mask[box], ref[box]
    labels, n = ndimage.label(m, structure=CONNECTIVITY_STRUCTURE)
    ref_labels, n_ref = ndimage.label(r, structure=CONNECTIVITY_STRUCTURE)
    both = m & r
    size = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    overlap = np.bincount(labels[both], minlength=n + 1)[1:]  # voxels of each component inside the reference
    pairs = np.unique(np.stack([ref_labels[both], labels[both]]), axis=1) if both.any() else np.zeros((2, 0), dtype=int)
    r_vox = int(np.count_nonzero(r))
    out = []
    for c in values:
        keep = size * float(voxel_ml) >= c if c > 0 else np.ones(n, dtype=bool)
        kept_vox = int(size[keep].sum())
        d = 2.0 * int(overlap[keep].sum()) / (kept_vox + r_vox) if kept_vox + r_vox else float("nan")
        found = len(np.unique(pairs[0][keep[pairs[1] - 1]])) if pairs.shape[1] else 0
        false_pos = int(np.count_nonzero(keep & (overlap == 0)))
        out.append((d, found, false_pos, int(n_ref)))
    return out


def choose_min_lesion_ml(
    pred_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    label_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    candidates: tuple[float, ...] = MIN_LESION_CANDIDATES_ML,
) -> dict[str, Any]:
    """The minimum lesion volume that maximises the mean per-case Dice of ``pred_dir``'s masks.

    Args:
        pred_dir: predicted masks of validation cases (as ``predict`` wrote them), or a list of
            such folders (e.g. every fold of a cross-validation).
        label_dir: their reference masks, same names (a list matching ``pred_dir``'s).
        candidates: volumes in ml to try (0 = keep every lesion).

    Returns:
        ``min_lesion_ml`` (None when 0 wins: pass it to ``predict --min-lesion-ml``),
        ``dice_by_min_lesion_ml`` (candidate -> mean per-case Dice, NaN when no case is scored),
        ``lesions_found_by_min_lesion_ml`` and ``false_positive_lesions_by_min_lesion_ml``
        (26-connected, any overlap; summed over the cases), ``lesions_ref``, ``cases``, and
        ``rule`` (how the choice was made).

    Raises:
        ConfigError: no candidates, or a negative or non-finite one; folder lists of different
            lengths.
        InputError, GeometryError: as :func:`~lungtumor.evaluation.evaluate.match_cases` and
            unreadable or mismatched masks.
    """
    from lungtumor.evaluation.evaluate import EVALUATION_GRID_FIX, match_cases
    from lungtumor.io.nifti import read_nifti
    from lungtumor.io.volume import require_same_grid
    from lungtumor.lesions.components import require_binary

    values = sorted({float(c) for c in candidates})
    if not values or any(not math.isfinite(c) or c < 0 for c in values):
        raise ConfigError(f"minimum lesion volumes {candidates!r}: need at least one volume in ml >= 0")
    preds = [pred_dir] if isinstance(pred_dir, (str, os.PathLike)) else list(pred_dir)
    refs = [label_dir] if isinstance(label_dir, (str, os.PathLike)) else list(label_dir)
    if len(preds) != len(refs):
        raise ConfigError(f"{len(preds)} prediction folder(s) but {len(refs)} label folder(s); pass one label folder per prediction folder")
    scores: dict[float, list[float]] = {c: [] for c in values}
    found = dict.fromkeys(values, 0)
    false_pos = dict.fromkeys(values, 0)
    n_ref = n_cases = 0
    for pdir, ldir in zip(preds, refs):
        for _name, pred_path, label_path in match_cases(pdir, ldir):
            pred, label = read_nifti(pred_path), read_nifti(label_path)
            require_same_grid(pred, label, f"prediction {pred_path}", f"label {label_path}", fix=EVALUATION_GRID_FIX)
            mask, ref = require_binary(pred, f"prediction {pred_path}"), require_binary(label, f"label {label_path}")
            n_cases += 1
            counts = _case_counts(mask, ref, pred.voxel_volume_ml, values)
            for c, (d, f, fp, _) in zip(values, counts):
                if math.isfinite(d):
                    scores[c].append(d)
                found[c] += f
                false_pos[c] += fp
            n_ref += counts[0][3]
    means = {c: (float(np.mean(v)) if v else float("nan")) for c, v in scores.items()}
    best = values[0]
    for c in values[1:]:  # ascending: a larger volume must keep every found lesion and score strictly higher
        if found[c] < found[values[0]] or not math.isfinite(means[c]):
            continue
        if not math.isfinite(means[best]) or means[c] > means[best] + 1e-12:
            best = c
    return {
        "min_lesion_ml": best if best > 0 else None,
        "dice_by_min_lesion_ml": means,
        "lesions_found_by_min_lesion_ml": found,
        "false_positive_lesions_by_min_lesion_ml": false_pos,
        "lesions_ref": n_ref,
        "cases": n_cases,
        "rule": "highest mean per-case Dice on the validation cases among the volumes that remove no found lesion; "
        "ties go to the smaller volume",
    }


#: How :func:`choose_min_lesion_score` chooses, in words (cv_summary.json, the demo's postprocessing.json).
MIN_LESION_SCORE_RULE = (
    "the lesions found on the validation cases with every predicted lesion kept must all stay found; among the "
    "thresholds that keep them, those removing the most false-positive lesions form an interval (a, b]: b is the "
    "highest threshold that drops no found lesion (the score of the lowest-scoring predicted lesion needed), a the "
    "highest score below b (a false positive or an extra prediction on a found lesion); the midpoint (a + b) / 2 is "
    "chosen, an equal margin on both sides for unseen cases; none (keep all) when nothing can be removed, or when "
    "no lesion was found on the validation cases (a threshold would then remove every prediction)"
)


def collect_lesion_candidates(
    pred_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    label_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    prob_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    min_lesion_ml: float | None = None,
) -> list[dict[str, Any]]:
    """The scored predicted lesions of every validation case (:func:`~lungtumor.evaluation.lesion_froc.lesion_candidates`).

    Args:
        pred_dir: predicted masks (as ``predict`` wrote them), or a list of such folders.
        label_dir: their reference masks, same names (a list matching ``pred_dir``'s).
        prob_dir: their probability maps (``NAME_prob.nii.gz`` or ``NAME.nii.gz``); default
            ``PRED_DIR/probabilities`` (where ``predict --probabilities`` writes them for a folder).
        min_lesion_ml: first drop lesions smaller than this (the volume chosen before the score,
            as ``predict`` applies both).

    Raises:
        ConfigError: folder lists of different lengths.
        InputError, GeometryError: missing or mismatched files.
    """
    from lungtumor.errors import InputError
    from lungtumor.evaluation.evaluate import EVALUATION_GRID_FIX, match_cases, probability_file
    from lungtumor.evaluation.lesion_froc import lesion_candidates
    from lungtumor.io.nifti import read_nifti
    from lungtumor.io.volume import require_same_grid
    from lungtumor.lesions.components import check_probabilities, postprocess_mask, require_binary

    preds = [pred_dir] if isinstance(pred_dir, (str, os.PathLike)) else list(pred_dir)
    refs = [label_dir] if isinstance(label_dir, (str, os.PathLike)) else list(label_dir)
    if prob_dir is None:
        probs: list[Any] = [Path(p) / "probabilities" for p in preds]
    else:
        probs = [prob_dir] if isinstance(prob_dir, (str, os.PathLike)) else list(prob_dir)
    if not len(preds) == len(refs) == len(probs):
        raise ConfigError(
            f"{len(preds)} prediction, {len(refs)} label and {len(probs)} probability folder(s); pass one of each per prediction folder"
        )
    out = []
    for pdir, ldir, qdir in zip(preds, refs, probs):
        for name, pred_path, label_path in match_cases(pdir, ldir):
            prob_path = probability_file(Path(qdir), name)
            if prob_path is None:
                raise InputError(
                    f"{qdir}: no probability map for {name}; predict the validation cases with --probabilities to score their lesions"
                )
            pred, label, prob = read_nifti(pred_path), read_nifti(label_path), read_nifti(prob_path, dtype=np.float32)
            require_same_grid(pred, label, f"prediction {pred_path}", f"label {label_path}", fix=EVALUATION_GRID_FIX)
            require_same_grid(prob, label, f"probability map {prob_path}", f"label {label_path}", fix=EVALUATION_GRID_FIX)
            mask, ref = require_binary(pred, f"prediction {pred_path}"), require_binary(label, f"label {label_path}")
            if min_lesion_ml:
                mask = postprocess_mask(mask, None, pred.voxel_volume_ml, min_lesion_ml).view(bool)
            out.append({"case": name, **lesion_candidates(mask, check_probabilities(prob), ref, pred.voxel_volume_ml)})
    return out


def choose_min_lesion_score(per_case: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The minimum lesion score chosen on validation cases by :data:`MIN_LESION_SCORE_RULE`.

    Args:
        per_case: :func:`collect_lesion_candidates` (or
            :func:`~lungtumor.evaluation.lesion_froc.lesion_candidates`) dicts, one per case.

    Returns:
        ``min_lesion_score`` (None = keep every lesion: pass it to ``predict --min-lesion-score``),
        ``score_interval`` ([a, b], None when nothing is chosen), ``lesions_ref``,
        ``lesions_found`` (with every lesion kept, and so at the chosen threshold too),
        ``false_positive_lesions`` and ``false_positive_lesions_at_min_lesion_score``,
        ``candidates``, ``cases``, ``score`` and ``rule``.
    """
    from lungtumor.evaluation.lesion_froc import score_curve
    from lungtumor.lesions.score import LESION_SCORE_TEXT

    thresholds, found, false_pos = score_curve(per_case)
    n_found = int(found[-1]) if thresholds.size else 0
    n_fp = int(false_pos[-1]) if thresholds.size else 0
    chosen: float | None = None
    interval: list[float] | None = None
    fp_after = n_fp
    if n_found:
        k = int(np.flatnonzero(found == n_found)[0])  # thresholds descending: the highest that keeps them all
        if k + 1 < thresholds.size:  # some candidate scores below b: removable
            b, a = float(thresholds[k]), float(thresholds[k + 1])
            chosen, interval, fp_after = (a + b) / 2.0, [a, b], int(false_pos[k])
    return {
        "min_lesion_score": chosen,
        "score_interval": interval,
        "lesions_ref": int(sum(c["lesions_ref"] for c in per_case)),
        "lesions_found": n_found,
        "false_positive_lesions": n_fp,
        "false_positive_lesions_at_min_lesion_score": fp_after,
        "candidates": int(sum(len(c["scores"]) for c in per_case)),
        "cases": len(per_case),
        "score": LESION_SCORE_TEXT,
        "rule": MIN_LESION_SCORE_RULE,
    }
