"""Geometry round trips and NIfTI reading/writing on tiny volumes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from helpers import affine_for
from lungtumor.errors import GeometryError, InputError
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import Volume, reorient, undo_reorient

ORIENTATIONS = ["LAS", "LPS", "RAS", "RPI", "ASL", "oblique"]


def _world(vol: Volume, ijk: tuple[int, int, int]) -> np.ndarray:
    return (vol.affine @ np.array([*ijk, 1.0]))[:3]


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_reorient_round_trip_is_exact(codes: str) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    vol = Volume(arr, affine_for(codes))
    canon, ornt = reorient(vol, ("L", "A", "S"))
    assert canon.axcodes == ("L", "A", "S")
    back = undo_reorient(canon, ornt)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-12)


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_reorient_keeps_every_voxel_at_its_world_position(codes: str) -> None:
    arr = np.zeros((5, 6, 7), dtype=np.int16)
    arr[1, 4, 2] = 7
    vol = Volume(arr, affine_for(codes))
    canon, _ = reorient(vol, ("L", "A", "S"))
    ijk = tuple(int(x) for x in np.argwhere(canon.array == 7)[0])
    np.testing.assert_allclose(_world(canon, ijk), _world(vol, (1, 4, 2)), atol=1e-9)


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_nifti_write_read_keeps_affine_and_values(tmp_path, codes: str) -> None:
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    vol = Volume(arr, affine_for(codes))
    path = write_nifti(vol, tmp_path / "x.nii.gz")
    back = read_nifti(path)
    np.testing.assert_array_equal(back.array, arr)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    img = nib.load(str(path))
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), vol.affine, atol=1e-4)
    assert not list(tmp_path.glob(".x.nii.gz.*")), "temporary file left behind"


def test_spacing_and_voxel_volume() -> None:
    vol = Volume(np.zeros((2, 2, 2)), affine_for("LPS", spacing=(0.5, 0.5, 2.0)))
    assert vol.spacing_mm == pytest.approx((0.5, 0.5, 2.0))
    assert vol.voxel_volume_ml == pytest.approx(0.5e-3)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_nifti(tmp_path / "nope.nii.gz")
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_corrupt_and_truncated_nifti(tmp_path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a nifti file at all")
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_nifti(bad)
    good = write_nifti(Volume(np.ones((20, 20, 20), np.int16), np.eye(4)), tmp_path / "good.nii.gz")
    raw = gzip.decompress(good.read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match="trunc.nii.gz"):
        read_nifti(trunc)


def test_non_3d_and_nan_and_unknown_orientation(tmp_path) -> None:
    p4 = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), str(p4))
    with pytest.raises(GeometryError, match="3D"):
        read_nifti(p4)
    p2 = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3), np.int16), np.eye(4)), str(p2))
    with pytest.raises(GeometryError, match="3D"):
        read_nifti(p2)
    pn = tmp_path / "nan.nii.gz"
    a = np.zeros((3, 3, 3), np.float32)
    a[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(pn))
    with pytest.raises(InputError, match="NaN"):
        read_nifti(pn)
    pu = tmp_path / "noaffine.nii.gz"
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, str(pu))
    with pytest.raises(GeometryError, match="orientation is unknown"):
        read_nifti(pu)
    with pytest.raises(GeometryError, match="singular"):
        Volume(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))


def test_folder_of_wrong_type(tmp_path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown input type"):
        read_volume(tmp_path / "x.txt")


def test_written_files_get_ordinary_permissions(tmp_path) -> None:
    import os
    import stat

    mask = os.umask(0o022)
    try:
        p = write_nifti(Volume(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
@pytest.mark.parametrize("codes", ["LAS", "LPS", "oblique"])
def test_written_nifti_reads_back_identically_in_simpleitk_and_nibabel(tmp_path, dtype, codes) -> None:
    """Our single-file writer (ISA-L deflate) against two independent readers: same voxels, same geometry."""
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    array = (rng.random((9, 7, 5)) * 100).astype(dtype)
    affine = affine_for(codes)
    path = write_nifti(Volume(array, affine), tmp_path / f"x_{codes}.nii.gz")
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), array)
    assert np.allclose(img.affine, affine, atol=1e-5)
    s = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(s).transpose(2, 1, 0), array)
    # SimpleITK is LPS: index (i, j, k) -> diag(-1, -1, 1) @ RAS point
    for ijk in [(0, 0, 0), (8, 6, 4), (3, 2, 1)]:
        ras = affine @ np.r_[ijk, 1.0]
        lps = np.array(s.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk)))
        assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-4)
