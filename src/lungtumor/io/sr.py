"""DICOM Structured Report output: RECIST lesion measurements on a CT series -> one TID 1500 SR.

The report is built with highdicom's SR module (https://github.com/ImagingDataCommons/highdicom),
whose constructors check every content item; nothing is assembled by hand. The object is

* a Comprehensive 3D SR (``highdicom.sr.Comprehensive3DSR``, SOP class 1.2.840.10008.5.1.4.1.1.88.34,
  the class highdicom's own TID 1500 examples use; its 2D SCOORD content would also fit a
  Comprehensive SR) holding one *Imaging Measurement Report* (TID 1500,
  ``highdicom.sr.MeasurementReport``) for the study of the CT series, observer a device
  (``observer``), procedure *CT unspecified body region* (CID 100); the whole series is its
  evidence, so patient and study attributes are copied from the series;
* one measurement group per lesion, TID 1501 (``MeasurementsAndQualitativeEvaluations``). Not
  TID 1410 (planar ROI): that holds one region per group and forbids per-measurement
  coordinates, while a RECIST lesion has two lines (long and short axis). Each group holds
    - the tracking identifiers (TID 4108): *Tracking Identifier* (DCM 112039, the human id) and
      *Tracking Unique Identifier* (DCM 112040, the UID); the same UID at two visits is how a
      reader links one lesion across them;
    - finding *Neoplasm* (SCT 108369006), category *Morphologically Abnormal Structure*
      (SCT 49755003), finding site *Lung* (SCT 39607008), method *RECIST 1.1* (CID 6147,
      DCM 126081), algorithm ``lungtumor`` and its version;
    - *Long Axis* (SCT 103339001) and, when given, *Short Axis* (SCT 103340004) in mm (UCUM
      ``mm``), each INFERRED FROM an SCOORD POLYLINE of its two endpoints in (column, row) pixel
      coordinates of the one CT instance whose plane holds the axis (*Source*, SCT 260753009,
      SELECTED FROM that SOP instance);
    - *Volume* (SCT 118565006) in UCUM ``ml`` (no image reference: it is measured over slices);
    - the RECIST target flag as a qualitative evaluation *Baseline Category* (DCM 112016, CID
      6145): *Target Lesion at Baseline* (DCM 112074) or *Non-Target Lesion at Baseline*
      (DCM 112075). highdicom takes any coded evaluation in TID 1501, so this is the clean place;
      the boolean cannot say "new lesion", which a caller puts in the tracking id text.
* ``extra_text`` (key -> text, e.g. the visit) as TEXT items in TID 1500's *Qualitative
  Evaluations* container (UMLS C0034375), each named by a code of the private scheme
  ``99LUNGTUMOR`` whose meaning is the key (highdicom's ``TextContentItem``/``CodedConcept``).

Coordinates: an endpoint given in RAS+ mm (nibabel's convention, that of the Volume from
:func:`lungtumor.io.dicom.read_dicom_series`) is turned into LPS mm by negating x and y, then
located on the slice whose plane (its ImagePositionPatient and ImageOrientationPatient) lies
nearest along the plane normal, refused beyond half the distance between planes; on that slice,
with the row cosine ``X``, column cosine ``Y`` and PixelSpacing ``(dr, dc)``,
``column = (P - IPP) . X / dc + 0.5`` and ``row = (P - IPP) . Y / dr + 0.5``: SCOORD puts (0, 0)
at the top-left corner of the top-left pixel (PS3.3 C.18.6.1.2), while ImagePositionPatient is
the centre of that pixel, so the centre of pixel (c, r) is (c + 0.5, r + 0.5). The point is
projected onto the plane; a RECIST axis from :func:`lungtumor.lesions.recist.measure_lesions`
lies exactly on one, as it must (both endpoints of one axis must land on the same slice).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from lungtumor.atomic import atomic_output
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.dicom import read_series_headers

#: File suffix of a written SR.
DICOM_SR_SUFFIX = ".dcm"
#: SeriesNumber of the SR series (the SEG writer uses 901).
DEFAULT_SERIES_NUMBER = 902
#: Default SeriesDescription.
DEFAULT_SERIES_DESCRIPTION = "lungtumor RECIST measurements"
#: Manufacturer recorded for the creating device (the software) and the algorithm's name.
MANUFACTURER = "lungtumor"
#: A point is on a slice when within this fraction of the distance between slice planes of it.
SLICE_PLANE_FRACTION = 0.5
#: An endpoint may lie this many pixels outside the image edge (DS rounding) before it is refused.
IMAGE_EDGE_TOL_PX = 1e-3
#: Private coding scheme naming the ``extra_text`` items (DICOM PS3.16 8.2: "99" prefix).
PRIVATE_SCHEME = "99LUNGTUMOR"
#: DICOM UID syntax (PS3.5 9.1): dot-separated numbers without leading zeros, at most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_MAX_CHARS = 64
#: Flips x and y: RAS <-> LPS (its own inverse).
_FLIP_XY = np.array([-1.0, -1.0, 1.0])

Point = tuple[float, float, float]


@dataclass(frozen=True)
class SRLesion:
    """One lesion at one visit, as the SR records it.

    Attributes:
        tracking_uid: a DICOM UID; the same UID for one lesion at every visit.
        tracking_id: human identifier, e.g. ``"lesion 3"``.
        long_axis_ras_mm: the long axis' two endpoints, RAS+ world mm (nibabel convention); both
            on one axial slice of the series.
        short_axis_ras_mm: the short axis' endpoints (same slice), or None.
        long_axis_mm: long-axis length.
        short_axis_mm: short-axis length, or None (then ``short_axis_ras_mm`` is None too).
        volume_ml: lesion volume.
        target: RECIST target lesion (else non-target or new).
    """

    tracking_uid: str
    tracking_id: str
    long_axis_ras_mm: tuple[Point, Point]
    short_axis_ras_mm: tuple[Point, Point] | None
    long_axis_mm: float
    short_axis_mm: float | None
    volume_ml: float
    target: bool = False


@dataclass(frozen=True)
class _SliceGeometry:
    """Where each slice of the series lies (LPS mm), for points -> (slice, column, row)."""

    positions: np.ndarray  # (K, 3) ImagePositionPatient, k order
    row_cosine: np.ndarray  # (3,) direction of increasing column index
    column_cosine: np.ndarray  # (3,) direction of increasing row index
    normal: np.ndarray  # (3,) row x column
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    columns: int
    half_gap_mm: float  # half the distance between slice planes along the normal

    @classmethod
    def from_headers(cls, headers: Sequence[pydicom.Dataset], affine_lps: np.ndarray) -> _SliceGeometry:
        first = headers[0]
        orientation = np.array([float(v) for v in first.ImageOrientationPatient])
        row = orientation[:3] / np.linalg.norm(orientation[:3])
        col = orientation[3:] / np.linalg.norm(orientation[3:])
        normal = np.cross(row, col)
        spacing = tuple(float(v) for v in first.PixelSpacing)
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        # The affine's k column is the slice step (the reader's, or the slice thickness for one slice).
        gap = abs(float(np.asarray(affine_lps, dtype=np.float64)[:3, 2] @ normal))
        return cls(positions, row, col, normal, (spacing[0], spacing[1]), int(first.Rows), int(first.Columns), SLICE_PLANE_FRACTION * gap)

    def locate(self, point_ras: Sequence[float]) -> tuple[int, float, float, float]:
        """(slice k, SCOORD column, SCOORD row, distance mm to the slice plane) of a RAS point."""
        lps = np.asarray(point_ras, dtype=np.float64) * _FLIP_XY
        offsets = lps[None, :] - self.positions  # (K, 3)
        distances = offsets @ self.normal
        k = int(np.argmin(np.abs(distances)))
        column = float(offsets[k] @ self.row_cosine) / self.pixel_spacing[1] + 0.5
        row = float(offsets[k] @ self.column_cosine) / self.pixel_spacing[0] + 0.5
        return k, column, row, float(distances[k])


def _check_point(name: str, point: Any) -> Point:
    try:
        values = tuple(float(v) for v in point)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{name}: expected an (x, y, z) RAS point in mm of 3 finite numbers, found {point!r}")
    return values  # type: ignore[return-value]


def _check_length(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{name}: expected a finite non-negative number, found {value!r}")
    return number


def _check_lesions(lesions: Sequence[SRLesion]) -> None:
    """Refuse malformed lesions before the series is read."""
    if len(lesions) == 0:
        # highdicom's MeasurementReport (TID 1500) requires at least one measurement group.
        raise InputError(
            "no lesions to report: a DICOM SR Measurement Report needs at least one lesion "
            "(highdicom refuses an empty TID 1500); write no SR for a visit without lesions, or record that visit elsewhere"
        )
    seen: dict[str, str] = {}
    for n, lesion in enumerate(lesions):
        if not isinstance(lesion, SRLesion):
            raise InputError(f"lesions[{n}]: expected an SRLesion, found {type(lesion).__name__}")
        name = f"lesion {lesion.tracking_id!r} (lesions[{n}])"
        uid = str(lesion.tracking_uid)
        if len(uid) > _UID_MAX_CHARS or not _UID_RE.match(uid):
            raise InputError(
                f"{name}: tracking_uid {uid!r} is not a DICOM UID (dot-separated numbers, at most {_UID_MAX_CHARS} "
                "characters); make one with pydicom.uid.generate_uid() and keep it for this lesion at every visit"
            )
        if uid in seen:
            raise InputError(f"{name}: tracking_uid {uid} is also lesion {seen[uid]!r}'s; each lesion needs its own UID")
        seen[uid] = str(lesion.tracking_id)
        if not str(lesion.tracking_id).strip():
            raise InputError(f"lesions[{n}]: empty tracking_id; give each lesion a human identifier such as 'lesion 1'")
        if (lesion.short_axis_ras_mm is None) != (lesion.short_axis_mm is None):
            raise InputError(f"{name}: short_axis_ras_mm and short_axis_mm must both be given or both be None")
        axes = [("long_axis_ras_mm", lesion.long_axis_ras_mm)]
        if lesion.short_axis_ras_mm is not None:
            axes.append(("short_axis_ras_mm", lesion.short_axis_ras_mm))
        for axis_name, axis in axes:
            try:
                ends = [_check_point(f"{name} {axis_name}", end) for end in axis]
            except TypeError:
                ends = []
            if len(ends) != 2:
                raise InputError(f"{name}: {axis_name} must hold two (x, y, z) endpoints, found {axis!r}")
        _check_length(f"{name} long_axis_mm", lesion.long_axis_mm)
        if lesion.short_axis_mm is not None:
            _check_length(f"{name} short_axis_mm", lesion.short_axis_mm)
        _check_length(f"{name} volume_ml", lesion.volume_ml)


def _polyline(
    name: str, axis: tuple[Point, Point], geometry: _SliceGeometry, where: Path
) -> tuple[int, np.ndarray]:
    """(slice k, (2, 2) float32 SCOORD (column, row) points) of an axis on one slice."""
    located = [geometry.locate(_check_point(name, end)) for end in axis]
    for end, (k, column, row, distance) in zip(axis, located):
        if abs(distance) > geometry.half_gap_mm:
            raise GeometryError(
                f"{where}: {name} endpoint {tuple(round(v, 3) for v in end)} (RAS mm) is {abs(distance):.3g} mm from the "
                f"nearest slice plane (slice {k}), more than half the distance between slices ({geometry.half_gap_mm:.3g} mm): "
                "it is not on this series; measure on the volume read from this series (read_dicom_series) and pass RAS+ mm"
            )
        tol = IMAGE_EDGE_TOL_PX
        if not (-tol <= column <= geometry.columns + tol and -tol <= row <= geometry.rows + tol):
            raise GeometryError(
                f"{where}: {name} endpoint {tuple(round(v, 3) for v in end)} (RAS mm) falls at pixel (column {column:.1f}, "
                f"row {row:.1f}), outside the {geometry.columns}x{geometry.rows} image; measure on the volume read from this series"
            )
    if located[0][0] != located[1][0]:
        raise GeometryError(
            f"{where}: {name} endpoints lie on slices {located[0][0]} and {located[1][0]}; a RECIST axis lies on one axial "
            "slice, pass endpoints on the same slice (as measure_lesions gives them)"
        )
    return located[0][0], np.array([[c, r] for _, c, r, _ in located], dtype=np.float32)


def _evidence(headers: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The series headers (k order), the first with absent Type 2 attributes added empty (as the SEG writer does)."""
    from lungtumor.io.dicom_seg import with_type2_attributes

    return with_type2_attributes(list(headers))


def _private_code(key: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=key, scheme_designator=PRIVATE_SCHEME, meaning=key)


def build_measurement_report(
    series_dir: str | os.PathLike[str],
    lesions: Sequence[SRLesion],
    *,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    observer: str = MANUFACTURER,
    extra_text: dict[str, str] | None = None,
) -> Any:
    """The highdicom ``Comprehensive3DSR`` of ``lesions`` on the series in ``series_dir`` (nothing
    written); see :func:`write_measurement_report`."""
    lesions = list(lesions)
    _check_lesions(lesions)
    texts = {str(k): str(v) for k, v in (extra_text or {}).items()}
    for key in texts:
        if not key.strip() or len(key) > 64:
            raise ConfigError(f"extra_text key {key!r}: expected a non-empty name of at most 64 characters (it names a DICOM code)")
    series = read_series_headers(series_dir)
    where = series.path
    headers = series.headers
    geometry = _SliceGeometry.from_headers(headers, series.affine_lps)

    import highdicom as hd  # about 0.4 s to import: only when an SR is wanted
    from pydicom.sr.codedict import codes

    from lungtumor import __version__

    mm = codes.UCUM.Millimeter
    ml = hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")
    algorithm = hd.sr.AlgorithmIdentification(name=MANUFACTURER, version=str(__version__))

    def line(name: str, concept: Any, length_mm: float, axis: tuple[Point, Point]) -> Any:
        k, points = _polyline(name, axis, geometry, where)
        return hd.sr.Measurement(
            name=concept,
            value=float(length_mm),
            unit=mm,
            referenced_coordinates=[
                hd.sr.CoordinatesForMeasurement(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=points,
                    source_image=hd.sr.SourceImageForRegion.from_source_image(headers[k]),
                )
            ],
        )

    groups = []
    for lesion in lesions:
        name = f"lesion {lesion.tracking_id!r}"
        measurements = [line(f"{name} long axis", codes.SCT.LongAxis, lesion.long_axis_mm, lesion.long_axis_ras_mm)]
        if lesion.short_axis_ras_mm is not None and lesion.short_axis_mm is not None:
            measurements.append(line(f"{name} short axis", codes.SCT.ShortAxis, lesion.short_axis_mm, lesion.short_axis_ras_mm))
        measurements.append(hd.sr.Measurement(name=codes.SCT.Volume, value=float(lesion.volume_ml), unit=ml))
        category = codes.cid6145.TargetLesionAtBaseline if lesion.target else codes.cid6145.NonTargetLesionAtBaseline
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=str(lesion.tracking_uid), identifier=str(lesion.tracking_id)),
                finding_type=codes.SCT.Neoplasm,
                finding_category=codes.cid7150.MorphologicallyAbnormalStructure,
                finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
                method=codes.cid6147.RECIST1Point1,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.BaselineCategory, value=category)],
            )
        )
    # A stable device UID per observer name, so that reports by one observer name one device.
    device_uid = pydicom.uid.generate_uid(entropy_srcs=[MANUFACTURER, str(observer)])
    observation = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_uid, name=str(observer)[:64], manufacturer_name=MANUFACTURER
            ),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation,
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    if texts:
        # TID 1500 row 12: a "Qualitative Evaluations" container of TEXT items, after the measurements.
        container = hd.sr.ContainerContentItem(
            name=hd.sr.CodedConcept(value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        container.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.TextContentItem(name=_private_code(key), value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
                for key, value in texts.items()
            ]
        )
        report[0].ContentSequence.append(container)
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=_evidence(headers),
            content=report,
            series_instance_uid=hd.UID(),
            series_number=DEFAULT_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            software_versions=str(__version__),
            series_description=str(series_description)[:64],
            coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name="lungtumor report fields")] if texts else None,
        )
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's checks of the evidence headers
        raise InputError(
            f"{where}: the series' headers do not make valid DICOM SR evidence ({type(exc).__name__}: {exc}); re-export the series"
        ) from exc


def write_measurement_report(
    path: str | Path,
    series_dir: str | Path,
    lesions: Sequence[SRLesion],
    *,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    observer: str = MANUFACTURER,
    extra_text: dict[str, str] | None = None,
) -> Path:
    """Write RECIST lesion measurements on a CT series as one DICOM SR (TID 1500), atomically.

    Args:
        path: the ``.dcm`` file to write (nothing is written when any check fails).
        series_dir: folder holding the CT series measured (the series that
            :func:`lungtumor.io.dicom.read_dicom_series` reads there; other files are skipped).
        lesions: one measurement group each, in this order.
        series_description: SeriesDescription of the new SR series (at most 64 characters).
        observer: the observer device's name.
        extra_text: name -> text items of the report (e.g. ``{"visit": "baseline"}``).

    Returns:
        ``path``.

    Raises:
        ConfigError: ``path`` does not end in ``.dcm``; an ``extra_text`` name is empty or longer
            than 64 characters.
        InputError: no lesions (a TID 1500 report needs at least one group), a malformed lesion
            (tracking UID, lengths, points), or a series that cannot be read.
        GeometryError: an axis endpoint off every slice of the series or outside the image, or an
            axis whose endpoints lie on two slices.
    """
    target = Path(path)
    if not target.name.lower().endswith(DICOM_SR_SUFFIX):
        raise ConfigError(f"{target}: a DICOM SR output must end in {DICOM_SR_SUFFIX}")
    sr = build_measurement_report(
        series_dir, lesions, series_description=series_description, observer=observer, extra_text=extra_text
    )
    with atomic_output(target, suffix=DICOM_SR_SUFFIX) as tmp:
        sr.save_as(str(tmp), enforce_file_format=True)
    return target
