"""Lesion instances and RECIST 1.1 measurements: physical geometry on every kind of grid.

Independent checks: brute force over every pixel corner (longest), dense line sampling (short
axis), analytic ellipses and spheres, exact invariance under axis flips and permutations
(nibabel's orientation transforms), SimpleITK's connected components and centroids, the CLI.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from nibabel import orientations as nio
from scipy.spatial.distance import pdist

from helpers import affine_for
from lungtumor.cli import main
from lungtumor.errors import GeometryError, InputError
from lungtumor.evaluation.matching import match_instances
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.volume import Volume
from lungtumor.lesions.components import CONNECTIVITY, label_instances
from lungtumor.lesions.export import INSTANCES_NIFTI, LESIONS_CSV, LESIONS_JSON, write_lesion_outputs
from lungtumor.lesions.frame import slice_frame
from lungtumor.lesions.recist import (
    SIZE_BAND_NAMES,
    is_measurable,
    longest_diameters_mm,
    measure_lesions,
    size_band_index,
    slice_axes,
)

_CORNERS = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return np.asarray(ijk, dtype=float) @ affine[:3, :3].T + affine[:3, 3]


def _affine(spacing: tuple[float, float, float], codes: str = "RAS", origin=(3.0, -7.0, 11.0)) -> np.ndarray:
    return affine_for(codes, spacing=spacing, origin=origin)


def _draw_ellipse(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    semi_axes_mm: tuple[float, float],
    angle_deg: float,
    slices: range,
) -> np.ndarray:
    """An elliptic cylinder: on each given slice, pixels whose centre lies inside the ellipse.

    The ellipse lies in the grid's own slice plane (for an oblique grid, that plane), centred on
    the grid's in-plane centre plus an off-grid offset, with its major axis at ``angle_deg`` to
    the plane's first in-plane axis.
    """
    frame = slice_frame(affine)
    a_ax, b_ax = frame.plane_axes
    col_a, col_b = affine[:3, a_ax], affine[:3, b_ax]
    e1 = col_a / np.linalg.norm(col_a)
    e2 = col_b - (col_b @ e1) * e1
    e2 /= np.linalg.norm(e2)
    theta = np.deg2rad(angle_deg)
    d1, d2 = math.cos(theta) * e1 + math.sin(theta) * e2, -math.sin(theta) * e1 + math.cos(theta) * e2
    mask = np.zeros(shape, dtype=np.uint8)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    centre_idx = (np.array(shape) - 1) / 2.0 + np.array([0.31, 0.17, 0.0])
    for t in slices:
        centre_idx[frame.slice_axis] = t
        on = idx[idx[:, frame.slice_axis] == t]
        rel = _world(affine, on) - _world(affine, centre_idx[None])[0]
        inside = (rel @ d1 / semi_axes_mm[0]) ** 2 + (rel @ d2 / semi_axes_mm[1]) ** 2 <= 1.0
        mask[tuple(on[inside].T)] = 1
    return mask


# ------------------------------------------------------------------------------------------
# Diameters are physical


GRIDS = {
    "isotropic RAS": ((0.5, 0.5, 2.0), "RAS", (64, 64, 3)),
    "anisotropic LAS": ((0.6, 0.9, 2.5), "LAS", (60, 40, 3)),
    "LPS": ((0.7, 0.55, 1.5), "LPS", (50, 60, 3)),
    "permuted SAL (slices along i)": ((3.0, 0.8, 0.6), "SAL", (3, 40, 56)),
    "oblique": ((0.6, 0.7, 2.0), "oblique", (60, 52, 3)),
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_ellipse_of_known_axes_on_any_grid(grid: str) -> None:
    spacing, codes, shape = GRIDS[grid]
    affine = _affine(spacing, codes)
    frame = slice_frame(affine)
    a_mm, b_mm = 12.0, 7.0
    mask = _draw_ellipse(shape, affine, (a_mm, b_mm), angle_deg=33.0, slices=range(3))
    report = measure_lesions(Volume(mask, affine))
    assert len(report.lesions) == 1
    lesion = report.lesions[0]
    pixel_mm = max(spacing[ax] for ax in frame.plane_axes)
    # Edge-to-edge on a centre-inside rasterisation: within 1.5 pixels of the true axes.
    assert lesion.longest_diameter_mm == pytest.approx(2 * a_mm, abs=1.5 * pixel_mm)
    assert lesion.short_axis_mm == pytest.approx(2 * b_mm, abs=1.5 * pixel_mm)
    assert lesion.slice_index == 0  # equal slices: the most inferior wins (index 0 on these grids)
    # Endpoints are world points on the slice, as far apart as the reported length.
    p, q = np.array(lesion.long_axis_ras_mm)
    assert np.linalg.norm(q - p) == pytest.approx(lesion.longest_diameter_mm, abs=1e-9)
    s, e = np.array(lesion.short_axis_ras_mm)
    assert np.linalg.norm(e - s) == pytest.approx(lesion.short_axis_mm, abs=1e-9)
    assert abs((q - p) @ (e - s)) < 1e-6 * lesion.longest_diameter_mm * lesion.short_axis_mm  # perpendicular
    for ijk in (*lesion.long_axis_ijk, *lesion.short_axis_ijk):
        assert ijk[frame.slice_axis] == lesion.slice_index
    # The major axis direction is recovered (up to the sign) within a few degrees.
    truth = _draw_direction(affine, 33.0)
    cosine = abs((q - p) @ truth) / np.linalg.norm(q - p)
    assert cosine > math.cos(math.radians(6.0))


def _draw_direction(affine: np.ndarray, angle_deg: float) -> np.ndarray:
    frame = slice_frame(affine)
    col_a, col_b = affine[:3, frame.plane_axes[0]], affine[:3, frame.plane_axes[1]]
    e1 = col_a / np.linalg.norm(col_a)
    e2 = col_b - (col_b @ e1) * e1
    e2 /= np.linalg.norm(e2)
    theta = np.deg2rad(angle_deg)
    return math.cos(theta) * e1 + math.sin(theta) * e2


def test_same_millimetres_as_the_isotropic_ras_grid() -> None:
    results = {}
    for grid, (spacing, codes, shape) in GRIDS.items():
        affine = _affine(spacing, codes)
        mask = _draw_ellipse(shape, affine, (12.0, 7.0), angle_deg=33.0, slices=range(3))
        lesion = measure_lesions(Volume(mask, affine)).lesions[0]
        results[grid] = (lesion.longest_diameter_mm, lesion.short_axis_mm, lesion.volume_ml)
    ref_long, ref_short, _ = results["isotropic RAS"]
    for grid, (long_mm, short_mm, _) in results.items():
        spacing, _, _ = GRIDS[grid]
        tol = 1.5 * max(sorted(spacing)[:2])
        assert long_mm == pytest.approx(ref_long, abs=tol), grid
        assert short_mm == pytest.approx(ref_short, abs=tol), grid


@pytest.mark.parametrize("target", ["LAS", "LPS", "RPI", "SAL", "PIR"])
def test_flips_and_permutations_change_nothing(target: str) -> None:
    rng = np.random.default_rng(4)
    shape = (18, 16, 7)
    affine = _affine((0.8, 0.9, 2.5), "RAS")
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:12, 4:13, 1:6] = rng.random((9, 9, 5)) < 0.7
    mask[14:17, 1:4, 2:4] = 1
    ct = (rng.normal(-700, 50, shape)).astype(np.int16)
    ct[:, :, :] += (np.arange(shape[0]) * 30)[:, None, None].astype(np.int16)  # a body off to one side
    base = measure_lesions(Volume(mask, affine), Volume(ct, affine))

    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(target)))
    moved_aff = affine @ nio.inv_ornt_aff(ornt, shape)
    moved = measure_lesions(
        Volume(nio.apply_orientation(mask, ornt), moved_aff), Volume(nio.apply_orientation(ct, ornt), moved_aff)
    )
    assert len(moved.lesions) == len(base.lesions) >= 2
    for a, b in zip(base.lesions, moved.lesions):
        assert b.voxels == a.voxels and b.volume_ml == pytest.approx(a.volume_ml)
        assert b.longest_diameter_mm == pytest.approx(a.longest_diameter_mm, abs=1e-9)
        assert b.short_axis_mm == pytest.approx(a.short_axis_mm, abs=1e-9)
        np.testing.assert_allclose(b.centroid_ras_mm, a.centroid_ras_mm, atol=1e-9)
        assert b.side == a.side and b.measurable == a.measurable
        assert b.hu_mean == pytest.approx(a.hu_mean) and b.hu_max == a.hu_max
        # Same slice in the world (its z), whichever file axis and direction it is.
        assert _world(moved_aff, np.array(b.long_axis_ijk))[0][2] == pytest.approx(a.long_axis_ras_mm[0][2])


def test_sphere_across_slices() -> None:
    spacing = (0.7, 0.7, 2.0)
    affine = _affine(spacing, "LAS")
    shape = (48, 48, 17)
    radius = 8.0
    centre_idx = np.array([23.3, 24.1, 8.3])  # 0.3 slices = 0.6 mm above slice 8
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    rel = _world(affine, idx.reshape(-1, 3)) - _world(affine, centre_idx[None])[0]
    mask = (np.linalg.norm(rel, axis=1) <= radius).reshape(shape).astype(np.uint8)
    lesion = measure_lesions(Volume(mask, affine)).lesions[0]
    expected = 2 * math.sqrt(radius**2 - (0.3 * spacing[2]) ** 2)  # the chord of the nearest slice
    assert lesion.slice_index == 8
    assert lesion.longest_diameter_mm == pytest.approx(expected, abs=1.5 * spacing[0])
    assert lesion.short_axis_mm == pytest.approx(expected, abs=1.5 * spacing[0])
    assert lesion.slice_thickness_mm == pytest.approx(2.0)
    assert lesion.measurable
    # Sphere volume within a few per cent.
    assert lesion.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.06)


def _brute_longest(region: np.ndarray, to_plane: np.ndarray) -> float:
    pix = np.argwhere(region)
    corners = (pix[:, None, :] + _CORNERS[None, :, :2]).reshape(-1, 2) @ to_plane.T
    return float(pdist(corners).max())


def _brute_short(region: np.ndarray, to_plane: np.ndarray, long_ab: np.ndarray, step_mm: float = 0.01) -> float:
    """Dense sampling: on lines perpendicular to the long axis, the span of points inside a pixel."""
    inv = np.linalg.inv(to_plane)
    p, q = long_ab @ to_plane.T
    u = (q - p) / np.linalg.norm(q - p)
    v = np.array([-u[1], u[0]])
    pix = np.argwhere(region)
    proj_u = ((pix[:, None, :] + _CORNERS[None, :, :2]).reshape(-1, 2) @ to_plane.T) @ u
    proj_v = ((pix[:, None, :] + _CORNERS[None, :, :2]).reshape(-1, 2) @ to_plane.T) @ v
    cs = np.arange(proj_u.min(), proj_u.max() + step_mm, step_mm)
    ts = np.arange(proj_v.min() - step_mm, proj_v.max() + step_mm, step_mm)
    best = 0.0
    padded = np.pad(region, 1)
    for c in cs:
        xy = c * u[None] + ts[:, None] * v[None]
        ab = np.floor(xy @ inv.T + 0.5).astype(int) + 1
        ok = (ab >= 0).all(axis=1) & (ab[:, 0] < padded.shape[0]) & (ab[:, 1] < padded.shape[1])
        inside = np.zeros(len(ts), dtype=bool)
        inside[ok] = padded[ab[ok, 0], ab[ok, 1]]
        if inside.any():
            hit = ts[inside]
            best = max(best, float(hit.max() - hit.min()))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brute_force_on_tiny_regions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    region = rng.random((7, 6)) < 0.5
    region[3, 3] = True
    to_plane = np.array([[0.7, 0.25], [0.0, 1.1]])  # anisotropic and sheared pixels
    axes = slice_axes(region, to_plane)
    assert axes.long_mm == pytest.approx(_brute_longest(region, to_plane), abs=1e-9)
    # Sampling at 0.01 mm along and across finds the span to within a few sampling steps.
    assert axes.short_mm == pytest.approx(_brute_short(region, to_plane, axes.long_ab), abs=0.05)
    # One pixel: its diagonal (edge to edge), short axis across it.
    single = np.zeros((3, 3), dtype=bool)
    single[1, 1] = True
    one = slice_axes(single, np.diag([0.6, 0.8]))
    assert one.long_mm == pytest.approx(1.0)  # sqrt(0.6^2 + 0.8^2)
    # Across the diagonal: the chord through the centre, min(0.6 / 0.8, 0.8 / 0.6) * 1.0 mm.
    assert one.short_mm == pytest.approx(0.75)


def test_row_of_pixels_measures_edge_to_edge() -> None:
    region = np.zeros((12, 3), dtype=bool)
    region[1:11, 1] = True  # 10 pixels of 0.8 mm (the other axis 0.5 mm)
    axes = slice_axes(region, np.diag([0.8, 0.5]))
    assert axes.long_mm == pytest.approx(math.hypot(8.0, 0.5))  # corner to opposite corner
    assert axes.short_mm == pytest.approx(0.5 * math.hypot(8.0, 0.5) / 8.0)  # the chord across that diagonal


def test_longest_over_slices_by_brute_force() -> None:
    rng = np.random.default_rng(7)
    affine = _affine((0.9, 0.6, 3.0), "LPS")
    mask = np.zeros((9, 10, 5), dtype=np.uint8)
    mask[1:8, 1:9, 1:4] = rng.random((7, 8, 3)) < 0.55
    labels, count = label_instances(mask)
    frame = slice_frame(affine)
    got = longest_diameters_mm(labels, count, affine)
    for lesion_id in range(1, count + 1):
        inst = labels == lesion_id
        best = 0.0
        for t in range(mask.shape[2]):
            pix = np.argwhere(inst[:, :, t])
            if pix.size:
                ijk = np.concatenate([pix, np.full((len(pix), 1), t)], axis=1).astype(float)
                corners = (ijk[:, None, :] + _CORNERS[None]).reshape(-1, 3)
                best = max(best, float(pdist(_world(affine, corners)).max()) if len(corners) > 1 else 0.0)
        assert got[lesion_id - 1] == pytest.approx(best, abs=1e-9)
    assert frame.slice_axis == 2


def test_tilted_slices_are_refused() -> None:
    tilt = np.deg2rad(35.0)
    rot = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.7, 2.0])
    with pytest.raises(GeometryError, match="tilted 35.0 degrees.*resample"):
        slice_frame(affine, "scan.nii.gz")
    assert slice_frame(affine_for("oblique")).tilt_deg == pytest.approx(7.0, abs=1e-6)


# ------------------------------------------------------------------------------------------
# Instances, RECIST flags, sides


def test_instances_ids_by_volume_and_connectivity_against_simpleitk(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    affine = _affine((0.8, 0.9, 2.5), "LAS")
    mask = np.zeros((20, 18, 9), dtype=np.uint8)
    mask[1:3, 1:3, 1:2] = 1  # 4 voxels
    mask[3, 3, 2] = 1  # corner contact: the same 26-connected lesion (5 voxels)
    mask[8:14, 8:14, 3:6] = 1  # 108 voxels
    mask[16:19, 1:4, 6:8] = 1  # 18 voxels
    mask[1, 16, 7] = 1  # 1 voxel
    report = measure_lesions(Volume(mask, affine, {"path": "m.nii.gz"}))
    assert CONNECTIVITY == 26
    assert [les.voxels for les in report.lesions] == [108, 18, 5, 1]
    assert [les.id for les in report.lesions] == [1, 2, 3, 4]
    path = write_nifti(report.instances, tmp_path / "inst.nii.gz")
    image = sitk.ReadImage(str(path))
    ours = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # sitk arrays are (k, j, i)
    theirs = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.ReadImage(str(write_nifti(Volume(mask, affine), tmp_path / "m.nii.gz"))), True), 0, True)
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(theirs).transpose(2, 1, 0))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(image)
    for lesion in report.lesions:
        lps = np.array(stats.GetCentroid(lesion.id))
        np.testing.assert_allclose(lesion.centroid_ras_mm, lps * [-1, -1, 1], atol=1e-4)
        assert lesion.volume_ml == pytest.approx(stats.GetPhysicalSize(lesion.id) / 1000, rel=1e-5)


def test_measurable_rules() -> None:
    assert is_measurable(10.0, 1.0) and not is_measurable(9.99, 1.0)
    assert is_measurable(10.0, 5.0)  # 5 mm slices are not "thicker than 5 mm"
    assert not is_measurable(11.0, 6.0) and is_measurable(12.0, 6.0)
    np.testing.assert_array_equal(size_band_index([0.0, 9.99, 10.0, 19.9, 20.0, 30.0, 80.0]), [0, 0, 1, 1, 2, 3, 3])
    assert SIZE_BAND_NAMES[0] == "<10 mm" and SIZE_BAND_NAMES[3] == ">30 mm"


def _body_ct(shape: tuple[int, int, int]) -> np.ndarray:
    ct = np.full(shape, -1000, dtype=np.int16)
    ct[2:-2, 2:-2, :] = -800  # lungs and body fill the middle of the field
    ct[2:-2, 2:4, :] = 40
    return ct


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS"])
def test_side_from_geometry_and_from_lungs(codes: str) -> None:
    shape = (40, 20, 6)
    ras = _affine((1.0, 1.0, 3.0), "RAS", origin=(-19.5, 0.0, 0.0))  # x = 0 at the array's centre
    mask = np.zeros(shape, dtype=np.uint8)
    mask[30:34, 8:12, 2:4] = 1  # x > 0 in RAS: the patient's right
    mask[5:8, 8:11, 2:4] = 1  # the patient's left
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[22:38, 3:17, :] = 1
    lungs[2:18, 3:17, :] = 1
    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(codes)))
    aff = ras @ nio.inv_ornt_aff(ornt, shape)

    def vol(a: np.ndarray) -> Volume:
        return Volume(nio.apply_orientation(a, ornt), aff)

    geometric = measure_lesions(vol(mask), vol(_body_ct(shape)))
    assert [(les.side, les.side_source) for les in geometric.lesions] == [("right", "body midline"), ("left", "body midline")]
    with_lungs = measure_lesions(vol(mask), vol(_body_ct(shape)), lungs=vol(lungs))
    assert [(les.side, les.side_source) for les in with_lungs.lesions] == [("right", "lung region"), ("left", "lung region")]
    # Labelled lungs (two values) give the same; the label values themselves do not matter.
    labelled = lungs * np.where(np.arange(shape[0]) < 20, 7, 3)[:, None, None].astype(np.uint8)
    assert [les.side for les in measure_lesions(vol(mask), lungs=vol(labelled)).lesions] == ["right", "left"]
    assert measure_lesions(vol(mask)).lesions[0].side is None  # neither CT nor lungs: unknown


def test_probabilities_and_hu_statistics() -> None:
    affine = _affine((1.0, 1.0, 1.0))
    mask = np.zeros((8, 8, 4), dtype=np.uint8)
    mask[2:4, 2:4, 1] = 1
    ct = np.zeros(mask.shape, dtype=np.int16)
    ct[2, 2, 1] = 100
    prob = np.zeros(mask.shape, dtype=np.float32)
    prob[2:4, 2:4, 1] = [[0.6, 0.7], [0.8, 0.9]]
    lesion = measure_lesions(Volume(mask, affine), Volume(ct, affine), probabilities=Volume(prob, affine)).lesions[0]
    assert lesion.hu_mean == pytest.approx(25.0) and lesion.hu_max == 100.0
    assert lesion.prob_mean == pytest.approx(0.75) and lesion.prob_max == pytest.approx(0.9)
    assert lesion.bbox_ijk_min == (2, 2, 1) and lesion.bbox_ijk_max == (3, 3, 1)
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        measure_lesions(Volume(mask, affine), probabilities=Volume(prob * 255, affine))


def test_matching_rule() -> None:
    ref = np.zeros((20, 6, 3), dtype=np.uint8)
    ref[1:4, 1:4, 1] = 1  # lesion A
    ref[6:9, 1:4, 1] = 1  # lesion B
    ref[14:17, 1:4, 1] = 1  # lesion C, overlapped by two predictions
    pred = np.zeros_like(ref)
    pred[2:8, 3, 1] = 1  # one prediction bridging A and B: counts once
    pred[14, 1:4, 1] = 1
    pred[16, 1:4, 1] = 1  # a second prediction on C: neither found twice nor FP
    pred[19, 5, 2] = 1  # false positive
    rl, nr = label_instances(ref)
    pl, npred = label_instances(pred)
    m = match_instances(pl, npred, rl, nr)
    assert (nr, npred) == (3, 4)
    assert int(m.ref_found.sum()) == 2 and int(m.pred_false_positive.sum()) == 1
    assert len(m.pairs) == 2
    # A bridge and a separate hit on one of its lesions: both lesions found (maximum matching).
    pred2 = pred.copy()
    pred2[1, 1, 1] = 1  # touches only lesion A (two voxels from the bridge)
    pl2, n2 = label_instances(pred2)
    m2 = match_instances(pl2, n2, rl, nr)
    assert bool(m2.ref_found.all())


def test_bad_inputs() -> None:
    affine = _affine((1.0, 1.0, 1.0))
    mask = np.zeros((6, 6, 3), dtype=np.uint8)
    mask[2, 2, 1] = 2
    with pytest.raises(InputError, match=r"m\.nii\.gz: tumour mask must hold only 0 and 1, found values 0, 2"):
        measure_lesions(Volume(mask, affine, {"path": "m.nii.gz"}))
    ok = (mask > 0).astype(np.uint8)
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    with pytest.raises(GeometryError, match=r"mask m\.nii\.gz .* is not on the grid of CT c\.nii\.gz"):
        measure_lesions(Volume(ok, affine, {"path": "m.nii.gz"}), Volume(np.zeros((6, 6, 3)), shifted, {"path": "c.nii.gz"}))


# ------------------------------------------------------------------------------------------
# Files and the command line


def _phantom_files(tmp_path: Path) -> tuple[Path, Path, Volume, Volume]:
    from lungtumor.phantom.dataset import make_case

    ct, label = make_case(5, "SMALL", n_tumours=2)
    ct_path = write_nifti(ct, tmp_path / "ct.nii.gz")
    mask_path = write_nifti(label, tmp_path / "mask.nii.gz")
    return ct_path, mask_path, read_nifti(ct_path), read_nifti(mask_path)


def test_outputs_agree_with_each_other(tmp_path: Path) -> None:
    _, _, ct, mask = _phantom_files(tmp_path)
    report = measure_lesions(mask, ct)
    files = write_lesion_outputs(report, tmp_path / "out", model_facts={"checkpoint": "best.ckpt", "threshold": 0.5})
    assert sorted(p.name for p in files) == sorted([INSTANCES_NIFTI, LESIONS_CSV, LESIONS_JSON])
    doc = json.loads((tmp_path / "out" / LESIONS_JSON).read_text())
    assert doc["coordinate_system"].startswith("RAS+")
    assert doc["threshold"] == 0.5 and doc["model"]["checkpoint"] == "best.ckpt"
    assert doc["scan"]["shape"] == list(ct.shape) and doc["scan"]["axcodes"] == "LAS"
    assert doc["lesion_count"] == len(report.lesions) >= 1
    with open(tmp_path / "out" / LESIONS_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row, lesion in zip(rows, doc["lesions"]):
        assert int(row["id"]) == lesion["id"]
        assert float(row["longest_diameter_mm"]) == lesion["longest_diameter_mm"]
        assert float(row["volume_ml"]) == lesion["volume_ml"]
        assert float(row["centroid_x_ras_mm"]) == lesion["centroid_ras_mm"][0]
        assert row["measurable"] == ("true" if lesion["measurable"] else "false")
    instances = read_nifti(tmp_path / "out" / INSTANCES_NIFTI)
    assert instances.same_grid(mask) and int(instances.array.max()) == len(report.lesions)
    np.testing.assert_array_equal(instances.array != 0, mask.array != 0)
    # The phantom's tumours are spheres-with-noise of 3-50 mm: diameters land in that range.
    assert all(3.0 <= les["longest_diameter_mm"] <= 60.0 for les in doc["lesions"])


def test_cli_lesions_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ct_path, mask_path, _, mask = _phantom_files(tmp_path)
    out = tmp_path / "les"
    assert main(["lesions", str(mask_path), str(ct_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([INSTANCES_NIFTI, LESIONS_CSV, LESIONS_JSON])
    assert "lesion" in capsys.readouterr().out

    bad = mask.array.astype(np.uint8) * 255
    bad_path = write_nifti(Volume(bad, mask.affine), tmp_path / "bad.nii.gz")
    moved = mask.affine.copy()
    moved[2, 3] += 1.0
    off_path = write_nifti(Volume(mask.array, moved), tmp_path / "off.nii.gz")
    for given, expected in ((bad_path, "only 0 and 1"), (off_path, "is not on the grid")):
        target = tmp_path / f"never_{given.stem}"
        assert main(["lesions", str(given), str(ct_path), "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and str(given) in err and "\n" not in err
        assert not target.exists()  # nothing half-written


def test_froc_counts_equal_labelling_every_threshold() -> None:
    from scipy import ndimage

    from lungtumor.evaluation.froc import FROC_THRESHOLDS, froc_counts

    rng = np.random.default_rng(11)
    shape = (40, 36, 12)
    prob = ndimage.gaussian_filter(rng.random(shape), 1.5)
    prob = np.clip((prob - prob.min()) / (prob.max() - prob.min()), 0, 1) ** 3
    ref = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.53
    fast = froc_counts(prob, ref)
    ref_labels, n_ref = label_instances(ref)
    assert fast["lesions_ref"] == n_ref >= 3
    for index, t in enumerate(FROC_THRESHOLDS):
        cand, n_cand = label_instances(prob >= t)
        match = match_instances(cand, n_cand, ref_labels, n_ref)
        assert fast["found"][index] == int(match.ref_found.sum()), t
        assert fast["false_positives"][index] == int(match.pred_false_positive.sum()), t
    assert max(fast["false_positives"]) > 0 and max(fast["found"]) > 0


@pytest.mark.parametrize("density", [0.02, 0.3, 0.6])
def test_box_by_box_labelling_equals_one_ndimage_label(density: float) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((70, 60, 50)) < density  # larger than the split threshold: split at empty planes
    mask[:, 20:23, :] = False  # empty planes to split at
    mask[30:33, :, :] = False
    ours, n = label_instances(mask)
    theirs, n_theirs = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(theirs.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")  # ndimage numbers by first voxel in C order
    remap = np.zeros(n_theirs + 1, dtype=np.int64)
    remap[order + 1] = np.arange(1, n_theirs + 1)
    assert n == n_theirs
    np.testing.assert_array_equal(ours, remap[theirs])


def test_cli_with_a_dicom_series_and_an_oblique_grid(tmp_path: Path) -> None:
    from helpers.dicom import write_ct_series
    from lungtumor.io.dicom import read_dicom_series

    affine = affine_for("oblique", spacing=(0.7, 0.7, 2.0))
    shape = (40, 36, 6)
    ct = np.full(shape, -800, dtype=np.int16)
    write_ct_series(tmp_path / "dicom", ct, affine)
    series = read_dicom_series(tmp_path / "dicom")  # the reader's own affine (LPS -> RAS once)
    mask = _draw_ellipse(shape, series.affine, (8.0, 5.0), angle_deg=20.0, slices=range(2, 4))
    mask_path = write_nifti(Volume(mask, series.affine), tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    assert main(["lesions", str(mask_path), str(tmp_path / "dicom"), "--out", str(out)]) == 0
    lesion = json.loads((out / LESIONS_JSON).read_text())["lesions"][0]
    assert lesion["longest_diameter_mm"] == pytest.approx(16.0, abs=1.5 * 0.7)
    assert lesion["short_axis_mm"] == pytest.approx(10.0, abs=1.5 * 0.7)
