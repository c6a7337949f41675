"""Folder evaluation on tiny synthetic NIfTI masks with hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lungtumor.errors import GeometryError, InputError
from lungtumor.evaluation.evaluate import (
    CSV_COLUMNS,
    METRICS_CSV,
    POOLED_DICE_LABEL,
    POOLED_SOFT_DICE_LABEL,
    SUMMARY_JSON,
    dice_spread,
    evaluate_folder,
    format_table,
    match_cases,
    pooled_dice,
)
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume

SHAPE = (12, 10, 8)
SPACING = (0.5, 0.5, 2.0)  # voxel = 0.5 mm^3
AFFINE = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])  # LAS, like MSD Task06
AFFINE[:3, 3] = (10.0, -20.0, 30.0)


def _mask(*boxes: tuple[slice, slice, slice]) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    for box in boxes:
        m[box] = 1
    return m


def _write(folder: Path, name: str, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    return write_nifti(Volume(array, affine), folder / name)


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Four cases: a partial overlap, an exact match, one empty prediction, both empty."""
    pred, label = tmp_path / "pred", tmp_path / "labels"
    cube = (slice(2, 6), slice(2, 6), slice(2, 4))  # 4*4*2 = 32 voxels = 16 mm^3
    shifted = (slice(4, 8), slice(2, 6), slice(2, 4))  # half of it overlaps `cube`
    far = (slice(10, 11), slice(8, 9), slice(6, 7))  # 1 voxel, separate lesion
    _write(label, "case_a.nii.gz", _mask(cube))
    _write(pred, "case_a.nii.gz", _mask(shifted, far))
    _write(label, "case_b.nii.gz", _mask(cube))
    _write(pred, "case_b.nii", _mask(cube))  # .nii matches .nii.gz by name
    _write(label, "case_c.nii.gz", _mask(cube))
    _write(pred, "case_c.nii.gz", _mask())
    _write(label, "case_d.nii.gz", _mask())
    _write(pred, "case_d.nii.gz", _mask())
    (pred / "._case_a.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")  # ignored
    return pred, label


def test_values_by_hand(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, label = folders
    result = evaluate_folder(pred, label, tmp_path / "out", tolerance_mm=1.0, progress=False)
    rows = {r["case"]: r for r in result.rows}
    assert list(rows) == ["case_a", "case_b", "case_c", "case_d"]

    a = rows["case_a"]
    # |P| = 32 + 1, |R| = 32, |P∩R| = 16.
    assert a["dice"] == pytest.approx(2 * 16 / 65)
    assert a["volume_ref_ml"] == pytest.approx(32 * 0.5 / 1000)
    assert a["volume_pred_ml"] == pytest.approx(33 * 0.5 / 1000)
    assert a["volume_abs_diff_ml"] == pytest.approx(0.5 / 1000)
    assert (a["lesions_ref"], a["lesions_found"], a["false_positive_lesions"]) == (1, 1, 1)
    # Every voxel of a 4x4x2 box is a surface voxel. The 2-voxel shift along i (0.5 mm voxels)
    # puts the farthest box surface voxels 1 mm from the other surface; the far voxel (about
    # 6.7 mm away) is 1 of 33 predicted surface distances, above the 95th percentile's rank
    # (linear interpolation between the 31st and 32nd of 33 sorted values, both 1 mm).
    assert a["hd95_mm"] == pytest.approx(1.0)

    b = rows["case_b"]
    assert (b["dice"], b["surface_dice"], b["hd95_mm"]) == (1.0, 1.0, 0.0)

    c = rows["case_c"]  # prediction empty
    assert c["dice"] == 0.0 and c["surface_dice"] == 0.0 and c["hd95_mm"] == math.inf
    assert (c["lesions_ref"], c["lesions_found"], c["false_positive_lesions"]) == (1, 0, 0)

    d = rows["case_d"]  # both empty
    assert math.isnan(d["dice"]) and math.isnan(d["surface_dice"]) and math.isnan(d["hd95_mm"])

    s = result.summary
    assert s["cases"] == 4 and s["cases_both_empty"] == 1 and s["cases_one_empty"] == 1
    assert s["dice_cases"] == 3
    dices = [2 * 16 / 65, 1.0, 0.0]
    assert s["dice_mean"] == pytest.approx(np.mean(dices))  # case_d excluded
    assert s["dice_median"] == pytest.approx(np.median(dices))
    assert s["dice_q10"] == pytest.approx(np.percentile(dices, 10))
    assert s["dice_pooled_label"] == POOLED_DICE_LABEL and "pooled" in POOLED_DICE_LABEL
    lo, hi = s["dice_ci95"]
    assert 0.0 <= lo <= s["dice_mean"] <= hi <= 1.0
    assert s["hd95_median_mm"] == pytest.approx(1.0)  # median of [1, 0, inf]
    assert s["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert s["false_positive_lesions_per_scan"] == pytest.approx(1 / 4)
    assert s["tolerance_mm"] == 1.0
    assert "dice_pooled_soft_seed" not in s


def test_output_files(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, label = folders
    out = tmp_path / "eval"
    result = evaluate_folder(pred, label, out, progress=False)
    assert sorted(p.name for p in result.files) == [METRICS_CSV, SUMMARY_JSON]
    assert sorted(p.name for p in out.iterdir()) == [METRICS_CSV, SUMMARY_JSON]  # no temp files left

    with open(out / METRICS_CSV, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = {r["case"]: r for r in reader}
    assert rows["case_c"]["hd95_mm"] == "inf"
    assert rows["case_d"]["dice"] == "nan"
    assert float(rows["case_b"]["dice"]) == 1.0
    assert rows["case_a"]["lesions_found"] == "1"

    summary = json.loads((out / SUMMARY_JSON).read_text())  # strict JSON: no NaN/Infinity
    assert summary["cases"] == 4 and summary["cases_both_empty"] == 1
    assert summary["dice_mean"] == pytest.approx(result.summary["dice_mean"])
    assert len(summary["dice_ci95"]) == 2

    text = format_table(result)
    assert "case_a" in text and "inf" in text and "excluded from Dice" in text


def test_no_output_when_out_dir_none(folders: tuple[Path, Path]) -> None:
    pred, label = folders
    result = evaluate_folder(pred, label, None, progress=False)
    assert result.files == []
    assert not (pred / METRICS_CSV).exists()


def test_progress_bar_runs(folders: tuple[Path, Path]) -> None:
    pred, label = folders
    assert len(evaluate_folder(pred, label, None, progress=True).rows) == 4


def test_json_inf_and_null(tmp_path: Path) -> None:
    # Only a both-empty case: nothing is defined, so means and the CI are null in the JSON.
    # Then only a one-empty case: Dice is 0 and the HD95 median is inf, written as "inf".
    pred, label = tmp_path / "p", tmp_path / "l"
    _write(label, "x.nii.gz", _mask())
    _write(pred, "x.nii.gz", _mask())
    summary = evaluate_folder(pred, label, tmp_path / "o", progress=False).summary
    assert math.isnan(summary["dice_mean"])
    on_disk = json.loads((tmp_path / "o" / SUMMARY_JSON).read_text())
    assert on_disk["dice_mean"] is None and on_disk["dice_ci95"] == [None, None]
    assert on_disk["lesion_sensitivity"] is None

    _write(label, "x.nii.gz", _mask((slice(1, 3), slice(1, 3), slice(1, 2))))
    evaluate_folder(pred, label, tmp_path / "o", progress=False)
    on_disk = json.loads((tmp_path / "o" / SUMMARY_JSON).read_text())
    assert on_disk["hd95_median_mm"] == "inf" and on_disk["dice_mean"] == 0.0


def test_missing_counterparts_are_listed(tmp_path: Path) -> None:
    pred, label = tmp_path / "p", tmp_path / "l"
    for name in ("a", "b", "only_pred"):
        _write(pred, f"{name}.nii.gz", _mask())
    for name in ("a", "b", "only_label1", "only_label2"):
        _write(label, f"{name}.nii.gz", _mask())
    with pytest.raises(InputError) as info:
        match_cases(pred, label)
    message = str(info.value)
    assert "1 prediction(s)" in message and "only_pred" in message
    assert "2 label(s)" in message and "only_label1, only_label2" in message
    assert "\n" not in message


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "l", "a.nii.gz", _mask())
    with pytest.raises(InputError, match="not found"):
        evaluate_folder(tmp_path / "nope", tmp_path / "l", None, progress=False)
    with pytest.raises(InputError, match="no .nii"):
        evaluate_folder(tmp_path / "empty", tmp_path / "l", None, progress=False)


def test_duplicate_names_rejected(tmp_path: Path) -> None:
    _write(tmp_path / "p", "a.nii.gz", _mask())
    _write(tmp_path / "p", "a.nii", _mask())
    _write(tmp_path / "l", "a.nii.gz", _mask())
    with pytest.raises(InputError, match="same case"):
        match_cases(tmp_path / "p", tmp_path / "l")


@pytest.mark.parametrize("what", ["shape", "affine"])
def test_grid_mismatch_raises(tmp_path: Path, what: str) -> None:
    pred, label = tmp_path / "p", tmp_path / "l"
    _write(label, "a.nii.gz", _mask())
    if what == "shape":
        _write(pred, "a.nii.gz", np.zeros((12, 10, 9), dtype=np.uint8))
    else:
        shifted = AFFINE.copy()
        shifted[2, 3] += 0.01  # 10 micrometres: above the 1e-3 mm tolerance
        _write(pred, "a.nii.gz", _mask(), shifted)
    with pytest.raises(GeometryError) as info:
        evaluate_folder(pred, label, None, progress=False)
    message = str(info.value)
    assert str(pred / "a.nii.gz") in message and str(label / "a.nii.gz") in message
    assert "(12, 10, 8)" in message


def test_tiny_affine_difference_is_accepted(tmp_path: Path) -> None:
    pred, label = tmp_path / "p", tmp_path / "l"
    _write(label, "a.nii.gz", _mask())
    nudged = AFFINE.copy()
    nudged[0, 3] += 1e-5  # float32 round-off in a header
    _write(pred, "a.nii.gz", _mask(), nudged)
    assert evaluate_folder(pred, label, None, progress=False).summary["cases"] == 1


def test_non_binary_mask_rejected(tmp_path: Path) -> None:
    pred, label = tmp_path / "p", tmp_path / "l"
    _write(label, "a.nii.gz", _mask())
    bad = _mask((slice(1, 3), slice(1, 3), slice(1, 2)))
    bad[1, 1, 1] = 2
    _write(pred, "a.nii.gz", bad)
    with pytest.raises(InputError, match="only 0 and 1.*found values 0, 1, 2"):
        evaluate_folder(pred, label, None, progress=False)
    _write(pred, "a.nii.gz", np.full(SHAPE, 0.5, dtype=np.float32))
    with pytest.raises(InputError, match="only 0 and 1"):
        evaluate_folder(pred, label, None, progress=False)


def test_float_binary_mask_accepted(tmp_path: Path) -> None:
    pred, label = tmp_path / "p", tmp_path / "l"
    box = (slice(1, 3), slice(1, 3), slice(1, 2))
    _write(label, "a.nii.gz", _mask(box).astype(np.float32))
    _write(pred, "a.nii.gz", _mask(box))
    assert evaluate_folder(pred, label, None, progress=False).rows[0]["dice"] == 1.0


def test_pooled_soft_dice_with_prob_dir(tmp_path: Path) -> None:
    pred, label = tmp_path / "p", tmp_path / "l"
    box = (slice(1, 3), slice(1, 3), slice(1, 2))  # 4 voxels
    for name in ("a", "b"):
        _write(label, f"{name}.nii.gz", _mask(box))
        _write(pred, f"{name}.nii.gz", _mask(box))
    prob_a = _mask(box).astype(np.float32) * 0.5  # sum p*y = 2, sum p = 2
    prob_b = _mask(box).astype(np.float32)  # sum p*y = 4, sum p = 4
    # Probability maps beside the masks, NAME_prob: not mistaken for predictions.
    _write(pred, "a_prob.nii.gz", prob_a)
    _write(pred, "b_prob.nii.gz", prob_b)
    result = evaluate_folder(pred, label, None, prob_dir=pred, progress=False)
    assert result.summary["cases"] == 2
    # 2 * (2 + 4) / ((2 + 4) + (4 + 4))
    assert result.summary["dice_pooled_soft_seed"] == pytest.approx(12 / 14)
    assert result.summary["dice_pooled_soft_seed_label"] == POOLED_SOFT_DICE_LABEL
    assert "pooled (seed's definition)" in format_table(result)

    # A separate folder with plain NAME files works too; a missing one is an error.
    probs = tmp_path / "probs"
    _write(probs, "a.nii.gz", prob_a)
    with pytest.raises(InputError, match="no probability map for 1 case.*b"):
        evaluate_folder(label, label, None, prob_dir=probs, progress=False)
    _write(probs, "b.nii.gz", prob_b * 300)  # not probabilities
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        evaluate_folder(label, label, None, prob_dir=probs, progress=False)


# ------------------------------------------------------------------------------------------
# Lesion matching by size band, and the FROC (hand-computed)

BAND_SHAPE = (70, 70, 3)
BAND_AFFINE = np.diag([-1.0, 1.0, 2.0, 1.0])  # 1 mm pixels: an n x n square measures n*sqrt(2) mm


def _squares(*boxes: tuple[int, int, int, int], value: float = 1.0, dtype: type = np.uint8) -> np.ndarray:
    out = np.zeros(BAND_SHAPE, dtype=dtype)
    for i0, i1, j0, j1 in boxes:
        out[i0:i1, j0:j1, 1] = value
    return out


A, B, C, D = (2, 7, 2, 7), (10, 20, 2, 12), (25, 42, 2, 19), (2, 27, 30, 55)  # 7.1, 14.1, 24.0, 35.4 mm
FP = (50, 62, 50, 62)  # 17.0 mm, a false positive
E, F, G, BRIDGE = (2, 12, 2, 12), (20, 23, 2, 5), (26, 29, 2, 5), (20, 29, 2, 5)  # 14.1, 4.2, 4.2 mm


@pytest.fixture()
def band_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    pred, label, probs = tmp_path / "pred", tmp_path / "labels", tmp_path / "probs"
    write_nifti(Volume(_squares(A, B, C, D), BAND_AFFINE), label / "c1.nii.gz")
    write_nifti(Volume(_squares(A, D, FP), BAND_AFFINE), pred / "c1.nii.gz")
    write_nifti(Volume(_squares(E, F, G), BAND_AFFINE), label / "c2.nii.gz")
    write_nifti(Volume(_squares(E, BRIDGE), BAND_AFFINE), pred / "c2.nii.gz")  # one prediction over F and G
    p1 = _squares(A, D, value=0.92, dtype=np.float32) + _squares(B, value=0.65, dtype=np.float32)
    p1 += _squares(C, value=0.25, dtype=np.float32) + _squares(FP, value=0.35, dtype=np.float32)
    p2 = _squares(E, value=0.85, dtype=np.float32) + _squares(BRIDGE, value=0.55, dtype=np.float32)
    write_nifti(Volume(p1, BAND_AFFINE), probs / "c1.nii.gz")
    write_nifti(Volume(p2, BAND_AFFINE), probs / "c2.nii.gz")
    return pred, label, probs


def test_lesions_by_size_band(band_folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred, label, _ = band_folders
    result = evaluate_folder(pred, label, tmp_path / "out", progress=False)
    rows = {r["case"]: r for r in result.rows}
    assert (rows["c1"]["lesions_ref"], rows["c1"]["lesions_found"], rows["c1"]["false_positive_lesions"]) == (4, 2, 1)
    # The bridge over F and G is one match: 2 of 3 found, and it is no false positive.
    assert (rows["c2"]["lesions_ref"], rows["c2"]["lesions_found"], rows["c2"]["false_positive_lesions"]) == (3, 2, 0)
    np.testing.assert_allclose(rows["c1"]["ref_lesion_diameters_mm"], np.array([25, 17, 10, 5]) * math.sqrt(2))
    bands = {b["band"]: b for b in result.summary["lesion_size_bands"]}
    assert list(bands) == ["<10 mm", "10-20 mm", "20-30 mm", ">30 mm"]
    expected = {"<10 mm": (3, 2, 0), "10-20 mm": (2, 1, 1), "20-30 mm": (1, 0, 0), ">30 mm": (1, 1, 0)}
    for name, (n_ref, n_found, n_fp) in expected.items():
        band = bands[name]
        assert (band["lesions_ref"], band["lesions_found"], band["false_positive_lesions"]) == (n_ref, n_found, n_fp), name
        assert band["sensitivity"] == pytest.approx(n_found / n_ref)
        assert band["false_positives_per_scan"] == pytest.approx(n_fp / 2)
    assert result.summary["lesion_sensitivity"] == pytest.approx(4 / 7)
    assert result.summary["lesion_matching"]["connectivity"] == 26
    on_disk = json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())
    assert on_disk["lesion_size_bands"][3]["diameter_max_mm"] == "inf"
    assert "one-to-one" in on_disk["lesion_matching"]["rule"]
    assert not (tmp_path / "out" / "froc.png").exists()  # no probabilities, no FROC
    assert "10-20 mm: sensitivity 0.500 (1/2), false positives per scan 0.50" in format_table(result)


def test_froc_from_probabilities(band_folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    pred, label, probs = band_folders
    result = evaluate_folder(pred, label, tmp_path / "out", prob_dir=probs, progress=False)
    froc = result.summary["froc"]
    assert froc["lesions_ref"] == 7 and froc["cases"] == 2
    by_t = dict(zip(froc["thresholds"], zip(froc["sensitivity"], froc["false_positives_per_scan"])))
    # t <= 0.2: A, B, C, D and the FP (c1), E and one of F/G (c2); t = 0.3 loses C; 0.4 loses the FP;
    # 0.6 loses the bridge; 0.7 loses B; 0.9 loses E; 0.95 loses A and D.
    expected = {0.05: (6, 1), 0.2: (6, 1), 0.3: (5, 1), 0.4: (5, 0), 0.5: (5, 0), 0.6: (4, 0), 0.7: (3, 0), 0.8: (3, 0), 0.9: (2, 0), 0.95: (0, 0)}
    for t, (found, fp) in expected.items():
        assert by_t[t] == pytest.approx((found / 7, fp / 2)), t
    assert froc["fp_rates"] == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert froc["sensitivity_at_fp_rates"] == pytest.approx([5 / 7, 5 / 7] + [6 / 7] * 5)
    assert froc["cpm"] == pytest.approx(40 / 49)
    png = tmp_path / "out" / "froc.png"
    with Image.open(png) as image:
        image.verify()
    assert json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())["froc"]["cpm"] == pytest.approx(40 / 49)
    assert "CPM 0.816" in format_table(result)


def test_dice_spread_on_hand_made_values() -> None:
    # Ten cases and one both-empty (NaN, left out): numpy's percentile is the reference.
    dices = [0.91, 0.85, 0.80, 0.78, 0.77, 0.70, 0.62, 0.55, 0.30, 0.0]
    spread = dice_spread([*dices, float("nan")])
    assert spread["n"] == 10
    assert spread["mean"] == pytest.approx(np.mean(dices))
    assert spread["median"] == pytest.approx(np.median(dices)) == pytest.approx(0.735)
    assert spread["q10"] == pytest.approx(np.percentile(dices, 10)) == pytest.approx(0.27)  # 0.0 + 0.9 x (0.30 - 0.0)
    empty = dice_spread([float("nan")])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "median", "q10"))


def test_pooled_dice_weighs_cases_by_volume() -> None:
    rows = [
        {"volume_overlap_ml": 90.0, "volume_pred_ml": 100.0, "volume_ref_ml": 100.0},  # Dice 0.9, large
        {"volume_overlap_ml": 0.0, "volume_pred_ml": 0.0, "volume_ref_ml": 1.0},  # Dice 0.0, small
    ]
    assert pooled_dice(rows) == pytest.approx(2 * 90 / 201)  # not the per-case mean 0.45
    assert math.isnan(pooled_dice([{"volume_overlap_ml": 0.0, "volume_pred_ml": 0.0, "volume_ref_ml": 0.0}]))


def test_summary_prints_the_spread_and_pooled_on_its_own_line(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, label = folders
    result = evaluate_folder(pred, label, tmp_path / "eval", progress=False)
    s = result.summary
    assert s["dice_pooled"] == pytest.approx(pooled_dice(result.rows))
    on_disk = json.loads((tmp_path / "eval" / SUMMARY_JSON).read_text())
    assert {"dice_mean", "dice_median", "dice_q10", "dice_pooled"} <= set(on_disk)
    lines = format_table(result).splitlines()
    per_case = next(line for line in lines if line.startswith("Dice per case"))
    assert "median" in per_case and "10th percentile" in per_case and "pooled" not in per_case
    pooled = next(line for line in lines if line.startswith("Dice pooled"))
    assert f"{s['dice_pooled']:.3f}" in pooled
