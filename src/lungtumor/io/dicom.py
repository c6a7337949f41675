"""DICOM input: CT image series -> :class:`~lungtumor.io.volume.Volume`, RTSTRUCT ROI -> mask.

Geometry (see :mod:`lungtumor.io.volume` for the axis convention):

* The CT array is indexed ``[i, j, k]`` = (column, row, slice): ``i`` moves along the DICOM row
  direction cosine ``ImageOrientationPatient[:3]`` in steps of ``PixelSpacing[1]``, ``j`` along
  the column cosine ``ImageOrientationPatient[3:]`` in steps of ``PixelSpacing[0]``, ``k`` along
  the step between consecutive ``ImagePositionPatient`` values, slices being sorted by their
  position along the slice normal (never by ``InstanceNumber`` or file name).
* DICOM patient coordinates are LPS; they are converted to RAS exactly once, here, by negating
  the first two rows of the affine. ``Volume.meta`` keeps the LPS geometry (origin, spacing,
  direction in SimpleITK's row-major order) so a DICOM writer can reproduce the series, and the
  source slices' headers in ``k`` order (``meta["dicom_headers"]``), which a DICOM Segmentation
  writer (:mod:`lungtumor.io.dicom_seg`) needs to reference each source instance.
* Gantry-tilted series (slice step not along the slice normal) are read exactly: the affine's
  ``k`` column is the true slice step, so it is sheared, and ``meta["gantry_tilt_deg"]`` says by
  how much. The array is never resampled here: every consumer that works in world coordinates
  (RTSTRUCT rasterisation, DICOM-SEG, which stores one position per frame) stays exact. NIfTI
  cannot hold such a grid consistently (its qform is rigid), so
  :func:`lungtumor.io.nifti.write_nifti` refuses it with a one-line message rather than
  writing a file that ITK-based viewers read millimetres off; tilt correction by resampling (as
  dcm2niix does) interpolates HU and would move the mask off the scanner's slices, which a
  DICOM-SEG must reference, so it is left to dcm2niix for users who need a NIfTI of such a scan.

Pixel data is read with pydicom (full control over ordering and checks); the tests compare the
result with SimpleITK's ``ImageSeriesReader`` voxel for voxel.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from lungtumor.errors import GeometryError, InputError
from lungtumor.io.volume import Volume

#: Modality of the image series this module reads (CT in Hounsfield units).
CT_MODALITY = "CT"
#: Modality of an RT structure set.
RTSTRUCT_MODALITY = "RTSTRUCT"
#: SOP Class UID of RT Structure Set Storage.
RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"
#: SOP Class UID of (single-frame) CT Image Storage.
CT_IMAGE_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.2"
#: ImageType value of scout/localizer images, which are not slices of the volume.
LOCALIZER_IMAGE_TYPE = "LOCALIZER"
#: Flips x and y: LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest difference between two slices' orientation cosines still called "the same".
ORIENTATION_ATOL = 1e-4
#: Largest departure of a direction cosine from unit length / orthogonality.
COSINE_ATOL = 1e-3
#: Largest difference between slices' PixelSpacing still called "the same" (mm).
PIXEL_SPACING_ATOL_MM = 1e-4
#: A slice-to-slice step may differ from the mean step by this fraction of its length
#: (DS strings round positions; more than this means missing slices or mixed acquisitions).
SLICE_STEP_RTOL = 0.01
#: ... or by this many mm, whichever is larger (for very thin slices).
SLICE_STEP_ATOL_MM = 1e-3
#: The HU range an int16 array holds; rescaled values outside it are returned as float32.
INT16_MIN, INT16_MAX = int(np.iinfo(np.int16).min), int(np.iinfo(np.int16).max)


@dataclass(frozen=True)
class SeriesInfo:
    """One CT image series found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        modality: DICOM Modality (always ``CT`` here).
        description: SeriesDescription ('' when absent).
        n_files: number of image files (slices) in the series.
    """

    uid: str
    modality: str
    description: str
    n_files: int


@dataclass(frozen=True)
class _Slice:
    """Header facts of one CT image file, read without its pixels."""

    path: Path
    header: Dataset
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    rows: int
    columns: int
    slope: float
    intercept: float


# --------------------------------------------------------------------------------------------
# Scanning a folder


def _read_header(path: Path) -> Dataset | None:
    """Header of a DICOM file (no pixels), or None when the file is not DICOM at all."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        return None  # no 'DICM' prefix / file meta: some other kind of file, skipped
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(
            f"{path}: corrupt DICOM header ({type(exc).__name__}: {exc}); remove or re-export this file"
        ) from exc


def _float_list(header: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    """A multi-valued numeric tag as a float array of length ``n``."""
    raw = header.get(keyword)
    if raw is None or raw == "":
        raise InputError(f"{path}: CT image without {keyword}; its geometry is unknown, re-export the series")
    try:
        items = list(raw) if isinstance(raw, (MultiValue, list, tuple)) else [raw]
        values = np.array([float(v) for v in items], dtype=np.float64)
    except Exception as exc:
        raise InputError(f"{path}: tag {keyword} is not numeric ({exc}); re-export the file") from exc
    if values.shape != (n,) or not np.all(np.isfinite(values)):
        raise InputError(f"{path}: tag {keyword} must hold {n} finite numbers, found {list(values)}; re-export the file")
    return values


def _number(header: Dataset, keyword: str, default: float, path: Path) -> float:
    """A single numeric tag, ``default`` when absent or empty."""
    value = header.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except Exception as exc:
        raise InputError(f"{path}: tag {keyword}={value!r} is not a number; re-export the file") from exc
    if not np.isfinite(number):
        raise InputError(f"{path}: tag {keyword}={value!r} is not finite; re-export the file")
    return number


def _classify(header: Dataset) -> str | None:
    """None for a single-frame CT slice, else a short reason the object is skipped."""
    modality = str(header.get("Modality", "") or "unknown modality")
    has_geometry = all(
        header.get(tag) not in (None, "") for tag in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns")
    )
    if not has_geometry:
        return f"{modality} (not an image)"
    if modality != CT_MODALITY:
        return f"{modality} image"
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame CT (unsupported; convert to single-frame slices)"
    image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    if LOCALIZER_IMAGE_TYPE in image_type:
        return "CT localizer"
    return None


def _make_slice(path: Path, header: Dataset) -> _Slice:
    """Parse the geometry and rescale tags of one CT file."""
    spacing = _float_list(header, "PixelSpacing", 2, path)
    if np.any(spacing <= 0):
        raise InputError(f"{path}: PixelSpacing {list(spacing)} must be positive; re-export the file")
    slope = _number(header, "RescaleSlope", 1.0, path)
    if slope == 0:
        raise InputError(f"{path}: RescaleSlope is 0, HU cannot be computed; re-export the file")
    return _Slice(
        path=path,
        header=header,
        position=_float_list(header, "ImagePositionPatient", 3, path),
        orientation=_float_list(header, "ImageOrientationPatient", 6, path),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        rows=int(header.Rows),
        columns=int(header.Columns),
        slope=slope,
        intercept=_number(header, "RescaleIntercept", 0.0, path),
    )


def _is_damaged_ct(header: Dataset) -> bool:
    """A single-frame CT image whose header stops before its geometry (a truncated file)."""
    # The file meta comes first in the file, so it survives a truncation that cuts the dataset's own
    # SOPClassUID short (a cut inside the value leaves a wrong UID, not an empty one).
    classes = {str(header.get("SOPClassUID") or ""), str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", "") or "")}
    image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    return CT_IMAGE_SOP_CLASS_UID in classes and LOCALIZER_IMAGE_TYPE not in image_type


@dataclass
class _FolderScan:
    """What a folder holds: CT slices by series UID, damaged CT files, skip counts by reason."""

    root: Path
    series: dict[str, list[_Slice]]
    damaged: list[Path]
    skipped: Counter[str]
    not_dicom: list[Path] = field(default_factory=list)


def _scan(folder: str | os.PathLike[str]) -> _FolderScan:
    """All CT slices under ``folder`` grouped by SeriesInstanceUID, plus what was skipped."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root}: folder not found; pass the folder holding the DICOM series")
    if not root.is_dir():
        raise InputError(f"{root}: is a file, expected a folder holding a DICOM series; pass its parent folder")
    scan = _FolderScan(root, {}, [], Counter())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        header = _read_header(path)
        if header is None:
            scan.skipped["not DICOM"] += 1
            scan.not_dicom.append(path)
            continue
        reason = _classify(header)
        if reason is not None:
            if reason.endswith("(not an image)") and _is_damaged_ct(header):
                # pydicom reads truncated headers without complaint; remember the file so that
                # reading a series names it instead of reporting a mysterious gap.
                scan.damaged.append(path)
            scan.skipped[reason] += 1
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise InputError(f"{path}: CT image without a SeriesInstanceUID; re-export the series")
        scan.series.setdefault(uid, []).append(_make_slice(path, header))
    return scan


#: Suffixes of DICOM files: a file with one that does not read as DICOM is a damaged slice.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _name_pattern(path: Path) -> str:
    """A file name with its digits removed: the slices of one export share it (IMG0001.dcm -> IMG.dcm)."""
    return re.sub(r"\d+", "", path.name).lower()


def _check_no_unreadable_slice(scan: _FolderScan, uid: str, slices: list[_Slice]) -> None:
    """Refuse a series beside a file that is named like its slices (or ends in .dcm) but is not
    readable DICOM: a damaged first or last slice leaves no gap, so the volume would be one slice
    shorter without a word."""
    patterns = {_name_pattern(s.path) for s in slices}
    suspects = [p for p in scan.not_dicom if p.suffix.lower() in DICOM_SUFFIXES or _name_pattern(p) in patterns]
    if suspects:
        more = f" (and {len(suspects) - 1} more such file(s))" if len(suspects) > 1 else ""
        raise InputError(
            f"{suspects[0]}: not readable as DICOM{more}, but named like the {len(slices)} slices of series {uid}; it is "
            "truncated or corrupt, and reading the series without it could silently lose a slice at its top or bottom: "
            "re-export it, or move it out of the folder if it is not part of the scan"
        )


def _info(uid: str, slices: list[_Slice]) -> SeriesInfo:
    header = slices[0].header
    return SeriesInfo(
        uid=uid,
        modality=str(header.get("Modality", "")),
        description=str(header.get("SeriesDescription", "") or ""),
        n_files=len(slices),
    )


def _describe(info: SeriesInfo) -> str:
    return f"{info.uid} ('{info.description}', {info.n_files} files)"


def list_series(folder: str | os.PathLike[str]) -> list[SeriesInfo]:
    """CT image series found under ``folder`` (searched recursively), sorted by UID.

    Non-DICOM files, non-image objects (RTSTRUCT, RTPLAN, RTDOSE, SR, ...), non-CT images and
    localizers are skipped.

    Raises:
        InputError: the folder is missing, or a DICOM file in it has a corrupt header.
    """
    series = _scan(folder).series
    return [_info(uid, series[uid]) for uid in sorted(series)]


# --------------------------------------------------------------------------------------------
# Reading a series


def _select(scan: _FolderScan, series_uid: str | None) -> tuple[str, list[_Slice]]:
    """The requested series, or the only one; explain every other case."""
    root, series, skipped = scan.root, scan.series, scan.skipped
    infos = [_info(uid, series[uid]) for uid in sorted(series)]
    if not series:
        found = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "no files"
        raise InputError(
            f"{root}: no CT image series found (found {found}); pass the folder holding the CT slices of one scan"
        )
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(
                f"{root}: no CT series with UID {series_uid}; available: " + "; ".join(_describe(i) for i in infos)
            )
        return series_uid, series[series_uid]
    if len(series) > 1:
        raise InputError(
            f"{root}: holds {len(series)} CT series: " + "; ".join(_describe(i) for i in infos)
            + "; choose one with series_uid=... (--series-uid on the command line)"
        )
    uid = next(iter(series))
    return uid, series[uid]


def _unit_cosines(orientation: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines, checked to be unit length and orthogonal."""
    row, col = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1.0) > COSINE_ATOL
        or abs(np.linalg.norm(col) - 1.0) > COSINE_ATOL
        or abs(float(row @ col)) > COSINE_ATOL
    ):
        raise GeometryError(
            f"{path}: ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors; "
            "the orientation is unknown, re-export the series"
        )
    # Renormalise so that DS rounding does not leak into the affine.
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _series_geometry(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray, np.ndarray]:
    """Sort slices along the normal and build the LPS affine.

    Returns:
        The slices in k order, the 4x4 LPS affine (voxel (i, j, k) -> LPS mm) and the (3,) slice
        step vector in LPS mm.

    Raises:
        GeometryError: mixed orientation/size/spacing, duplicate positions, gaps or uneven steps.
    """
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=ORIENTATION_ATOL):
            raise GeometryError(
                f"{s.path}: ImageOrientationPatient {list(s.orientation)} differs from {first.path.name}'s "
                f"{list(first.orientation)}; the series mixes orientations, keep one stack of slices"
            )
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise GeometryError(
                f"{s.path}: {s.rows}x{s.columns} pixels, but {first.path.name} has {first.rows}x{first.columns}; "
                "all slices of a series must have the same size"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=PIXEL_SPACING_ATOL_MM):
            raise GeometryError(
                f"{s.path}: PixelSpacing {s.pixel_spacing} differs from {first.path.name}'s {first.pixel_spacing}; "
                "all slices of a series must have the same pixel spacing"
            )
    row, col = _unit_cosines(first.orientation, first.path)
    normal = np.cross(row, col)
    distances = np.array([s.position @ normal for s in slices])
    order = np.argsort(distances, kind="stable")
    ordered = [slices[n] for n in order]
    positions = np.stack([s.position for s in ordered])  # (K, 3) LPS mm

    if len(ordered) == 1:
        thickness = _number(first.header, "SpacingBetweenSlices", 0.0, first.path) or _number(
            first.header, "SliceThickness", 0.0, first.path
        )
        if thickness <= 0:
            raise GeometryError(
                f"{first.path}: a single-slice series without SliceThickness/SpacingBetweenSlices has no "
                "slice spacing; add the tag or pass a series with several slices"
            )
        step = normal * thickness
    else:
        diffs = np.diff(positions, axis=0)  # (K-1, 3)
        step = (positions[-1] - positions[0]) / (len(ordered) - 1)
        step_mm = float(np.linalg.norm(step))
        gaps_mm = np.linalg.norm(diffs, axis=1)
        duplicate = np.flatnonzero(gaps_mm < SLICE_STEP_ATOL_MM)
        if duplicate.size:
            a, b = ordered[duplicate[0]], ordered[duplicate[0] + 1]
            raise GeometryError(
                f"{a.path} and {b.path}: two slices at the same position {list(a.position)}; the series holds "
                "several acquisitions or duplicates, keep one file per position"
            )
        tolerance = max(SLICE_STEP_RTOL * step_mm, SLICE_STEP_ATOL_MM)
        deviation = np.linalg.norm(diffs - step, axis=1)
        bad = np.flatnonzero(deviation > tolerance)
        if bad.size:
            a, b = ordered[bad[0]], ordered[bad[0] + 1]
            raise GeometryError(
                f"{a.path.parent}: uneven slice spacing: {gaps_mm[bad[0]]:.4g} mm between {a.path.name} and "
                f"{b.path.name}, {step_mm:.4g} mm expected from the first and last positions (range "
                f"{gaps_mm.min():.4g}-{gaps_mm.max():.4g} mm); slices are missing or the series mixes "
                "acquisitions, re-export the complete series"
            )
    row_spacing, col_spacing = first.pixel_spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * col_spacing  # i = column index moves along the row cosine
    affine_lps[:3, 1] = col * row_spacing  # j = row index moves along the column cosine
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    return ordered, affine_lps, step


def gantry_tilt_deg(affine: np.ndarray) -> float:
    """Angle in degrees between an affine's slice (``k``) column and the normal of its ``i``-``j`` plane.

    0 for an ordinary series; a gantry-tilted CT series has its tilt here (the sign is dropped).
    Works on an LPS or RAS affine alike (flipping x and y preserves angles).
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    normal = np.cross(m[:, 0], m[:, 1])
    cosine = abs(float(normal @ m[:, 2])) / (np.linalg.norm(normal) * np.linalg.norm(m[:, 2]))
    return float(np.degrees(np.arccos(min(1.0, cosine))))


def _pixels(s: _Slice) -> np.ndarray:
    """Stored pixel values of one slice, shape (Rows, Columns)."""
    try:
        ds = pydicom.dcmread(str(s.path))
        if "PixelData" not in ds:
            raise InputError(f"{s.path}: CT image without pixel data; re-export the series")
        pixels = ds.pixel_array
    except InputError:
        raise
    except Exception as exc:  # truncated data, missing decoder plugin, ...
        raise InputError(
            f"{s.path}: cannot decode pixel data ({type(exc).__name__}: {exc}); the file is corrupt or uses a "
            "compression without an installed decoder: re-export it uncompressed (e.g. gdcmconv --raw)"
        ) from exc
    if pixels.shape != (s.rows, s.columns):
        raise InputError(
            f"{s.path}: pixel array shape {pixels.shape}, expected ({s.rows}, {s.columns}) single-sample pixels; "
            "pass a greyscale single-frame CT series"
        )
    return pixels


def _ordered_series(folder: str | os.PathLike[str], series_uid: str | None) -> tuple[Path, str, list[_Slice], np.ndarray, np.ndarray]:
    """(folder, series UID, slices in k order, LPS affine, slice step) of one CT series, headers only."""
    scan = _scan(folder)
    # A truncated header may have lost its SeriesInstanceUID too, so a damaged CT file anywhere
    # in the folder may be a slice of this series: refuse rather than read a series with a hole.
    if scan.damaged:
        raise InputError(
            f"{scan.damaged[0]}: CT image whose header ends before its geometry (ImagePositionPatient/"
            f"ImageOrientationPatient/Rows/Columns), {len(scan.damaged)} such file(s) in the folder; the file is "
            "truncated or corrupt, re-export it or remove it from the folder"
        )
    uid, slices = _select(scan, series_uid)
    _check_no_unreadable_slice(scan, uid, slices)
    ordered, affine_lps, step = _series_geometry(slices)
    return scan.root, uid, ordered, affine_lps, step


@dataclass(frozen=True)
class SeriesHeaders:
    """One CT series' headers in :func:`read_dicom_series`' slice order, without pixel data.

    Attributes:
        path: the folder read.
        series_uid: SeriesInstanceUID.
        headers: the slices' pydicom headers (no pixel data), ``k`` order: the same instances, in
            the same order, as ``read_dicom_series(path).meta["dicom_headers"]``.
        affine_lps: 4x4 voxel index (i, j, k) -> LPS mm (the read Volume's affine is
            ``LPS_TO_RAS @ affine_lps``).
    """

    path: Path
    series_uid: str
    headers: tuple[Dataset, ...]
    affine_lps: np.ndarray


def read_series_headers(folder: str | os.PathLike[str], series_uid: str | None = None) -> SeriesHeaders:
    """The headers of one CT series, ordered and checked as :func:`read_dicom_series` does, pixels unread.

    For writers that reference a series' instances (DICOM SR) without needing its voxels: the
    same folder scan, series choice and geometry checks, at the cost of the headers alone.

    Raises:
        InputError, GeometryError: as :func:`read_dicom_series`.
    """
    root, uid, ordered, affine_lps, _ = _ordered_series(folder, series_uid)
    return SeriesHeaders(root, uid, tuple(s.header for s in ordered), affine_lps)


def read_dicom_series(folder: str | os.PathLike[str], series_uid: str | None = None) -> Volume:
    """Read one CT series from a folder as a Volume in HU with a RAS affine.

    Args:
        folder: folder holding the series (searched recursively; other files are skipped).
        series_uid: SeriesInstanceUID to read; required when the folder holds several CT series.

    Returns:
        Volume of shape (Columns, Rows, slices); int16 HU, or float32 when RescaleSlope/Intercept
        give non-integer or out-of-int16 values. ``meta`` holds ``path``, ``series_uid``,
        ``origin_lps``, ``spacing_mm``, ``direction_lps`` (SimpleITK order: row-major 3x3 whose
        columns are the i, j, k unit vectors; the k one follows the slice step, so it is not
        orthogonal to the others under gantry tilt), ``slice_step_lps``, ``frame_of_reference_uid``,
        ``study_uid``, ``patient_id``, ``series_description`` and ``sop_instance_uids`` (k order);
        ``gantry_tilt_deg`` (angle between the slice step and the slice normal, 0 for an ordinary
        series), ``image_positions_lps`` (per slice ImagePositionPatient, k order) and
        ``dicom_headers`` (a tuple of the slices' pydicom headers without pixel data, k order:
        what a DICOM-SEG writer needs; read-only, and not JSON-serialisable, unlike the rest).

    Raises:
        InputError: no series, several series and no ``series_uid``, unknown UID, corrupt file.
        GeometryError: inconsistent slices, duplicate positions, gaps or uneven spacing.
    """
    root, uid, ordered, affine_lps, step = _ordered_series(folder, series_uid)
    shape = (ordered[0].columns, ordered[0].rows, len(ordered))

    # Decide the dtype from the headers so the common case (integer rescale) never needs a
    # float copy of the whole volume. Slices are stacked as (K, J, I) so each one is written
    # contiguously; the (I, J, K) transpose is then Fortran-ordered, nibabel's own layout.
    integral = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in ordered)
    stack = np.empty(shape[::-1], dtype=np.int16 if integral else np.float32)  # (K, J, I)
    for k, s in enumerate(ordered):
        pixels = _pixels(s)  # (rows, columns) = (J, I)
        if stack.dtype == np.int16:
            hu = pixels.astype(np.int32) * int(s.slope) + int(s.intercept)
            if hu.size and (hu.min() < INT16_MIN or hu.max() > INT16_MAX):
                stack = stack.astype(np.float32)  # exact for |HU| < 2**24
        else:
            hu = pixels.astype(np.float64) * s.slope + s.intercept
        stack[k] = hu
    array = stack.transpose(2, 1, 0)  # (I, J, K) = (column, row, slice)

    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing
    header = ordered[0].header
    meta: dict[str, Any] = {
        "path": str(root),
        "format": "dicom",
        "series_uid": uid,
        "series_description": str(header.get("SeriesDescription", "") or ""),
        "study_uid": str(header.get("StudyInstanceUID", "") or ""),
        "patient_id": str(header.get("PatientID", "") or ""),
        "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "") or ""),
        "origin_lps": [float(v) for v in affine_lps[:3, 3]],
        "spacing_mm": [float(v) for v in spacing],
        "direction_lps": [float(v) for v in direction.ravel()],
        "slice_step_lps": [float(v) for v in step],
        "sop_instance_uids": [str(s.header.get("SOPInstanceUID", "")) for s in ordered],
        "image_positions_lps": [[float(v) for v in s.position] for s in ordered],
        "gantry_tilt_deg": gantry_tilt_deg(affine_lps),
        "dicom_headers": tuple(s.header for s in ordered),
    }
    return Volume(array, LPS_TO_RAS @ affine_lps, meta)


