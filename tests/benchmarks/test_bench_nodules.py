"""The nodule benchmark's rules (benchmarks/bench_nodules.py): folds by patient, solid / subsolid, a nodule found."""

from __future__ import annotations

import numpy as np
import pytest

import bench_nodules as bn


def test_folds_never_split_a_patient() -> None:
    crops = [f"P-{p:04d}_R_{r}" for p in range(23) for r in range(1, 1 + p % 3 + 1)]
    fold_of = bn.patient_folds([bn.patient_of(c) for c in crops], 5, seed=0)
    assert bn.patient_of("LIDC-IDRI-0011_R_10") == "LIDC-IDRI-0011"
    assert sorted(set(fold_of.values())) == [0, 1, 2, 3, 4]
    counts = np.bincount(list(fold_of.values()))
    assert counts.max() - counts.min() <= 1  # patients dealt round-robin
    assert bn.patient_folds([bn.patient_of(c) for c in crops], 5, seed=0) == fold_of  # seeded


def test_solid_rule() -> None:
    assert bn.kind_of(bn.SOLID_HU_IN) == "solid" and bn.kind_of(20.0) == "solid"
    assert bn.kind_of(bn.SOLID_HU_IN - 0.1) == "subsolid" and bn.kind_of(-650.0) == "subsolid"


def _crop(label: np.ndarray) -> bn.Crop:
    return bn.Crop("P-0001_R_1", np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1), np.float32), label.astype(np.uint8),
                   np.diag([0.7, 0.7, 2.5, 1.0]), 8.0, -100.0)


def test_score_crop_counts_found_and_false_positive_components() -> None:
    label = np.zeros((20, 20, 4), np.uint8)
    label[5:10, 5:10, 1:3] = 1
    prob = np.zeros(label.shape, np.float32)
    prob[7:12, 7:12, 1:3] = 0.9  # overlaps the nodule
    prob[16:18, 16:18, 0] = 0.8  # a separate component: a false positive
    prob[0, 0, 3] = 0.4  # under the threshold
    row = bn.score_crop(_crop(label), prob)
    inter = 3 * 3 * 2
    assert row["found"] and row["false_positive_components"] == 1
    assert row["dice"] == pytest.approx(2 * inter / (50 + 50 + 4))
    assert row["band"] == "<10 mm" and row["kind"] == "solid"
    missed = bn.score_crop(_crop(label), np.zeros(label.shape, np.float32))
    assert not missed["found"] and missed["dice"] == 0.0 and missed["false_positive_components"] == 0


def test_crop_summary_groups_by_band_and_kind() -> None:
    rows = [
        {"found": True, "dice": 0.8, "false_positive_components": 0, "band": "<10 mm", "kind": "solid"},
        {"found": False, "dice": 0.0, "false_positive_components": 2, "band": "10-20 mm", "kind": "subsolid"},
        {"found": True, "dice": 0.6, "false_positive_components": 1, "band": "10-20 mm", "kind": "solid"},
    ]
    s = bn.crop_summary(rows)
    assert s["all"]["sensitivity"] == pytest.approx(2 / 3) and s["all"]["false_positive_components_per_crop"] == pytest.approx(1.0)
    assert s["all"]["dice"]["median"] == pytest.approx(0.6) and s["all"]["dice"]["q10"] == pytest.approx(np.percentile([0.8, 0.0, 0.6], 10))
    assert s["by_band"]["10-20 mm"]["crops"] == 2 and s["by_band"][">30 mm"]["crops"] == 0
    assert s["by_kind"]["solid"]["sensitivity"] == 1.0 and s["by_kind"]["subsolid"]["sensitivity"] == 0.0
    assert "-300" in s["kind_rule"]
