"""FROC from probability maps: lesion sensitivity against false positives per scan (LUNA16's points and CPM).

Candidates at each threshold are the 26-connected components of
:mod:`lungtumor.lesions.components`, matched to the reference lesions by
:data:`lungtumor.evaluation.matching.MATCHING_RULE`. The curve's figure is
:func:`lungtumor.reporting.figures.froc_png`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from lungtumor.evaluation.matching import match_overlaps, overlaps
from lungtumor.lesions.components import CONNECTIVITY_STRUCTURE, label_cropped, labels_in_box

#: FROC: probability thresholds whose connected components are the lesion candidates.
FROC_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: FROC: false positives per scan at which the sensitivity is reported (LUNA16's seven points;
#: their mean is the competition performance metric, Setio et al., Med. Image Anal. 2017).
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FROC_METHOD = (
    "lesion candidates are the 26-connected components of probability >= t for each threshold t, matched to "
    "the reference lesions by the lesion matching rule; the sensitivity at a false-positive rate is the "
    "highest sensitivity among the thresholds whose false positives per scan do not exceed it (0 where none "
    "does: the curve starts at 0 sensitivity and 0 false positives, above every probability); cpm = mean "
    "sensitivity over the seven rates"
)


def froc_counts(prob: np.ndarray, ref: np.ndarray, thresholds: Sequence[float] = FROC_THRESHOLDS) -> dict[str, Any]:
    """Found reference lesions and false-positive candidates of one case at each threshold.

    Candidates at threshold t are the 26-connected components of ``prob >= t``, matched to the
    reference lesions by :data:`~lungtumor.evaluation.matching.MATCHING_RULE`. Components at a higher threshold lie inside
    those at the lowest, so the scan is labelled once, at the lowest threshold, and every other
    threshold only inside each of those components' boxes.

    Args:
        prob: probability map in [0, 1].
        ref: reference mask (bool), same shape.
        thresholds: probability thresholds.

    Returns:
        ``{"lesions_ref": int, "found": [int per threshold], "false_positives": [int per threshold]}``.
    """
    ref_inst = label_cropped(ref)
    ref_sizes = ref_inst.sizes
    base = label_cropped(prob >= min(thresholds))
    windows = []  # per lowest-threshold component: (its mask, its probabilities, the reference labels there)
    for index, obj in enumerate(base.objects):
        full = tuple(slice(o.start + b.start, o.stop + b.start) for o, b in zip(obj, base.box))
        windows.append((base.labels[obj] == index + 1, np.asarray(prob[full]), labels_in_box(ref_inst, full)))
    found, false_pos = [], []
    for t in thresholds:
        blocks, sizes = [np.zeros((ref_inst.count, 0), dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for component, p, r in windows:
            cand, n_cand = ndimage.label(component & (p >= t), structure=CONNECTIVITY_STRUCTURE)
            if n_cand:
                blocks.append(overlaps(cand, n_cand, r, ref_inst.count))
                sizes.append(np.bincount(cand.ravel(), minlength=n_cand + 1)[1:])
        match = match_overlaps(np.concatenate(blocks, axis=1), ref_sizes, np.concatenate(sizes))
        found.append(int(match.ref_found.sum()))
        false_pos.append(int(match.pred_false_positive.sum()))
    return {"lesions_ref": ref_inst.count, "found": found, "false_positives": false_pos}


def sensitivity_at_fp_rates(sensitivity: np.ndarray, fp_per_scan: np.ndarray, n_ref: int) -> list[float]:
    """The sensitivity at each of :data:`FROC_FP_RATES`: the highest among the operating points whose
    false positives per scan do not exceed the rate (0 where none does; NaN without reference lesions).
    Shared by the voxel-threshold FROC and the lesion-score FROC (``lesion_froc.py``)."""
    if not n_ref:
        return [float("nan")] * len(FROC_FP_RATES)
    return [float(sensitivity[fp_per_scan <= rate].max()) if np.any(fp_per_scan <= rate) else 0.0 for rate in FROC_FP_RATES]


def froc_summary(per_case: Sequence[dict[str, Any]], thresholds: Sequence[float] = FROC_THRESHOLDS) -> dict[str, Any]:
    """Pool :func:`froc_counts` over cases: the curve, the sensitivity at :data:`FROC_FP_RATES`, the CPM.

    Sensitivity pools lesions over cases (sum found / sum reference lesions); false positives
    are per scan (sum / cases). See :data:`FROC_METHOD`. NaN sensitivities without reference lesions.
    """
    n_cases, n_t = len(per_case), len(thresholds)
    n_ref = int(sum(c["lesions_ref"] for c in per_case))
    found = np.sum([c["found"] for c in per_case], axis=0) if per_case else np.zeros(n_t)
    false_pos = np.sum([c["false_positives"] for c in per_case], axis=0) if per_case else np.zeros(n_t)
    sensitivity = found / n_ref if n_ref else np.full(n_t, np.nan)
    fp_per_scan = false_pos / n_cases if n_cases else np.full(n_t, np.nan)
    at_rates = sensitivity_at_fp_rates(sensitivity, fp_per_scan, n_ref)
    return {
        "method": FROC_METHOD,
        "cases": n_cases,
        "lesions_ref": n_ref,
        "thresholds": [float(t) for t in thresholds],
        "sensitivity": [float(v) for v in sensitivity],
        "false_positives_per_scan": [float(v) for v in fp_per_scan],
        "fp_rates": [float(r) for r in FROC_FP_RATES],
        "sensitivity_at_fp_rates": at_rates,
        "cpm": float(np.mean(at_rates)) if n_ref else float("nan"),
    }

