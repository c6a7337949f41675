"""Lesion-level FROC and CPM from per-lesion scores (LUNA16's figure), exact over every score.

The candidates of a case are its predicted lesions: the 26-connected components of the predicted
mask as written (after post-processing), each scored from the probability map by
:data:`lungtumor.lesions.score.LESION_SCORE`. At a score threshold t the candidates scoring
``>= t`` are kept and matched to the reference lesions by
:data:`lungtumor.evaluation.matching.MATCHING_RULE`; t runs over every distinct candidate score
(no threshold grid), so the curve is exact. This differs from :mod:`lungtumor.evaluation.froc`,
whose candidates are the components of ``probability >= t`` on a fixed grid of voxel thresholds
(the candidates themselves change with t there; here they are fixed and only their score moves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lungtumor.evaluation.froc import FROC_FP_RATES, sensitivity_at_fp_rates
from lungtumor.evaluation.matching import match_overlaps, overlaps
from lungtumor.lesions.components import label_cropped, labels_in_box
from lungtumor.lesions.score import LESION_SCORE, LESION_SCORE_TEXT, instance_scores

#: How the lesion FROC counts, in words (summary.json).
LESION_FROC_METHOD = (
    "candidates are the predicted lesions (26-connected components of the post-processed predicted mask), each "
    "scored from the probability map; for every distinct candidate score t (exact, no threshold grid) the "
    "candidates scoring >= t are matched to the reference lesions by the lesion matching rule, as LUNA16 counts: "
    "a reference lesion hit by several candidates is found once and the extra candidates on it are neither hits "
    "nor false positives; a candidate overlapping no reference voxel is a false positive; sensitivity is pooled "
    "over the lesions of all cases, false positives are per scan; the sensitivity at a false-positive rate is the "
    "highest sensitivity among the thresholds whose false positives per scan do not exceed it (0 where none "
    "does; no interpolation, as the voxel-threshold FROC); cpm = mean sensitivity over the seven rates"
)


def lesion_candidates(pred: np.ndarray, prob: np.ndarray, ref: np.ndarray, voxel_ml: float, kind: str = LESION_SCORE) -> dict[str, Any]:
    """The scored candidates of one case and the reference lesions they find at every cut.

    Args:
        pred: predicted mask (bool), post-processed as written.
        prob: probability map, same shape.
        ref: reference mask (bool), same shape.
        voxel_ml: the volume of one voxel (ml).
        kind: the score (:data:`~lungtumor.lesions.score.LESION_SCORE_KINDS`).

    Returns:
        ``lesions_ref``; ``scores`` (descending), ``true`` (the candidate overlaps a reference
        lesion, i.e. is not a false positive) and ``volume_ml``, one per candidate in that order;
        ``found_by_rank``: reference lesions found when the first k candidates are kept, k = 0..n.
    """
    pred_inst, ref_inst = label_cropped(pred), label_cropped(ref)
    scores = instance_scores(pred_inst, prob, voxel_ml, kind)
    # Overlaps only occur inside the reference lesions' box.
    overlap = overlaps(labels_in_box(pred_inst, ref_inst.box), pred_inst.count, ref_inst.labels, ref_inst.count)
    order = np.argsort(-scores, kind="stable")
    true = overlap.any(axis=0)[order] if ref_inst.count else np.zeros(pred_inst.count, dtype=bool)
    found_by_rank = [0]
    for k in range(1, pred_inst.count + 1):
        if not true[k - 1]:  # a false positive never changes which lesions are found
            found_by_rank.append(found_by_rank[-1])
            continue
        keep = order[:k]
        match = match_overlaps(overlap[:, keep], ref_inst.sizes, pred_inst.sizes[keep])
        found_by_rank.append(int(match.ref_found.sum()))
    return {
        "lesions_ref": ref_inst.count,
        "scores": scores[order].tolist(),
        "true": true.tolist(),
        "volume_ml": (pred_inst.sizes[order] * float(voxel_ml)).tolist(),
        "found_by_rank": found_by_rank,
    }


def score_curve(per_case: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled counts at every distinct candidate score, from :func:`lesion_candidates` dicts.

    Returns:
        ``(thresholds, found, false_positives)``: thresholds descending (a candidate is kept when
        its score is ``>= t``), reference lesions found and false-positive candidates summed over
        the cases at each.
    """
    all_scores = np.concatenate([np.asarray(c["scores"], dtype=np.float64) for c in per_case] + [np.zeros(0)])
    thresholds = np.unique(all_scores)[::-1]
    found = np.zeros(thresholds.size, dtype=np.int64)
    false_pos = np.zeros(thresholds.size, dtype=np.int64)
    for case in per_case:
        s = np.asarray(case["scores"], dtype=np.float64)
        if s.size == 0:
            continue
        kept = np.searchsorted(-s, -thresholds, side="right")  # candidates with score >= t (s descending)
        fp_by_rank = np.concatenate([[0], np.cumsum(~np.asarray(case["true"], dtype=bool))])
        found += np.asarray(case["found_by_rank"], dtype=np.int64)[kept]
        false_pos += fp_by_rank[kept]
    return thresholds, found, false_pos


def lesion_froc_summary(per_case: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool :func:`lesion_candidates` over cases: the exact FROC, the sensitivity at LUNA16's rates, the CPM.

    See :data:`LESION_FROC_METHOD`; NaN sensitivities without reference lesions.
    """
    n_cases = len(per_case)
    n_ref = int(sum(c["lesions_ref"] for c in per_case))
    thresholds, found, false_pos = score_curve(per_case)
    sensitivity = found / n_ref if n_ref else np.full(thresholds.size, np.nan)
    fp_per_scan = false_pos / n_cases if n_cases else np.full(thresholds.size, np.nan)
    at_rates = sensitivity_at_fp_rates(sensitivity, fp_per_scan, n_ref)
    return {
        "method": LESION_FROC_METHOD,
        "score": LESION_SCORE_TEXT,
        "cases": n_cases,
        "lesions_ref": n_ref,
        "candidates": int(sum(len(c["scores"]) for c in per_case)),
        "thresholds": [float(t) for t in thresholds],
        "sensitivity": [float(v) for v in sensitivity],
        "false_positives_per_scan": [float(v) for v in fp_per_scan],
        "fp_rates": [float(r) for r in FROC_FP_RATES],
        "sensitivity_at_fp_rates": at_rates,
        "cpm": float(np.mean(at_rates)) if n_ref else float("nan"),
    }
