"""Per-lesion scores: the lesion-level FROC against brute force, the reliability table on hand-made
inputs, the operating point chosen on validation cases, and ``min_lesion_score`` in segment/predict."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from lungtumor.config import HU_SCALE, PreprocessConfig
from lungtumor.errors import ConfigError, InputError
from lungtumor.evaluation.calibration import reliability_table
from lungtumor.evaluation.lesion_froc import lesion_candidates, lesion_froc_summary
from lungtumor.evaluation.matching import lesion_matching
from lungtumor.evaluation.postprocessing import choose_min_lesion_score, collect_lesion_candidates
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.volume import Volume
from lungtumor.lesions.components import CONNECTIVITY_STRUCTURE
from lungtumor.lesions.score import remove_low_score_lesions
from lungtumor.model.checkpoint import LoadedModel

SHAPE = (12, 12, 14)


def _case(refs: list[tuple[slice, ...]], preds: list[tuple[tuple[slice, ...], float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred mask, probabilities, reference): each predicted box peaks at its score in one voxel and
    is lower elsewhere (so the maximum, not the mean, is the score)."""
    ref = np.zeros(SHAPE, bool)
    for box in refs:
        ref[box] = True
    pred = np.zeros(SHAPE, bool)
    prob = np.zeros(SHAPE, np.float32)
    for box, score in preds:
        pred[box] = True
        prob[box] = 0.51
        prob[tuple(slice(s.start, s.start + 1) for s in box)] = score
    return pred, prob, ref


def _synthetic_set() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    b = np.s_
    r1, r2 = b[1:4, 1:4, 1:4], b[7:10, 7:10, 1:4]
    # a: r1 found at 0.9 and hit again by a separate speck at 0.6 (an extra candidate: neither hit
    # nor false positive), a false positive at 0.8, r2 found at 0.7
    a = _case(
        [r1, r2],
        [(b[1:2, 1:3, 1:3], 0.9), (b[3:4, 1:4, 3:4], 0.6), (b[8:10, 1:3, 9:11], 0.8), (b[7:9, 7:9, 2:4], 0.7)],
    )
    empty = _case([], [(b[2:4, 2:4, 8:10], 0.95), (b[8:10, 8:10, 8:10], 0.55)])
    r3, r4 = b[4:7, 4:7, 1:4], b[4:7, 4:7, 6:9]
    # one prediction bridges r3 and part of r4 (finds one of them); a later one reaches r4's far end
    bridge = _case([r3, r4], [(b[4:7, 4:7, 1:7], 0.85), (b[4:7, 4:7, 8:9], 0.65)])
    return [a, empty, bridge]


def _components_with_scores(pred: np.ndarray, prob: np.ndarray) -> list[tuple[np.ndarray, float]]:
    labels, n = ndimage.label(pred, structure=CONNECTIVITY_STRUCTURE)
    return [(labels == i, float(prob[labels == i].max())) for i in range(1, n + 1)]


def _brute_force(cases) -> tuple[list[float], list[int], list[int]]:
    """Every threshold by hand: keep the components scoring >= t, match them with lesion_matching."""
    comps = [_components_with_scores(p, q) for p, q, _ in cases]
    thresholds = sorted({s for cs in comps for _, s in cs}, reverse=True)
    found, fps = [], []
    for t in thresholds:
        f = fp = 0
        for (_, _, ref), cs in zip(cases, comps):
            kept = np.zeros(SHAPE, bool)
            for mask, s in cs:
                if s >= t:
                    kept |= mask
            m = lesion_matching(kept, ref, np.eye(4))
            f += m["lesions_found"]
            fp += m["false_positive_lesions"]
        found.append(f)
        fps.append(fp)
    return thresholds, found, fps


def test_lesion_froc_equals_brute_force_and_the_hand_computed_cpm() -> None:
    cases = _synthetic_set()
    per_case = [lesion_candidates(p, q, r, 0.001) for p, q, r in cases]
    assert [c["lesions_ref"] for c in per_case] == [2, 0, 2]
    assert per_case[0]["scores"] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert per_case[0]["true"] == [True, False, True, True]
    froc = lesion_froc_summary(per_case)
    thresholds, found, fps = _brute_force(cases)
    assert froc["thresholds"] == pytest.approx(thresholds)
    assert froc["sensitivity"] == pytest.approx([f / 4 for f in found])
    assert froc["false_positives_per_scan"] == pytest.approx([fp / 3 for fp in fps])
    # By hand: t = .95 .9 .85 .8 .7 .65 .6 .55 -> found 0 1 2 2 3 4 4 4, FP 1 1 1 2 2 2 2 3.
    assert found == [0, 1, 2, 2, 3, 4, 4, 4] and fps == [1, 1, 1, 2, 2, 2, 2, 3]
    assert froc["sensitivity_at_fp_rates"] == pytest.approx([0, 0, 0.5, 1, 1, 1, 1])
    assert froc["cpm"] == pytest.approx(4.5 / 7)
    assert froc["candidates"] == 8 and froc["cases"] == 3 and froc["lesions_ref"] == 4


def test_lesion_froc_random_cases_equal_brute_force() -> None:
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(4):
        ref = ndimage.binary_dilation(rng.random(SHAPE) > 0.985, iterations=1)
        pred = ndimage.binary_dilation(rng.random(SHAPE) > 0.985, iterations=1) | (ref & (rng.random(SHAPE) > 0.5))
        prob = np.where(pred, rng.choice([0.6, 0.7, 0.8, 0.9], SHAPE), 0.0).astype(np.float32)  # ties across cases
        cases.append((pred, prob, ref))
    froc = lesion_froc_summary([lesion_candidates(p, q, r, 0.001) for p, q, r in cases])
    thresholds, found, fps = _brute_force(cases)
    n_ref = sum(ndimage.label(r, structure=CONNECTIVITY_STRUCTURE)[1] for _, _, r in cases)
    assert froc["thresholds"] == pytest.approx(thresholds)
    assert froc["sensitivity"] == pytest.approx([f / n_ref for f in found])
    assert froc["false_positives_per_scan"] == pytest.approx([fp / 4 for fp in fps])


def test_lesion_froc_without_candidates_or_references() -> None:
    none = lesion_froc_summary([lesion_candidates(np.zeros(SHAPE, bool), np.zeros(SHAPE, np.float32), np.zeros(SHAPE, bool), 0.001)])
    assert none["thresholds"] == [] and math.isnan(none["cpm"])
    missed = lesion_froc_summary([lesion_candidates(np.zeros(SHAPE, bool), np.zeros(SHAPE, np.float32), np.ones(SHAPE, bool), 0.001)])
    assert missed["cpm"] == 0.0 and missed["lesions_ref"] == 1


def test_reliability_table_on_hand_made_scores() -> None:
    scores = [0.05, 0.15, 0.18, 0.95, 1.0, 0.55]
    true = [False, False, True, True, True, False]
    table = reliability_table(scores, true, bins=10)
    rows = {round(r["score_min"], 1): r for r in table["bins"] if r["count"]}
    assert sorted(rows) == [0.0, 0.1, 0.5, 0.9]  # 1.0 falls in the last bin
    assert rows[0.1]["count"] == 2 and rows[0.1]["fraction_true"] == 0.5 and rows[0.1]["mean_score"] == pytest.approx(0.165)
    assert rows[0.9]["count"] == 2 and rows[0.9]["fraction_true"] == 1.0 and rows[0.9]["mean_score"] == pytest.approx(0.975)
    assert rows[0.5]["fraction_true"] == 0.0
    assert math.isnan(table["bins"][3]["fraction_true"]) and table["bins"][3]["count"] == 0
    # ECE = (1 * .05 + 2 * .335 + 1 * .55 + 2 * .025) / 6
    assert table["ece"] == pytest.approx(1.32 / 6)
    assert table["candidates"] == 6 and table["true_lesions"] == 3
    two = reliability_table(scores, true, bins=2)
    assert [r["count"] for r in two["bins"]] == [3, 3]
    assert two["ece"] == pytest.approx((3 * abs(1 / 3 - 0.38 / 3) + 3 * abs(2 / 3 - 2.5 / 3)) / 6)
    assert reliability_table([0.5], [True])["ece"] == pytest.approx(0.5)
    assert math.isnan(reliability_table([], [])["ece"])


@pytest.mark.parametrize(
    ("scores", "true", "bins", "error"),
    [([0.5], [True, False], 10, InputError), ([1.5], [True], 10, InputError), ([float("nan")], [True], 10, InputError), ([0.5], [True], 0, ConfigError)],
)
def test_reliability_table_refuses_bad_input(scores, true, bins, error) -> None:
    with pytest.raises(error):
        reliability_table(scores, true, bins=bins)


def test_the_chosen_score_keeps_every_found_lesion_and_removes_the_most_false_positives() -> None:
    cases = _synthetic_set()
    per_case = [lesion_candidates(p, q, r, 0.001) for p, q, r in cases]
    out = choose_min_lesion_score(per_case)
    # every lesion is found from t = .65 on; the next score below is .6: the midpoint is chosen
    assert out["score_interval"] == pytest.approx([0.6, 0.65])
    assert out["min_lesion_score"] == pytest.approx(0.625)
    assert out["lesions_found"] == 4 and out["false_positive_lesions"] == 3
    assert out["false_positive_lesions_at_min_lesion_score"] == 2
    _assert_keeps_found(cases, out["min_lesion_score"])


def _assert_keeps_found(cases, threshold: float) -> None:
    before = after = 0
    for pred, prob, ref in cases:
        kept = remove_low_score_lesions(pred, prob, threshold, 0.001).astype(bool)
        before += lesion_matching(pred, ref, np.eye(4))["lesions_found"]
        after += lesion_matching(kept, ref, np.eye(4))["lesions_found"]
    assert after == before


def test_the_chosen_score_never_drops_a_found_lesion_on_random_cases() -> None:
    rng = np.random.default_rng(11)
    for trial in range(3):  # each trial is a brute force over every threshold (seconds)
        cases = []
        for _ in range(3):
            ref = ndimage.binary_dilation(rng.random(SHAPE) > 0.985, iterations=1)
            pred = ndimage.binary_dilation(rng.random(SHAPE) > 0.98, iterations=1) | (ref & (rng.random(SHAPE) > 0.6))
            prob = np.where(pred, rng.uniform(0.5, 1.0, SHAPE), 0.0).astype(np.float32)
            cases.append((pred, prob, ref))
        out = choose_min_lesion_score([lesion_candidates(p, q, r, 0.001) for p, q, r in cases])
        if out["min_lesion_score"] is None:
            continue
        _assert_keeps_found(cases, out["min_lesion_score"])
        _, found, fps = _brute_force(cases)
        best_fp = min(fp for f, fp in zip(found, fps) if f == max(found))
        assert out["false_positive_lesions_at_min_lesion_score"] == best_fp, trial


def test_no_score_is_chosen_when_nothing_is_found_or_nothing_can_go() -> None:
    b = np.s_
    nothing_found = [lesion_candidates(*_case([b[1:3, 1:3, 1:3]], [(b[8:10, 8:10, 8:10], 0.9)]), 0.001)]
    assert choose_min_lesion_score(nothing_found)["min_lesion_score"] is None  # would remove every prediction
    all_needed = [lesion_candidates(*_case([b[1:3, 1:3, 1:3]], [(b[1:3, 1:3, 1:3], 0.7)]), 0.001)]
    out = choose_min_lesion_score(all_needed)
    assert out["min_lesion_score"] is None and out["lesions_found"] == 1
    assert choose_min_lesion_score([])["min_lesion_score"] is None


def test_candidates_from_folders_apply_the_minimum_volume_first(tmp_path: Path) -> None:
    b = np.s_
    pred, prob, ref = _case([b[1:4, 1:4, 1:4]], [(b[1:4, 1:4, 1:4], 0.9), (b[8:9, 8:9, 8:9], 0.95)])  # a 1-voxel FP
    for folder, arr in (("pred", pred), ("ref", ref)):
        write_nifti(Volume(arr.astype(np.uint8), np.eye(4)), tmp_path / folder / "a.nii.gz")
    write_nifti(Volume(prob, np.eye(4)), tmp_path / "pred" / "probabilities" / "a.nii.gz")
    every = collect_lesion_candidates(tmp_path / "pred", tmp_path / "ref")
    assert every[0]["scores"] == pytest.approx([0.95, 0.9]) and every[0]["true"] == [False, True]
    assert choose_min_lesion_score(every)["min_lesion_score"] is None  # the false positive outscores the lesion
    big = collect_lesion_candidates(tmp_path / "pred", tmp_path / "ref", min_lesion_ml=0.002)
    assert big[0]["scores"] == pytest.approx([0.9])
    with pytest.raises(InputError, match="probabilit"):
        collect_lesion_candidates(tmp_path / "pred", tmp_path / "ref", prob_dir=tmp_path / "ref" / "none")


# --------------------------------------------------------------------------------------------
# segment / predict_path: the mask written and the lesion table agree


class GradedNet(torch.nn.Module):
    """Stub model: logit (HU + 100) / 100, so a blob of 0 HU scores 0.73, 200 HU 0.95, 400 HU 0.99."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1].float()
        return (centre * HU_SCALE + 100.0) / 100.0


def _graded_ct() -> Volume:
    arr = np.full((16, 16, 40), -800, np.int16)
    arr[2:5, 2:5, 32:35] = 0
    arr[9:12, 2:5, 32:35] = 200
    arr[2:5, 9:13, 34:38] = 400
    return Volume(arr, np.diag([1.5, 1.5, 2.0, 1.0]))


def _graded_model() -> LoadedModel:
    return LoadedModel(net=GradedNet(), preprocess=PreprocessConfig(preset="seed", size=16), context=0, info={"threshold": 0.5})


def _component_scores(mask: np.ndarray, prob: np.ndarray) -> list[float]:
    labels, n = ndimage.label(mask, structure=CONNECTIVITY_STRUCTURE)
    return sorted(float(prob[labels == i].max()) for i in range(1, n + 1))


def test_segment_min_lesion_score_removes_exactly_the_lesions_below_it() -> None:
    from lungtumor.inference import segment

    ct, model = _graded_ct(), _graded_model()
    full, prob = segment(ct, model, return_probabilities=True, precision="fp32")
    scores = _component_scores(full.array, prob.array)
    assert len(scores) == 3 and scores[0] == pytest.approx(0.731, abs=0.01) and scores[1] == pytest.approx(0.953, abs=0.01)
    for cut, left in ((0.0, 3), (scores[0], 3), (np.nextafter(scores[0], 1.0), 2), (0.9, 2), (scores[2], 1), (1.0, 0)):
        mask = segment(ct, model, min_lesion_score=float(cut), precision="fp32")
        kept = _component_scores(mask.array, prob.array)
        assert kept == [s for s in scores if s >= cut], cut
        assert len(kept) == left
    assert np.array_equal(segment(ct, model, min_lesion_score=0.9, postprocess=False, precision="fp32").array, full.array)
    with pytest.raises(ConfigError, match="--min-lesion-score"):
        segment(ct, model, min_lesion_score=2.0)


def test_predict_min_lesion_score_mask_and_lesion_table_agree(tmp_path: Path) -> None:
    from lungtumor.io.nifti import write_nifti as write
    from lungtumor.predict import predict_path

    src = write(_graded_ct(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out" / "ct.nii.gz"
    predict_path(_graded_model(), src, out, min_lesion_score=0.9, report=True, probabilities=True, progress=False)
    mask, prob = read_nifti(out), read_nifti(tmp_path / "out" / "ct_prob.nii.gz", dtype=np.float32)
    kept = _component_scores(mask.array, prob.array)
    assert len(kept) == 2 and min(kept) >= 0.9
    report = tmp_path / "out" / "ct_report"
    with open(report / "lesions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["score"]) for r in rows) == pytest.approx(kept)
    assert all(float(r["score"]) == float(r["prob_max"]) for r in rows)
    doc = json.loads((report / "lesions.json").read_text())
    assert sorted(les["score"] for les in doc["lesions"]) == pytest.approx(kept)
    assert "prob_max" in doc["conventions"]["score"] and doc["model"]["min_lesion_score"] == 0.9
    html = (report / "report.html").read_text()
    assert "<th>score</th>" in html
    shown = sorted(float(v) for v in re.findall(r'data-key="score">([0-9.]+)<', html))
    assert shown == pytest.approx(kept, abs=5e-4)


def test_predict_takes_the_score_a_cv_folder_chose(tmp_path: Path) -> None:
    from lungtumor.cvfolder import cv_min_lesion_score

    (tmp_path / "cv_summary.json").write_text(json.dumps({"postprocessing": {"min_lesion_ml": None, "min_lesion_score": 0.8}}))
    assert cv_min_lesion_score(tmp_path) == 0.8
    (tmp_path / "cv_summary.json").write_text(json.dumps({"postprocessing": {"min_lesion_score": None}}))
    assert cv_min_lesion_score(tmp_path) is None
    assert cv_min_lesion_score(tmp_path / "nope") is None


def test_evaluate_reports_the_lesion_froc_and_calibration_beside_the_voxel_froc(tmp_path: Path) -> None:
    from lungtumor.evaluation.evaluate import SUMMARY_JSON, evaluate_folder, format_table

    for index, (pred, prob, ref) in enumerate(_synthetic_set()):
        write_nifti(Volume(pred.astype(np.uint8), np.eye(4)), tmp_path / "pred" / f"c{index}.nii.gz")
        write_nifti(Volume(ref.astype(np.uint8), np.eye(4)), tmp_path / "ref" / f"c{index}.nii.gz")
        write_nifti(Volume(prob, np.eye(4)), tmp_path / "pred" / "probabilities" / f"c{index}.nii.gz")
    result = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", prob_dir=tmp_path / "pred" / "probabilities", progress=False)
    saved = json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())
    assert saved["lesion_froc"]["cpm"] == pytest.approx(4.5 / 7)
    assert saved["lesion_froc"]["candidates"] == 8 and "froc" in saved and "thresholds" in saved["froc"]
    calib = saved["lesion_calibration"]
    assert calib["candidates"] == 8 and calib["true_lesions"] == 5
    by_bin = {round(r["score_min"], 1): r for r in calib["bins"]}
    # float32 probabilities: 0.9 is stored as 0.89999998, so it bins with 0.85 and 0.8 (a false positive)
    assert by_bin[0.9]["count"] == 1 and by_bin[0.9]["fraction_true"] == 0.0  # the 0.95 false positive
    assert by_bin[0.8]["count"] == 3 and by_bin[0.8]["fraction_true"] == pytest.approx(2 / 3)
    assert by_bin[0.0]["fraction_true"] is None  # an empty bin is null in the JSON
    table = format_table(result)
    assert "lesion FROC (per-lesion scores, 8 predicted lesions)" in table and "CPM 0.643" in table
    assert "FROC (voxel thresholds)" in table and "ECE" in table
