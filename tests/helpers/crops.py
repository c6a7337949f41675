"""A lesion crop pair (``<id>_ct.nii.gz`` + ``<id>_label.nii.gz``) like the LIDC nodule crops, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers import affine_for
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume

#: x, y, z voxel size (mm): the LIDC crops' kind.
CROP_SPACING = (0.75, 0.75, 1.25)


def write_crop(folder: Path, crop_id: str, *, label_value: int = 1, affine: np.ndarray | None = None, lesion_hu: int = 20) -> None:
    """A 40 x 40 x 8 crop in lung (-850 HU) with a 12 x 12 x 4 voxel lesion in the middle (LPS, as LIDC)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ct = rng.normal(-850, 20, (40, 40, 8)).astype(np.int16)
    m = np.zeros(ct.shape, np.uint8)
    m[14:26, 14:26, 2:6] = label_value
    ct[m > 0] = lesion_hu
    aff = affine if affine is not None else affine_for("LPS", spacing=CROP_SPACING)
    write_nifti(Volume(ct, aff), folder / f"{crop_id}_ct.nii.gz")
    write_nifti(Volume(m, aff), folder / f"{crop_id}_label.nii.gz")
