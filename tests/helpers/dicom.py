"""Write tiny synthetic DICOM objects (CT series, RTSTRUCT, other objects) for tests.

Geometry follows lungtumor's convention: arrays are (I, J, K) = (column, row, slice) and the
affine maps voxel indices to RAS mm; the files get LPS, as DICOM wants. The two in-plane affine
columns must be orthogonal (DICOM cannot store anything else); the slice column may be tilted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds(value: float) -> str:
    """A number as a DICOM DS string (at most 16 characters)."""
    return format_number_as_ds(float(value))


def _new_dataset(sop_class_uid: str, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "SYNTHETIC^CASE"
    ds.PatientID = "SYNTH-001"
    return ds


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def voxels_to_lps(affine_ras: np.ndarray, points_ijk: np.ndarray) -> np.ndarray:
    """(N, 3) voxel coordinates -> (N, 3) LPS mm (for building contours in voxel terms)."""
    points = np.asarray(points_ijk, dtype=np.float64)
    affine_lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    return points @ affine_lps[:3, :3].T + affine_lps[:3, 3]


def write_ct_series(
    folder: str | os.PathLike[str],
    array_hu: np.ndarray,
    affine_ras: np.ndarray,
    series_uid: str | None = None,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    description: str = "synthetic CT",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    shuffle_seed: int | None = 0,
    prefix: str = "",
) -> str:
    """Write ``array_hu`` (I, J, K) as a single-frame CT series, one file per slice.

    File names are shuffled (``shuffle_seed``; None keeps k order) and InstanceNumber runs
    backwards, so a reader that sorts by either gets the order wrong.

    Returns:
        The SeriesInstanceUID.
    """
    folder = Path(folder)
    array_hu = np.asarray(array_hu)
    affine_lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    col_spacing = float(np.linalg.norm(affine_lps[:3, 0]))  # along i = between columns
    row_spacing = float(np.linalg.norm(affine_lps[:3, 1]))  # along j = between rows
    row_cos = affine_lps[:3, 0] / col_spacing
    col_cos = affine_lps[:3, 1] / row_spacing
    if abs(float(row_cos @ col_cos)) > 1e-9:
        raise ValueError("the affine's first two columns must be orthogonal for DICOM")
    stored = (array_hu.astype(np.float64) - intercept) / slope
    if not np.allclose(stored, np.round(stored)):
        raise ValueError("array_hu is not representable with this slope/intercept")
    stored = np.round(stored)
    dtype = np.int16 if stored.min() < 0 else np.uint16
    if stored.min() < np.iinfo(dtype).min or stored.max() > np.iinfo(dtype).max:
        raise ValueError(f"stored values {stored.min()}..{stored.max()} do not fit 16 bits; change the intercept")
    stored = stored.astype(dtype)

    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    n_i, n_j, n_k = array_hu.shape
    names = np.arange(n_k)
    if shuffle_seed is not None:
        names = np.random.default_rng(shuffle_seed).permutation(n_k)
    for k in range(n_k):
        ds = _new_dataset(CT_IMAGE_STORAGE, "CT")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = 1
        ds.InstanceNumber = n_k - k  # backwards on purpose
        position = affine_lps[:3, :3] @ np.array([0.0, 0.0, k]) + affine_lps[:3, 3]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
        ds.SliceThickness = _ds(np.linalg.norm(affine_lps[:3, 2]))
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = n_j, n_i
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if dtype == np.int16 else 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype(f"<{np.dtype(dtype).char}").tobytes()
        _save(ds, folder / f"{prefix}IMG{names[k]:04d}.dcm")
    return series_uid


def write_non_image(path: str | os.PathLike[str], modality: str = "RTPLAN") -> Path:
    """A DICOM object without pixels (RTPLAN-like by default) that readers must skip."""
    ds = _new_dataset(RTPLAN_STORAGE, modality)
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.RTPlanLabel = "synthetic"
    _save(ds, Path(path))
    return Path(path)


def write_rtstruct(
    path: str | os.PathLike[str],
    ct_folder_or_uid: str | os.PathLike[str],
    rois: dict[str, Sequence[np.ndarray]],
    *,
    frame_of_reference_uid: str | None = None,
    contour_type: str = "CLOSED_PLANAR",
) -> Path:
    """Write an RTSTRUCT with one ROI per entry of ``rois`` (name -> list of (N, 3) LPS polygons).

    ``ct_folder_or_uid``: a folder holding the CT series (its frame of reference, study and
    series UIDs are referenced) or just a SeriesInstanceUID string.
    """
    series_uid, study_uid, frame = str(ct_folder_or_uid), generate_uid(), generate_uid()
    if Path(ct_folder_or_uid).is_dir():
        ct = next(
            h
            for h in (pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(Path(ct_folder_or_uid).glob("*.dcm")))
            if h.get("Modality") == "CT"
        )
        series_uid, study_uid, frame = ct.SeriesInstanceUID, ct.StudyInstanceUID, ct.FrameOfReferenceUID
    frame = frame_of_reference_uid or frame

    ds = _new_dataset(RTSTRUCT_STORAGE, "RTSTRUCT")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "synthetic"
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series_uid
    ref_study = Dataset()
    ref_study.RTReferencedSeriesSequence = DicomSequence([ref_series])
    ref_frame.RTReferencedStudySequence = DicomSequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref_frame])

    roi_items, contour_items, observations = [], [], []
    for number, (name, polygons) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_items.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [255, 0, 0]
        contours = []
        for c_number, polygon in enumerate(polygons, start=1):
            points = np.asarray(polygon, dtype=np.float64).reshape(-1, 3)
            contour = Dataset()
            contour.ContourGeometricType = contour_type
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = c_number
            contour.ContourData = [_ds(v) for v in points.ravel()]
            contours.append(contour)
        item.ContourSequence = DicomSequence(contours)
        contour_items.append(item)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "GTV"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    _save(ds, Path(path))
    return Path(path)


def series_affine_ras(row_lps, col_lps, step_lps, origin_lps, spacing=(0.75, 0.5)) -> np.ndarray:
    """A series' RAS+ affine from its DICOM directions (LPS): row and column cosines, slice step, origin."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_lps, float) * spacing[0]
    lps[:3, 1] = np.asarray(col_lps, float) * spacing[1]
    lps[:3, 2] = step_lps
    lps[:3, 3] = origin_lps
    return LPS_TO_RAS @ lps


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    """A rotation about z, then about x (degrees)."""
    cz, sz = np.cos(np.radians(z_deg)), np.sin(np.radians(z_deg))
    cx, sx = np.cos(np.radians(x_deg)), np.sin(np.radians(x_deg))
    return np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
