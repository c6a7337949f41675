"""DICOM CT series reading and RTSTRUCT rasterisation (synthetic series; real data when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import REAL_DATA
from helpers.dicom import voxels_to_lps, write_ct_series, write_non_image, write_rtstruct
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.dicom import SeriesInfo, list_series, read_dicom_series
from lungtumor.io.importer import import_dicom
from lungtumor.io.nifti import read_nifti
from lungtumor.io.rtstruct import FILL_PILLOW, fill_polygons_even_odd, rasterize_rtstruct, roi_names

REAL = REAL_DATA
LUNG1 = REAL / "LUNG1-001"
SHAPE = (8, 6, 5)  # (I, J, K) = (columns, rows, slices)
SPACING = (0.75, 0.5, 2.5)  # mm along i, j, k; exact in binary and in DS strings


def _affine_ras(row_lps, col_lps, step_lps, origin_lps, spacing=SPACING[:2]) -> np.ndarray:
    """RAS affine from DICOM-style LPS vectors (row/col cosines, slice step, origin)."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_lps, float) * spacing[0]
    lps[:3, 1] = np.asarray(col_lps, float) * spacing[1]
    lps[:3, 2] = step_lps
    lps[:3, 3] = origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    cz, sz = np.cos(np.radians(z_deg)), np.sin(np.radians(z_deg))
    cx, sx = np.cos(np.radians(x_deg)), np.sin(np.radians(x_deg))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


_R = _rotation(30.0, 20.0)
AFFINES = {
    # Head-first supine axial, the usual CT (RAS axcodes L, P, S).
    "axial": _affine_ras((1, 0, 0), (0, 1, 0), (0, 0, 2.5), (-100.25, -50.5, -30.0)),
    # Rows running right-to-left and columns anterior-to-posterior flipped.
    "axial_flipped": _affine_ras((-1, 0, 0), (0, -1, 0), (0, 0, 2.5), (100.25, 50.5, -30.0)),
    "sagittal": _affine_ras((0, 1, 0), (0, 0, -1), (-2.5, 0, 0), (20.0, -40.0, 60.0)),
    "oblique": _affine_ras(_R[:, 0], _R[:, 1], _R[:, 2] * 2.5, (-10.5, 22.25, -7.0)),
    # Gantry tilt: the slice step is not along the slice normal (sheared affine).
    "tilted": _affine_ras((1, 0, 0), (0, 1, 0), (0, 0.5, 2.5), (-100.25, -50.5, -30.0)),
}
EXACT = {"axial", "axial_flipped", "sagittal", "tilted"}  # every number exact in DS strings


def _hu(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3000, size=shape).astype(np.int16)


def _check_affine(name: str, found: np.ndarray, expected: np.ndarray) -> None:
    if name in EXACT:
        np.testing.assert_array_equal(found, expected)
    else:  # cosines rounded to 16-character DS strings
        np.testing.assert_allclose(found, expected, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Reading series


@pytest.mark.parametrize("name", list(AFFINES))
def test_read_series_values_shape_affine(tmp_path: Path, name: str) -> None:
    hu = _hu()
    uid = write_ct_series(tmp_path, hu, AFFINES[name], intercept=-1024.0)
    write_non_image(tmp_path / "plan.dcm", "RTPLAN")
    (tmp_path / "notes.txt").write_text("not dicom")
    vol = read_dicom_series(tmp_path)
    assert vol.array.dtype == np.int16
    assert vol.shape == SHAPE
    np.testing.assert_array_equal(vol.array, hu)
    _check_affine(name, vol.affine, AFFINES[name])
    assert vol.meta["series_uid"] == uid
    assert vol.meta["path"] == str(tmp_path)
    np.testing.assert_allclose(vol.meta["spacing_mm"], [0.75, 0.5, np.linalg.norm(AFFINES[name][:3, 2])])
    # The LPS geometry in meta rebuilds the affine.
    d = np.array(vol.meta["direction_lps"]).reshape(3, 3) * vol.meta["spacing_mm"]
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = d, vol.meta["origin_lps"]
    np.testing.assert_allclose(np.diag([-1.0, -1, 1, 1]) @ lps, vol.affine, atol=1e-12)


def test_slices_sorted_by_position_not_names(tmp_path: Path) -> None:
    """k anti-parallel to the normal in the writer: the reader flips k to run along the normal."""
    affine = _affine_ras((1, 0, 0), (0, 1, 0), (0, 0, -2.5), (-100.25, -50.5, 30.0))
    hu = _hu()
    write_ct_series(tmp_path, hu, affine, shuffle_seed=3)
    vol = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array, hu[:, :, ::-1])
    flip_k = np.eye(4)
    flip_k[2, 2], flip_k[2, 3] = -1, SHAPE[2] - 1
    np.testing.assert_array_equal(vol.affine, affine @ flip_k)
    # Same voxel, same world position.
    np.testing.assert_array_equal(vol.affine @ [1, 2, 0, 1], affine @ [1, 2, SHAPE[2] - 1, 1])


def test_matches_simpleitk(tmp_path: Path) -> None:
    write_ct_series(tmp_path, _hu(), AFFINES["oblique"])
    vol = read_dicom_series(tmp_path)
    _assert_same_as_simpleitk(vol, tmp_path)


def _assert_same_as_simpleitk(vol, folder: Path) -> None:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), vol.meta["series_uid"]))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), vol.array)  # (k,j,i) -> (i,j,k)
    np.testing.assert_allclose(image.GetOrigin(), vol.meta["origin_lps"], atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), vol.meta["spacing_mm"], atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), vol.meta["direction_lps"], atol=1e-6)
    # SimpleITK's LPS index->point map, flipped to RAS, is our affine.
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(np.diag([-1.0, -1, 1, 1]) @ lps, vol.affine, atol=1e-4)


def test_non_integer_rescale_gives_float32(tmp_path: Path) -> None:
    hu = _hu().astype(np.float64) + 0.5
    write_ct_series(tmp_path, hu, AFFINES["axial"], slope=0.5, intercept=-1024.0)
    vol = read_dicom_series(tmp_path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))


def test_out_of_int16_range_gives_float32(tmp_path: Path) -> None:
    hu = _hu().astype(np.int64) + 1024  # stored as uint16 with intercept 0
    hu[0, 0, 2] = 40000  # beyond int16 after rescale
    write_ct_series(tmp_path, hu, AFFINES["axial"], intercept=0.0)
    vol = read_dicom_series(tmp_path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))


def test_two_series_need_a_uid(tmp_path: Path) -> None:
    hu_a, hu_b = _hu(seed=1), _hu(seed=2)
    uid_a = write_ct_series(tmp_path, hu_a, AFFINES["axial"], description="lung", prefix="a")
    uid_b = write_ct_series(tmp_path / "sub", hu_b[:, :, :3], AFFINES["axial"], description="soft", prefix="b")
    write_non_image(tmp_path / "plan.dcm")
    infos = list_series(tmp_path)
    assert sorted(infos, key=lambda i: i.uid) == sorted(
        [SeriesInfo(uid_a, "CT", "lung", 5), SeriesInfo(uid_b, "CT", "soft", 3)], key=lambda i: i.uid
    )
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path)
    message = str(err.value)
    for text in (uid_a, uid_b, "'lung', 5 files", "'soft', 3 files", "series_uid", "--series-uid"):
        assert text in message
    np.testing.assert_array_equal(read_dicom_series(tmp_path, series_uid=uid_b).array, hu_b[:, :, :3])
    np.testing.assert_array_equal(read_dicom_series(tmp_path, series_uid=uid_a).array, hu_a)
    with pytest.raises(InputError, match="no CT series with UID 1.2.3"):
        read_dicom_series(tmp_path, series_uid="1.2.3")


def test_no_series(tmp_path: Path) -> None:
    write_non_image(tmp_path / "plan.dcm", "RTPLAN")
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match=r"no CT image series found .*RTPLAN"):
        read_dicom_series(tmp_path)
    assert list_series(tmp_path) == []
    with pytest.raises(InputError, match="not found"):
        read_dicom_series(tmp_path / "missing")


@pytest.mark.parametrize("keep_fraction", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.97])
def test_corrupt_file_is_named(tmp_path: Path, keep_fraction: float) -> None:
    write_ct_series(tmp_path, _hu(), AFFINES["axial"], shuffle_seed=None)
    bad = tmp_path / "IMG0002.dcm"
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(InputError, match="IMG0002.dcm"):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize("which", ["first", "last"])
def test_corrupt_first_or_last_slice_is_refused_not_dropped(tmp_path: Path, which: str) -> None:
    """A damaged end slice leaves no gap to notice; the series must still not shrink silently."""
    hu = _hu()
    write_ct_series(tmp_path, hu, AFFINES["axial"], shuffle_seed=None)
    files = sorted(tmp_path.glob("IMG*.dcm"))
    bad = files[0] if which == "first" else files[-1]
    bad.write_bytes(bad.read_bytes()[:400])
    with pytest.raises(InputError, match=bad.name):
        read_dicom_series(tmp_path)


def test_missing_slice_is_an_error(tmp_path: Path) -> None:
    write_ct_series(tmp_path, _hu(), AFFINES["axial"], shuffle_seed=None)
    (tmp_path / "IMG0002.dcm").unlink()
    with pytest.raises(GeometryError, match="uneven slice spacing"):
        read_dicom_series(tmp_path)


# --------------------------------------------------------------------------------------------
# RTSTRUCT


CT_RT_SHAPE = (12, 10, 4)


def _square(i0, i1, j0, j1, k) -> np.ndarray:
    return np.array([[i0, j0, k], [i1, j0, k], [i1, j1, k], [i0, j1, k]], dtype=float)


@pytest.fixture
def rt_case(tmp_path: Path, request):
    """(ct_folder, rtstruct_path, affine, expected GTV mask) for the parametrised orientation."""
    name = getattr(request, "param", "axial")
    affine = AFFINES[name]
    ct_dir = tmp_path / "ct"
    write_ct_series(ct_dir, _hu(CT_RT_SHAPE), affine)
    # Edges half-way between pixel centres, so the expected mask has no boundary ties.
    contours = [
        _square(2.5, 6.5, 1.5, 5.5, 1),  # a square: i 3..6, j 2..5 on slice 1
        _square(0.5, 9.5, 0.5, 8.5, 2),  # outer i 1..9, j 1..8 on slice 2 ...
        _square(3.5, 6.5, 2.5, 5.5, 2)[::-1],  # ... minus a hole i 4..6, j 3..5 (opposite winding)
    ]
    expected = np.zeros(CT_RT_SHAPE, np.uint8)
    expected[3:7, 2:6, 1] = 1
    expected[1:10, 1:9, 2] = 1
    expected[4:7, 3:6, 2] = 0
    rois = {
        "GTV-1": [voxels_to_lps(affine, c) for c in contours],
        "Lung L": [voxels_to_lps(affine, _square(0.5, 3.5, 0.5, 3.5, 0))],
    }
    rt_path = write_rtstruct(tmp_path / "rs.dcm", ct_dir, rois)
    return ct_dir, rt_path, affine, expected


@pytest.mark.parametrize("rt_case", ["axial", "oblique", "sagittal"], indirect=True)
def test_rasterize_square_and_hole(rt_case) -> None:
    ct_dir, rt_path, _affine, expected = rt_case
    ct = read_dicom_series(ct_dir)
    mask = rasterize_rtstruct(rt_path, ct, "GTV-1", rule="centre")
    assert mask.array.dtype == np.uint8
    assert mask.same_grid(ct) and np.array_equal(mask.affine, ct.affine)
    np.testing.assert_array_equal(mask.array, expected)
    assert roi_names(rt_path) == ["GTV-1", "Lung L"]


def test_pillow_rule_covers_centre_rule(rt_case) -> None:
    ct_dir, rt_path, _, expected = rt_case
    mask = rasterize_rtstruct(rt_path, read_dicom_series(ct_dir), "GTV-1", rule=FILL_PILLOW).array
    square = mask[:, :, 1].astype(bool)
    assert np.all(square[expected[:, :, 1].astype(bool)])  # edge pixels included: a superset
    assert mask[5, 4, 2] == 0 and mask[1, 1, 2] == 1  # hole kept


def test_unknown_roi_lists_names(rt_case) -> None:
    ct_dir, rt_path, _, _ = rt_case
    ct = read_dicom_series(ct_dir)
    with pytest.raises(InputError, match=r"no ROI named 'GTV-2'.*'GTV-1', 'Lung L'"):
        rasterize_rtstruct(rt_path, ct, "GTV-2")
    with pytest.raises(ConfigError, match="fill rule"):
        rasterize_rtstruct(rt_path, ct, "GTV-1", rule="nearest")


def test_not_an_rtstruct(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", _hu(), AFFINES["axial"], shuffle_seed=None)
    ct = read_dicom_series(tmp_path / "ct")
    with pytest.raises(InputError, match="expected an RTSTRUCT"):
        rasterize_rtstruct(tmp_path / "ct" / "IMG0000.dcm", ct, "GTV-1")
    (tmp_path / "x.dcm").write_text("nope")
    with pytest.raises(InputError, match="not a DICOM file"):
        rasterize_rtstruct(tmp_path / "x.dcm", ct, "GTV-1")


def test_contour_geometry_errors(tmp_path: Path) -> None:
    affine = AFFINES["axial"]
    ct_dir = tmp_path / "ct"
    write_ct_series(ct_dir, _hu(), affine)
    ct = read_dicom_series(ct_dir)
    cases = {
        "between slices": (_square(1.5, 3.5, 1.5, 3.5, 1.5), "slices from the nearest CT slice"),
        "outside": (_square(1.5, 3.5, 1.5, 3.5, 9), "outside the CT's 5 slices"),
    }
    for name, (contour, message) in cases.items():
        path = write_rtstruct(tmp_path / f"{name}.dcm", ct_dir, {"GTV-1": [voxels_to_lps(affine, contour)]})
        with pytest.raises(GeometryError, match=message):
            rasterize_rtstruct(path, ct, "GTV-1")
    other_frame = write_rtstruct(
        tmp_path / "frame.dcm", ct_dir, {"GTV-1": [voxels_to_lps(affine, _square(1.5, 3.5, 1.5, 3.5, 1))]},
        frame_of_reference_uid="1.2.3.4",
    )
    with pytest.raises(GeometryError, match="frame of reference"):
        rasterize_rtstruct(other_frame, ct, "GTV-1")
    points = write_rtstruct(
        tmp_path / "points.dcm", ct_dir, {"Iso": [voxels_to_lps(affine, [[1.0, 1.0, 1.0]])]}, contour_type="POINT"
    )
    with pytest.raises(InputError, match="no CLOSED_PLANAR contours"):
        rasterize_rtstruct(points, ct, "Iso")


def test_fill_matches_matplotlib_on_random_polygon() -> None:
    """Away from ties on the boundary the scanline fill equals matplotlib's point-in-polygon."""
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(7)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = rng.uniform(5, 18, 40)
    poly = np.stack([20 + radii * np.cos(angles), 21 + radii * np.sin(angles)], axis=1)  # star-shaped, simple
    ii, jj = np.meshgrid(np.arange(42), np.arange(44), indexing="ij")
    expected = MplPath(poly).contains_points(np.stack([ii.ravel(), jj.ravel()], 1)).reshape(42, 44)
    found = fill_polygons_even_odd([poly], (42, 44))
    np.testing.assert_array_equal(found, expected)
    # Even-odd: the same polygon twice cancels, a polygon partly off the grid is clipped.
    assert not fill_polygons_even_odd([poly, poly], (42, 44)).any()
    np.testing.assert_array_equal(fill_polygons_even_odd([poly - 10], (42, 44))[:30, :31], expected[10:40, 10:41])


# --------------------------------------------------------------------------------------------
# import_dicom


def test_import_dicom_writes_ct_and_label(rt_case, tmp_path: Path) -> None:
    ct_dir, rt_path, affine, expected = rt_case
    out = import_dicom(ct_dir, tmp_path / "out" / "ct.nii.gz", rt_path, "GTV-1", tmp_path / "out" / "gtv.nii.gz", fill_rule="centre")
    ct = read_nifti(out["ct_path"])
    label = read_nifti(out["label_path"])
    assert ct.array.dtype == np.int16 and label.array.dtype == np.uint8
    np.testing.assert_array_equal(ct.array, read_dicom_series(ct_dir).array)
    np.testing.assert_allclose(ct.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(label.array, expected)
    assert label.same_grid(ct)
    assert out["shape"] == list(CT_RT_SHAPE) and out["label_voxels"] == int(expected.sum())
    np.testing.assert_allclose(out["spacing_mm"], SPACING)
    assert out["label_volume_ml"] == pytest.approx(expected.sum() * np.prod(SPACING) / 1000)

    ct_only = import_dicom(ct_dir, tmp_path / "ct_only.nii.gz")
    assert ct_only["label_path"] is None and ct_only["label_voxels"] is None


def test_import_dicom_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="together"):
        import_dicom(tmp_path, tmp_path / "ct.nii.gz", rtstruct=tmp_path / "rs.dcm", roi="GTV-1")
    with pytest.raises(ConfigError, match=r"\.nii"):
        import_dicom(tmp_path, tmp_path / "ct.png")


# --------------------------------------------------------------------------------------------
# Real data (NSCLC-Radiomics LUNG1-001)


@pytest.fixture(scope="module")
def lung1():
    if not (LUNG1 / "dicom").is_dir() or not (LUNG1 / "gtv1_label.nii.gz").is_file():
        pytest.skip(f"real data not found at {LUNG1} (../shared/data/real is only on development machines)")
    return read_dicom_series(LUNG1 / "dicom"), read_nifti(LUNG1 / "gtv1_label.nii.gz")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_real_lung1_reference_label(lung1) -> None:
    ct, reference = lung1
    assert ct.shape == reference.shape == (512, 512, 134)
    assert np.allclose(ct.affine, reference.affine, atol=1e-3)
    assert ct.axcodes == ("L", "P", "S")
    by_rule = {}
    for rule in ("centre", FILL_PILLOW):
        mask = rasterize_rtstruct(LUNG1 / "dicom" / "2.dcm", ct, "GTV-1", rule=rule)
        assert mask.shape == reference.shape and np.allclose(mask.affine, reference.affine, atol=1e-3)
        by_rule[rule] = _dice(mask.array, reference.array)
    print(f"LUNG1-001 GTV-1 Dice vs reference: {by_rule}")
    # The reference was filled with Pillow's polygon rule (our default): reproduced voxel for voxel.
    pillow = rasterize_rtstruct(LUNG1 / "dicom" / "2.dcm", ct, "GTV-1", rule=FILL_PILLOW)
    np.testing.assert_array_equal(pillow.array, reference.array)
    assert int(pillow.array.sum()) == 56_914
    default = rasterize_rtstruct(LUNG1 / "dicom" / "2.dcm", ct, "GTV-1")
    np.testing.assert_array_equal(default.array, reference.array)
    # The unbiased pixel-centre rule differs only by about one boundary ring on the -i/-j sides.
    assert by_rule["centre"] >= 0.97


def test_real_lung1_matches_simpleitk(lung1) -> None:
    ct, _ = lung1
    assert ct.array.dtype == np.int16
    _assert_same_as_simpleitk(ct, LUNG1 / "dicom")


# --------------------------------------------------------------------------------------------
# What a DICOM-SEG writer needs (meta), and gantry tilt vs NIfTI (read back with SimpleITK)


def test_meta_keeps_ordered_source_headers(tmp_path: Path) -> None:
    affine = _affine_ras((1, 0, 0), (0, 1, 0), (0, 0, -2.5), (-100.25, -50.5, 30.0))  # reader reverses k
    write_ct_series(tmp_path, _hu(), affine, shuffle_seed=5)
    vol = read_dicom_series(tmp_path)
    headers = vol.meta["dicom_headers"]
    assert isinstance(headers, tuple) and len(headers) == SHAPE[2]
    assert [h.SOPInstanceUID for h in headers] == vol.meta["sop_instance_uids"]
    assert all("PixelData" not in h for h in headers)
    for k, h in enumerate(headers):
        position = [float(v) for v in h.ImagePositionPatient]
        assert vol.meta["image_positions_lps"][k] == position
        # slice k of the array sits at that header's position (RAS affine flipped to LPS)
        np.testing.assert_allclose((np.diag([-1.0, -1, 1, 1]) @ vol.affine @ [0, 0, k, 1])[:3], position, atol=1e-9)
        assert h.FrameOfReferenceUID == vol.meta["frame_of_reference_uid"] and h.StudyInstanceUID == vol.meta["study_uid"]
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(0.0, abs=1e-9)


def _sitk_points_ras(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """SimpleITK's world position (flipped LPS -> RAS) of each (i, j, k) index."""
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in ijk]) * [-1.0, -1.0, 1.0]


def _grid_points(shape) -> np.ndarray:
    return np.array(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1).T


@pytest.mark.parametrize("name", ["axial", "oblique", "sagittal"])
def test_untilted_series_nifti_reads_back_in_simpleitk(tmp_path: Path, name: str) -> None:
    """Every voxel of the written NIfTI is where the DICOM series puts it, in SimpleITK too."""
    hu = _hu()
    write_ct_series(tmp_path / "dcm", hu, AFFINES[name])
    vol = read_dicom_series(tmp_path / "dcm")
    out = import_dicom(tmp_path / "dcm", tmp_path / "ct.nii.gz")["ct_path"]
    image = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), hu)
    points = _grid_points(SHAPE)
    expected = (vol.affine @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    np.testing.assert_allclose(_sitk_points_ras(image, points), expected, atol=1e-3)
    # ... and where SimpleITK's own DICOM reader puts them.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm"), vol.meta["series_uid"]))
    dicom = reader.Execute()
    np.testing.assert_allclose(_sitk_points_ras(image, points), _sitk_points_ras(dicom, points), atol=1e-3)


def test_gantry_tilted_series_is_refused_for_nifti(tmp_path: Path) -> None:
    """A tilted series reads exactly (sheared affine), but no NIfTI of it is written."""
    from lungtumor.io.nifti import write_nifti

    write_ct_series(tmp_path / "dcm", _hu(), AFFINES["tilted"])
    vol = read_dicom_series(tmp_path / "dcm")
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan2(0.5, 2.5)))
    for write in (
        lambda: write_nifti(vol, tmp_path / "out" / "ct.nii.gz"),
        lambda: import_dicom(tmp_path / "dcm", tmp_path / "out" / "ct.nii.gz"),
    ):
        with pytest.raises(GeometryError) as err:
            write()
        message = str(err.value)
        assert "\n" not in message and message.startswith(str(tmp_path / "out" / "ct.nii.gz"))
        assert f"gantry-tilted DICOM series {tmp_path / 'dcm'}" in message and "11.31 deg" in message
        assert "dcm2niix" in message and "--output-format dicom-seg" in message
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_why_sheared_nifti_is_refused(tmp_path: Path) -> None:
    """Written the old way (exact sform, rigid qform), SimpleITK reads a tilted grid up to 1 mm off;
    any sheared affine is refused, not only DICOM ones; a shear too small to matter is written."""
    import nibabel as nib

    from lungtumor.io.nifti import QFORM_SFORM_ATOL_MM, qform_mismatch_mm, write_nifti
    from lungtumor.io.volume import Volume

    affine = AFFINES["tilted"]
    img = nib.Nifti1Image(_hu(), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(tmp_path / "old.nii.gz"))
    points = _grid_points(SHAPE)
    expected = (affine @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    error_mm = np.linalg.norm(_sitk_points_ras(sitk.ReadImage(str(tmp_path / "old.nii.gz")), points) - expected, axis=1)
    assert error_mm.max() > 1.0  # the defect the refusal prevents
    assert qform_mismatch_mm(affine, SHAPE) == pytest.approx(error_mm.max(), abs=0.01)
    with pytest.raises(GeometryError, match=r"new.nii.gz: not written: the grid of mem is sheared by 11.31 deg"):
        write_nifti(Volume(_hu(), affine, {"path": "mem"}), tmp_path / "new.nii.gz")
    assert not (tmp_path / "new.nii.gz").exists()

    slight = AFFINES["axial"].copy()
    slight[1, 2] = 0.002  # 0.002 mm per slice: 0.008 mm over the grid, far below a voxel
    assert qform_mismatch_mm(slight, SHAPE) < QFORM_SFORM_ATOL_MM
    write_nifti(Volume(_hu(), slight), tmp_path / "slight.nii.gz")
    found = _sitk_points_ras(sitk.ReadImage(str(tmp_path / "slight.nii.gz")), points)
    exact = (slight @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    assert np.linalg.norm(found - exact, axis=1).max() < QFORM_SFORM_ATOL_MM
