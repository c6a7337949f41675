"""The demo's quality, measured beyond its own 8 held-out cases (issue 7's quality target).

Trains the demo (``lungtumor.demo.run_demo``, any :class:`~lungtumor.demo.DemoConfig` field
overridable with ``--set``) or takes a trained checkpoint, then predicts, with the demo's TTA and
``predict_path`` defaults, and scores at the original resolution:

1. the demo's own held-out cases (from its ``evaluation/summary.json``), with the minimum lesion
   volume the demo chose on its validation cases (used for the sets below too);
2. ``--extra`` further SMALL phantom cases from another dataset seed (default 24, seed 7): mean
   and median per-case Dice, lesions found, false positives per scan;
3. ``--full`` FULL phantom cases (512 x 512, 0.6-0.9 mm pixels, MSD-like) with three tumours each,
   whose satellites reach down to 3-4 mm: lesion sensitivity by size band, above all the lesions
   under 10 mm longest axial diameter that the SMALL phantoms (2.6-3.4 mm pixels) cannot hold.

Every phantom set is generated once into ``--cache`` and reused, so runs of different presets or
settings score the very same cases. With ``--threads 1`` two runs fit side by side on 2 cores.

Run:
  .venv/bin/python benchmarks/bench_demo.py --out /tmp/bd_lung --threads 1
  .venv/bin/python benchmarks/bench_demo.py --out /tmp/bd_seed --threads 1 --set preset=seed
  .venv/bin/python benchmarks/bench_demo.py --out /tmp/bd_lung --checkpoint /tmp/bd_lung/demo/run/last.ckpt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _full_set(folder: Path, n: int, seed: int) -> Path:
    """``n`` FULL phantom cases with three tumours each (images/ and labels/), written once."""
    from lungtumor.io.nifti import write_nifti
    from lungtumor.phantom.dataset import make_case

    done = folder / "done.json"
    if done.exists() and json.loads(done.read_text()) == {"n": n, "seed": seed}:
        return folder
    for k in range(n):
        ct, label = make_case(seed * 1000 + k, "FULL", n_tumours=3)
        write_nifti(ct, folder / "images" / f"full_{k:03d}.nii.gz")
        write_nifti(label, folder / "labels" / f"full_{k:03d}.nii.gz")
        print(f"   FULL case {k + 1}/{n}", flush=True)
    done.write_text(json.dumps({"n": n, "seed": seed}))
    return folder


def _small_set(folder: Path, n: int, seed: int, test_cases: int = 0) -> Path:
    """A SMALL phantom dataset, written once, stamped as the demo's own (so the demo reuses it)."""
    from lungtumor.demo import phantom_set

    phantom_set(folder, n, test_cases, seed, progress=False)
    return folder


def _score(ckpt: str, images: Path, labels: Path, out: Path, tta: str, min_lesion_ml: float | None) -> dict[str, Any]:
    from lungtumor.evaluation.evaluate import evaluate_folder
    from lungtumor.predict import predict_path

    t0 = time.perf_counter()
    predict_path(ckpt, images, out / "pred", tta=tta, progress=False, min_lesion_ml=min_lesion_ml)
    t_pred = time.perf_counter() - t0
    s = evaluate_folder(out / "pred", labels, out_dir=out / "eval", tolerance_mm=2.0, progress=False).summary
    return {
        "cases": s["cases"],
        "dice_mean": s["dice_mean"],
        "dice_median": s["dice_median"],
        "dice_ci95": s["dice_ci95"],
        "lesions_found": s["lesions_found"],
        "lesions_ref": s["lesions_ref"],
        "false_positives_per_scan": s["false_positive_lesions_per_scan"],
        "size_bands": {b["band"]: [b["lesions_found"], b["lesions_ref"], b["false_positives_per_scan"]] for b in s["lesion_size_bands"]},
        "predict_s": t_pred,
        "min_lesion_ml": min_lesion_ml,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="working folder of this run")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="DemoConfig override, e.g. preset=seed")
    ap.add_argument("--checkpoint", help="score this checkpoint instead of training the demo")
    ap.add_argument("--cache", default="/tmp/lungtumor_bench_demo_cache", help="phantom sets, generated once")
    ap.add_argument("--extra", type=int, default=24, help="further SMALL phantom cases (0 = skip)")
    ap.add_argument("--extra-seed", type=int, default=7)
    ap.add_argument("--full", type=int, default=8, help="FULL phantom cases with small tumours (0 = skip)")
    ap.add_argument("--full-seed", type=int, default=11)
    ap.add_argument("--min-lesion-ml", type=float, default=None, help="with --checkpoint: post-processing's minimum lesion volume (a trained demo uses its own choice)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 to run two side by side)")
    ap.add_argument("--json", help="write the results here (default OUT/bench_demo.json)")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from common import machine, parse_set
    from lungtumor.demo import DemoConfig, run_demo

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)
    overrides = parse_set(args.set)
    cfg = dataclasses.replace(DemoConfig(workdir=str(out / "demo")), **overrides)
    result: dict[str, Any] = {"machine": machine(), "demo_config": dataclasses.asdict(cfg)}
    min_lesion_ml = args.min_lesion_ml
    if args.checkpoint:
        ckpt = args.checkpoint
        held = _small_set(cache / f"small_{cfg.heldout_cases}_{cfg.seed + 1}", cfg.heldout_cases, cfg.seed + 1)
        result["held_out"] = _score(ckpt, held / "imagesTr", held / "labelsTr", out / "held_out", cfg.tta, min_lesion_ml)
        print("held-out:", json.dumps(result["held_out"]), flush=True)
    else:
        data = _small_set(cache / f"demo_data_{cfg.cases}_{cfg.test_cases}_{cfg.seed}", cfg.cases, cfg.seed, cfg.test_cases)
        held = _small_set(cache / f"small_{cfg.heldout_cases}_{cfg.seed + 1}", cfg.heldout_cases, cfg.seed + 1)
        for link, target in ((out / "demo" / "data", data), (out / "demo" / "heldout", held)):
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(target.resolve())
        t0 = time.perf_counter()
        demo = run_demo(cfg)
        result["demo_wall_s"] = time.perf_counter() - t0
        result["demo_timings"] = demo["timings"]
        s = demo["summary"]
        result["held_out"] = {
            "dice_mean": s["dice_mean"],
            "dice_median": s["dice_median"],
            "lesions_found": s["lesions_found"],
            "lesions_ref": s["lesions_ref"],
            "false_positives_per_scan": s["false_positive_lesions_per_scan"],
        }
        ckpt = demo["checkpoint"]
        result["postprocessing"] = demo["postprocessing"]
    result["checkpoint"] = str(ckpt)
    if not args.checkpoint:
        min_lesion_ml = result["postprocessing"]["min_lesion_ml"]
    if args.extra:
        extra = _small_set(cache / f"small_{args.extra}_{args.extra_seed}", args.extra, args.extra_seed)
        result["extra_small"] = _score(ckpt, extra / "imagesTr", extra / "labelsTr", out / "extra_small", cfg.tta, min_lesion_ml)
        print("extra SMALL:", json.dumps(result["extra_small"]), flush=True)
    if args.full:
        full = _full_set(cache / f"full_{args.full}_{args.full_seed}", args.full, args.full_seed)
        result["full"] = _score(ckpt, full / "images", full / "labels", out / "full", cfg.tta, min_lesion_ml)
        print("FULL:", json.dumps(result["full"]), flush=True)
    dest = Path(args.json) if args.json else out / "bench_demo.json"
    dest.write_text(json.dumps(result, indent=1, default=str))
    print(f"results: {dest}")


if __name__ == "__main__":
    main()
