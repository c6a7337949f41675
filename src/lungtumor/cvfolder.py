"""A ``lungtumor cv`` folder as its readers see it: which folds finished, their checkpoints, the
post-processing the cross-validation chose.

``cv`` writes the folder; ``predict CV_FOLDER`` reads it (an ensemble of the finished folds, with the
minimum lesion volume chosen on their predictions). Both import this module, so neither imports the
other for the folder's layout.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from lungtumor.errors import CheckpointError

log = logging.getLogger(__name__)

#: Written last in ``seed-<s>/fold-<k>/``, after training, prediction and scoring: the fold is finished.
DONE_FILE = "done.json"
#: The cross-validation's report (``postprocessing`` holds the chosen minimum lesion volume).
SUMMARY_JSON = "cv_summary.json"
#: The recorded split and options; a re-run with others is refused.
CONFIG_JSON = "cv_config.json"


def fold_number(path: Path) -> tuple[int, int]:
    seed, fold = path.parent.name, path.name
    try:
        return int(seed.split("-", 1)[1]), int(fold.split("-", 1)[1])
    except (IndexError, ValueError):
        return (1 << 30, 1 << 30)


def is_cv_folder(path: Any) -> bool:
    """True when ``path`` is a folder written by ``lungtumor cv`` (its record, report or fold folders)."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        return False
    root = Path(path)
    return (root / CONFIG_JSON).is_file() or (root / SUMMARY_JSON).is_file() or any(root.glob("seed-*/fold-*"))


def finished_fold_checkpoints(cv_dir: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints of a cross-validation folder's finished folds, for an ensemble.

    A fold is finished when its ``done.json`` exists (written last, after training, prediction and
    scoring); its model is ``seed-<s>/fold-<k>/run/last.ckpt``, the checkpoint it was scored with.
    A fold killed or failed half-way (a run, no ``done.json``) is left out with a warning naming it.

    Raises:
        CheckpointError: no fold is finished (one line: the folder and the fix).
    """
    root = Path(cv_dir)
    finished: list[Path] = []
    unfinished: list[str] = []
    for fold_dir in sorted((d for d in root.glob("seed-*/fold-*") if d.is_dir()), key=fold_number):
        ckpt = fold_dir / "run" / "last.ckpt"
        if (fold_dir / DONE_FILE).is_file() and ckpt.is_file():
            finished.append(ckpt)
        else:
            unfinished.append(str(fold_dir.relative_to(root)))
    if not finished:
        raise CheckpointError(
            f"{root}: no finished fold (no seed-*/fold-*/{DONE_FILE}); finish the cross-validation (re-run `lungtumor cv` "
            "with its options) or pass one run's checkpoint"
        )
    if unfinished:
        log.warning(
            "%s: %d unfinished fold(s) left out of the ensemble (%s); re-run `lungtumor cv` with its options to finish them",
            root, len(unfinished), ", ".join(unfinished),
        )
    return finished


def ensemble_checkpoints(checkpoint: Any) -> Any:
    """``checkpoint`` as given, or for a ``lungtumor cv`` folder its finished folds' checkpoints
    (:func:`finished_fold_checkpoints`): what ``predict`` loads as its model(s)."""
    return finished_fold_checkpoints(checkpoint) if is_cv_folder(checkpoint) else checkpoint


def _chosen_postprocessing(checkpoint: Any, key: str, what: str, valid: Any) -> float | None:
    """``cv_summary.json``'s ``postprocessing[key]`` when ``checkpoint`` is a ``lungtumor cv`` folder
    and the value passes ``valid``; else None (an unreadable summary is a warning, not an error)."""
    if not isinstance(checkpoint, (str, os.PathLike)) or not Path(checkpoint).is_dir():
        return None
    summary = Path(checkpoint) / SUMMARY_JSON
    if not summary.is_file():
        return None
    try:
        value = (json.loads(summary.read_text()).get("postprocessing") or {}).get(key)
    except (OSError, ValueError, AttributeError):
        log.warning("%s: unreadable; no %s taken from it", summary, what)
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and valid(value):
        return float(value)
    return None


def cv_min_lesion_ml(checkpoint: Any) -> float | None:
    """The minimum lesion volume that a ``lungtumor cv`` folder chose on its folds' predictions
    (``cv_summary.json``), when ``checkpoint`` is such a folder; else None."""
    value = _chosen_postprocessing(checkpoint, "min_lesion_ml", "minimum lesion volume", lambda v: v > 0)
    if value is not None:
        log.info("minimum lesion volume %g ml, chosen by the cross-validation (%s); --min-lesion-ml 0 keeps every lesion", value, checkpoint)
    return value


def cv_min_lesion_score(checkpoint: Any) -> float | None:
    """The minimum lesion score that a ``lungtumor cv`` folder chose on its folds' predictions
    (``cv_summary.json``), when ``checkpoint`` is such a folder; else None."""
    value = _chosen_postprocessing(checkpoint, "min_lesion_score", "minimum lesion score", lambda v: 0 < v <= 1)
    if value is not None:
        log.info("minimum lesion score %g, chosen by the cross-validation (%s); --min-lesion-score 0 keeps every lesion", value, checkpoint)
    return value
