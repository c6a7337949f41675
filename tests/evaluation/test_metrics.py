"""Metrics on hand-made toy masks, edge cases, a cross-check of the MONAI-based HD95 against an
independent scipy implementation, and of the surface Dice against DeepMind's surface-distance
package (the MSD's definition) on synthetic and real masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from lungtumor.errors import ConfigError, GeometryError
from lungtumor.evaluation.metrics import bootstrap_ci, dice, hd95, lesion_detection, soft_dice_pooled, surface_dice, volume_ml


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return m


# ------------------------------------------------------------------------------------------
# Hand-computed toy cases


def test_shifted_cube_by_hand() -> None:
    # Two 3x3x3 cubes, the second shifted by one voxel along axis 0.
    a = _cube((10, 10, 10), (2, 2, 2), 3)
    b = _cube((10, 10, 10), (3, 2, 2), 3)
    # |A∩B| = 2*3*3 = 18, |A| = |B| = 27 -> 36/54.
    assert dice(a, b) == pytest.approx(2 / 3)
    # Surfaces: 26 voxels each (all but the centre). From A's surface to B's: the 9 voxels of
    # A's face i=2 are 1 voxel from B; A's voxel (4,3,3) is B's centre, 1 voxel from B's
    # surface; the other 16 are on B's surface (0). Symmetric for B. So 10 of 26 distances are
    # one voxel in each direction, 16 are zero.
    iso = (1.0, 1.0, 1.0)
    assert hd95(a, b, iso) == pytest.approx(1.0)
    # Surface Dice (the MSD's, DeepMind's definition) lives on the voxel-corner grid: A's
    # surface elements sit at the corner points i in {2..5}, j, k in {2..5} that are not
    # interior (56 points, one 2x2x2 neighbourhood each), weighted by area: a face cell
    # (4 voxels) is a full square, an edge cell (2 voxels) a rectangle through the edge
    # midpoints, a corner cell (1 voxel) a triangle through three edge midpoints.
    #   A's corner planes i=3 and i=4 (rings: 4 edge + 8 face cells) and the ring of i=5
    #   (4 corner + 8 edge cells) coincide with B's surface (distance 0); the i=2 plane
    #   (4 corner + 8 edge + 4 face cells) and the 4 face cells inside i=5 are one voxel
    #   from B's surface. B is the mirror image.
    face, edge, corner = 1.0, math.sqrt(2) / 2, math.sqrt(3) / 8
    within_half = 2 * (4 * edge + 8 * face) + (4 * corner + 8 * edge)
    total = within_half + (4 * corner + 8 * edge + 4 * face) + 4 * face
    assert surface_dice(a, b, iso, tolerance_mm=0.5) == pytest.approx(within_half / total, abs=1e-6)  # 0.6599
    assert surface_dice(a, b, iso, tolerance_mm=1.0) == pytest.approx(1.0)
    # Anisotropic: the shift is along axis 0 whose voxels are 2.5 mm long. A's i=2 plane is now
    # 2.5 mm from B's surface, but the 4 face cells inside i=5 are only 0.7 mm (one in-plane
    # corner step) from it. Areas at spacing (s0, s1, s2) = (2.5, 0.7, 0.7): an i-plane face
    # s1*s2; an edge cell in that plane s2 * hypot(s0/2, s1/2); its corner triangle
    # |(s0/2, 0, 0) x (0, s1/2, 0) + ...| / 2; on the side planes a face s0*s1 and an edge
    # along axis 0 s0 * hypot(s1/2, s2/2).
    aniso = (2.5, 0.7, 0.7)
    h0, h1, h2 = (s / 2 for s in aniso)
    triangle = 0.5 * math.sqrt((h0 * h1) ** 2 + (h1 * h2) ** 2 + (h0 * h2) ** 2)
    cap = 4 * triangle + 8 * aniso[2] * math.hypot(h0, h1) + 4 * aniso[1] * aniso[2]
    ring = 4 * aniso[0] * math.hypot(h1, h2) + 8 * aniso[0] * aniso[1]
    assert hd95(a, b, aniso) == pytest.approx(2.5)
    assert surface_dice(a, b, aniso, tolerance_mm=2.0) == pytest.approx(1 - cap / (2 * cap + 2 * ring), abs=1e-6)  # 0.8218
    assert surface_dice(a, b, aniso, tolerance_mm=2.5) == pytest.approx(1.0)


def test_identical_masks() -> None:
    a = _cube((8, 8, 8), (1, 2, 3), 4)
    assert dice(a, a) == 1.0
    assert hd95(a, a, (0.8, 0.8, 3.0)) == 0.0
    assert surface_dice(a, a, (0.8, 0.8, 3.0), tolerance_mm=0.0) == 1.0


def test_disjoint_single_voxels_by_hand() -> None:
    a = np.zeros((4, 4, 8), dtype=bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[1, 1, 5] = True
    spacing = (1.0, 1.0, 2.0)
    assert dice(a, b) == 0.0
    assert hd95(a, b, spacing) == pytest.approx(8.0)  # 4 slices x 2 mm (voxel centres)
    # Surface Dice measures between voxel corners: each voxel's 8 corner cells weigh the same
    # (one triangle each); a's 4 corners at k=2 are 3 slices (6 mm) from b's corners at k=5,
    # its 4 corners at k=1 are 8 mm away, and the same for b.
    assert surface_dice(a, b, spacing, tolerance_mm=5.9) == 0.0
    assert surface_dice(a, b, spacing, tolerance_mm=6.0) == pytest.approx(0.5)
    assert surface_dice(a, b, spacing, tolerance_mm=7.9) == pytest.approx(0.5)
    assert surface_dice(a, b, spacing, tolerance_mm=8.0) == pytest.approx(1.0)
    assert lesion_detection(a, b) == {"lesions_ref": 1, "lesions_found": 0, "false_positive_lesions": 1}


def test_hd95_is_95th_percentile_not_max() -> None:
    # Reference: a 1x1x40 rod. Prediction: the same rod plus one voxel 10 voxels away.
    ref = np.zeros((30, 3, 42), dtype=bool)
    ref[1, 1, 1:41] = True
    pred = ref.copy()
    pred[11, 1, 20] = True
    # pred -> ref: 40 zeros and one 10; ref -> pred: all 0. 95th percentile (linear) of 41
    # values with one outlier is 0, while the plain Hausdorff distance would be 10.
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------
# Edge cases


def test_both_empty_is_nan() -> None:
    z = np.zeros((5, 5, 5), dtype=np.uint8)
    assert math.isnan(dice(z, z))
    assert math.isnan(hd95(z, z, (1, 1, 1)))
    assert math.isnan(surface_dice(z, z, (1, 1, 1), 2.0))
    assert lesion_detection(z, z) == {"lesions_ref": 0, "lesions_found": 0, "false_positive_lesions": 0}
    assert volume_ml(z, (1, 1, 1)) == 0.0


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty(pred_empty: bool) -> None:
    z = np.zeros((6, 6, 6), dtype=bool)
    m = _cube((6, 6, 6), (1, 1, 1), 2)
    pred, ref = (z, m) if pred_empty else (m, z)
    assert dice(pred, ref) == 0.0
    assert hd95(pred, ref, (1, 1, 1)) == math.inf
    assert surface_dice(pred, ref, (1, 1, 1), 2.0) == 0.0
    expected = (
        {"lesions_ref": 1, "lesions_found": 0, "false_positive_lesions": 0}
        if pred_empty
        else {"lesions_ref": 0, "lesions_found": 0, "false_positive_lesions": 1}
    )
    assert lesion_detection(pred, ref) == expected


def test_bad_inputs() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(GeometryError):
        dice(a, np.zeros((4, 4, 5), dtype=bool))
    with pytest.raises(GeometryError):
        hd95(a, a, (1.0, 1.0))
    with pytest.raises(GeometryError):
        hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ConfigError):
        surface_dice(a, a, (1, 1, 1), -1.0)
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0, 2.0], level=1.5)


def test_non_bool_inputs_are_foreground_where_non_zero() -> None:
    a = _cube((6, 6, 6), (1, 1, 1), 3).astype(np.uint8)
    b = _cube((6, 6, 6), (1, 1, 1), 3).astype(np.float32)
    assert dice(a, b) == 1.0
    assert hd95(a, b, (1, 1, 1)) == 0.0


# ------------------------------------------------------------------------------------------
# Lesion detection


def test_diagonal_corner_contact_is_one_lesion() -> None:
    ref = np.zeros((5, 5, 5), dtype=bool)
    ref[1, 1, 1] = True
    ref[2, 2, 2] = True  # touches the first voxel only at a corner: one lesion with 26-conn.
    pred = np.zeros_like(ref)
    pred[2, 2, 2] = True
    assert lesion_detection(pred, ref) == {"lesions_ref": 1, "lesions_found": 1, "false_positive_lesions": 0}
    # Edge contact is also one lesion; a one-voxel gap makes two.
    ref2 = np.zeros((5, 5, 5), dtype=bool)
    ref2[1, 1, 1] = ref2[2, 2, 1] = True
    assert lesion_detection(ref2, ref2)["lesions_ref"] == 1
    ref3 = np.zeros((5, 5, 5), dtype=bool)
    ref3[1, 1, 1] = ref3[3, 1, 1] = True
    assert lesion_detection(ref3, ref3)["lesions_ref"] == 2


def test_detection_counts() -> None:
    shape = (20, 20, 20)
    ref = _cube(shape, (1, 1, 1), 3) | _cube(shape, (10, 1, 1), 3) | _cube(shape, (1, 10, 10), 3)
    pred = np.zeros(shape, dtype=bool)
    pred[2, 2, 2] = True  # overlaps lesion 1 by a single voxel
    pred[11:16, 2, 2] = True  # overlaps lesion 2 and sticks out of it: still one TP component
    pred[16:19, 16:19, 16:19] = True  # false positive
    pred[1, 15, 1] = True  # false positive
    assert lesion_detection(pred, ref) == {"lesions_ref": 3, "lesions_found": 2, "false_positive_lesions": 2}
    # One predicted component bridging two reference lesions finds both and is not a FP.
    bridge = np.zeros(shape, dtype=bool)
    bridge[2, 2, 2:3] = True
    bridge[2:12, 2, 2] = True
    assert lesion_detection(bridge, ref) == {"lesions_ref": 3, "lesions_found": 2, "false_positive_lesions": 0}


# ------------------------------------------------------------------------------------------
# Volume, pooled soft Dice, bootstrap


def test_volume_ml() -> None:
    m = _cube((6, 6, 6), (0, 0, 0), 3)  # 27 voxels
    assert volume_ml(m, (0.5, 0.5, 2.0)) == pytest.approx(27 * 0.5 / 1000.0)


def test_soft_dice_pooled_by_hand() -> None:
    p1, y1 = np.array([0.5, 0.5, 0.0, 0.0]), np.array([1, 0, 0, 0])
    assert soft_dice_pooled([p1], [y1]) == pytest.approx(2 * 0.5 / (1.0 + 1.0))
    # Pooled, not averaged: a big case dominates a small one.
    p2, y2 = np.ones(100), np.ones(100)
    pooled = soft_dice_pooled([p1, p2], [y1, y2])
    assert pooled == pytest.approx(2 * 100.5 / (101.0 + 101.0))
    assert pooled != pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(soft_dice_pooled([np.zeros(3)], [np.zeros(3)]))
    with pytest.raises(GeometryError):
        soft_dice_pooled([p1], [y1, y2])


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.7, 0.7, 0.7]) == (pytest.approx(0.7), pytest.approx(0.7))
    lo, hi = bootstrap_ci([0.7])
    assert lo == hi == pytest.approx(0.7)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    rng = np.random.default_rng(1)
    values = rng.uniform(0.3, 0.9, size=40)
    lo, hi = bootstrap_ci(values, n=2000, seed=0)
    assert lo < values.mean() < hi
    # Roughly mean +- 1.96 standard errors for a sample of 40.
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values, seed=0)
    assert bootstrap_ci(np.append(values, np.nan), seed=0) == bootstrap_ci(values, seed=0)


# ------------------------------------------------------------------------------------------
# Cross-check against an independent implementation (scipy.ndimage only)


def _scipy_surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) pred-surface -> ref-surface and ref-surface -> pred-surface.

    Surface = mask XOR eroded mask (6-connected erosion, outside = background); distances by
    an exact Euclidean distance transform with the voxel spacing.
    """
    surf_p = pred ^ ndimage.binary_erosion(pred)
    surf_r = ref ^ ndimage.binary_erosion(ref)
    dist_to_r = ndimage.distance_transform_edt(~surf_r, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)
    return dist_to_r[surf_p], dist_to_p[surf_r]


def _random_blob(rng: np.random.Generator, shape: tuple[int, int, int], threshold: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(3.0, 3.0, 1.5))
    return noise > threshold * noise.std()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_monai_metrics_agree_with_scipy(seed: int) -> None:
    # Both implementations measure exact Euclidean distances between the same sets of
    # surface-voxel centres (MONAI with a KD-tree, scipy with an exact EDT), so they must agree
    # to float32 rounding, far tighter than one voxel diagonal (2.6 mm here). The tolerance
    # (2.0 mm) is chosen so that no voxel-centre distance on this grid equals it
    # (0.8^2 (a^2 + b^2) + 2.5^2 c^2 = 4 has no integer solution), so float rounding cannot
    # move a surface voxel across it, and the surface Dice must agree exactly.
    rng = np.random.default_rng(seed)
    shape = (40, 36, 14)
    spacing = (0.8, 0.8, 2.5)
    tolerance_mm = 2.0
    ref = _random_blob(rng, shape, 1.0)
    # Prediction: the reference (dilated by one voxel for odd seeds), with extra blobs XOR-ed in
    # (added false-positive lesions and holes).
    grown = ndimage.binary_dilation(ref) if seed % 2 else ref
    pred = grown ^ _random_blob(rng, shape, 1.8)
    if seed == 3:
        # Touch the array border, where MONAI's crop and scipy's erosion must still agree.
        pred[:, :, 0] |= ref[:, :, 1]
        ref[0, 5:15, 3:9] = True
    assert ref.any() and pred.any()

    d_pr, d_rp = _scipy_surface_distances(pred, ref, spacing)
    expected_hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    n_close = np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm)
    voxel_counting_nsd = n_close / (d_pr.size + d_rp.size)

    assert hd95(pred, ref, spacing) == pytest.approx(expected_hd95, abs=1e-4)
    # surface_dice is the MSD's area-weighted definition (checked against DeepMind's package
    # below), not this voxel-counting variant; it must not quietly fall back to it.
    assert surface_dice(pred, ref, spacing, tolerance_mm) != pytest.approx(voxel_counting_nsd, abs=1e-3)
    # Dice is simple enough to check against the set formula directly.
    assert dice(pred, ref) == pytest.approx(2 * np.sum(pred & ref) / (pred.sum() + ref.sum()))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_crop_does_not_change_monai_result() -> None:
    # Our wrapper crops to the union bounding box before calling MONAI; the full-size call
    # must give the same numbers.
    import torch
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(7)
    shape = (30, 30, 12)
    spacing = (0.9, 0.9, 3.0)
    ref = _random_blob(rng, shape, 1.2)
    pred = _random_blob(rng, shape, 1.2)
    full = compute_hausdorff_distance(
        torch.from_numpy(pred[None, None].astype(np.float32)),
        torch.from_numpy(ref[None, None].astype(np.float32)),
        include_background=True,
        percentile=95,
        spacing=list(spacing),
    )
    assert hd95(pred, ref, spacing) == pytest.approx(float(full[0, 0]), abs=1e-5)


# ------------------------------------------------------------------------------------------
# Surface Dice against DeepMind's own implementation (the MSD's definition)


def _deepmind_surface_dice(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tolerances_mm: tuple[float, ...]
) -> list[float]:
    """Surface Dice at each tolerance by DeepMind's ``surface-distance`` (PyPI, the `test` extra)."""
    sd = pytest.importorskip("surface_distance", reason="DeepMind's surface-distance is not installed (pip install -e .[test])")
    distances = sd.compute_surface_distances(np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool), spacing)
    return [float(sd.compute_surface_dice_at_tolerance(distances, t)) for t in tolerances_mm]


@pytest.mark.parametrize("seed", range(6))
def test_surface_dice_matches_deepmind_package(seed: int) -> None:
    # Random blobs on anisotropic CT-like grids, touching the array border for some seeds.
    # The tolerances are not multiples of the spacings, so float rounding cannot move a
    # surface element across them and the two must agree to float32 rounding.
    rng = np.random.default_rng(100 + seed)
    spacing = [(0.7, 0.7, 3.0), (0.977, 0.977, 3.0), (3.0, 0.7, 0.7)][seed % 3]
    shape = (24, 22, 10) if spacing[2] == 3.0 else (10, 24, 22)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    ref = noise > 0.9 * noise.std()
    pred = ndimage.binary_dilation(ref) if seed % 2 else ref.copy()
    pred ^= _random_blob(rng, shape, 1.6)  # extra false-positive blobs and holes
    assert ref.any() and pred.any()
    tolerances_mm = (0.5, 1.1, 2.05, 4.3)
    for tolerance_mm, expected in zip(tolerances_mm, _deepmind_surface_dice(pred, ref, spacing, tolerances_mm)):
        assert surface_dice(pred, ref, spacing, tolerance_mm) == pytest.approx(expected, abs=1e-5)
    # Symmetric in its arguments, as the definition is.
    assert surface_dice(ref, pred, spacing, 2.05) == pytest.approx(surface_dice(pred, ref, spacing, 2.05), abs=1e-6)


def test_surface_dice_crop_is_invisible() -> None:
    # Our wrapper crops to the union box (+1 voxel) before MONAI; a mask far from the array
    # origin in a large array gives the same value as the tight array.
    rng = np.random.default_rng(5)
    small_ref = _random_blob(rng, (20, 20, 8), 1.0)
    small_pred = ndimage.binary_erosion(small_ref)
    big_ref = np.zeros((90, 70, 40), dtype=bool)
    big_pred = np.zeros_like(big_ref)
    big_ref[50:70, 30:50, 20:28] = small_ref
    big_pred[50:70, 30:50, 20:28] = small_pred
    spacing = (0.8, 0.8, 3.0)
    expected = surface_dice(small_pred, small_ref, spacing, 1.5)
    assert surface_dice(big_pred, big_ref, spacing, 1.5) == pytest.approx(expected, abs=1e-6)


def _lesion_crop(mask: np.ndarray, margin: int = 4) -> np.ndarray:
    """The mask cropped to its bounding box plus ``margin`` voxels (every metric is unchanged)."""
    (box,) = ndimage.find_objects(mask.astype(np.uint8))  # one label: the whole mask's box
    grown = [slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, mask.shape)]
    return mask[tuple(grown)]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "label"), [("LUNG1-002", "gtv1_label"), ("LIDC-IDRI-0001", "nodule_label")])
def test_surface_dice_matches_deepmind_on_real_masks(real_data, case: str, label: str) -> None:
    # Real tumour contours on 3 mm (LUNG1-002) and 2.5 mm (LIDC) slices, against a copy eroded
    # by one voxel and a copy shifted by one slice: the MSD's value within 0.01 (in fact to
    # float32 rounding), while voxel counting is far off (0.30 vs 0.53 for the eroded GTV).
    from monai.metrics import compute_surface_dice

    from lungtumor.io.nifti import read_nifti

    path = real_data / case / f"{label}.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    volume = read_nifti(path)
    ref = _lesion_crop(volume.array != 0)
    spacing = tuple(float(s) for s in volume.spacing_mm)
    assert max(spacing) >= 2.5  # thick slices: where the two definitions differ most
    tolerances_mm = (1.0, 2.0)
    for pred in (ndimage.binary_erosion(ref), np.roll(ref, 1, axis=2)):
        for tolerance_mm, expected in zip(tolerances_mm, _deepmind_surface_dice(pred, ref, spacing, tolerances_mm)):
            ours = surface_dice(pred, ref, spacing, tolerance_mm)
            assert ours == pytest.approx(expected, abs=0.01)
            assert ours == pytest.approx(expected, abs=1e-4)
        # The voxel-counting variant (the old definition) fails this test by far.
        to_tensor = lambda a: torch.from_numpy(a.astype(np.float32))[None, None]  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            voxel_counting = float(
                compute_surface_dice(
                    to_tensor(pred),
                    to_tensor(ref),
                    [tolerances_mm[-1]],
                    include_background=True,
                    spacing=list(spacing),
                    use_subvoxels=False,
                )[0, 0]
            )
        assert expected - voxel_counting > 0.1


def test_evaluation_summary_names_the_surface_dice_definition(tmp_path) -> None:
    import json

    from lungtumor.evaluation.evaluate import evaluate_folder
    from lungtumor.evaluation.metrics import SURFACE_DICE_DEFINITION
    from lungtumor.io.nifti import write_nifti
    from lungtumor.io.volume import Volume

    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    ref = _cube((12, 12, 6), (3, 3, 1), 4).astype(np.uint8)
    for folder, mask in (("pred", np.roll(ref, 1, axis=0)), ("ref", ref)):
        write_nifti(Volume(mask, affine, {}), tmp_path / folder / "case_001.nii.gz")
    evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", tolerance_mm=1.5)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["surface_dice_definition"] == SURFACE_DICE_DEFINITION
    assert "area" in summary["surface_dice_definition"] and "use_subvoxels=True" in summary["surface_dice_definition"]
    assert summary["tolerance_mm"] == 1.5
