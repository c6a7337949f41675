"""Lesion-wise evaluation: predicted instances matched one-to-one to reference lesions, and size bands.

Instances are the 26-connected components of :mod:`lungtumor.lesions.components`; a lesion's size
is its RECIST 1.1 longest axial diameter (:mod:`lungtumor.lesions.recist`). The rule is
:data:`MATCHING_RULE`; FROC uses the same rule (:mod:`lungtumor.evaluation.froc`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from lungtumor.lesions.components import label_cropped, labels_in_box
from lungtumor.lesions.frame import slice_frame
from lungtumor.lesions.recist import (
    DIAMETER_CONVENTION,
    SIZE_BAND_EDGES_MM,
    SIZE_BAND_NAMES,
    instance_diameters_mm,
    size_band_index,
)

#: The matching rule, in words (summary.json).
MATCHING_RULE = (
    "a reference lesion is found when it is matched one-to-one to a predicted instance that overlaps it by "
    "at least one voxel (the matching maximises the number of found lesions, then the total IoU), so one "
    "prediction covering two lesions finds one of them; a predicted instance overlapping no reference voxel "
    "is a false positive; a further prediction on an already-found lesion is neither"
)


@dataclass(frozen=True)
class InstanceMatch:
    """One-to-one matching of predicted to reference instances (see :data:`MATCHING_RULE`).

    Attributes:
        ref_found: (n_ref,) bool, reference instance id-1 was found.
        pred_false_positive: (n_pred,) bool, predicted instance id-1 overlaps no reference voxel.
        pairs: matched (reference id, predicted id) pairs.
    """

    ref_found: np.ndarray
    pred_false_positive: np.ndarray
    pairs: list[tuple[int, int]]


def match_instances(pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int) -> InstanceMatch:
    """Match predicted instances to reference lesions by :data:`MATCHING_RULE`.

    Args:
        pred_labels: predicted instance labels 0..n_pred.
        n_pred: number of predicted instances.
        ref_labels: reference instance labels 0..n_ref, same shape.
        n_ref: number of reference lesions.

    Returns:
        The matching.
    """
    if n_pred == 0 or n_ref == 0:
        return InstanceMatch(np.zeros(n_ref, dtype=bool), np.ones(n_pred, dtype=bool), [])
    ref_sizes = np.bincount(ref_labels.ravel().astype(np.int64), minlength=n_ref + 1)[1:]
    pred_sizes = np.bincount(pred_labels.ravel().astype(np.int64), minlength=n_pred + 1)[1:]
    return match_overlaps(overlaps(pred_labels, n_pred, ref_labels, n_ref), ref_sizes, pred_sizes)


def overlaps(pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int) -> np.ndarray:
    """(n_ref, n_pred) voxel counts of every reference x predicted instance intersection."""
    both = (pred_labels != 0) & (ref_labels != 0)
    r = ref_labels[both].astype(np.int64)
    p = pred_labels[both].astype(np.int64)
    return np.bincount(r * (n_pred + 1) + p, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)[1:, 1:]


def match_overlaps(overlap: np.ndarray, ref_sizes: np.ndarray, pred_sizes: np.ndarray) -> InstanceMatch:
    """:data:`MATCHING_RULE` on an (n_ref, n_pred) overlap matrix and the instances' voxel counts."""
    n_ref, n_pred = overlap.shape
    ref_found = np.zeros(n_ref, dtype=bool)
    pred_fp = ~overlap.any(axis=0)
    if not overlap.any():
        return InstanceMatch(ref_found, pred_fp, [])
    iou = overlap / (ref_sizes[:, None] + pred_sizes[None, :] - overlap)
    # Any match outweighs every IoU sum (IoU <= 1 per pair): the count of found lesions first.
    weight = np.where(overlap > 0, (min(n_ref, n_pred) + 1) + iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = overlap[rows, cols] > 0
    ref_found[rows[keep]] = True
    pairs = [(int(a) + 1, int(b) + 1) for a, b in zip(rows[keep], cols[keep])]
    return InstanceMatch(ref_found, pred_fp, pairs)



SIZE_MEASURE = (
    "longest axial diameter (RECIST 1.1) of the reference lesion for sensitivity and of the predicted instance "
    f"for false positives; bands half-open [0, 10), [10, 20), [20, 30), [30, inf) mm; {DIAMETER_CONVENTION}"
)


def lesion_matching(pred: np.ndarray, ref: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Lesion-wise counts of one case: instances, :data:`MATCHING_RULE`, longest diameters.

    Args:
        pred: predicted mask (bool).
        ref: reference mask (bool), same shape.
        affine: the grid's voxel -> RAS+ affine (for the longest axial diameters).

    Returns:
        ``lesions_ref``, ``lesions_found``, ``false_positive_lesions`` and the per-instance lists
        ``ref_lesion_diameters_mm``, ``ref_lesion_found``, ``pred_lesion_diameters_mm``,
        ``pred_lesion_false_positive`` (by instance id).
    """
    pred_inst, ref_inst = label_cropped(pred), label_cropped(ref)
    # Overlaps only occur inside the reference lesions' box.
    overlap = overlaps(labels_in_box(pred_inst, ref_inst.box), pred_inst.count, ref_inst.labels, ref_inst.count)
    match = match_overlaps(overlap, ref_inst.sizes, pred_inst.sizes)
    frame = slice_frame(affine) if pred_inst.count or ref_inst.count else None
    return {
        "lesions_ref": ref_inst.count,
        "lesions_found": int(match.ref_found.sum()),
        "false_positive_lesions": int(match.pred_false_positive.sum()),
        "ref_lesion_diameters_mm": instance_diameters_mm(ref_inst, frame).tolist() if frame else [],
        "ref_lesion_found": match.ref_found.tolist(),
        "pred_lesion_diameters_mm": instance_diameters_mm(pred_inst, frame).tolist() if frame else [],
        "pred_lesion_false_positive": match.pred_false_positive.tolist(),
    }


def size_band_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sensitivity and false positives per scan in each size band, pooled over the cases of ``rows``.

    Args:
        rows: one :func:`lesion_matching` dict (or a row holding its keys) per case.

    Returns:
        One dict per band of :data:`SIZE_BAND_NAMES`: band, diameter_min_mm, diameter_max_mm,
        lesions_ref, lesions_found, sensitivity (NaN without reference lesions in the band),
        false_positive_lesions, false_positives_per_scan.
    """
    def joined(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate([np.asarray(r.get(key, []), dtype=dtype) for r in rows] + [np.empty(0, dtype=dtype)])

    n_cases = len(rows)
    ref_band, ref_found = size_band_index(joined("ref_lesion_diameters_mm", np.float64)), joined("ref_lesion_found", bool)
    pred_band, pred_fp = size_band_index(joined("pred_lesion_diameters_mm", np.float64)), joined("pred_lesion_false_positive", bool)
    edges = (0.0, *SIZE_BAND_EDGES_MM, math.inf)
    bands = []
    for index, name in enumerate(SIZE_BAND_NAMES):
        in_ref = ref_band == index
        n_ref, n_found = int(in_ref.sum()), int((ref_found & in_ref).sum())
        n_fp = int((pred_fp & (pred_band == index)).sum())
        bands.append(
            {
                "band": name,
                "diameter_min_mm": edges[index],
                "diameter_max_mm": edges[index + 1],
                "lesions_ref": n_ref,
                "lesions_found": n_found,
                "sensitivity": n_found / n_ref if n_ref else float("nan"),
                "false_positive_lesions": n_fp,
                "false_positives_per_scan": n_fp / n_cases if n_cases else float("nan"),
            }
        )
    return bands

