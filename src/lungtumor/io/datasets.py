"""Dataset discovery: the cases (image, label) of a dataset folder."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lungtumor.errors import InputError
from lungtumor.io.nifti import is_nifti, nifti_stem

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# MSD folder -> cases


@dataclass(frozen=True)
class CaseFiles:
    """One training case of an MSD-layout folder."""

    case_id: str
    image: Path
    label: Path | None


def _visible_niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith("._") and not p.name.startswith("."))


def find_cases(task_dir: str | os.PathLike[str], *, require_labels: bool = True) -> list[CaseFiles]:
    """List the cases of an MSD-layout folder (``imagesTr/`` + ``labelsTr/``).

    ``._*`` files (macOS resource forks in the MSD archive) are skipped; ``dataset.json`` is
    optional. A missing label is reported per case by :func:`check_case` so that
    ``skip_bad`` can skip it.
    """
    root = Path(task_dir)
    images = root / "imagesTr"
    if not root.is_dir():
        raise InputError(f"{root}: folder not found; pass an MSD task folder with imagesTr/ and labelsTr/")
    if not images.is_dir():
        raise InputError(f"{root}: no imagesTr/ folder; expected the MSD layout imagesTr/ + labelsTr/")
    labels = root / "labelsTr"
    cases = []
    for img in _visible_niftis(images):
        cid = nifti_stem(img)
        lbl = None
        for suffix in (".nii.gz", ".nii"):
            cand = labels / f"{cid}{suffix}"
            if cand.exists():
                lbl = cand
                break
        cases.append(CaseFiles(cid, img, lbl))
    if not cases:
        raise InputError(f"{images}: no .nii/.nii.gz files; expected lung_XXX.nii.gz volumes")
    if require_labels and not labels.is_dir():
        raise InputError(f"{root}: no labelsTr/ folder; training data needs one label file per image")
    return cases
