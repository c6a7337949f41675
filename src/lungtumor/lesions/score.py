"""One confidence score per predicted lesion, from the probability map, and the operating point on it.

A predicted lesion is a 26-connected component of the (post-processed) mask
(:mod:`lungtumor.lesions.components`); its score is computed from the probabilities inside it by
:data:`LESION_SCORE`. The same function scores the lesions everywhere: the lesion table
(``score`` in lesions.csv/json and the HTML report), ``predict --min-lesion-score`` (lesions
scoring below it are removed from the mask), and the lesion-level FROC, the calibration table and
the operating point chosen on validation cases (:mod:`lungtumor.evaluation`).

A checkpoint that carries a second-stage re-scorer (:mod:`lungtumor.model.rescorer`) replaces the
score of ``predict`` (its lesion table and ``--min-lesion-score``) with the re-scorer's probability for
lesions that fit in its patch (:data:`RESCORER_SCORE_TEXT`), and carries the operating point that
``predict`` then applies by default; such scores travel as a map of the lesions (:func:`score_map`), so the
functions here read them unchanged. ``evaluate`` and ``lesions``, which see files, keep ``prob_max``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungtumor.config import check_min_lesion_score
from lungtumor.errors import ConfigError
from lungtumor.lesions.components import LabelledInstances, label_cropped

#: The scores that can be computed, in words. ``prob_max_size`` weighs the maximum by the lesion's
#: volume v (ml): prob_max * v / (v + :data:`SIZE_HALF_ML`), so a one-voxel speck never scores high.
LESION_SCORE_KINDS = {
    "prob_max": "the highest probability inside the lesion",
    "prob_mean": "the mean probability inside the lesion",
    "prob_max_size": "the highest probability inside the lesion times v / (v + 0.05 ml), v its volume in ml",
}
#: ``prob_max_size``: the volume (ml) at which the size factor is 1/2 (a sphere of about 4.6 mm).
SIZE_HALF_ML = 0.05

#: The per-lesion score: the **maximum probability inside the lesion** (``prob_max``).
#:
#: Measured with ``benchmarks/bench_lesion_score.py`` (BENCHMARKS.md, "Per-lesion score"): a demo
#: model (lung preset, width 16, 18 epochs on 32 SMALL phantom cases, flip TTA; 268 s on 2 busy
#: cores) predicted phantom cases it never saw, keeping every predicted lesion (lung-region
#: post-processing only); each lesion was scored three ways and the exact lesion FROC computed:
#:
#: ============== ================================ ================================
#: score          24 cases (seed 1), 56 candidates 32 cases (seed 7), 89 candidates
#:                CPM / AUC / ECE                  CPM / AUC / ECE
#: ============== ================================ ================================
#: prob_max       0.901 / 0.910 / 0.230            0.927 / 0.972 / 0.410
#: prob_mean      0.905 / 0.913 / 0.203            0.927 / 0.970 / 0.321
#: prob_max_size  0.897 / 0.880 / 0.175            0.927 / 0.970 / 0.334
#: ============== ================================ ================================
#:
#: (AUC: true against false-positive candidates; ECE: :mod:`lungtumor.evaluation.calibration`.)
#: The three rank the candidates alike: the CPMs differ by at most 0.008, under one lesion of 36
#: (0.028), and the AUCs by at most 0.03 with no consistent winner. The measurement does not
#: favour another score, so the maximum stays: the simplest, the peak probability that LUNA16-style
#: detectors report per candidate, and for a mask thresholded at t it lies in (t, 1]. The mean is
#: somewhat less over-confident (lower ECE), but none of the three is calibrated (ECE 0.2-0.4 on
#: these phantoms), so the score ranks lesions and is not a probability of being a tumour.
LESION_SCORE = "prob_max"
#: The score's definition in words (lesions.json, summary.json).
LESION_SCORE_TEXT = f"{LESION_SCORE}: {LESION_SCORE_KINDS[LESION_SCORE]} (from the probability map; in [0, 1])"
#: The score's definition when the checkpoint carries a second-stage re-scorer (:mod:`lungtumor.model.rescorer`).
RESCORER_SCORE_TEXT = (
    "rescorer: for a lesion whose longest axial diameter fits in the re-scorer's patch (about 30 mm), the second-stage "
    "3D re-scorer's probability for that patch centred on the lesion's centroid (mean over the ensemble's re-scorers); "
    "for a longer lesion, prob_max: the U-Net's highest probability inside it (in [0, 1]; prob_max is also given beside it)"
)


def score_map(inst: LabelledInstances, scores: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` holding each instance's score on its voxels (0 elsewhere).

    Scored with ``prob_max`` (:func:`instance_scores`), the map gives back exactly ``scores``: the way
    per-lesion scores that do not come from the probability map (a re-scorer's) travel through the
    functions that read scores from a map (``--min-lesion-score``, the lesion table, the lesion FROC).
    """
    out = np.zeros(shape, dtype=np.float32)
    if inst.count:
        values = np.concatenate([[0.0], np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)]).astype(np.float32)
        out[inst.box] = values[inst.labels]
    return out


def _check_kind(kind: str) -> None:
    if kind not in LESION_SCORE_KINDS:
        raise ConfigError(f"lesion score {kind!r}: expected one of {', '.join(LESION_SCORE_KINDS)}")


def instance_scores(inst: LabelledInstances, prob: np.ndarray, voxel_ml: float, kind: str = LESION_SCORE) -> np.ndarray:
    """The score of every instance of ``inst`` (by id 1..count) from the probabilities ``prob``.

    Args:
        inst: instances of a mask (:func:`~lungtumor.lesions.components.label_cropped`).
        prob: probability map, the mask's full shape (any float dtype; clipped to [0, 1]).
        voxel_ml: the volume of one voxel (for ``prob_max_size``).
        kind: one of :data:`LESION_SCORE_KINDS`.

    Returns:
        (count,) float64 scores in [0, 1].
    """
    _check_kind(kind)
    if inst.count == 0:
        return np.zeros(0, dtype=np.float64)
    p = np.asarray(prob[inst.box])
    index = np.arange(1, inst.count + 1)
    if kind == "prob_mean":
        scores = np.asarray(ndimage.mean(p, inst.labels, index), dtype=np.float64)
    else:
        scores = np.asarray(ndimage.maximum(p, inst.labels, index), dtype=np.float64)
        if kind == "prob_max_size":
            volume = inst.sizes.astype(np.float64) * float(voxel_ml)
            scores = scores * volume / (volume + SIZE_HALF_ML)
    return np.clip(scores, 0.0, 1.0)


def remove_low_score_lesions(mask: np.ndarray, prob: np.ndarray, min_score: float, voxel_ml: float, kind: str = LESION_SCORE) -> np.ndarray:
    """The mask without its lesions (26-connected components) whose score is below ``min_score``.

    Args:
        mask: binary mask (any dtype, non-zero = lesion).
        prob: probability map of the same shape.
        min_score: lesions scoring ``>= min_score`` stay (0 keeps all).
        voxel_ml: the volume of one voxel.
        kind: one of :data:`LESION_SCORE_KINDS`.

    Returns:
        A new uint8 {0, 1} array of the mask's shape.
    """
    check_min_lesion_score(min_score)
    fg = np.asarray(mask) != 0
    inst = label_cropped(fg)
    if inst.count == 0 or not min_score:
        return fg.astype(np.uint8)
    return keep_scored_lesions(fg, inst, instance_scores(inst, prob, voxel_ml, kind), min_score)


def keep_scored_lesions(fg: np.ndarray, inst: LabelledInstances, scores: np.ndarray, min_score: float) -> np.ndarray:
    """The boolean mask ``fg`` as uint8 {0, 1} without the instances of ``inst`` (its labelling) whose
    ``scores`` (by id 1..count) are below ``min_score``."""
    out = np.asarray(fg).astype(np.uint8)
    if inst.count == 0 or not min_score:
        return out
    drop = np.concatenate([[False], np.asarray(scores, dtype=np.float64) < float(min_score)])
    out[inst.box][drop[inst.labels]] = 0
    return out
