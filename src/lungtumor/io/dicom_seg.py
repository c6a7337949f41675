"""DICOM Segmentation output: a binary tumour mask on a CT series' grid -> one SEG instance.

The SEG is written with highdicom (https://github.com/ImagingDataCommons/highdicom), whose
constructor is the validation: it checks the source images' geometry, the segment description
and the frame encoding before anything is written. The object

* references the source series: Study Instance UID and patient/study attributes copied from it,
  Frame of Reference UID, and per frame the source slice's SOP Instance UID (Derivation Image
  Sequence) and its ImagePositionPatient / ImageOrientationPatient;
* holds one segment, "lung tumour", coded as category *Morphologically Abnormal Structure*
  (SCT 49755003, CID 7150) and type *Neoplasm* (SCT 108369006, CID 7159 "Lesion Segmentation
  Types"), anatomic region *Lung* (SCT 39607008), algorithm type AUTOMATIC with the algorithm's
  name, family (*Artificial Intelligence*, DCM 113100), version and checkpoint;
* is BINARY (1 bit per pixel); slices without tumour are omitted (an empty mask keeps all its
  frames, since a SEG cannot have none); content qualification RESEARCH.

Frame ``k`` of the mask (``mask.array[:, :, k]``, indexed (column, row)) is the source slice
``source.meta["dicom_headers"][k]``: :func:`lungtumor.io.dicom.read_dicom_series` orders slices
along the slice normal, so the k-th axial slice of a mask on the CT's grid is that instance,
for oblique, shuffled and gantry-tilted series alike (a SEG stores one position per frame, so a
tilted series needs no resampling here, unlike NIfTI).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import atomic_output
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.nifti import is_nifti, nifti_stem
from lungtumor.io.volume import Volume, is_binary, require_same_grid

#: Names accepted by ``--output-format`` (comma-separated).
OUTPUT_NIFTI = "nifti"
OUTPUT_DICOM_SEG = "dicom-seg"
OUTPUT_FORMATS = (OUTPUT_NIFTI, OUTPUT_DICOM_SEG)
#: File suffix of a written DICOM-SEG.
DICOM_SEG_SUFFIX = ".dcm"
#: The one segment's label.
SEGMENT_LABEL = "lung tumour"
#: ContentLabel of the SEG (DICOM CS: upper case, at most 16 characters).
CONTENT_LABEL = "LUNG_TUMOUR"
#: Default SeriesNumber of the SEG series (the CT's own series numbers are usually small).
DEFAULT_SERIES_NUMBER = 901
#: Default SeriesDescription of the SEG series.
DEFAULT_SERIES_DESCRIPTION = "lungtumor lung tumour segmentation"
#: Manufacturer / model name recorded as the creating device (the software).
MANUFACTURER = "lungtumor"
#: Algorithm name in the segment's Algorithm Identification Sequence.
ALGORITHM_NAME = "lungtumor"
#: Patient and study attributes of Type 2 (must be present, may be empty) that highdicom reads
#: from the first source image; absent ones are added empty to a copy of the header.
TYPE2_SOURCE_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def parse_output_formats(text: str) -> tuple[str, ...]:
    """``"nifti"``, ``"dicom-seg"`` or ``"nifti,dicom-seg"`` -> a tuple of distinct format names.

    Raises:
        ConfigError: empty or unknown names.
    """
    names = tuple(dict.fromkeys(part.strip().lower() for part in str(text).split(",") if part.strip()))
    unknown = [n for n in names if n not in OUTPUT_FORMATS]
    if not names or unknown:
        raise ConfigError(f"--output-format {text!r}: expected {OUTPUT_NIFTI}, {OUTPUT_DICOM_SEG} or {OUTPUT_NIFTI},{OUTPUT_DICOM_SEG}")
    return names


def dicom_seg_path(output: str | os.PathLike[str]) -> Path:
    """Where the SEG of a prediction goes: ``OUTPUT`` itself when it ends in ``.dcm``, else
    beside it with ``.nii.gz``/``.nii`` replaced by ``.dcm`` (``case.nii.gz`` -> ``case.dcm``)."""
    out = Path(output)
    if out.name.lower().endswith(DICOM_SEG_SUFFIX):
        return out
    stem = nifti_stem(out) if is_nifti(out) else out.name
    return out.with_name(stem + DICOM_SEG_SUFFIX)


def check_dicom_seg_source(source: Volume) -> None:
    """Refuse a source a DICOM-SEG cannot reference, before any work is done.

    Raises:
        InputError: the source is not a DICOM series read by
            :func:`~lungtumor.io.dicom.read_dicom_series`, or has no FrameOfReferenceUID.
    """
    where = source.meta.get("path", "the input")
    headers = source.meta.get("dicom_headers")
    if source.meta.get("format") != "dicom" or not headers:
        raise InputError(
            f"{where}: a DICOM-SEG needs a DICOM CT series as input (it references the source images), "
            f"this input is {'NIfTI' if is_nifti(where) else 'not a DICOM series'}; use --output-format nifti, or pass the DICOM series folder"
        )
    if len(headers) != source.shape[2]:
        raise InputError(f"{where}: {len(headers)} DICOM headers for {source.shape[2]} slices; read the series with read_dicom_series")
    if not str(source.meta.get("frame_of_reference_uid", "") or ""):
        raise InputError(
            f"{where}: the CT series has no FrameOfReferenceUID, so a DICOM-SEG cannot be tied to its patient coordinates; "
            "re-export the series with its Frame of Reference module, or use --output-format nifti"
        )


def _source_images(source: Volume) -> list[Any]:
    """The source headers (k order), ready for highdicom (see :func:`with_type2_attributes`)."""
    return with_type2_attributes(list(source.meta["dicom_headers"]))


def with_type2_attributes(headers: list[Any]) -> list[Any]:
    """``headers`` with the first, from which highdicom copies the patient and study attributes,
    replaced by a copy with absent Type 2 attributes added empty (the SEG and the SR writer alike)."""
    import pydicom  # not at the top: a NIfTI predict imports this module for its output-format checks

    first = pydicom.Dataset()
    first.update(headers[0])  # a new element dict: the reader's headers are never modified
    for keyword in TYPE2_SOURCE_KEYWORDS:
        if keyword not in first:
            setattr(first, keyword, None)
    return [first, *headers[1:]]


def _binary_frames(mask: Volume, source: Volume) -> np.ndarray:
    """(K, Rows, Columns) uint8 {0, 1} frames in the source's k order, after checking the grid."""
    mask_path = mask.meta.get("path", "mask")
    where = source.meta.get("path", "the CT")
    require_same_grid(
        mask, source, "mask", "CT series",
        fix="a DICOM-SEG needs the mask on the series' own grid: predict from the series, or resample the mask onto it",
    )
    values = mask.array
    if values.dtype != np.bool_:
        if not np.issubdtype(values.dtype, np.number):
            raise InputError(f"{mask_path}: mask voxel type {values.dtype} is not numeric; pass a 0/1 mask")
        # min/max for an integer mask (the usual case); the full test otherwise.
        if not is_binary(values):
            bad = (values != 0) & (values != 1)
            raise InputError(
                f"{mask_path}: mask holds values other than 0 and 1 ({int(np.count_nonzero(bad))} voxels, e.g. "
                f"{values[bad].flat[0]!r}); a BINARY DICOM-SEG needs a 0/1 mask: threshold it first"
            )
    header = source.meta["dicom_headers"][0]
    rows, columns = int(header.Rows), int(header.Columns)
    if (columns, rows) != mask.shape[:2]:
        raise GeometryError(f"{where}: slices are {rows}x{columns} pixels but the volume is {mask.shape[:2]}; read the series with read_dicom_series")
    # (I, J, K) = (column, row, slice) -> (K, J, I) = (frame, row, column).
    return np.ascontiguousarray(values.transpose(2, 1, 0), dtype=np.uint8)


def build_dicom_seg(
    mask: Volume,
    source: Volume,
    *,
    algorithm_version: str,
    checkpoint_name: str,
    threshold: float | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
) -> Any:
    """The highdicom Segmentation of ``mask`` on ``source`` (nothing written); see :func:`write_dicom_seg`."""
    check_dicom_seg_source(source)
    frames = _binary_frames(mask, source)
    import highdicom as hd  # about 0.4 s to import: only when a SEG is wanted
    from pydicom.sr.codedict import codes

    from lungtumor import __version__

    parameters = {"checkpoint": str(checkpoint_name)}
    if threshold is not None:
        parameters["threshold"] = f"{float(threshold):g}"
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=str(algorithm_version),
        parameters=parameters,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.cid7159.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.cid7151.Lung],
    )
    try:
        return hd.seg.Segmentation(
            source_images=_source_images(source),
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=f"{MANUFACTURER} {checkpoint_name}"[:64],
            software_versions=str(__version__),
            device_serial_number="",
            content_label=CONTENT_LABEL,
            content_description=f"automatic lung tumour segmentation ({checkpoint_name})"[:64],
            series_description=series_description[:64],
            content_qualification=hd.ContentQualificationValues.RESEARCH,
            # A SEG needs at least one frame: keep all of them for an empty mask (highdicom would
            # otherwise warn and do the same).
            omit_empty_frames=bool(frames.any()),
        )
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's checks of the source headers
        raise InputError(
            f"{source.meta.get('path', 'the CT')}: the series' headers do not make a valid DICOM-SEG source "
            f"({type(exc).__name__}: {exc}); re-export the series or use --output-format nifti"
        ) from exc


def write_dicom_seg(
    mask: Volume,
    source: Volume,
    path: str | os.PathLike[str],
    *,
    algorithm_version: str,
    checkpoint_name: str,
    threshold: float | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
) -> Path:
    """Write a binary tumour mask on a CT series' grid as a DICOM Segmentation, atomically.

    Args:
        mask: 0/1 (or bool) mask with exactly ``source``'s shape and affine, e.g. the output of
            :func:`lungtumor.inference.predictor.segment` on ``source``.
        source: the CT from :func:`lungtumor.io.dicom.read_dicom_series` (its ``meta`` holds the
            ordered source headers).
        path: the ``.dcm`` file to write.
        algorithm_version: version recorded for the algorithm (e.g. ``lungtumor.__version__``).
        checkpoint_name: the model checkpoint's name, recorded as an algorithm parameter.
        threshold: probability threshold used, recorded as an algorithm parameter when given.
        series_number: SeriesNumber of the new SEG series.
        series_description: SeriesDescription of the new SEG series (at most 64 characters).

    Returns:
        ``path``.

    Raises:
        ConfigError: ``path`` does not end in ``.dcm``.
        InputError: ``source`` is not a DICOM series, has no FrameOfReferenceUID, or the mask is
            not 0/1.
        GeometryError: the mask is not on the source's grid.
    """
    target = Path(path)
    if not target.name.lower().endswith(DICOM_SEG_SUFFIX):
        raise ConfigError(f"{target}: a DICOM-SEG output must end in {DICOM_SEG_SUFFIX}")
    seg = build_dicom_seg(
        mask,
        source,
        algorithm_version=algorithm_version,
        checkpoint_name=checkpoint_name,
        threshold=threshold,
        series_number=series_number,
        series_description=series_description,
    )
    with atomic_output(target, suffix=DICOM_SEG_SUFFIX) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return target


def prediction_seg_path(input_path: str | os.PathLike[str], output: str | os.PathLike[str], formats: tuple[str, ...]) -> Path | None:
    """Where ``predict`` writes the SEG for ``formats`` (None when no DICOM-SEG is asked for).

    The SEG goes beside OUTPUT with ``.dcm`` for its ``.nii.gz`` (``case.nii.gz`` -> ``case.dcm``);
    with ``dicom-seg`` alone OUTPUT may also be the ``.dcm`` name itself. Checked before any
    model is loaded, so a wrong request costs nothing.

    Raises:
        InputError: a DICOM-SEG is asked for a NIfTI input (file or folder of NIfTI files).
        ConfigError: OUTPUT ends in ``.dcm`` while a NIfTI is asked for too.
    """
    if OUTPUT_DICOM_SEG not in formats:
        return None
    src, out = Path(input_path), Path(output)
    dicom_folder = src.is_dir() and not any(is_nifti(p) for p in src.iterdir())
    if src.exists() and not dicom_folder:  # a missing INPUT is predict's own error
        kind = "a NIfTI file" if is_nifti(src) else "a folder of NIfTI files" if src.is_dir() else "a single file"
        raise InputError(
            f"{src}: --output-format {OUTPUT_DICOM_SEG} needs a DICOM series folder as INPUT (a DICOM-SEG references the "
            f"source images), this is {kind}; use --output-format {OUTPUT_NIFTI}"
        )
    if out.name.lower().endswith(DICOM_SEG_SUFFIX) and OUTPUT_NIFTI in formats:
        raise ConfigError(
            f"{out}: with --output-format {OUTPUT_NIFTI},{OUTPUT_DICOM_SEG} give OUTPUT as NAME.nii.gz; the SEG is written beside it as NAME.dcm"
        )
    return dicom_seg_path(out)
