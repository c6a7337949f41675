"""One entry point for reading a CT: a NIfTI file or a DICOM series folder."""

from __future__ import annotations

import os
from pathlib import Path

from lungtumor.errors import ConfigError, InputError
from lungtumor.io.nifti import is_nifti, read_nifti
from lungtumor.io.volume import Volume


def read_volume(path: str | os.PathLike[str], *, series_uid: str | None = None) -> Volume:
    """Read a CT from a NIfTI file or a DICOM series folder (HU, RAS affine)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: not found; pass a .nii/.nii.gz file or a DICOM series folder")
    if p.is_dir():
        from lungtumor.io.dicom import read_dicom_series

        return read_dicom_series(p, series_uid=series_uid)
    if is_nifti(p):
        if series_uid is not None:
            raise ConfigError(f"{p}: --series-uid chooses a series in a DICOM folder, but this input is a NIfTI file; drop --series-uid")
        return read_nifti(p)
    raise InputError(f"{p}: unknown input type; pass a .nii/.nii.gz file or a DICOM series folder")
