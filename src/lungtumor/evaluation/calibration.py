"""Calibration of the per-lesion scores: a reliability table and the expected calibration error.

A lesion score is calibrated when, of the predicted lesions scoring about s, a fraction s are true
lesions. The table bins the candidates' scores (equal widths over [0, 1]) and gives, per bin, the
count, the fraction that are true lesions and the mean score; the expected calibration error (ECE,
Naeini et al., AAAI 2015; Guo et al., ICML 2017) is the count-weighted mean of
``|fraction true - mean score|`` over the non-empty bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lungtumor.errors import ConfigError, InputError

#: Equal-width score bins of the reliability table.
RELIABILITY_BINS = 10
#: What a "true" lesion is, in words (summary.json).
TRUE_LESION_RULE = "a predicted lesion is true when it overlaps a reference lesion by at least one voxel (not a false positive)"


def reliability_table(scores: Sequence[float] | np.ndarray, true: Sequence[bool] | np.ndarray, bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Reliability table and expected calibration error of scored candidates.

    Bin i of B holds the scores with ``floor(score * B) == i`` (so [i/B, (i+1)/B)), the last bin
    also holding 1.0.

    Args:
        scores: one score in [0, 1] per predicted lesion.
        true: whether each is a true lesion (see :data:`TRUE_LESION_RULE`).
        bins: number of equal-width bins, a whole number >= 1.

    Returns:
        ``bins``: one dict per bin (``score_min``, ``score_max``, ``count``, ``fraction_true``,
        ``mean_score``; NaN fraction and mean for an empty bin), ``candidates``, ``true_lesions``,
        ``ece`` (NaN without candidates) and ``definition``.

    Raises:
        ConfigError: ``bins`` is not a whole number >= 1.
        InputError: the lists differ in length, or a score is not in [0, 1].
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ConfigError(f"reliability bins {bins!r}: must be a whole number >= 1")
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=bool).ravel()
    if s.shape != t.shape:
        raise InputError(f"{s.size} scores but {t.size} true/false labels; pass one label per score")
    if s.size and not (np.all(np.isfinite(s)) and s.min() >= 0.0 and s.max() <= 1.0):
        raise InputError(f"lesion scores must lie in [0, 1], found [{s.min():g}, {s.max():g}]")
    index = np.minimum((s * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    n_true = np.bincount(index, weights=t.astype(np.float64), minlength=bins)
    total = np.bincount(index, weights=s, minlength=bins)
    rows = []
    ece = 0.0
    for i in range(bins):
        n = int(count[i])
        frac = float(n_true[i] / n) if n else math.nan
        mean = float(total[i] / n) if n else math.nan
        if n:
            ece += n / s.size * abs(frac - mean)
        rows.append({"score_min": i / bins, "score_max": (i + 1) / bins, "count": n, "fraction_true": frac, "mean_score": mean})
    return {
        "bins": rows,
        "candidates": int(s.size),
        "true_lesions": int(t.sum()),
        "ece": float(ece) if s.size else math.nan,
        "definition": f"{bins} equal-width score bins over [0, 1]; {TRUE_LESION_RULE}; "
        "ece = sum over bins of count / candidates * |fraction true - mean score|",
    }


def candidates_reliability(per_case: Sequence[dict[str, Any]], bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """:func:`reliability_table` of every candidate of :func:`~lungtumor.evaluation.lesion_froc.lesion_candidates` dicts."""
    scores = [v for c in per_case for v in c["scores"]]
    true = [v for c in per_case for v in c["true"]]
    return reliability_table(scores, true, bins)


def format_reliability(table: dict[str, Any]) -> list[str]:
    """The non-empty bins as text lines (for the printed summaries)."""
    lines = [f"lesion score calibration over {table['candidates']} predicted lesions: ECE {_fmt(table['ece'])}"]
    for row in table["bins"]:
        if row["count"]:
            lines.append(
                f"  score {row['score_min']:.1f}-{row['score_max']:.1f}: {row['count']} lesions, "
                f"{_fmt(row['fraction_true'])} true, mean score {_fmt(row['mean_score'])}"
            )
    return lines


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
