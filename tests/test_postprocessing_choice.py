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
    assert out["min_lesion_ml"] == 0.0035 and out["cases"] == 3


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
