"""The re-scorer benchmark (benchmarks/bench_rescorer.py): its scoring of candidates, and its --tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bench_rescorer as br


def test_auc_counts_ties_half_and_needs_both_kinds() -> None:
    assert br.auc(np.array([0.9, 0.5, 0.1]), np.array([True, False, False])) == 1.0
    assert br.auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert br.auc(np.array([0.5]), np.array([True])) is None


def test_summary_counts_false_positives_at_the_cut() -> None:
    case = {"lesions_ref": 2, "scores": [0.9, 0.6, 0.4, 0.2], "true": [True, False, True, False], "volume_ml": [1, 1, 1, 1], "found_by_rank": [0, 1, 1, 2, 2]}
    s = br.summarise([case])
    assert s["found_all"] == 2 and s["fp_per_scan_all"] == 2.0
    assert s["found_at_0.5"] == 1 and s["fp_per_scan_at_0.5"] == 1.0
    assert br.OPERATING_POINT == 0.1 and s["found_at_0.1"] == 2 and s["fp_per_scan_at_0.1"] == 2.0
    assert s["auc_true_vs_false"] == pytest.approx(0.75)
    # Calibration over the four candidates: bins 0.9, 0.6, 0.4, 0.2 hold one each (true 1, 0, 1, 0).
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.4) + abs(0 - 0.2)) / 4
    assert s["calibration"]["candidates"] == 4 and s["calibration"]["ece"] == pytest.approx(expected)


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path) -> None:
    assert br.main([str(tmp_path / "w"), "--tiny", "--threads", "1"]) == 0
    rep = json.loads((tmp_path / "w" / "rescorer" / "results.json").read_text())
    assert len(rep["folds"]) == 2 and set(rep["pooled"]) == set(br.SCORES)
    assert all(f["score_definition"].startswith("rescorer") for f in rep["folds"])
    # The three scores rank the same candidates: the found count with every candidate is the same.
    assert len({rep["pooled"][k]["found_all"] for k in br.SCORES}) == 1
    # --reuse keeps a fold's re-scorer only when it was trained with the same steps, batch and seed for its U-Net.
    held = rep["folds"][0]["held_out"]
    ckpt, unet = tmp_path / "w" / "rescorer" / held / "rescored.ckpt", tmp_path / "w" / "loso" / held / "train" / "last.ckpt"
    info = br.reusable(ckpt, unet, 2, 4, 0)
    assert info is not None and info["steps"] == 2
    assert br.reusable(ckpt, unet, 3, 4, 0) is None and br.reusable(ckpt, unet, 2, 4, 1) is None
    unet.touch()  # a U-Net trained again after the re-scorer
    assert br.reusable(ckpt, unet, 2, 4, 0) is None
