"""``lungtumor import-dicom``: a DICOM CT series (and one RTSTRUCT ROI) -> NIfTI on the same grid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.errors import ConfigError
from lungtumor.io.dicom import read_dicom_series
from lungtumor.io.nifti import is_nifti, write_nifti
from lungtumor.io.rtstruct import FILL_PILLOW, FILL_RULES, rasterize_rtstruct

# --------------------------------------------------------------------------------------------
# Import


def import_dicom(
    dicom_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    rtstruct: str | os.PathLike[str] | None = None,
    roi: str | None = None,
    label_out: str | os.PathLike[str] | None = None,
    series_uid: str | None = None,
    fill_rule: str = FILL_PILLOW,
) -> dict[str, Any]:
    """Convert a DICOM CT series (and optionally one RTSTRUCT ROI) to NIfTI.

    Args:
        dicom_dir: folder holding the CT series.
        out_path: CT output ``.nii.gz`` (int16 HU; float32 only when the rescale is non-integer).
        rtstruct: RTSTRUCT file; ``roi`` and ``label_out`` must be given with it.
        roi: ROI name to rasterise.
        label_out: label output ``.nii.gz`` (uint8 {0, 1}, same grid as the CT).
        series_uid: SeriesInstanceUID when the folder holds several CT series.
        fill_rule: contour fill rule, see :func:`rasterize_rtstruct`.

    Returns:
        dict with ``ct_path``, ``label_path`` (or None), ``series_uid``, ``shape``, ``spacing_mm``,
        ``dtype``, ``label_voxels`` and ``label_volume_ml`` (None without a label).

    Raises:
        ConfigError: only some of rtstruct/roi/label_out given, or outputs not .nii/.nii.gz.
        InputError, GeometryError: from reading the series or the RTSTRUCT.
    """
    label_args = {"rtstruct": rtstruct, "roi": roi, "label_out": label_out}
    given = [name for name, value in label_args.items() if value is not None]
    if given and len(given) != len(label_args):
        missing = [name for name in label_args if name not in given]
        raise ConfigError(
            f"{', '.join(given)} given without {', '.join(missing)}; pass rtstruct, roi and label_out together "
            "(--rtstruct, --roi, --label-out) or none of them"
        )
    for name, value in (("out_path", out_path), ("label_out", label_out)):
        if value is not None and not is_nifti(value):
            raise ConfigError(f"{name}={value}: output must end in .nii or .nii.gz")
    if fill_rule not in FILL_RULES:
        raise ConfigError(f"unknown fill rule {fill_rule!r}; expected one of {', '.join(FILL_RULES)}")
    if label_out is not None and Path(label_out).resolve() == Path(out_path).resolve():
        raise ConfigError(f"label_out and out_path are both {out_path}; write the label to another file")

    ct = read_dicom_series(dicom_dir, series_uid=series_uid)
    label = rasterize_rtstruct(rtstruct, ct, roi, rule=fill_rule) if rtstruct is not None and roi is not None else None
    ct_path = write_nifti(ct, out_path)
    result: dict[str, Any] = {
        "ct_path": str(ct_path),
        "label_path": None,
        "series_uid": ct.meta["series_uid"],
        "shape": list(ct.shape),
        "spacing_mm": list(ct.spacing_mm),
        "dtype": str(ct.array.dtype),
        "label_voxels": None,
        "label_volume_ml": None,
        "fill_rule": fill_rule if label_out is not None else None,
    }
    if label is not None and label_out is not None:
        result["label_path"] = str(write_nifti(label, label_out, dtype=np.uint8))
        voxels = int(np.count_nonzero(label.array))
        result["label_voxels"] = voxels
        result["label_volume_ml"] = voxels * label.voxel_volume_ml
    return result
