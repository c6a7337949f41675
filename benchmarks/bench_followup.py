"""Benchmark of ``lungtumor followup`` with given masks: wall time (registration included) on FULL phantom
pairs and on the real pair, and the registration's landmark error on synthetic pairs.

Each follow-up is its baseline moved by a known rigid motion (rotation 5-10 degrees, translation
>= 30 mm), resampled onto an R-P-S grid with another slice thickness; lesions unchanged. The landmark
error is the distance between each baseline lesion centroid mapped by the found alignment and by
the known motion (mm).

    PYTHONPATH=src python benchmarks/bench_followup.py [--seeds 0 1] [--skip-real]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import machine
from helpers.followup import make_pair, motion, real_data_dir
from lungtumor.followup import followup
from lungtumor.io.nifti import read_nifti
from lungtumor.lesions.recist import measure_lesions
from lungtumor.phantom.dataset import make_case
from lungtumor.preprocessing.registration import map_points

MOTIONS = [(7.0, 3.0, (35.0, -12.0, 20.0)), (-5.0, 4.0, (-30.0, 22.0, -15.0)), (9.0, -2.0, (12.0, 31.0, 10.0))]


def run(name: str, ct, label, seed: int, spacing: tuple[float, float, float]) -> dict:
    rz, rx, t = MOTIONS[seed % len(MOTIONS)]
    centre = map_points(ct.affine, np.array(ct.shape) / 2.0)[0]
    pair = make_pair(ct, label, motion(rz, rx, t, centre=centre), spacing)
    mask_f = pair.followup_mask()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        doc = followup(ct, pair.ct_f, Path(tmp) / "out", baseline_mask=label, followup_mask=mask_f)
        seconds = time.perf_counter() - t0
    centroids = np.array([les.centroid_ras_mm for les in measure_lesions(label, ct).lesions])
    found = map_points(np.array(doc["registration"]["baseline_to_followup_ras"]), centroids)
    error = np.linalg.norm(found - map_points(pair.baseline_to_followup, centroids), axis=1)
    row = {
        "case": name, "shape_b": ct.shape, "shape_f": pair.ct_f.shape, "seconds": seconds, "registration_s": doc["registration"]["seconds"],
        "ok": doc["registration"]["ok"], "lung_dice": doc["registration"]["lung_dice"], "landmark_error_mean_mm": float(error.mean()),
        "landmark_error_max_mm": float(error.max()), "response": doc["response"], "counts": {k: v for k, v in doc["counts"].items() if v},
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--small-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    print(machine())
    rows = []
    for seed in args.small_seeds:
        ct, label = make_case(seed, "SMALL", 3)
        rows.append(run(f"phantom SMALL seed {seed}", ct, label, seed, (2.5, 2.5, 3.0)))
    for seed in args.seeds:
        ct, label = make_case(seed, "FULL", 3)
        rows.append(run(f"phantom FULL seed {seed}", ct, label, seed, (0.8, 0.8, 2.0)))
    real = real_data_dir()
    if real is not None and not args.skip_real and (real / "LUNG1-002" / "ct.nii.gz").is_file():
        ct = read_nifti(real / "LUNG1-002" / "ct.nii.gz")
        label = read_nifti(real / "LUNG1-002" / "gtv1_label.nii.gz")
        rows.append(run("real LUNG1-002", ct, label, 1, (0.9, 0.9, 2.5)))
    errors = [r["landmark_error_mean_mm"] for r in rows]
    print(f"mean landmark error over {len(rows)} pairs: {np.mean(errors):.2f} mm (max {max(r['landmark_error_max_mm'] for r in rows):.2f} mm)")
    for r in rows:
        print(f"  {r['case']}: {r['seconds']:.1f} s (registration {r['registration_s']:.1f} s), landmark error {r['landmark_error_mean_mm']:.2f} mm")


if __name__ == "__main__":
    main()
