"""DICOM-SEG output: every frame on its source slice, pixels equal to the mask, references right.

Read back twice: with highdicom (``segread``, its own decoder and checks) and with plain pydicom
(the 1-bit pixel data unpacked by hand, frames located by their ImagePositionPatient through the
mask's affine, never through the writer's own k -> instance map).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.sr.codedict import codes

from helpers import REAL_DATA
from helpers.dicom import rotation, series_affine_ras, write_ct_series
from lungtumor import __version__
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.dicom import read_dicom_series
from lungtumor.io.dicom_seg import (
    dicom_seg_path,
    parse_output_formats,
    prediction_seg_path,
    write_dicom_seg,
)
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.volume import Volume

REAL = REAL_DATA
LUNG1 = REAL / "LUNG1-001"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (8, 6, 5)  # (I, J, K) = (columns, rows, slices)


_affine_ras, _rotation = series_affine_ras, rotation


_R = _rotation(30.0, 20.0)
GEOMETRIES = {
    "axial": _affine_ras((1, 0, 0), (0, 1, 0), (0, 0, 2.5), (-100.25, -50.5, -30.0)),
    # k written against the slice normal: the reader reverses the slices (and files are shuffled)
    "reversed": _affine_ras((-1, 0, 0), (0, 1, 0), (0, 0, -2.5), (100.25, -50.5, 30.0)),
    "oblique": _affine_ras(_R[:, 0], _R[:, 1], _R[:, 2] * 2.5, (-10.5, 22.25, -7.0)),
    "sagittal": _affine_ras((0, 1, 0), (0, 0, -1), (-2.5, 0, 0), (20.0, -40.0, 60.0)),
    # gantry tilt: a sheared grid; a SEG stores one position per frame, so it needs no resampling
    "tilted": _affine_ras((1, 0, 0), (0, 1, 0), (0, 0.5, 2.5), (-100.25, -50.5, -30.0)),
}


def _hu(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=shape).astype(np.int16)


def _mask(shape=SHAPE, seed=1) -> np.ndarray:
    """Random 0/1 mask with empty slices 0 and 3 (omitted frames) and a full-width one."""
    mask = (np.random.default_rng(seed).random(shape) < 0.35).astype(np.uint8)
    mask[:, :, 0] = 0
    mask[:, :, 3] = 0
    return mask


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])


def _series(folder: Path, name: str, seed: int = 0) -> Volume:
    """Write a shuffled synthetic series (CT values ``_hu(seed=seed)``) and read it."""
    write_ct_series(folder, _hu(seed=seed), GEOMETRIES[name], shuffle_seed=seed + 3, description=name)
    return read_dicom_series(folder)


def _write(mask: np.ndarray, ct: Volume, path: Path, **kwargs) -> Path:
    return write_dicom_seg(
        Volume(mask, ct.affine, {"path": "mask"}), ct, path, algorithm_version=kwargs.pop("algorithm_version", __version__),
        checkpoint_name=kwargs.pop("checkpoint_name", "best.ckpt"), **kwargs,
    )


def check_with_pydicom(seg_file: Path, folder: Path, mask: np.ndarray, affine_ras: np.ndarray, ct_hu: np.ndarray | None = None) -> None:
    """Independent read-back: frames located by position, pixels unpacked by hand, UIDs checked.

    ``mask`` (I, J, K) on the grid ``affine_ras``; ``folder`` holds the source series. With
    ``ct_hu`` (the CT written into ``folder``, (I, J, K)) the referenced source file's own pixels
    must be slice k of it: the frame points at the image the mask's slice k was made from.
    """
    ds = pydicom.dcmread(str(seg_file))
    sources = {}
    for p in folder.rglob("*.dcm"):
        src = pydicom.dcmread(str(p), stop_before_pixels=ct_hu is None)
        if src.get("Modality") == "CT":
            sources[str(src.SOPInstanceUID)] = src
    first = next(iter(sources.values()))
    assert ds.SOPClassUID == SEGMENTATION_STORAGE and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY" and ds.BitsAllocated == 1 and ds.BitsStored == 1
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.PatientID == first.PatientID and str(ds.PatientName) == str(first.PatientName)
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID and ds.SOPInstanceUID not in sources
    (ref_series,) = ds.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in ref_series.ReferencedInstanceSequence} == set(sources)
    (segment,) = ds.SegmentSequence
    assert segment.SegmentLabel == "lung tumour" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # Morphologically Abnormal Structure
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # Neoplasm
    assert all(c.CodingSchemeDesignator == "SCT" for c in (*segment.SegmentedPropertyCategoryCodeSequence, *segment.SegmentedPropertyTypeCodeSequence))

    n_frames, rows, columns = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    assert (columns, rows) == mask.shape[:2]
    bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")[: n_frames * rows * columns]
    frames = bits.reshape(n_frames, rows, columns)
    np.testing.assert_array_equal(ds.pixel_array.reshape(frames.shape), frames)  # pydicom's decoder agrees
    orientation = _floats(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient)
    lps_to_voxel = np.linalg.inv(LPS_TO_RAS @ affine_ras)
    seen = []
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        src = sources[uid]
        position = _floats(item.PlanePositionSequence[0].ImagePositionPatient)
        np.testing.assert_allclose(position, _floats(src.ImagePositionPatient), atol=1e-6)
        np.testing.assert_allclose(orientation, _floats(src.ImageOrientationPatient), atol=1e-9)
        identification = item.get("SegmentIdentificationSequence") or ds.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        assert identification[0].ReferencedSegmentNumber == 1
        # The mask slice at this world position: the frame's first pixel is voxel (0, 0, k).
        ijk = (lps_to_voxel @ [*position, 1.0])[:3]
        k = int(round(ijk[2]))
        np.testing.assert_allclose(ijk, [0.0, 0.0, k], atol=1e-6)
        np.testing.assert_array_equal(frames[f], mask[:, :, k].T)  # frame (row, column) = mask (i = column, j = row)
        if ct_hu is not None:
            hu = src.pixel_array.astype(np.int64) * int(src.RescaleSlope) + int(src.RescaleIntercept)
            np.testing.assert_array_equal(hu, ct_hu[:, :, k].T)
        seen.append(k)
    assert len(set(seen)) == len(seen) == n_frames
    for k in set(range(mask.shape[2])) - set(seen):
        assert not mask[:, :, k].any(), f"slice {k} has tumour but no frame"


def check_with_highdicom(seg_file: Path, ct: Volume, mask: np.ndarray, checkpoint_name: str = "best.ckpt") -> None:
    seg = hd.seg.segread(seg_file)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert seg.segment_numbers == [1]
    desc = seg.get_segment_description(1)
    assert desc.segment_label == "lung tumour"
    assert desc.segmented_property_category == codes.cid7150.MorphologicallyAbnormalStructure
    assert desc.segmented_property_type == codes.cid7159.Neoplasm
    assert desc.anatomic_regions == [codes.cid7151.Lung]
    (algorithm,) = desc.algorithm_identification
    assert algorithm.AlgorithmName == "lungtumor" and algorithm.AlgorithmVersion == __version__
    assert f"checkpoint={checkpoint_name}" in algorithm.AlgorithmParameters
    assert seg.SoftwareVersions == __version__ and seg.ContentQualification == "RESEARCH"
    # highdicom maps frames to source instances by their UIDs; slices without a frame must be empty.
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ct.meta["sop_instance_uids"], segment_numbers=[1], combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(pixels.transpose(2, 1, 0), mask)


# --------------------------------------------------------------------------------------------
# Frames on their source slices


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_frames_land_on_their_source_slices(tmp_path: Path, name: str) -> None:
    ct = _series(tmp_path / "ct", name)
    assert ct.shape == SHAPE
    mask = _mask()
    if name == "tilted":
        assert ct.meta["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.5 / 2.5)))
        reference = mask  # NIfTI cannot hold a tilted grid (write_nifti refuses; tests/test_dicom.py)
    else:
        # The NIfTI mask, read back by nibabel, is the reference the SEG must reproduce.
        write_nifti(Volume(mask, ct.affine), tmp_path / "mask.nii.gz", dtype=np.uint8)
        reference = np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj)
        np.testing.assert_array_equal(reference, mask)
    out = _write(reference, ct, tmp_path / "seg" / "case.dcm")
    assert out == tmp_path / "seg" / "case.dcm"
    check_with_pydicom(out, tmp_path / "ct", reference, GEOMETRIES[name], ct_hu=_hu(seed=0))
    check_with_highdicom(out, ct, reference)
    assert [p.name for p in out.parent.iterdir()] == ["case.dcm"]  # no temporary left behind


def test_empty_mask_and_bool_mask(tmp_path: Path) -> None:
    ct = _series(tmp_path / "ct", "oblique")
    empty = np.zeros(SHAPE, np.uint8)
    out = _write(empty, ct, tmp_path / "empty.dcm")
    ds = pydicom.dcmread(str(out))
    assert int(ds.NumberOfFrames) == SHAPE[2]  # a SEG cannot have no frames: all kept, all empty
    check_with_pydicom(out, tmp_path / "ct", empty, GEOMETRIES["oblique"])
    check_with_highdicom(out, ct, empty)
    mask = _mask(seed=4)
    out = _write(mask.astype(bool), ct, tmp_path / "bool.dcm", checkpoint_name="fold0.ckpt", threshold=0.35)
    check_with_highdicom(out, ct, mask, checkpoint_name="fold0.ckpt")
    assert "threshold=0.35" in hd.seg.segread(out).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters


def test_source_headers_are_not_modified(tmp_path: Path) -> None:
    ct = _series(tmp_path / "ct", "axial")
    first = ct.meta["dicom_headers"][0]
    assert "PatientBirthDate" not in first and "StudyDate" not in first  # the fixtures leave them out
    _write(_mask(), ct, tmp_path / "seg.dcm")
    assert "PatientBirthDate" not in first and "StudyDate" not in first
    assert "PixelData" not in first  # headers only: the reader keeps no pixels twice


# --------------------------------------------------------------------------------------------
# Bad input: one-line errors naming the file and the fix, nothing written


def _assert_nothing_written(folder: Path, allowed: set[str] = frozenset()) -> None:
    assert {p.name for p in folder.iterdir()} <= set(allowed)


def test_mask_on_another_grid(tmp_path: Path) -> None:
    ct = _series(tmp_path / "ct", "axial")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case.dcm").write_bytes(b"previous")  # an older result survives a failed write
    shifted = ct.affine.copy()
    shifted[:3, 3] += [0.0, 0.0, 2.5]
    cases = {
        "shape": Volume(np.zeros((8, 6, 4), np.uint8), ct.affine, {"path": "/data/pred_shape.nii.gz"}),
        "shift": Volume(np.zeros(SHAPE, np.uint8), shifted, {"path": "/data/pred_shift.nii.gz"}),
    }
    for name, mask in cases.items():
        with pytest.raises(GeometryError) as err:
            write_dicom_seg(mask, ct, out / "case.dcm", algorithm_version="1", checkpoint_name="m.ckpt")
        message = str(err.value)
        assert "\n" not in message and f"pred_{name}.nii.gz" in message and str(tmp_path / "ct") in message
        assert "resample the mask" in message
    assert (out / "case.dcm").read_bytes() == b"previous"
    _assert_nothing_written(out, {"case.dcm"})


def test_non_binary_mask_and_bad_path(tmp_path: Path) -> None:
    ct = _series(tmp_path / "ct", "axial")
    mask = _mask()
    mask[1, 1, 1] = 2
    with pytest.raises(InputError, match=r"mask: mask holds values other than 0 and 1 \(1 voxels.*threshold it first"):
        _write(mask, ct, tmp_path / "out" / "seg.dcm")
    with pytest.raises(InputError, match="other than 0 and 1"):
        _write(mask.astype(np.float32) * 0.5, ct, tmp_path / "out" / "seg.dcm")
    with pytest.raises(ConfigError, match=r"seg.nii.gz: a DICOM-SEG output must end in .dcm"):
        _write(_mask(), ct, tmp_path / "out" / "seg.nii.gz")
    assert not (tmp_path / "out").exists()


def test_nifti_source_is_refused(tmp_path: Path) -> None:
    write_nifti(Volume(_hu(), GEOMETRIES["axial"]), tmp_path / "ct.nii.gz")
    ct = read_nifti(tmp_path / "ct.nii.gz")
    with pytest.raises(InputError) as err:
        _write(_mask(), ct, tmp_path / "seg.dcm")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'ct.nii.gz'}: a DICOM-SEG needs a DICOM CT series") and "--output-format nifti" in message
    assert "\n" not in message
    _assert_nothing_written(tmp_path, {"ct.nii.gz"})


def test_series_without_frame_of_reference(tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    write_ct_series(folder, _hu(), GEOMETRIES["axial"])
    for p in folder.glob("*.dcm"):
        ds = pydicom.dcmread(str(p))
        del ds.FrameOfReferenceUID
        ds.save_as(str(p), enforce_file_format=True)
    ct = read_dicom_series(folder)
    assert ct.meta["frame_of_reference_uid"] == ""
    with pytest.raises(InputError) as err:
        _write(_mask(), ct, tmp_path / "out" / "seg.dcm")
    message = str(err.value)
    assert message.startswith(f"{folder}: the CT series has no FrameOfReferenceUID") and "re-export" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()


def test_output_format_parsing_and_paths(tmp_path: Path) -> None:
    assert parse_output_formats("nifti") == ("nifti",)
    assert parse_output_formats(" NIfTI , dicom-seg ") == ("nifti", "dicom-seg")
    assert parse_output_formats("dicom-seg,dicom-seg") == ("dicom-seg",)
    for bad in ("", "png", "nifti,rtstruct", ","):
        with pytest.raises(ConfigError, match="expected nifti, dicom-seg or nifti,dicom-seg"):
            parse_output_formats(bad)
    assert dicom_seg_path(tmp_path / "case.nii.gz") == tmp_path / "case.dcm"
    assert dicom_seg_path(tmp_path / "case.nii") == tmp_path / "case.dcm"
    assert dicom_seg_path(tmp_path / "seg.DCM") == tmp_path / "seg.DCM"
    dicom = tmp_path / "dicom"
    write_ct_series(dicom, _hu(), GEOMETRIES["axial"])
    assert prediction_seg_path(dicom, tmp_path / "a.nii.gz", ("nifti",)) is None
    assert prediction_seg_path(dicom, tmp_path / "a.nii.gz", ("nifti", "dicom-seg")) == tmp_path / "a.dcm"
    assert prediction_seg_path(dicom, tmp_path / "a.dcm", ("dicom-seg",)) == tmp_path / "a.dcm"
    with pytest.raises(ConfigError, match=r"a.dcm: with --output-format nifti,dicom-seg give OUTPUT as NAME.nii.gz"):
        prediction_seg_path(dicom, tmp_path / "a.dcm", ("nifti", "dicom-seg"))
    nifti = write_nifti(Volume(_hu(), GEOMETRIES["axial"]), tmp_path / "niftis" / "ct.nii.gz")
    for src, kind in ((nifti, "a NIfTI file"), (nifti.parent, "a folder of NIfTI files")):
        with pytest.raises(InputError, match=f"needs a DICOM series folder as INPUT .*this is {kind}; use --output-format nifti"):
            prediction_seg_path(src, tmp_path / "a.nii.gz", ("dicom-seg",))


# --------------------------------------------------------------------------------------------
# predict --output-format (a real checkpoint file with a tiny random U-Net)


def _checkpoint(path: Path) -> Path:
    from lungtumor.config import PreprocessConfig
    from lungtumor.model.checkpoint import checkpoint_metadata
    from lungtumor.model.unet import ModelConfig, UNet

    torch.manual_seed(0)
    cfg = ModelConfig(width=2, depth=2)
    net = UNet(cfg)
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "lungtumor": checkpoint_metadata(cfg.__dict__, PreprocessConfig(preset="seed", size=16, skip_inferior_slices=0).to_dict(), 0, threshold=0.5),
        },
        path,
    )
    return path


def test_cli_predict_writes_nifti_and_dicom_seg(tmp_path: Path, capsys) -> None:
    from lungtumor.cli import main

    ckpt = _checkpoint(tmp_path / "tiny.ckpt")
    folder = tmp_path / "ct"
    write_ct_series(folder, _hu(shape=(16, 12, 6), seed=5), GEOMETRIES["oblique"], shuffle_seed=7)
    # Random weights give near-constant probabilities: threshold at their median, so that about
    # half the voxels are tumour and every frame has a pattern to get wrong.
    from lungtumor.predict import predict_path

    predict_path(ckpt, folder, tmp_path / "probe" / "p.nii.gz", probabilities=True, device="cpu", progress=False)
    threshold = float(np.median(read_nifti(tmp_path / "probe" / "p_prob.nii.gz").array))
    out = tmp_path / "pred" / "case.nii.gz"
    rc = main(["predict", str(ckpt), str(folder), str(out), "--output-format", "nifti,dicom-seg", "--device", "cpu", "--threshold", f"{threshold!r}"])
    assert rc == 0, capsys.readouterr().err
    assert f"+ {tmp_path / 'pred' / 'case.dcm'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["case.dcm", "case.nii.gz"]
    mask = read_nifti(out)
    ct = read_dicom_series(folder)
    assert mask.same_grid(ct)
    assert 0 < mask.array.sum() < mask.array.size  # random weights: some tumour, not all (else the test is weak)
    check_with_pydicom(tmp_path / "pred" / "case.dcm", folder, mask.array, mask.affine, ct_hu=_hu(shape=(16, 12, 6), seed=5))
    check_with_highdicom(tmp_path / "pred" / "case.dcm", ct, mask.array, checkpoint_name="tiny.ckpt")

    # dicom-seg alone, OUTPUT given as the .dcm name: no NIfTI.
    rc = main(["predict", str(ckpt), str(folder), str(tmp_path / "only" / "seg.dcm"), "--output-format", "dicom-seg", "--device", "cpu", "--threshold", f"{threshold!r}"])
    assert rc == 0, capsys.readouterr().err
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["seg.dcm"]
    check_with_highdicom(tmp_path / "only" / "seg.dcm", ct, mask.array, checkpoint_name="tiny.ckpt")
    # ... with --probabilities: the map is named after the DICOM-SEG, not "seg.dcm_prob"
    rc = main(["predict", str(ckpt), str(folder), str(tmp_path / "only2" / "seg.dcm"), "--output-format", "dicom-seg", "--probabilities", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "only2").iterdir()) == ["seg.dcm", "seg_prob.nii.gz"]


def test_cli_predict_dicom_seg_errors_before_the_model_runs(tmp_path: Path, capsys) -> None:
    from lungtumor.cli import main

    nifti = write_nifti(Volume(_hu(), GEOMETRIES["axial"]), tmp_path / "ct.nii.gz")
    # The checkpoint does not even exist: the request is refused before it is looked at.
    rc = main(["predict", str(tmp_path / "none.ckpt"), str(nifti), str(tmp_path / "o.nii.gz"), "--output-format", "dicom-seg"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "needs a DICOM series folder as INPUT" in err
    rc = main(["predict", str(tmp_path / "none.ckpt"), str(nifti), str(tmp_path / "o.nii.gz"), "--output-format", "rtstruct"])
    err = capsys.readouterr().err
    assert rc == 2 and "--output-format 'rtstruct'" in err
    # No Frame of Reference: refused after reading the series, before segmenting (nothing written).
    folder = tmp_path / "noframe"
    write_ct_series(folder, _hu(), GEOMETRIES["axial"])
    for p in folder.glob("*.dcm"):
        ds = pydicom.dcmread(str(p))
        del ds.FrameOfReferenceUID
        ds.save_as(str(p), enforce_file_format=True)
    ckpt = _checkpoint(tmp_path / "tiny.ckpt")
    rc = main(["predict", str(ckpt), str(folder), str(tmp_path / "out" / "o.nii.gz"), "--output-format", "nifti,dicom-seg", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no FrameOfReferenceUID" in err
    assert not (tmp_path / "out").exists()
    # A gantry-tilted series with a NIfTI requested: refused before segmenting too.
    tilted = tmp_path / "tilted"
    write_ct_series(tilted, _hu(), GEOMETRIES["tilted"])
    rc = main(["predict", str(ckpt), str(tilted), str(tmp_path / "out" / "t.nii.gz"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "gantry-tilted" in err and "--output-format dicom-seg" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Real data (NSCLC-Radiomics LUNG1-001, 134 slices, its GTV-1 label as the mask)


@pytest.mark.slow
def test_real_lung1_gtv_as_dicom_seg(tmp_path: Path) -> None:
    if not (LUNG1 / "dicom").is_dir() or not (LUNG1 / "gtv1_label.nii.gz").is_file():
        pytest.skip(f"real data not found at {LUNG1} (../shared/data/real is only on development machines)")
    ct = read_dicom_series(LUNG1 / "dicom")
    label = read_nifti(LUNG1 / "gtv1_label.nii.gz")
    assert label.same_grid(ct) and label.array.any()
    out = write_dicom_seg(label, ct, tmp_path / "gtv.dcm", algorithm_version=__version__, checkpoint_name="best.ckpt")
    check_with_highdicom(out, ct, label.array)
    check_with_pydicom(out, LUNG1 / "dicom", np.asarray(label.array), label.affine)
    n_slices = int(np.count_nonzero(label.array.any(axis=(0, 1))))
    assert int(pydicom.dcmread(str(out), stop_before_pixels=True).NumberOfFrames) == n_slices
