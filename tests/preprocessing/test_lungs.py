"""The lung-region finder: a hand-built chest, orientations, crops, slice thickness, no lungs, CLI.

Cross-checks: brute force (a convex hull by scipy's Qhull, a dilation by a Euclidean distance
transform, bounding boxes by argwhere), SimpleITK for the written file, and the real scans in
../shared/data/real when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import Delaunay

from lungtumor.cli import main
from lungtumor.errors import ConfigError, GeometryError
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.volume import Volume, reorient
from lungtumor.preprocessing import lungs as lungs_module
from lungtumor.preprocessing.lungs import LungRegionConfig, find_lung_region, include_label

LAS = ("L", "A", "S")

# --------------------------------------------------------------------------------------------
# A hand-built chest (mm, body frame: u towards the patient's left, v anterior, w superior)

LUNG_CENTRES_UV = ((-65.0, 5.0), (65.0, 5.0))
LUNG_SEMI_MM = (45.0, 60.0, 80.0)
LUNG_W_MM = 40.0
PLEURAL_MASS = ((104.0, 5.0, LUNG_W_MM), 14.0)  # on the left lung's lateral pleura, 12 mm into the chest wall
MEDIASTINAL_MASS = ((20.0, 5.0, LUNG_W_MM + 20.0), 12.0)  # on the left lung's medial surface
NODULE = ((60.0, 20.0, LUNG_W_MM + 30.0), 6.0)  # inside the left lung
BOWEL_GAS = ((0.0, 0.0, LUNG_W_MM - LUNG_SEMI_MM[2] - 35.0), 20.0)
#: Lung-like (-800 HU) bowel content below the lungs, 45 ml: left out by the position rule.
BOWEL_MOTTLED = ((60.0, -20.0, LUNG_W_MM - LUNG_SEMI_MM[2] - 45.0), 22.0)
#: A subcarinal mass between the lungs, 18-32 mm from the nearest lung voxel: only the hull reaches it.
MIDLINE_MASS = ((0.0, 5.0, LUNG_W_MM + 10.0), 12.0)


def _chest(
    spacing=(4.0, 4.0, 4.0),
    extent_mm=(320.0, 280.0, 240.0),
    *,
    lungs: bool = True,
    masses: bool = True,
    midline_mass: bool = False,
    airway: bool = False,
    lung_hu: float = -850.0,
    seed: int = 0,
) -> tuple[Volume, np.ndarray, np.ndarray]:
    """A chest CT on an ('L','A','S') grid: body, table, two lungs, masses, bowel gas, noise.

    Returns:
        (ct, lungs, tumour): int16 HU Volume and boolean ground truths on its grid.
    """
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing))
    u, v, w = (
        (np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)
    )  # centred; w = 0 in the middle of the scan
    u, v, w = np.meshgrid(u, v, w, indexing="ij")
    hu = np.full(shape, -1000.0)
    body = (u / 150.0) ** 2 + (v / 100.0) ** 2 <= 1.0
    hu[body] = -100.0  # fat
    hu[(u / 140.0) ** 2 + (v / 90.0) ** 2 <= 1.0] = 40.0  # muscle, mediastinum, abdomen
    hu[(np.abs(u) < 170.0) & (v > -118.0) & (v < -110.0)] = 150.0  # the table, below an air gap
    lung_mask = np.zeros(shape, dtype=bool)
    if lungs:
        for cu, cv in LUNG_CENTRES_UV:
            lung_mask |= ((u - cu) / LUNG_SEMI_MM[0]) ** 2 + ((v - cv) / LUNG_SEMI_MM[1]) ** 2 + (
                (w - LUNG_W_MM) / LUNG_SEMI_MM[2]
            ) ** 2 <= 1.0
        hu[lung_mask] = lung_hu
    tumour = np.zeros(shape, dtype=bool)
    if lungs and masses:
        for (cu, cv, cw), r in (PLEURAL_MASS, MEDIASTINAL_MASS, NODULE, *([MIDLINE_MASS] if midline_mass else [])):
            tumour |= (u - cu) ** 2 + (v - cv) ** 2 + (w - cw) ** 2 <= r**2
        tumour &= body
        hu[tumour] = 35.0
    if airway:  # trachea to the top slice, main bronchi into both lungs, an open mouth on top
        hu[(u**2 + (v - 20.0) ** 2 <= 8.0**2) & (w >= LUNG_W_MM)] = -1000.0
        for side in (-1.0, 1.0):
            for t in np.linspace(0.0, 1.0, 12):
                cu, cv = side * 40.0 * t, 20.0 - 15.0 * t
                hu[(u - cu) ** 2 + (v - cv) ** 2 + (w - LUNG_W_MM) ** 2 <= 5.0**2] = -1000.0
        hu[(np.abs(u) <= 8.0) & (v >= 20.0) & (w >= w.max() - 1.5 * spacing[2])] = -1000.0
    (gu, gv, gw), gr = BOWEL_GAS
    hu[(u - gu) ** 2 + (v - gv) ** 2 + (w - gw) ** 2 <= gr**2] = -1000.0
    (bu, bv, bw), br = BOWEL_MOTTLED
    hu[(u - bu) ** 2 + (v - bv) ** 2 + (w - bw) ** 2 <= br**2] = -800.0
    hu += np.random.default_rng(seed).normal(0.0, 15.0, shape)
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (100.0, -150.0, -300.0)
    ct = Volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine, {"path": "chest.nii.gz"})
    return ct, lung_mask & ~tumour, tumour


def _flip_axis(volume: Volume, axis: int) -> Volume:
    """The same voxels and world positions stored with ``axis`` reversed."""
    n = volume.shape[axis]
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1.0, n - 1
    return Volume(np.flip(volume.array, axis).copy(), volume.affine @ flip, dict(volume.meta))


def _crop(volume: Volume, box: tuple[tuple[int, int], ...]) -> Volume:
    """A sub-box of a volume with its affine moved to the box's first voxel."""
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array([b[0] for b in box], dtype=float) + volume.affine[:3, 3]
    return Volume(volume.array[tuple(slice(a, b) for a, b in box)].copy(), affine, dict(volume.meta))


def _brute_bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """First and last+1 index of the nonzero voxels along each axis (projections)."""
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _check_region(region, ct: Volume) -> np.ndarray:
    """Invariants of every region; returns the mask as bool."""
    assert region.mask.shape == ct.shape
    np.testing.assert_array_equal(region.mask.affine, ct.affine)
    assert region.mask.array.dtype == np.uint8
    assert not (region.mask.array > 1).any()
    m = region.mask.array.view(bool)
    assert region.volume_ml == pytest.approx(np.count_nonzero(m) * ct.voxel_volume_ml)
    assert region.bbox_ijk == _brute_bbox(m)
    return m


# --------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    ("field", "value"),
    [("margin_mm", 0.0), ("margin_mm", -5.0), ("margin_z_mm", 0.0), ("working_spacing_mm", -1.0), ("hull_window_mm", -1.0)],
)
def test_config_rejects_bad_distances(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        LungRegionConfig(**{field: value})
    assert "\n" not in str(info.value)


def test_config_rejects_bad_thresholds_and_keys() -> None:
    with pytest.raises(ConfigError, match="gas_hu"):
        LungRegionConfig(gas_hu=-300.0, air_hu=-400.0)
    with pytest.raises(ConfigError, match="max_gas_fraction"):
        LungRegionConfig(max_gas_fraction=1.5)
    with pytest.raises(ConfigError, match="unknown keys"):
        LungRegionConfig.from_dict({"margin": 3})
    cfg = LungRegionConfig(margin_mm=7.0)
    assert LungRegionConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------------------------
# Building blocks against brute force


def test_hull_spans_match_qhull() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 30, 3), dtype=bool)
    for k in range(3):  # a few random blobs per slice, some far apart
        for _ in range(3):
            ci, cj, r = rng.integers(4, 36), rng.integers(4, 26), rng.integers(1, 5)
            ii, jj = np.ogrid[:40, :30]
            mask[:, :, k] |= (ii - ci) ** 2 + (jj - cj) ** 2 <= r * r
    lo, hi = lungs_module._row_extremes(mask)
    lo, hi = lungs_module._hull_spans(lo, hi)
    i = np.arange(40)[:, None]
    for k in range(3):
        got = (i >= lo[:, k] - 1e-9) & (i <= hi[:, k] + 1e-9)
        points = np.argwhere(mask[:, :, k])
        grid = np.argwhere(np.ones((40, 30), dtype=bool))
        expected = (Delaunay(points).find_simplex(grid, tol=1e-9) >= 0).reshape(40, 30)
        np.testing.assert_array_equal(got, expected)


def test_dilate_spans_match_distance_transform() -> None:
    """A convex body dilated as row intervals = the voxels within the radius (EDT, anisotropic)."""
    spacing = (2.0, 3.0, 2.5)
    shape = (50, 40, 36)
    ii, jj, kk = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    body = ((ii - 50) / 20.0) ** 2 + ((jj - 60) / 30.0) ** 2 + ((kk - 45) / 25.0) ** 2 <= 1.0
    lo, hi = lungs_module._row_extremes(body)
    lo, hi = lungs_module._dilate_spans(lo, hi, spacing, 7.3, 7.3)
    got = (np.arange(shape[0])[:, None, None] >= lo - 1e-9) & (np.arange(shape[0])[:, None, None] <= hi + 1e-9)
    distance = ndimage.distance_transform_edt(~body, sampling=spacing)
    np.testing.assert_array_equal(got, distance <= 7.3)


# --------------------------------------------------------------------------------------------
# The finder on the hand-built chest


def test_region_holds_lungs_and_masses_not_gas() -> None:
    ct, lungs, tumour = _chest()
    region = find_lung_region(ct)
    m = _check_region(region, ct)
    assert region.found and region.warnings == ()
    assert m[lungs].all(), "every lung voxel lies inside the region"
    assert m[tumour].all(), "the pleural and mediastinal masses and the nodule lie inside"
    truth_ml = np.count_nonzero(lungs) * ct.voxel_volume_ml
    assert 0.8 * truth_ml < region.lung_volume_ml < 1.2 * truth_ml
    assert 0.9 * truth_ml < region.volume_ml < 4.0 * truth_ml
    # the bowel gas and bowel content under the lungs, the table and the air around the body stay out
    spacing = np.array(ct.spacing_mm)
    for centre_mm, _ in (BOWEL_GAS, BOWEL_MOTTLED):
        centre = (np.array(centre_mm) / spacing + (np.array(ct.shape) - 1) / 2).round().astype(int)
        assert ct.array[tuple(centre)] < -700 and not m[tuple(centre)]
    assert not m[:, : int(ct.shape[1] * 0.05)].any() and not m[: int(ct.shape[0] * 0.05)].any()
    table_j = int(round((-114.0) / spacing[1] + (ct.shape[1] - 1) / 2))
    assert not m[:, table_j].any()


def test_mass_between_the_lungs_needs_the_hull() -> None:
    ct, lungs, tumour = _chest(midline_mass=True)
    distance = ndimage.distance_transform_edt(~lungs, sampling=ct.spacing_mm)
    cfg = LungRegionConfig()
    assert distance[tumour].max() > cfg.margin_mm + 2.0, "a dilation by the margin alone would miss it"
    m = _check_region(find_lung_region(ct, config=cfg), ct)
    assert m[tumour].all()
    m = _check_region(find_lung_region(ct, config=LungRegionConfig(hull_window_mm=0.0)), ct)
    assert m[tumour].all(), "the hull of a single slice already bridges the lungs"


def test_trachea_open_to_the_outside_does_not_take_the_lungs_along() -> None:
    """Lungs -> bronchi -> trachea -> open mouth -> outside air: one 3D air component of mostly
    pure gas. Outside air is removed per slice, so the lungs are still found, and the trachea
    (pure gas, small cross-sections) does not carry the region up the neck."""
    ct, lungs, tumour = _chest(extent_mm=(320.0, 280.0, 320.0), airway=True)
    air = ct.array < -400
    labels, _ = ndimage.label(air)
    assert labels[0, -1, -1] == labels[tuple(np.argwhere(lungs)[0])], "the lungs reach the outside air (in front) in 3D"
    region = find_lung_region(ct)
    m = _check_region(region, ct)
    assert region.found and m[lungs].all() and m[tumour].all()
    apex_k = int(np.flatnonzero(lungs.any(axis=(0, 1)))[-1])
    top_mm = (region.bbox_ijk[2][1] - 1 - apex_k) * ct.spacing_mm[2]
    assert top_mm <= LungRegionConfig().margin_z_mm + ct.spacing_mm[2]
    assert region.bbox_ijk[2][1] < ct.shape[2] - 5  # the neck above stays out


def test_region_lies_on_the_lungs_lung_mask_has_its_own_grid() -> None:
    ct, lungs, _ = _chest()
    region = find_lung_region(ct)
    lm = region.lung_mask
    assert lm.array.dtype == np.uint8 and lm.array.any()
    # each coarse lung voxel's centre, mapped through the two affines, is a lung voxel of the CT
    ijk = np.argwhere(lm.array)
    world = ijk @ lm.affine[:3, :3].T + lm.affine[:3, 3]
    full = np.rint((world - ct.affine[:3, 3]) @ np.linalg.inv(ct.affine[:3, :3]).T).astype(int)
    assert np.mean(lungs[tuple(full.T)]) > 0.95


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipped_storage_gives_the_same_world_region(axis: int) -> None:
    """LAS vs LPS (j flipped) and the other flips: same world voxels, boxes follow the flip."""
    ct, _, _ = _chest()
    flipped = _flip_axis(ct, axis)
    a = find_lung_region(ct)
    b = find_lung_region(flipped)
    _check_region(b, flipped)
    np.testing.assert_array_equal(np.flip(b.mask.array, axis), a.mask.array)
    assert b.volume_ml == pytest.approx(a.volume_ml)
    n = ct.shape[axis]
    expected_box = list(a.bbox_ijk)
    expected_box[axis] = (n - a.bbox_ijk[axis][1], n - a.bbox_ijk[axis][0])
    assert b.bbox_ijk == tuple(expected_box)


def test_permuted_axes_give_the_same_world_region() -> None:
    """Axes stored (j, k, i) ('A','S','L'): the mask maps back onto that grid exactly."""
    ct, _, _ = _chest()
    perm = np.eye(4)[:, [1, 2, 0, 3]]
    permuted = Volume(np.ascontiguousarray(ct.array.transpose(1, 2, 0)), ct.affine @ perm, {})
    assert permuted.axcodes == ("A", "S", "L")
    a = find_lung_region(ct)
    b = find_lung_region(permuted)
    _check_region(b, permuted)
    np.testing.assert_array_equal(b.mask.array.transpose(2, 0, 1), a.mask.array)


def test_hemithorax_crop_keeps_a_lung_that_touches_the_edge() -> None:
    """No body outline, the lung cut by the field of view: still found, masses inside."""
    ct, lungs, tumour = _chest()
    s = ct.spacing_mm
    centre = (np.array(ct.shape) - 1) / 2

    def index(axis: int, mm: float) -> int:
        return int(round(mm / s[axis] + centre[axis]))

    box = ((index(0, -10.0), index(0, 90.0)), (index(1, -70.0), index(1, 70.0)), (0, ct.shape[2]))
    cropped = _crop(ct, box)
    crop_lungs = lungs[tuple(slice(a, b) for a, b in box)]
    crop_tumour = tumour[tuple(slice(a, b) for a, b in box)]
    assert crop_lungs[-1].any() and crop_lungs[:, 0].sum() == 0  # the lung touches the lateral edge
    assert (cropped.array[:, 0] > -400).all() and (cropped.array[:, -1] > -400).all()  # no outside air
    region = find_lung_region(cropped)
    m = _check_region(region, cropped)
    assert region.found
    assert m[crop_lungs].all() and m[crop_tumour].all() and crop_tumour.any()
    assert any("edge of the field of view" in w for w in region.warnings)


def test_left_half_with_body_outline() -> None:
    ct, lungs, tumour = _chest()
    half = ((ct.shape[0] // 2, ct.shape[0]), (0, ct.shape[1]), (0, ct.shape[2]))
    cropped = _crop(ct, half)
    region = find_lung_region(cropped)
    m = _check_region(region, cropped)
    sl = tuple(slice(a, b) for a, b in half)
    assert region.found and m[lungs[sl]].all() and m[tumour[sl]].all()


@pytest.mark.parametrize("slice_mm", [1.25, 5.0])
def test_thin_and_thick_slices(slice_mm: float) -> None:
    """mm-based parameters: the same anatomy at 1.25 and 5 mm gives the same region (to a slice)."""
    ref_ct, _, _ = _chest(spacing=(4.0, 4.0, 2.5))
    ref = find_lung_region(ref_ct)
    ct, lungs, tumour = _chest(spacing=(4.0, 4.0, slice_mm))
    region = find_lung_region(ct)
    m = _check_region(region, ct)
    assert region.found and m[lungs].all() and m[tumour].all()
    assert region.volume_ml == pytest.approx(ref.volume_ml, rel=0.1)
    z_extent = (region.bbox_ijk[2][1] - region.bbox_ijk[2][0]) * slice_mm
    ref_extent = (ref.bbox_ijk[2][1] - ref.bbox_ijk[2][0]) * 2.5
    assert abs(z_extent - ref_extent) <= 2 * max(slice_mm, 3.0)


def test_fine_in_plane_grid() -> None:
    """0.8 mm pixels (a stride of 4 on the analysis grid) give the same region as 4 mm pixels."""
    extent = (320.0, 280.0, 100.0)
    coarse, _, _ = _chest(spacing=(4.0, 4.0, 5.0), extent_mm=extent)
    fine, lungs, tumour = _chest(spacing=(0.8, 0.8, 5.0), extent_mm=extent)
    region = find_lung_region(fine)
    m = _check_region(region, fine)
    assert m[lungs].all() and m[tumour].all()
    assert region.volume_ml == pytest.approx(find_lung_region(coarse).volume_ml, rel=0.05)


def test_phantom_small_case_tumours_inside() -> None:
    from lungtumor.phantom.dataset import make_case

    ct, label = make_case(11, "SMALL", n_tumours=3)
    region = find_lung_region(ct)
    m = _check_region(region, ct)
    t = label.array > 0
    assert region.found and t.any() and m[t].all()
    assert m.mean() < 0.5


# --------------------------------------------------------------------------------------------
# No lungs


def _water_phantom() -> Volume:
    shape = (48, 48, 20)
    ii, jj = np.meshgrid(np.arange(48) - 23.5, np.arange(48) - 23.5, indexing="ij")
    hu = np.where((ii**2 + jj**2 <= 20**2)[:, :, None], 0, -1000).astype(np.int16) * np.ones(shape, np.int16)
    return Volume(hu, np.diag([-5.0, 5.0, 5.0, 1.0]), {"path": "water.nii.gz"})


@pytest.mark.parametrize("kind", ["abdomen", "water", "all_air", "tissue", "one_slice"])
def test_no_lungs_warns_and_is_empty(kind: str) -> None:
    if kind == "abdomen":
        ct, _, _ = _chest(lungs=False)
    elif kind == "water":
        ct = _water_phantom()
    elif kind == "all_air":
        ct = Volume(np.full((30, 30, 10), -1000, np.int16), np.eye(4), {"path": "air.nii"})
    elif kind == "tissue":
        ct = Volume(np.full((30, 30, 10), 40.0, np.float32), np.eye(4), {"path": "tissue.nii"})
    else:
        ct = Volume(np.full((5, 4, 1), -1000, np.int16), np.eye(4), {"path": "tiny.nii"})
    region = find_lung_region(ct)
    _check_region(region, ct)
    assert not region.found and region.bbox_ijk is None and region.volume_ml == 0.0
    assert not region.mask.array.any()
    assert len(region.warnings) == 1 and "no lungs found" in region.warnings[0]
    assert ct.meta["path"] in region.warnings[0] and "\n" not in region.warnings[0]



def test_the_shared_policy_warns_and_falls_back_when_no_lungs_are_found(caplog) -> None:
    """``preprocess`` and ``predict`` share one find / warn / fall back policy; each names its fallback."""
    from lungtumor.preprocessing.lungs import lung_region_or_whole_scan

    ct = Volume(np.full((30, 30, 10), 40.0, np.float32), np.eye(4), {"path": "tissue.nii"})
    with caplog.at_level("WARNING"):
        region, n_outside = lung_region_or_whole_scan(ct, fallback="segmenting the whole field of view")
    assert not region.found and n_outside == 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [region.warnings[0], "tissue.nii: no lungs found; segmenting the whole field of view"]

def test_pure_gas_lungs_are_not_lungs() -> None:
    """Components of pure gas (-1000 HU throughout) are bowel or outside air, never lung."""
    ct, _, _ = _chest(lung_hu=-1000.0, masses=False)
    assert not find_lung_region(ct).found


# --------------------------------------------------------------------------------------------
# Labels outside the region


def test_include_label_grows_region_and_counts() -> None:
    ct, _, tumour = _chest()
    region = find_lung_region(ct)
    label = np.zeros(ct.shape, np.uint8)
    label[tumour] = 1
    same, n = include_label(region, ct.with_array(label))
    assert n == 0 and same is region
    label[1:4, 1:3, 2:5] = 1  # in the outside air corner
    outside_expected = int(np.count_nonzero((label > 0) & (region.mask.array == 0)))
    grown, n = include_label(region, Volume(label, ct.affine, {"path": "lab.nii.gz"}))
    assert n == outside_expected == 3 * 2 * 3
    np.testing.assert_array_equal(grown.mask.array, region.mask.array | label)
    m = _check_region(grown, ct)
    assert m[1:4, 1:3, 2:5].all()
    assert "18 labelled voxels" in grown.warnings[-1] and "lab.nii.gz" in grown.warnings[-1]
    with pytest.raises(GeometryError, match="resample the label"):
        include_label(region, Volume(label[:, :, :-1].copy(), ct.affine, {}))


# --------------------------------------------------------------------------------------------
# Files and the command line


def test_written_region_reads_back_in_simpleitk(tmp_path: Path) -> None:
    ct, _, _ = _chest()
    lps = _flip_axis(ct, 1)  # ('L','P','S') like the real NSCLC files
    region = find_lung_region(lps)
    path = write_nifti(region.mask, tmp_path / "region.nii.gz")
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), region.mask.array)
    lps_affine = np.eye(4)
    lps_affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps_affine[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine, lps.affine, atol=1e-5)
    back = read_nifti(path)
    assert back.same_grid(lps) and back.array.dtype == np.uint8


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_lungs_nifti_and_errors(tmp_path: Path, capsys) -> None:
    ct, _, _ = _chest()
    src = write_nifti(_flip_axis(ct, 1), tmp_path / "ct.nii.gz")
    out = tmp_path / "out" / "lungs.nii.gz"
    rc, stdout, _ = _run(capsys, "lungs", str(src), str(out))
    assert rc == 0 and "region" in stdout and out.exists()
    written = read_nifti(out)
    expected = find_lung_region(read_nifti(src))
    assert written.same_grid(expected.mask) and written.array.dtype == np.uint8
    np.testing.assert_array_equal(written.array, expected.mask.array)

    rc, _, err = _run(capsys, "lungs", str(tmp_path / "missing.nii.gz"), str(tmp_path / "x.nii.gz"))
    assert rc == 2 and err.count("\n") == 1 and "missing.nii.gz" in err and "Traceback" not in err
    assert not (tmp_path / "x.nii.gz").exists()
    rc, _, err = _run(capsys, "lungs", str(src), str(tmp_path / "x.png"))
    assert rc == 2 and err.count("\n") == 1 and "x.png" in err
    assert not (tmp_path / "x.png").exists()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file")
    rc, _, err = _run(capsys, "lungs", str(bad), str(tmp_path / "y.nii.gz"))
    assert rc == 2 and err.count("\n") == 1 and "bad.nii.gz" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nii.gz", "ct.nii.gz", "out"]
    assert [p.name for p in out.parent.iterdir()] == ["lungs.nii.gz"]  # no temporary left behind


def test_cli_lungs_no_lungs_writes_empty_with_warning(tmp_path: Path, capsys) -> None:
    src = write_nifti(_water_phantom(), tmp_path / "water.nii.gz")
    rc, _, err = _run(capsys, "lungs", str(src), str(tmp_path / "r.nii.gz"))
    assert rc == 0 and "warning" in err and "no lungs found" in err and err.count("\n") == 1
    assert not read_nifti(tmp_path / "r.nii.gz").array.any()


def test_cli_lungs_dicom_series(tmp_path: Path, capsys) -> None:
    from helpers.dicom import write_ct_series
    from lungtumor.io.readers import read_volume

    ct, _, tumour = _chest(spacing=(5.0, 5.0, 5.0))
    write_ct_series(tmp_path / "dicom", ct.array, ct.affine)
    out = tmp_path / "lungs.nii.gz"
    rc, _, _ = _run(capsys, "lungs", str(tmp_path / "dicom"), str(out))
    assert rc == 0
    series = read_volume(tmp_path / "dicom")
    written = read_nifti(out)
    assert written.same_grid(series)
    # the series is the same chest (maybe stored in another order): same world region
    las_written, _ = reorient(written, LAS)
    assert las_written.same_grid(ct)
    assert las_written.array[tumour].all()
    np.testing.assert_array_equal(las_written.array, find_lung_region(ct).mask.array)


# --------------------------------------------------------------------------------------------
# Real scans (skipped without ../shared/data/real)


@pytest.mark.parametrize(
    ("case", "ct_name", "label_name"),
    [("LUNG1-002", "ct.nii.gz", "gtv1_label.nii.gz"), ("LIDC-IDRI-0001", "ct.nii.gz", "nodule_label.nii.gz")],
)
def test_real_scan_tumour_inside(real_data: Path, case: str, ct_name: str, label_name: str) -> None:
    ct = read_nifti(real_data / case / ct_name)
    label = read_nifti(real_data / case / label_name)
    region = find_lung_region(ct)
    m = _check_region(region, ct)
    t = label.array > 0
    assert region.found and region.warnings == ()
    assert m[t].all(), f"{np.count_nonzero(t & ~m)} of {t.sum()} tumour voxels outside"
    assert 0.05 < m.mean() < 0.35
    assert 2000.0 < region.lung_volume_ml < 8000.0


@pytest.mark.slow
def test_real_dicom_hemithorax_crop(real_data: Path) -> None:
    """LUNG1-001 read from DICOM, cropped to the tumour's hemithorax with the lung cut."""
    from lungtumor.io.readers import read_volume

    ct = read_volume(real_data / "LUNG1-001" / "dicom")
    label = read_nifti(real_data / "LUNG1-001" / "gtv1_label.nii.gz")
    assert label.same_grid(ct)
    region = find_lung_region(ct)
    assert region.found and _check_region(region, ct)[label.array > 0].all()
    hit = np.argwhere(label.array)
    box = ((int(hit[:, 0].min()) - 60, int(hit[:, 0].max()) + 10), (int(hit[:, 1].min()) - 15, int(hit[:, 1].max()) + 15), (0, ct.shape[2]))
    box = tuple((max(0, a), min(n, b)) for (a, b), n in zip(box, ct.shape))
    cropped, crop_label = _crop(ct, box), _crop(label, box)
    region = find_lung_region(cropped)
    assert region.found and _check_region(region, cropped)[crop_label.array > 0].all()


def test_prediction_region_ahead_is_predicts_region_and_holds_back_its_warnings(caplog) -> None:
    from lungtumor.io.volume import to_canonical
    from lungtumor.preprocessing.lungs import prediction_region, prediction_region_ahead

    ct, _, _ = _chest()
    rps, _ = reorient(ct, ("R", "P", "S"))
    axcodes, region, held = prediction_region_ahead(rps)
    assert axcodes == ("L", "A", "S") and not held
    expected = prediction_region(to_canonical(rps, axcodes))
    assert region is not None and np.array_equal(region.array, expected.array) and np.allclose(region.affine, expected.affine)

    no_lungs, _, _ = _chest(lungs=False, masses=False)
    caplog.clear()
    with caplog.at_level("WARNING"):
        axcodes, region, held = prediction_region_ahead(no_lungs)
    assert region is None
    assert any("no lungs found" in r.getMessage() for r in held)
    assert not [r for r in caplog.records if r.name == "lungtumor.preprocessing.lungs"]  # held back, not logged
