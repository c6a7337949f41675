"""Which per-lesion score ranks predicted lesions best: the measurement behind ``LESION_SCORE``.

Predicts a folder of labelled cases with a trained checkpoint (probabilities kept; the lung-region
post-processing only, no minimum lesion volume, so that small false positives stay candidates),
then scores every predicted lesion with each kind of :data:`lungtumor.lesions.score.LESION_SCORE_KINDS`
and reports, per kind, the exact lesion-level FROC's CPM (LUNA16), the sensitivity at 1 false
positive per scan, the ROC AUC of true against false-positive candidates (Mann-Whitney, ties 1/2)
and the expected calibration error.

Run (a demo's checkpoint and its held-out phantom cases):
  .venv/bin/python benchmarks/bench_lesion_score.py --checkpoint demo_run/run/last.ckpt \
      --images demo_run/heldout/imagesTr --labels demo_run/heldout/labelsTr --out /tmp/bls
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def auc(scores: np.ndarray, true: np.ndarray) -> float:
    """ROC AUC of true (positive) against false candidates: P(score_true > score_false) + 1/2 P(tie)."""
    pos, neg = scores[true], scores[~true]
    if not pos.size or not neg.size:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def main() -> None:
    import torch

    from lungtumor.evaluation.calibration import reliability_table
    from lungtumor.evaluation.evaluate import match_cases, probability_file
    from lungtumor.evaluation.lesion_froc import lesion_candidates, lesion_froc_summary
    from lungtumor.io.nifti import read_nifti
    from lungtumor.lesions.components import require_binary
    from lungtumor.lesions.score import LESION_SCORE_KINDS
    from lungtumor.predict import predict_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", required=True, help="folder of CT .nii.gz")
    ap.add_argument("--labels", required=True, help="folder of reference masks, same names")
    ap.add_argument("--out", required=True, help="predictions and results go here")
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    pred_dir = out / "predictions"
    t0 = time.perf_counter()
    if not (out / "predicted.json").exists():
        predict_path(a.checkpoint, a.images, pred_dir, probabilities=True, tta=a.tta, progress=False, min_lesion_ml=0.0)
        (out / "predicted.json").write_text(json.dumps({"checkpoint": a.checkpoint, "images": a.images}))
    print(f"predicted in {time.perf_counter() - t0:.1f} s")
    cases = []
    for name, pred_path, label_path in match_cases(pred_dir, a.labels):
        pred, label = read_nifti(pred_path), read_nifti(label_path)
        prob = read_nifti(probability_file(pred_dir / "probabilities", name), dtype=np.float32)
        cases.append((require_binary(pred), prob.array, require_binary(label), pred.voxel_volume_ml))
    results = {}
    for kind in LESION_SCORE_KINDS:
        per_case = [lesion_candidates(p, q, r, v, kind) for p, q, r, v in cases]
        froc = lesion_froc_summary(per_case)
        scores = np.array([s for c in per_case for s in c["scores"]])
        true = np.array([t for c in per_case for t in c["true"]], dtype=bool)
        results[kind] = {
            "cpm": froc["cpm"],
            "sensitivity_at_fp_rates": dict(zip(froc["fp_rates"], froc["sensitivity_at_fp_rates"])),
            "auc_true_vs_false_positive": auc(scores, true),
            "ece": reliability_table(scores, true)["ece"],
            "candidates": int(scores.size),
            "true_candidates": int(true.sum()),
            "lesions_ref": froc["lesions_ref"],
            "cases": froc["cases"],
        }
        r = results[kind]
        print(
            f"{kind:<14} CPM {r['cpm']:.3f}  sens@1FP {r['sensitivity_at_fp_rates'][1.0]:.3f}  AUC {r['auc_true_vs_false_positive']:.3f}  "
            f"ECE {r['ece']:.3f}  ({r['candidates']} candidates, {r['true_candidates']} true; {r['lesions_ref']} lesions, {r['cases']} cases)"
        )
    (out / "lesion_score.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
