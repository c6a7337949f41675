"""The second-stage lesion re-scorer measured on a finished leave-one-scan-out work folder.

For every finished fold of ``bench_nodules.py --part loso`` (``WORK/loso/<held_out>/train/last.ckpt``,
the fold's store ``WORK/folds/<held_out>``, the scans ``WORK/pairs/<case>_ct/_label.nii.gz``): train the
re-scorer (``training/rescorer.py``) for that fold's U-Net on the fold's store and the crops of every
patient but the held-out one (``crop_exclude=held_out``), write the checkpoint with it
(``WORK/rescorer/<held_out>/rescored.ckpt``), predict the held-out scan with it through
``predict_path(..., probabilities=True, report=True)`` (the product path: the lesions and their
re-scorer scores come from the report's ``lesions.json`` and ``instances.nii.gz``), and score the
same predicted lesions three ways:

- ``prob_max``: the U-Net's maximum probability inside the lesion (today's score, without a re-scorer);
- ``rescorer``: the re-scorer's own probability for every lesion (computed here beside the product);
- ``geomean``: sqrt(prob_max * rescorer), a combination measured alongside;
- ``rescorer_small``: the re-scorer's for lesions whose longest axial diameter is at most the patch's
  30 mm, ``prob_max`` for larger ones (a larger tumour is seen from inside by the patch): the product's
  score with a re-scorer since 2026-12-05 (lesions.json's ``score``, checked against it here).

The held-out scan is predicted with ``min_lesion_score=0`` (every candidate kept, not the checkpoint's
operating point), so that the four scores rank the same candidates.

Reported per fold and pooled over the folds: reference lesions found (every candidate kept), false-positive
lesions per scan with every candidate and with the candidates scoring >= 0.5, the lesion FROC and CPM
(``evaluation/lesion_froc.py``, exact over every score: candidates are the predicted lesions, so the
found count with every candidate is the same for the three scores), and the AUC of the score, true
against false-positive candidates. The re-scorer never adds a lesion; it can only rank them.

Run: ``python benchmarks/bench_rescorer.py WORK [--steps 600] [--crops DIR] [--checkpoint last|best]``. ``--tiny`` makes its own
tiny work folder first (``bench_nodules.py``'s loso on two SMALL phantom scans and synthetic crops, width
4, a few steps) and trains the re-scorer a few steps: a check of the plumbing, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.model.rescorer import RESCORER_MIN_LESION_SCORE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
CROPS_DIR = "lidc_nodule_crops"
SCORES = ("prob_max", "rescorer", "geomean", "rescorer_small")
#: ``rescorer_small``: lesions longer than this (mm, the default patch's extent) keep prob_max.
SMALL_MM = 30.0
#: The operating point reported besides "every candidate".
CUT = 0.5
#: The operating point a re-scorer is written with (``predict``'s default for its checkpoint), reported too.
OPERATING_POINT = RESCORER_MIN_LESION_SCORE


def finished_folds(work: Path, checkpoint: str = "last") -> list[str]:
    """The held-out scans of ``WORK/loso`` whose U-Net (``train/<checkpoint>.ckpt``), fold store and scan are all there."""
    out = []
    for run in sorted((work / "loso").glob("*")):
        held = run.name
        if (run / "train" / f"{checkpoint}.ckpt").is_file() and (work / "folds" / held / "store.json").is_file() and (work / "pairs" / f"{held}_ct.nii.gz").exists():
            out.append(held)
    return out


def auc(scores: np.ndarray, true: np.ndarray) -> float | None:
    """Probability that a true candidate outscores a false one (ties count half); None without both kinds."""
    pos, neg = scores[true], scores[~true]
    if pos.size == 0 or neg.size == 0:
        return None
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def raw_rescores(checkpoint: Path, ct_path: Path, report_dir: Path) -> dict[int, float]:
    """The re-scorer's own probability for every lesion of a report (by its id), whatever its size: the
    product's score (lesions.json) is the re-scorer's only for lesions that fit in the patch."""
    from lungtumor.inference.predictor import load_ensemble, model_rescorers, prepare
    from lungtumor.inference.rescore import rescore_lesions
    from lungtumor.io.nifti import read_nifti
    from lungtumor.io.readers import read_volume
    from lungtumor.io.volume import Volume

    models = load_ensemble(checkpoint)
    prepared = prepare(read_volume(ct_path), models[0].preprocess)
    ids = read_nifti(report_dir / "instances.nii.gz")
    ids_arr = np.asarray(ids.array)
    inst, raw = rescore_lesions(Volume((ids_arr > 0).astype(np.uint8), ids.affine), prepared.slices, prepared.grid, model_rescorers(models))
    out = {}
    for i, obj in enumerate(inst.objects):
        report_id = ids_arr[inst.box][obj][inst.labels[obj] == i + 1]
        out[int(report_id[0])] = float(raw[i])
    return out


def fold_candidates(report_dir: Path, label_path: Path, raw: dict[int, float]) -> dict[str, dict[str, Any]]:
    """Per score kind, :func:`lesion_candidates` of one predicted scan, from its report folder and the
    re-scorer's own probabilities ``raw`` (:func:`raw_rescores`); checks that the report's score is
    ``rescorer_small`` (the product's rule)."""
    from lungtumor.evaluation.lesion_froc import lesion_candidates
    from lungtumor.io.nifti import read_nifti

    doc = json.loads((report_dir / "lesions.json").read_text())
    inst = read_nifti(report_dir / "instances.nii.gz")
    ref = read_nifti(label_path).array > 0
    labels = np.asarray(inst.array)
    pred = labels > 0
    out = {}
    for kind in SCORES:
        values = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.float32)
        for les in doc["lesions"]:
            pm, rs = float(les["prob_max"]), raw[int(les["id"])]
            small = rs if float(les["longest_diameter_mm"]) <= SMALL_MM else pm
            if abs(small - float(les["score"])) > 1e-4:
                raise SystemExit(f"{report_dir}: lesion {les['id']} scores {les['score']} in lesions.json, not the rule's {small}")
            values[int(les["id"])] = {"prob_max": pm, "rescorer": rs, "geomean": float(np.sqrt(pm * rs)), "rescorer_small": small}[kind]
        out[kind] = lesion_candidates(pred, values[labels], ref, inst.voxel_volume_ml)
    out["score_definition"] = doc["conventions"]["score"]  # type: ignore[assignment]
    return out


def summarise(per_case: list[dict[str, Any]]) -> dict[str, Any]:
    """Found, false positives (all, at >= the operating point and at >= CUT), FROC/CPM, AUC and calibration (ECE, reliability bins) of one score over cases."""
    from lungtumor.evaluation.calibration import candidates_reliability
    from lungtumor.evaluation.lesion_froc import lesion_froc_summary

    froc = lesion_froc_summary(per_case)
    scores = np.concatenate([np.asarray(c["scores"], float) for c in per_case] + [np.zeros(0)])
    true = np.concatenate([np.asarray(c["true"], bool) for c in per_case] + [np.zeros(0, bool)])
    n = max(1, len(per_case))
    at: dict[str, Any] = {}
    for cut in (OPERATING_POINT, CUT):
        kept = scores >= cut
        found_at_cut = 0
        for c in per_case:  # candidates are sorted by score: the first k are those >= cut
            k = int(np.sum(np.asarray(c["scores"], float) >= cut))
            found_at_cut += int(c["found_by_rank"][k])
        at[f"found_at_{cut:g}"] = found_at_cut
        at[f"fp_per_scan_at_{cut:g}"] = float(np.sum(~true & kept)) / n
    return {
        "lesions_ref": froc["lesions_ref"],
        "candidates": int(scores.size),
        "found_all": int(sum(c["found_by_rank"][-1] for c in per_case)),
        "fp_per_scan_all": float(np.sum(~true)) / n,
        **at,
        "cpm": froc.get("cpm"),
        "sensitivity_at_fp_rates": froc.get("sensitivity_at_fp_rates"),
        "auc_true_vs_false": auc(scores, true),
        "calibration": candidates_reliability(per_case) if scores.size else None,
    }


def reusable(ckpt: Path, unet: Path, steps: int, batch: int, seed: int) -> dict[str, Any] | None:
    """The training summary of a re-scorer already written to ``ckpt`` for the same U-Net with the same steps,
    batch and seed (``--reuse``), else None."""
    from lungtumor.model.checkpoint import read_checkpoint

    if not ckpt.is_file() or ckpt.stat().st_mtime < unet.stat().st_mtime:
        return None
    info = dict(read_checkpoint(ckpt).get("rescorer", {}).get("summary") or {})
    return info if (info.get("steps"), info.get("batch"), info.get("seed")) == (steps, batch, seed) else None


def run(
    work: Path, crops: Path | None, *, steps: int, batch: int, seed: int, held_outs: list[str] | None = None, checkpoint: str = "last",
    reuse: bool = False,
) -> dict[str, Any]:
    """Every finished fold of ``work``: re-scorer trained for its ``checkpoint`` (``last`` or ``best``), held-out scan
    predicted, scores compared. ``reuse``: a fold whose re-scorer was written by an earlier run with the same
    steps, batch and seed (and after its U-Net) is not trained again."""
    from lungtumor.predict import predict_path
    from lungtumor.training.rescorer import add_rescorer, train_rescorer

    folds = held_outs or finished_folds(work, checkpoint)
    if not folds:
        raise SystemExit(f"{work}: no finished leave-one-scan-out fold (loso/<scan>/train/last.ckpt with folds/<scan> and pairs/<scan>_ct.nii.gz)")
    rows, cases = [], {k: [] for k in SCORES}
    for held in folds:
        out = work / "rescorer" / held if checkpoint == "last" else work / f"rescorer_{checkpoint}" / held
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / "rescored.ckpt"
        unet = work / "loso" / held / "train" / f"{checkpoint}.ckpt"
        t0 = time.perf_counter()
        earlier = reusable(ckpt, unet, steps, batch, seed) if reuse else None
        if earlier is not None:
            info = earlier
            train_s = float(info.get("mining_s", 0.0)) + float(info.get("train_s", 0.0))
        else:
            net, info = train_rescorer(unet, work / "folds" / held, lesion_dir=crops, crop_exclude=held, steps=steps, batch=batch, seed=seed)
            add_rescorer(unet, ckpt, net, info)
            train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = out / "pred" / f"{held}.nii.gz"
        # Every candidate kept (min_lesion_score 0, not the checkpoint's operating point): the scores are compared here.
        ct_path = (work / "pairs" / f"{held}_ct.nii.gz").resolve()
        predict_path(ckpt, ct_path, pred, probabilities=True, report=True, progress=False, min_lesion_score=0)
        predict_s = time.perf_counter() - t0
        raw = raw_rescores(ckpt, ct_path, out / "pred" / f"{held}_report")
        cand = fold_candidates(out / "pred" / f"{held}_report", (work / "pairs" / f"{held}_label.nii.gz").resolve(), raw)
        row = {"held_out": held, "train_s": train_s, "predict_s": predict_s, "score_definition": cand.pop("score_definition"),
               "rescorer": {k: info[k] for k in ("store_pos", "crops", "store_fp", "store_neg", "crop_neg", "loss_last_50", "mining_s", "train_s")}}
        for kind in SCORES:
            row[kind] = summarise([cand[kind]])
            cases[kind].append(cand[kind])
        rows.append(row)
        (out / "result.json").write_text(json.dumps(row, indent=2, default=str))
        print(f"{held}: {row['prob_max']['found_all']}/{row['prob_max']['lesions_ref']} found, {row['prob_max']['candidates']} candidates; "
              f"FP/scan >= {CUT:g}: prob_max {row['prob_max'][f'fp_per_scan_at_{CUT:g}']:.1f}, rescorer {row['rescorer'][f'fp_per_scan_at_{CUT:g}']:.1f} "
              f"(found {row['rescorer'][f'found_at_{CUT:g}']}); AUC prob_max {row['prob_max']['auc_true_vs_false']}, rescorer {row['rescorer']['auc_true_vs_false']}",
              flush=True)
    return {"folds": rows, "pooled": {kind: summarise(cases[kind]) for kind in SCORES}, "steps": steps, "batch": batch, "seed": seed,
            "crops": str(crops) if crops else None, "checkpoint": checkpoint}


def table(rep: dict[str, Any]) -> str:
    """The pooled comparison as a text table."""
    op = OPERATING_POINT
    lines = [f"{'score':<15} {'found':>7} {'cand.':>6} {'FP/scan':>8} {'found>=' + format(op, 'g'):>9} {'FP/scan>=' + format(op, 'g'):>12} "
             f"{'found>=' + format(CUT, 'g'):>9} {'FP/scan>=' + format(CUT, 'g'):>12} {'CPM':>6} {'AUC':>6} {'ECE':>6}"]
    for kind in SCORES:
        s = rep["pooled"][kind]
        a = "n/a" if s["auc_true_vs_false"] is None else f"{s['auc_true_vs_false']:.3f}"
        cpm = "n/a" if s["cpm"] is None or not np.isfinite(s["cpm"]) else f"{s['cpm']:.3f}"
        ece = (s.get("calibration") or {}).get("ece")
        e = "n/a" if ece is None or not np.isfinite(ece) else f"{ece:.3f}"
        lines.append(f"{kind:<15} {s['found_all']:>3}/{s['lesions_ref']:<3} {s['candidates']:>6} {s['fp_per_scan_all']:>8.1f} "
                     f"{s[f'found_at_{op:g}']:>9} {s[f'fp_per_scan_at_{op:g}']:>12.1f} "
                     f"{s[f'found_at_{CUT:g}']:>9} {s[f'fp_per_scan_at_{CUT:g}']:>12.1f} {cpm:>6} {a:>6} {e:>6}")
    return "\n".join(lines)


def make_tiny_work(work: Path) -> Path:
    """A finished tiny leave-one-scan-out work folder (bench_nodules' own loso, tiny options) and its crops."""
    from bench_nodules import CPU_RECIPE, TINY_OVERRIDES, run_loso, write_tiny_crops, write_tiny_scans

    crops = write_tiny_crops(work / "tiny_crops")
    pairs = write_tiny_scans(work / "tiny_pairs")
    # The folds' U-Nets only: this benchmark trains its own re-scorer for each.
    run_loso(work, CPU_RECIPE, {**TINY_OVERRIDES, "rescorer_steps": 0}, pairs_dir=pairs, crops_dir=crops, phantom_size="SMALL")
    return crops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", help="a bench_nodules.py --part loso work folder (or, with --tiny, a new folder)")
    ap.add_argument("--crops", default=None, help="the crops folder (default REAL/lidc_nodule_crops; 'none' for no crops)")
    ap.add_argument("--steps", type=int, default=600, help="re-scorer training steps per fold")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", default=None, help="only these folds, comma-separated")
    ap.add_argument("--checkpoint", choices=("last", "best"), default="last", help="the fold's U-Net: train/last.ckpt (default) or train/best.ckpt")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: 2, or the cores if fewer)")
    ap.add_argument("--tiny", action="store_true", help="a tiny synthetic work folder first, a few steps (plumbing only)")
    ap.add_argument("--reuse", action="store_true", help="keep a fold's re-scorer written by an earlier run with the same --steps, --batch and --seed")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads or min(2, os.cpu_count() or 1))
    work = Path(a.work)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "load_average_start": os.getloadavg()}
    if a.tiny:
        work.mkdir(parents=True, exist_ok=True)
        crops: Path | None = make_tiny_work(work)
        steps, batch = 2, 4
    else:
        crops = None if a.crops == "none" else Path(a.crops) if a.crops else REAL / CROPS_DIR
        steps, batch = a.steps, a.batch
    report.update(run(work, crops, steps=steps, batch=batch, seed=a.seed, held_outs=a.held_out.split(",") if a.held_out else None, checkpoint=a.checkpoint,
                      reuse=a.reuse))
    report["load_average_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - t0
    print(table(report), flush=True)
    text = json.dumps(report, indent=2, default=str)
    (work / ("rescorer" if a.checkpoint == "last" else f"rescorer_{a.checkpoint}") / "results.json").write_text(text)
    if a.json:
        Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
