"""Choosing the minimum lesion volume on validation cases: hand-computed Dice for every candidate."""

from __future__ import annotations

import numpy as np
import pytest

from lungtumor.errors import ConfigError
from lungtumor.evaluation.postprocessing import choose_min_lesion_ml
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume


def _write(folder, name, mask) -> None:
    write_nifti(Volume(mask.astype(np.uint8), np.eye(4), {}), folder / f"{name}.nii.gz")  # 1 mm voxels: 0.001 ml


def _cases(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    shape = (20, 20, 20)
    # a: a 27-voxel tumour found, plus a 2-voxel false positive
    r = np.zeros(shape, bool)
    r[2:5, 2:5, 2:5] = True
    p = r.copy()
    p[10, 10, 10:12] = True
    _write(pred, "a", p), _write(ref, "a", r)
    # b: no tumour, a 3-voxel false positive
    p = np.zeros(shape, bool)
    p[5, 5, 5:8] = True
    _write(pred, "b", p), _write(ref, "b", np.zeros(shape, bool))
    # c: a 4-voxel true lesion, found exactly
    r = np.zeros(shape, bool)
    r[8:10, 8:10, 8] = True
    _write(pred, "c", r), _write(ref, "c", r)
    return pred, ref


def test_the_volume_with_the_best_mean_case_dice_is_chosen(tmp_path) -> None:
    pred, ref = _cases(tmp_path)
    out = choose_min_lesion_ml(pred, ref, candidates=(0.0, 0.0025, 0.0035, 0.005))
    d = out["dice_by_min_lesion_ml"]
    # keep all: a = 2*27/(29+27), b = 0 (one mask empty), c = 1
    assert d[0.0] == pytest.approx((54 / 56 + 0 + 1) / 3)
    # >= 2.5 voxels: a's false positive goes, b's stays
    assert d[0.0025] == pytest.approx((1 + 0 + 1) / 3)
    # >= 3.5 voxels: b becomes empty-empty (left out of the mean), c's 4 voxels stay
    assert d[0.0035] == pytest.approx(1.0)
    # >= 5 voxels: c's true lesion is removed too (Dice 0)
    assert d[0.005] == pytest.approx(0.5)
    assert out["min_lesion_ml"] == 0.0035 and out["cases"] == 3 and out["lesions_ref"] == 2
    assert out["lesions_found_by_min_lesion_ml"] == {0.0: 2, 0.0025: 2, 0.0035: 2, 0.005: 1}
    assert out["false_positive_lesions_by_min_lesion_ml"] == {0.0: 2, 0.0025: 1, 0.0035: 0, 0.005: 0}


def test_a_volume_that_removes_a_found_lesion_is_never_chosen(tmp_path) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    r = np.zeros((20, 20, 20), bool)
    r[2:7, 2:7, 2:7] = True  # 125 voxels
    r[12:14, 12:14, 12] = True  # a 4-voxel nodule, found
    _write(pred, "a", r), _write(ref, "a", r)
    p = np.zeros((20, 20, 20), bool)
    p[5, 5:8, 5:7] = True  # a 6-voxel false positive on a tumour-free case
    _write(pred, "b", p), _write(ref, "b", np.zeros((20, 20, 20), bool))
    out = choose_min_lesion_ml(pred, ref, candidates=(0.0, 0.007))
    # 0.007 ml would raise the mean Dice from (1 + 0) / 2 to 2*125/(125+129), but loses the nodule
    assert out["dice_by_min_lesion_ml"][0.0] == pytest.approx(0.5)
    assert out["dice_by_min_lesion_ml"][0.007] == pytest.approx(250 / 254)
    assert out["min_lesion_ml"] is None


def test_ties_keep_the_smaller_volume_and_no_filter_is_none(tmp_path) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    r = np.zeros((10, 10, 10), bool)
    r[2:6, 2:6, 2:6] = True
    _write(pred, "a", r), _write(ref, "a", r)
    out = choose_min_lesion_ml(pred, ref, candidates=(0.0, 0.01, 0.05))
    assert list(out["dice_by_min_lesion_ml"].values()) == [1.0, 1.0, 1.0]  # the 64-voxel lesion survives each
    assert out["min_lesion_ml"] is None


def test_bad_candidates(tmp_path) -> None:
    pred, ref = _cases(tmp_path)
    with pytest.raises(ConfigError, match="ml >= 0"):
        choose_min_lesion_ml(pred, ref, candidates=(-1.0,))
    with pytest.raises(ConfigError):
        choose_min_lesion_ml(pred, ref, candidates=())


def test_counts_match_postprocess_mask_dice_and_lesion_detection_on_random_masks(tmp_path) -> None:
    """The one-labelling shortcut against the brute force: filter with postprocess_mask, then
    dice() and lesion_detection(), for every candidate, over several folders."""
    from lungtumor.evaluation.metrics import dice, lesion_detection
    from lungtumor.lesions.components import postprocess_mask

    rng = np.random.default_rng(0)
    folders = []
    expected = {c: ([], 0, 0) for c in (0.0, 0.002, 0.004, 0.008)}
    for k in range(2):
        pred, ref = tmp_path / f"p{k}", tmp_path / f"r{k}"
        folders.append((pred, ref))
        for case in range(3):
            r = rng.random((12, 12, 12)) > 0.93
            p = (rng.random((12, 12, 12)) > 0.9) | (r & (rng.random((12, 12, 12)) > 0.3))
            _write(pred, f"c{case}", p), _write(ref, f"c{case}", r)
            for c, (ds, f, fp) in expected.items():
                kept = postprocess_mask(p.astype(np.uint8), None, 0.001, c) if c else p
                det = lesion_detection(kept, r)
                d = dice(kept, r)
                expected[c] = (ds + ([d] if np.isfinite(d) else []), f + det["lesions_found"], fp + det["false_positive_lesions"])
    out = choose_min_lesion_ml([f[0] for f in folders], [f[1] for f in folders], candidates=tuple(expected))
    assert out["cases"] == 6
    for c, (ds, f, fp) in expected.items():
        assert out["dice_by_min_lesion_ml"][c] == pytest.approx(float(np.mean(ds)))
        assert out["lesions_found_by_min_lesion_ml"][c] == f and out["false_positive_lesions_by_min_lesion_ml"][c] == fp
    with pytest.raises(ConfigError, match="one label folder per prediction folder"):
        choose_min_lesion_ml([folders[0][0]], [folders[0][1], folders[1][1]])
