"""DICOM SR output: RECIST measurements read back with pydicom and highdicom land where they were taken.

Endpoints are chosen as voxel centres of the Volume the reader returns, turned into RAS with its
affine, and written; the SR's SCOORDs are turned back into world coordinates with the referenced
instance's own ImagePositionPatient / ImageOrientationPatient / PixelSpacing, read from its file
(never through the writer's slice map), and must land on the given points.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from helpers.dicom import rotation, series_affine_ras, write_ct_series
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.dicom import read_dicom_series, read_series_headers
from lungtumor.io.sr import SRLesion, write_measurement_report
from lungtumor.io.volume import Volume

REAL = Path(__file__).resolve().parents[2].parent / "shared/data/real"
LUNG1 = REAL / "LUNG1-001"
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (8, 6, 5)  # (I, J, K) = (columns, rows, slices)
K = 3  # the slice the axes are drawn on
LONG_IJ = ((1, 2), (6, 4))
SHORT_IJ = ((2, 1), (3, 5))
TOL_MM = 1e-3


_affine_ras, _rotation = series_affine_ras, rotation


_R = _rotation(30.0, 20.0)
GEOMETRIES = {
    "axial": _affine_ras((1, 0, 0), (0, 1, 0), (0, 0, 2.5), (-100.25, -50.5, -30.0)),
    # columns run towards the patient's right, slices written against the normal (reader reverses)
    "flipped": _affine_ras((-1, 0, 0), (0, 1, 0), (0, 0, -2.5), (100.25, -50.5, 30.0)),
    "oblique": _affine_ras(_R[:, 0], _R[:, 1], _R[:, 2] * 2.5, (-10.5, 22.25, -7.0)),
    # gantry tilt: slice step not along the plane normal
    "tilted": _affine_ras((1, 0, 0), (0, 1, 0), (0, 0.5, 2.5), (-100.25, -50.5, -30.0)),
}


def _series(folder: Path, name: str, seed: int = 0, **kwargs) -> Volume:
    hu = np.random.default_rng(seed).integers(-1024, 400, size=SHAPE).astype(np.int16)
    write_ct_series(folder, hu, GEOMETRIES[name], shuffle_seed=seed + 3, description=name, **kwargs)
    return read_dicom_series(folder)


def _ras(volume: Volume, ijk) -> tuple[float, float, float]:
    point = volume.affine @ np.array([*ijk, 1.0])
    return tuple(float(v) for v in point[:3])


def _axis(volume: Volume, ij_pair, k: int = K):
    return tuple(_ras(volume, (i, j, k)) for i, j in ij_pair)


def _lesion(volume: Volume, uid: str | None = None, **changes) -> SRLesion:
    fields = dict(
        tracking_uid=uid or generate_uid(),
        tracking_id="lesion 1",
        long_axis_ras_mm=_axis(volume, LONG_IJ),
        short_axis_ras_mm=_axis(volume, SHORT_IJ),
        long_axis_mm=12.5,
        short_axis_mm=7.25,
        volume_ml=3.5,
        target=True,
    )
    fields.update(changes)
    return SRLesion(**fields)


def _headers_by_uid(folder: Path) -> dict[str, pydicom.Dataset]:
    """The series' files read directly, by SOPInstanceUID (independent of the writer)."""
    out = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def _scoord_to_ras(points: np.ndarray, image: pydicom.Dataset) -> np.ndarray:
    """(N, 2) SCOORD (column, row), (0, 0) = top-left corner of the top-left pixel -> (N, 3) RAS mm."""
    ipp = np.array([float(v) for v in image.ImagePositionPatient])  # centre of the top-left pixel
    iop = np.array([float(v) for v in image.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
    cols = np.asarray(points, float)[:, 0] - 0.5
    rows = np.asarray(points, float)[:, 1] - 0.5
    lps = ipp + cols[:, None] * col_spacing * iop[:3] + rows[:, None] * row_spacing * iop[3:]
    return lps * np.array([-1.0, -1.0, 1.0])


def _items(node, code_value: str) -> list[pydicom.Dataset]:
    """Every content item below ``node`` whose concept name has ``code_value`` (plain pydicom)."""
    found = []
    for item in node.get("ContentSequence", []):
        names = item.get("ConceptNameCodeSequence", [])
        if names and names[0].get("CodeValue", names[0].get("LongCodeValue")) == code_value:
            found.append(item)
        found.extend(_items(item, code_value))
    return found


def _measurement(group, concept):
    (found,) = group.get_measurements(name=concept)
    return found


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_lands_on_the_endpoints(tmp_path: Path, name: str) -> None:
    volume = _series(tmp_path / "ct", name)
    lesion = _lesion(volume)
    out = write_measurement_report(tmp_path / "sr.dcm", tmp_path / "ct", [lesion])
    assert out == tmp_path / "sr.dcm"
    files = _headers_by_uid(tmp_path / "ct")
    slice_uid = volume.meta["sop_instance_uids"][K]
    # the writer's header-only read orders the slices as the Volume's reader does
    series = read_series_headers(tmp_path / "ct")
    assert [str(h.SOPInstanceUID) for h in series.headers] == volume.meta["sop_instance_uids"]
    np.testing.assert_allclose(LPS_TO_RAS @ series.affine_lps, volume.affine, atol=1e-9)

    # plain pydicom: the SOP class, the study, one group, its tracking UID, the SCOORDs' image
    ds = pydicom.dcmread(str(out))
    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR_STORAGE
    assert ds.Modality == "SR"
    assert ds.StudyInstanceUID == volume.meta["study_uid"]
    assert ds.PatientID == volume.meta["patient_id"]
    assert len(_items(ds, "125007")) == 1  # Measurement Group
    (uid_item,) = _items(ds, "112040")  # Tracking Unique Identifier
    assert uid_item.UID == lesion.tracking_uid
    scoords = [item for item in _items(ds, "260753009") if item.ValueType == "SCOORD"]
    assert len(scoords) == 2
    for item in scoords:
        assert item.GraphicType == "POLYLINE"
        (image,) = item.ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == slice_uid

    # highdicom: the template's view of the same
    sr = hd.sr.srread(out)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    (group,) = sr.content.get_image_measurement_groups()
    assert group.tracking_uid == lesion.tracking_uid
    assert group.tracking_identifier == "lesion 1"
    assert group.finding_type == codes.SCT.Neoplasm
    assert [s.value for s in group.finding_sites] == [codes.SCT.Lung]
    assert group.method == codes.cid6147.RECIST1Point1
    (category,) = group.get_qualitative_evaluations(name=codes.DCM.BaselineCategory)
    assert category.value == codes.cid6145.TargetLesionAtBaseline
    volume_ml = _measurement(group, codes.SCT.Volume)
    assert (volume_ml.value, volume_ml.unit.value, volume_ml.unit.scheme_designator) == (3.5, "ml", "UCUM")
    for concept, length, ij_pair in ((codes.SCT.LongAxis, 12.5, LONG_IJ), (codes.SCT.ShortAxis, 7.25, SHORT_IJ)):
        measurement = _measurement(group, concept)
        assert measurement.value == length
        assert (measurement.unit.value, measurement.unit.scheme_designator) == ("mm", "UCUM")
        (coords,) = measurement.referenced_coordinates
        assert coords.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        (source,) = coords.ContentSequence
        assert source.referenced_sop_instance_uid == slice_uid
        points = coords.value
        # the reader's i is the column, j the row; a voxel centre (i, j) is SCOORD (i + 0.5, j + 0.5)
        np.testing.assert_allclose(points, np.array(ij_pair, float) + 0.5, atol=1e-4)
        back = _scoord_to_ras(points, files[slice_uid])
        np.testing.assert_allclose(back, np.array(_axis(volume, ij_pair)), atol=TOL_MM)


def test_same_uid_links_a_lesion_across_two_visits(tmp_path: Path) -> None:
    study = generate_uid()
    baseline = _series(tmp_path / "v1", "axial", seed=0, study_uid=study)
    followup = _series(tmp_path / "v2", "oblique", seed=1, study_uid=study)
    uid = generate_uid()
    write_measurement_report(tmp_path / "v1.dcm", tmp_path / "v1", [_lesion(baseline, uid)], extra_text={"visit": "baseline"})
    write_measurement_report(
        tmp_path / "v2.dcm",
        tmp_path / "v2",
        [_lesion(followup, uid, long_axis_mm=9.0, target=False), _lesion(followup, tracking_id="new 1", short_axis_ras_mm=None, short_axis_mm=None)],
        extra_text={"visit": "follow-up 1", "RECIST overall response": "PD"},
    )
    first = hd.sr.srread(tmp_path / "v1.dcm").content.get_image_measurement_groups()
    second = hd.sr.srread(tmp_path / "v2.dcm").content.get_image_measurement_groups()
    assert [g.tracking_uid for g in first] == [uid]
    assert second[0].tracking_uid == uid and second[1].tracking_uid != uid
    assert _measurement(second[0], codes.SCT.LongAxis).value == 9.0
    (category,) = second[0].get_qualitative_evaluations(name=codes.DCM.BaselineCategory)
    assert category.value == codes.cid6145.NonTargetLesionAtBaseline
    assert second[1].get_measurements(name=codes.SCT.ShortAxis) == []
    followup_uids = set(followup.meta["sop_instance_uids"])
    ds = pydicom.dcmread(str(tmp_path / "v2.dcm"))
    referenced = {item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in _items(ds, "260753009") if item.ValueType == "SCOORD"}
    assert referenced and referenced <= followup_uids
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue for item in _items(ds, "C0034375")[0].ContentSequence}
    assert texts == {"visit": "follow-up 1", "RECIST overall response": "PD"}
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99LUNGTUMOR"


def _refused(tmp_path: Path, error: type[Exception], lesions, match: str, **kwargs) -> str:
    out = tmp_path / "sr.dcm"
    with pytest.raises(error, match=match) as info:
        write_measurement_report(kwargs.pop("path", out), tmp_path / "ct", lesions, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists()
    assert not list(tmp_path.glob(".sr.dcm.*"))  # no temporary file left behind
    return message


def test_point_off_every_slice_is_refused(tmp_path: Path) -> None:
    volume = _series(tmp_path / "ct", "axial")
    beyond = (LONG_IJ[0][0], LONG_IJ[0][1], SHAPE[2] - 1 + 0.6)  # 0.6 slice past the last one
    lesion = _lesion(volume, long_axis_ras_mm=(_ras(volume, beyond), _ras(volume, (*LONG_IJ[1], K))))
    message = _refused(tmp_path, GeometryError, [lesion], "nearest slice plane")
    assert str(tmp_path / "ct") in message and "lesion 'lesion 1' long axis" in message
    # within half a slice it is accepted (projected onto the nearest plane)
    near = (LONG_IJ[0][0], LONG_IJ[0][1], K + 0.4)
    ok = _lesion(volume, long_axis_ras_mm=(_ras(volume, near), _ras(volume, (*LONG_IJ[1], K))))
    assert write_measurement_report(tmp_path / "ok.dcm", tmp_path / "ct", [ok]).exists()


def test_axis_across_two_slices_or_outside_the_image_is_refused(tmp_path: Path) -> None:
    volume = _series(tmp_path / "ct", "oblique")
    two = _lesion(volume, short_axis_ras_mm=(_ras(volume, (2, 1, K)), _ras(volume, (3, 5, K + 1))))
    _refused(tmp_path, GeometryError, [two], "on slices 3 and 4")
    outside = _lesion(volume, long_axis_ras_mm=(_ras(volume, (-2, 2, K)), _ras(volume, (6, 4, K))))
    _refused(tmp_path, GeometryError, [outside], "outside the 8x6 image")


def test_bad_requests_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    volume = _series(tmp_path / "ct", "axial")
    # An empty list is refused: highdicom's TID 1500 needs at least one measurement group.
    _refused(tmp_path, InputError, [], "no lesions to report")
    _refused(tmp_path, InputError, [_lesion(volume, uid="lesion-3")], "not a DICOM UID")
    uid = generate_uid()
    _refused(tmp_path, InputError, [_lesion(volume, uid), _lesion(volume, uid, tracking_id="b")], "also lesion")
    _refused(tmp_path, InputError, [_lesion(volume, short_axis_mm=None)], "both be given")
    _refused(tmp_path, InputError, [_lesion(volume, volume_ml=float("nan"))], "volume_ml")
    _refused(tmp_path, ConfigError, [_lesion(volume)], "must end in .dcm", path=tmp_path / "sr.json")


def test_real_series_endpoints_on_the_gtv_boundary(tmp_path: Path) -> None:
    if not (LUNG1 / "dicom").is_dir() or not (LUNG1 / "gtv1_label.nii.gz").is_file():
        pytest.skip(f"real data not present at {LUNG1} (a fresh clone has no ../shared)")
    from scipy import ndimage

    from lungtumor.io.nifti import read_nifti
    from lungtumor.lesions.recist import measure_lesions

    # Headers only (the RTSTRUCT beside the slices is skipped): the CT's pixels would only give
    # measure_lesions HU statistics and the side, not the axes, and cost 1.5 s to decode.
    series = read_series_headers(LUNG1 / "dicom")
    mask = read_nifti(LUNG1 / "gtv1_label.nii.gz")
    series_affine = LPS_TO_RAS @ series.affine_lps
    assert mask.shape == (int(series.headers[0].Columns), int(series.headers[0].Rows), len(series.headers))
    np.testing.assert_allclose(mask.affine, series_affine, atol=1e-4)  # the GTV is on the series' grid
    lesion = measure_lesions(mask).lesions[0]
    sr_lesion = SRLesion(
        tracking_uid=generate_uid(),
        tracking_id="GTV-1",
        long_axis_ras_mm=lesion.long_axis_ras_mm,
        short_axis_ras_mm=lesion.short_axis_ras_mm,
        long_axis_mm=lesion.longest_diameter_mm,
        short_axis_mm=lesion.short_axis_mm,
        volume_ml=lesion.volume_ml,
        target=True,
    )
    out = write_measurement_report(tmp_path / "lung1.dcm", LUNG1 / "dicom", [sr_lesion])
    (group,) = hd.sr.srread(out).content.get_image_measurement_groups()
    assert _measurement(group, codes.SCT.Volume).value == pytest.approx(lesion.volume_ml)
    fg = np.asarray(mask.array) != 0
    inverse = np.linalg.inv(series_affine)
    uids = [str(h.SOPInstanceUID) for h in series.headers]
    for concept, ras, length in (
        (codes.SCT.LongAxis, lesion.long_axis_ras_mm, lesion.longest_diameter_mm),
        (codes.SCT.ShortAxis, lesion.short_axis_ras_mm, lesion.short_axis_mm),
    ):
        measurement = _measurement(group, concept)
        assert measurement.value == pytest.approx(length)
        (coords,) = measurement.referenced_coordinates
        uid = coords.ContentSequence[0].referenced_sop_instance_uid
        k = uids.index(uid)
        image = series.headers[k]
        back = _scoord_to_ras(coords.value, image)
        np.testing.assert_allclose(back, np.array(ras), atol=TOL_MM)
        ijk = np.c_[back, np.ones(2)] @ inverse.T
        assert np.allclose(ijk[:, 2], k, atol=1e-3)  # on the referenced slice
        region = fg[:, :, k]
        boundary = np.argwhere(region & ~ndimage.binary_erosion(region, border_value=0))
        assert boundary.size
        for point in ijk[:, :2]:
            # within one voxel (in-plane, in voxel units) of a boundary voxel's centre
            assert np.abs(boundary - point).max(axis=1).min() <= 1.0 + 1e-6
        np.testing.assert_allclose(np.linalg.norm(back[0] - back[1]), length, atol=TOL_MM)
