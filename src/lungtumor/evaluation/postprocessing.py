"""Choosing the post-processing on validation cases, as nnU-Net does on its cross-validation.

A model trained for minutes leaves a few small false-positive components (a round vessel beside
the mediastinum looks like a juxtamediastinal nodule on a few slices). On a tumour-free case one
such component turns the case's Dice from undefined into 0, so the mean per-case Dice rests on
them. :func:`choose_min_lesion_ml` tries minimum lesion volumes on cases that took no part in the
final score (validation cases) and returns the one with the highest mean per-case Dice; a case
whose true lesion a candidate removes scores 0 and so votes against it. Ties go to the smaller
volume, which keeps more small lesions.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from lungtumor.errors import ConfigError

__all__ = ["MIN_LESION_CANDIDATES_ML", "choose_min_lesion_ml"]

#: Minimum lesion volumes (ml) tried by default: none, then up to a sphere of about 12 mm.
MIN_LESION_CANDIDATES_ML: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def choose_min_lesion_ml(
    pred_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str],
    candidates: tuple[float, ...] = MIN_LESION_CANDIDATES_ML,
) -> dict[str, Any]:
    """The minimum lesion volume that maximises the mean per-case Dice of ``pred_dir``'s masks.

    Args:
        pred_dir: predicted masks of validation cases (as ``predict`` wrote them).
        label_dir: their reference masks, same names.
        candidates: volumes in ml to try (0 = keep every lesion).

    Returns:
        ``min_lesion_ml`` (None when 0 wins: pass it to ``predict --min-lesion-ml``),
        ``dice_by_min_lesion_ml`` (candidate -> mean per-case Dice, NaN when no case is scored),
        ``cases``, and ``rule`` (how the choice was made).

    Raises:
        ConfigError: no candidates, or a negative or non-finite one.
        InputError, GeometryError: as :func:`~lungtumor.evaluation.evaluate.match_cases` and
            unreadable or mismatched masks.
    """
    from lungtumor.evaluation.evaluate import _binary, _check_same_grid, match_cases
    from lungtumor.evaluation.metrics import dice
    from lungtumor.inference.segment import postprocess_mask
    from lungtumor.io.nifti import read_nifti

    values = sorted({float(c) for c in candidates})
    if not values or any(not math.isfinite(c) or c < 0 for c in values):
        raise ConfigError(f"minimum lesion volumes {candidates!r}: need at least one volume in ml >= 0")
    scores: dict[float, list[float]] = {c: [] for c in values}
    pairs = match_cases(pred_dir, label_dir)
    for name, pred_path, label_path in pairs:
        pred, label = read_nifti(pred_path), read_nifti(label_path)
        _check_same_grid(pred, label, f"prediction {name}", f"label {name}")
        mask, ref = _binary(pred, f"prediction {pred_path}"), _binary(label, f"label {label_path}")
        for c in values:
            kept = postprocess_mask(mask.view(np.uint8), None, pred.voxel_volume_ml, c) if c > 0 else mask
            d = dice(kept, ref)
            if math.isfinite(d):
                scores[c].append(d)
    means = {c: (float(np.mean(v)) if v else float("nan")) for c, v in scores.items()}
    best = values[0]
    for c in values[1:]:  # ascending: a larger volume must score strictly higher
        if math.isfinite(means[c]) and (not math.isfinite(means[best]) or means[c] > means[best] + 1e-12):
            best = c
    return {
        "min_lesion_ml": best if best > 0 else None,
        "dice_by_min_lesion_ml": means,
        "cases": len(pairs),
        "rule": "highest mean per-case Dice on the validation cases; ties go to the smaller volume",
    }
