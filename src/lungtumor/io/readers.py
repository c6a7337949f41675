"""One entry point for reading a CT: a NIfTI file or a DICOM series folder."""

from __future__ import annotations

import os
from pathlib import Path

from lungtumor.errors import ConfigError, InputError
from lungtumor.io import prefetch
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
        ahead = prefetch.take(p)  # read in a thread while predict imported torch (io/prefetch.py)
        return ahead if ahead is not None else read_nifti(p)
    raise InputError(f"{p}: unknown input type; pass a .nii/.nii.gz file or a DICOM series folder")


def check_voxels(volume: Volume, role: str = "volume") -> Volume:
    """``volume`` itself, or an InputError naming its file when it has no voxels (a zero-sized axis)."""
    if min(volume.shape, default=0) < 1:
        raise InputError(
            f"{volume.meta.get('path', role)}: the {role} has shape {volume.shape} (no voxels along an axis); pass a {role} with voxels"
        )
    return volume


def check_ct(volume: Volume, role: str = "CT") -> Volume:
    """``volume`` itself when it can be a CT: it has voxels, and they are not all 0 and 1.

    A CT in HU holds air near -1000 and soft tissue near 0-100; a volume of only 0 and 1 is a
    label or a mask given in the CT's place (the arguments swapped, or a mask passed twice), and
    would be drawn and measured as a black image.

    Raises:
        InputError: naming the file, what it looks like and the fix.
    """
    import numpy as np

    check_voxels(volume, role)
    array = volume.array
    lo, hi = array.min(), array.max()
    if lo >= 0 and hi <= 1 and (array.dtype.kind in "biu" or bool(np.all((array == 0) | (array == 1)))):
        raise InputError(
            f"{volume.meta.get('path', role)}: holds only the values 0 and 1, so it looks like a label or mask, not a {role} in HU; "
            f"pass the {role} (.nii.gz or DICOM series folder) and the mask in their own places"
        )
    return volume
