"""Leave-one-scan-out over the three real scans: does the recipe learn real tumours from few scans?

For each real scan (LUNG1-001, LUNG1-002, LIDC-IDRI-0001 in ``../shared/data/real``): train on the
other two plus FULL phantom scans, predict the held-out scan with ``predict_path`` (the user's
path: the checkpoint's slice grid, lung-region post-processing) and score it at its original
resolution with ``evaluate_folder``. Three recipes, each under the same budget per fold (a fixed
number of training slices, width 16, about the same pixels per slice):

* ``seed``: the seed recipe (seed preset store: whole slice resized to 256, trained at 128 px;
  BCE, Adam 1e-4 constant, the seed's augmentation);
* ``real_ct``: ``configs/real_ct.yaml``'s options with copy-paste off (as it was shipped when this was
  measured; the file's own width and schedule are replaced by this benchmark's budget), on a lung preset store;
* ``real_ct_cp``: the same with tumour copy-paste at rate ``COPY_PASTE_RATE``, from the other
  training cases and from the LIDC nodule crops (the held-out patient's own crops are left out).

The lung preset store uses ``spacing_mm`` 2.0 here (not the preset's 1.25) so that its slices
(about 160 x 112 px) cost what the seed's 128 x 128 do. The validation case of every fold is a
phantom (the held-out scan is never seen in training nor in model selection; the last checkpoint is
used). Also measured: the copy-paste cost in slices/s at 128 and 256 px, against the spatial
augmentation on the same batch.

Run: ``nohup .venv/bin/python benchmarks/bench_real.py --work /tmp/bench_real --epochs 1 --samples 6400
--seeds 0,1,2 --min-lesion-sweep --ensemble-seeds 0,1 > /tmp/bench_real.log 2>&1 &`` (BENCHMARKS.md's measurement: 800 steps per run, 4-9
minutes a run on 2 cores; it ran as two processes with ``--threads 1`` side by side, each with
its own ``--recipes``). Variants: ``--recipes real_ct_cp --set lr=0.0003 --set norm=instance
--tag _old`` (the recipe shipped before). Finished runs are kept in ``WORK/runs``: a re-run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, parse_set

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
RECIPE = REPO / "configs" / "real_ct.yaml"
#: The real scans: case id -> (CT source, label file); a DICOM folder is imported first.
REAL_CASES = {
    "LUNG1-001": ("LUNG1-001/dicom", "LUNG1-001/gtv1_label.nii.gz"),
    "LUNG1-002": ("LUNG1-002/ct.nii.gz", "LUNG1-002/gtv1_label.nii.gz"),
    "LIDC-IDRI-0001": ("LIDC-IDRI-0001/ct.nii.gz", "LIDC-IDRI-0001/nodule_label.nii.gz"),
}
CROPS = REAL / "lidc_nodule_crops"
RECIPES = ("seed", "real_ct", "real_ct_cp")
#: Copy-paste rate of ``real_ct_cp``.
COPY_PASTE_RATE = 0.5
#: Budget per fold and recipe.
WIDTH = 16
SEED_STORE_SIZE = 256
SEED_TRAIN_SIZE = 128
LUNG_BENCH_SPACING_MM = 2.0
#: Also scored: the prediction without lesions under this volume (``lungtumor predict --min-lesion-ml``).
MIN_LESION_ML = 0.1
#: ``--min-lesion-sweep``: the volumes of the sensitivity table (ml).
MIN_LESION_SWEEP = (0.1, 0.25, 0.5, 1.0)


def log(msg: str) -> None:
    """A timestamped line on stdout (the nohup log)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def link_real_pairs(real: Path, work: Path, pairs: Path) -> None:
    """The shared real scans as ``<case>_ct/_label`` pairs in ``pairs`` (links; a DICOM series is
    imported to NIfTI once under ``work/imported``). Used by this benchmark and bench_nodules."""
    from lungtumor.io.importer import import_dicom

    pairs.mkdir(parents=True, exist_ok=True)
    for case, (ct_src, label_src) in REAL_CASES.items():
        ct_out, label_out = pairs / f"{case}_ct.nii.gz", pairs / f"{case}_label.nii.gz"
        src = real / ct_src
        if not ct_out.exists():
            if src.is_dir():
                converted = work / "imported" / f"{case}.nii.gz"
                converted.parent.mkdir(exist_ok=True)
                if not converted.exists():
                    import_dicom(src, converted)
                ct_out.symlink_to(converted.resolve())
            else:
                ct_out.symlink_to(src.resolve())
        if not label_out.exists():
            label_out.symlink_to((real / label_src).resolve())


def build_pairs(work: Path, n_phantoms: int) -> Path:
    """``WORK/pairs``: ``<case>_ct.nii.gz`` / ``<case>_label.nii.gz`` for the real scans (LUNG1-001
    imported from DICOM) and the phantoms (symlinks)."""
    from lungtumor.phantom.dataset import write_phantom_dataset

    pairs = work / "pairs"
    link_real_pairs(REAL, work, pairs)
    phantoms = work / "phantoms"
    if not (phantoms / "dataset.json").exists():
        t0 = time.perf_counter()
        write_phantom_dataset(phantoms, cases=n_phantoms, test_cases=0, size="FULL", seed=7)
        log(f"{n_phantoms} FULL phantoms in {time.perf_counter() - t0:.0f} s")
    for img in sorted((phantoms / "imagesTr").glob("*.nii.gz")):
        case = img.name[: -len(".nii.gz")]
        for kind, src in (("ct", img), ("label", phantoms / "labelsTr" / img.name)):
            link = pairs / f"{case}_{kind}.nii.gz"
            if not link.exists():
                link.symlink_to(src)
    return pairs


def build_stores(work: Path, pairs: Path) -> dict[str, Path]:
    """The seed preset and the (2 mm) lung preset store over every case."""
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.preprocessing.store import preprocess_task

    stores = {
        "seed": (work / "store_seed", PreprocessConfig(preset="seed", size=SEED_STORE_SIZE)),
        "lung": (work / "store_lung", PreprocessConfig.from_preset("lung", spacing_mm=LUNG_BENCH_SPACING_MM)),
    }
    for name, (path, cfg) in stores.items():
        t0 = time.perf_counter()
        preprocess_task(pairs, path, cfg, SplitConfig(val_cases=1), progress=False, layout="pairs")
        log(f"store {name}: {time.perf_counter() - t0:.0f} s")
    return {k: v[0] for k, v in stores.items()}


def fold_store(store: Path, held_out: str, out: Path) -> Path:
    """A store view without ``held_out``: case folders linked, the last phantom as validation."""
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.preprocessing.store import write_manifest

    if (out / "store.json").exists():
        return out
    (out / "cases").mkdir(parents=True, exist_ok=True)
    metas = {}
    for case_dir in sorted((store / "cases").iterdir()):
        if case_dir.name == held_out or case_dir.name.startswith("."):
            continue
        link = out / "cases" / case_dir.name
        if not link.exists():
            link.symlink_to(case_dir.resolve())
        metas[case_dir.name] = json.loads((case_dir / "meta.json").read_text())
    shutil.copy(store / "config.json", out / "config.json")
    cfg = PreprocessConfig.from_dict(json.loads((store / "config.json").read_text())["preprocess"])
    write_manifest(out, cfg, SplitConfig(val_cases=1), metas, {})
    return out


def recipe_options(recipe: str, held_out: str, budget: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """TrainConfig options of a recipe under the benchmark's budget, then ``overrides`` (``--set``)."""
    from lungtumor.training.options import load_config_file

    common = {
        "width": WIDTH,
        "epochs": budget["epochs"],
        "samples_per_epoch": budget["samples"],
        "batch_size": 8,
        "num_workers": 0,
        "val_every_n_epochs": budget["epochs"],
        "limit_val_batches": 4,
        "image_every_n_steps": 0,
        "progress": False,
    }
    if recipe == "seed":
        return {**common, "size": SEED_TRAIN_SIZE, **(overrides or {})}
    opts = load_config_file(RECIPE)
    opts = {**opts, **common, "copy_paste_rate": 0.0}
    if recipe == "real_ct_cp":
        opts["copy_paste_rate"] = COPY_PASTE_RATE
        opts["lesion_dir"] = str(CROPS) if CROPS.is_dir() else None
        # The held-out patient is no case of the fold's store, so name its crops here.
        opts["copy_paste_options"] = {**opts.get("copy_paste_options", {}), "exclude": [held_out]}
    return {**opts, **(overrides or {})}


def run_fold(
    work: Path, stores: dict[str, Path], pairs: Path, recipe: str, held_out: str, budget: dict[str, Any],
    overrides: dict[str, Any] | None = None, tag: str = "", train_seed: int = 0,
) -> dict[str, Any]:
    """Train, predict and evaluate one (recipe, held-out scan, training seed); cached in
    ``WORK/runs/RECIPE[TAG][-sSEED]-SCAN`` (seed 0 without ``-s0``)."""
    from lungtumor.evaluation.evaluate import evaluate_folder
    from lungtumor.predict import predict_path
    from lungtumor.training.options import TrainConfig
    from lungtumor.training.trainer import train

    name = f"{recipe}{tag}{f'-s{train_seed}' if train_seed else ''}-{held_out}"
    run = work / "runs" / name
    result_path = run / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    if run.exists():
        shutil.rmtree(run)
    store = fold_store(stores["seed" if recipe == "seed" else "lung"], held_out, work / "folds" / f"{'seed' if recipe == 'seed' else 'lung'}-{held_out}")
    opts = {**recipe_options(recipe, held_out, budget, overrides), "seed": train_seed}
    cfg = TrainConfig.from_dict({**opts, "store": str(store), "out": str(run / "train")})
    t0 = time.perf_counter()
    summary = train(cfg)
    train_s = time.perf_counter() - t0
    pred_dir, label_dir = run / "pred", run / "labels"
    label_dir.mkdir(parents=True, exist_ok=True)
    (label_dir / f"{held_out}.nii.gz").symlink_to((pairs / f"{held_out}_label.nii.gz").resolve())
    t0 = time.perf_counter()
    predict_path(summary["last_checkpoint"], (pairs / f"{held_out}_ct.nii.gz").resolve(), pred_dir / f"{held_out}.nii.gz", progress=False)
    predict_s = time.perf_counter() - t0
    res = evaluate_folder(pred_dir, label_dir, run / "eval", progress=False)
    row = res.rows[0]
    out = {
        "recipe": recipe + tag,
        "run": name,
        "train_seed": train_seed,
        "overrides": overrides or {},
        "held_out": held_out,
        "dice": row["dice"],
        "surface_dice": row["surface_dice"],
        "lesions_ref": row["lesions_ref"],
        "lesions_found": row["lesions_found"],
        "false_positive_lesions": row["false_positive_lesions"],
        "volume_ref_ml": row["volume_ref_ml"],
        "volume_pred_ml": row["volume_pred_ml"],
        "train_s": train_s,
        "predict_s": predict_s,
        "steps": summary["global_step"],
        "train_slices": summary["global_step"] * 8,
    }
    result_path.write_text(json.dumps(out, indent=2))
    return out


def rescore_min_lesion(work: Path, result: dict[str, Any], min_lesion_ml: float = MIN_LESION_ML) -> dict[str, Any]:
    """Add the scores of the run's prediction without lesions under ``min_lesion_ml`` (cached in result.json)."""
    from lungtumor.evaluation.evaluate import evaluate_folder
    from lungtumor.io.nifti import read_nifti, write_nifti
    from lungtumor.lesions.components import postprocess_mask

    key = f"min_{min_lesion_ml:g}ml"
    if key in result:
        return result
    run = work / "runs" / result.get("run", f"{result['recipe']}-{result['held_out']}")
    name = f"{result['held_out']}.nii.gz"
    pred = read_nifti(run / "pred" / name)
    kept = postprocess_mask(pred.array, None, pred.voxel_volume_ml, min_lesion_ml)
    out_dir = run / f"pred_{key}"
    write_nifti(pred.with_array(kept), out_dir / name)
    row = evaluate_folder(out_dir, run / "labels", run / f"eval_{key}", progress=False).rows[0]
    result[key] = {k: row[k] for k in ("dice", "lesions_ref", "lesions_found", "false_positive_lesions", "volume_pred_ml")}
    (run / "result.json").write_text(json.dumps(result, indent=2))
    return result


def paste_speed(stores: dict[str, Path]) -> dict[str, Any]:
    """Copy-paste vs spatial augmentation cost on one batch of 8 (best of 20), slices/s; the bank's build time."""
    import torch

    from lungtumor.preprocessing.store import SliceStore
    from lungtumor.training.augment import AugmentConfig, augment_batch
    from lungtumor.training.copy_paste import CopyPasteConfig, CopyPaster
    from lungtumor.training.data import SliceDataset

    store = SliceStore(stores["seed"])
    ds = SliceDataset(store, store.splits["train"], context=1)
    t0 = time.perf_counter()
    paster = CopyPaster.for_dataset(ds, CopyPasteConfig(rate=1.0, lesion_dir=str(CROPS) if CROPS.is_dir() else None))
    build_s = time.perf_counter() - t0
    tumour = np.flatnonzero(ds.tumour_voxels() == 0)
    items = [ds[int(i)] for i in tumour[:: max(1, len(tumour) // 8)][:8]]
    ct = torch.stack([i[0] for i in items])
    mask = torch.stack([i[1] for i in items])
    index = torch.tensor([i[2] for i in items])
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"bank_lesions": len(paster.bank), "bank_slices": int(paster.bank.ct_hu.shape[0]), "bank_build_s": build_s}
    for size in (128, 256):
        c = torch.nn.functional.interpolate(ct, size=(size, size), mode="bilinear", align_corners=False)
        m = torch.nn.functional.interpolate(mask, size=(size, size), mode="nearest")
        scale = (ct.shape[-2] / size, ct.shape[-1] / size)

        def best(fn: Any) -> float:
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        t_paste = best(lambda c=c, m=m, scale=scale: paster(c, m, index, generator=gen, pixel_scale=scale))
        t_aug = best(lambda c=c, m=m: augment_batch(c, m, AugmentConfig(), generator=gen))
        out[f"{size}px"] = {"paste_slices_per_s": 8 / t_paste, "spatial_aug_slices_per_s": 8 / t_aug, "pasted_fraction": float(paster.last_fraction)}
    return out


def run_ensemble(work: Path, pairs: Path, results: list[dict[str, Any]], recipe: str, held_out: str, seeds: list[int]) -> dict[str, Any]:
    """``predict`` with the last checkpoints of ``seeds`` (one recipe and fold) averaged; cached in
    ``WORK/runs/RECIPE-ens<SEEDS>-SCAN``."""
    from lungtumor.evaluation.evaluate import evaluate_folder
    from lungtumor.predict import predict_path

    members = {r["train_seed"]: r for r in results if r["recipe"] == recipe and r["held_out"] == held_out}
    name = f"{recipe}-ens{''.join(map(str, seeds))}-{held_out}"
    run = work / "runs" / name
    if not (run / "result.json").exists():
        ckpts = [str(work / "runs" / members[s]["run"] / "train" / "last.ckpt") for s in seeds]
        predict_path(ckpts, (pairs / f"{held_out}_ct.nii.gz").resolve(), run / "pred" / f"{held_out}.nii.gz", progress=False)
        row = evaluate_folder(run / "pred", work / "runs" / members[seeds[0]]["run"] / "labels", run / "eval", progress=False).rows[0]
        keys = ("dice", "lesions_ref", "lesions_found", "false_positive_lesions", "volume_pred_ml", "volume_ref_ml")
        (run / "result.json").write_text(json.dumps({"recipe": recipe, "held_out": held_out, "seeds": seeds, **{k: row[k] for k in keys}}, indent=2))
    out = json.loads((run / "result.json").read_text())
    out["members_dice"] = [members[s]["dice"] for s in seeds]
    return out


def ensemble_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each ensemble against its members."""
    lines = ["| recipe | held-out scan | ensemble Dice | its FP lesions | the members' Dice |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['held_out']} | {r['dice']:.3f} | {r['false_positive_lesions']} | {', '.join(f'{d:.3f}' for d in r['members_dice'])} |")
    return "\n".join(lines)


def sweep_table(results: list[dict[str, Any]], volumes: tuple[float, ...]) -> str:
    """Markdown: per recipe, mean Dice / false positives per scan keeping lesions of at least each volume."""
    head = " | ".join(f"kept >= {v:g} ml: Dice / FP per scan" for v in (0.0, *volumes))
    lines = [f"| recipe | runs | {head} |", "| --- | --- |" + " --- |" * (len(volumes) + 1)]
    for recipe in dict.fromkeys(r["recipe"] for r in results):
        rs = [r for r in results if r["recipe"] == recipe]
        cells = [rs] + [[r[f"min_{v:g}ml"] for r in rs] for v in volumes]
        lines.append(f"| {recipe} | {len(rs)} | " + " | ".join(f"{np.mean([x['dice'] for x in c]):.3f} / {np.mean([x['false_positive_lesions'] for x in c]):.1f}" for c in cells) + " |")
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown tables: every run, then per recipe the mean over folds (and its SD over seeds)."""
    lines = [
        "| recipe | seed | held-out scan | Dice | lesions found | false-positive lesions | pred / ref ml | train s | slices |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['recipe']} | {r.get('train_seed', 0)} | {r['held_out']} | {r['dice']:.3f} | {r['lesions_found']}/{r['lesions_ref']} | "
            f"{r['false_positive_lesions']} | {r['volume_pred_ml']:.1f} / {r['volume_ref_ml']:.1f} | {r['train_s']:.0f} | {r['train_slices']} |"
        )
    key = f"min_{MIN_LESION_ML:g}ml"
    lines += [
        "",
        f"| recipe | runs | mean Dice per case (SD over seeds) | lesion sensitivity (pooled) | false positives per scan | the same without lesions < {MIN_LESION_ML:g} ml |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def stats(rows: list[dict[str, Any]], seeds: list[int]) -> str:
        dice = np.mean([r["dice"] for r in rows])
        per_seed = [np.mean([r["dice"] for r, s in zip(rows, seeds, strict=True) if s == seed]) for seed in sorted(set(seeds))]
        sd = f" ({np.std(per_seed, ddof=1):.3f})" if len(per_seed) > 1 else ""
        sens = sum(r["lesions_found"] for r in rows) / max(1, sum(r["lesions_ref"] for r in rows))
        fp = np.mean([r["false_positive_lesions"] for r in rows])
        return f"{dice:.3f}{sd} | {sens:.2f} | {fp:.1f}"

    for recipe in dict.fromkeys(r["recipe"] for r in results):
        rs = [r for r in results if r["recipe"] == recipe]
        seeds = [r.get("train_seed", 0) for r in rs]
        small = stats([r[key] for r in rs], seeds).replace(" | ", " / ") if all(key in r for r in rs) else "-"
        lines.append(f"| {recipe} | {len(rs)} | {stats(rs, seeds)} | {small} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_real", help="work folder (kept: a re-run resumes)")
    ap.add_argument("--phantoms", type=int, default=8, help="FULL phantom scans added to every fold (the last is the validation case)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=800, help="training slices per epoch")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--held-out", default=",".join(REAL_CASES), help="real scans to hold out, comma-separated")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="TrainConfig override for every run, e.g. lr=0.002")
    ap.add_argument("--min-lesion-sweep", action="store_true", help=f"also score every run without lesions under {', '.join(map(str, MIN_LESION_SWEEP))} ml")
    ap.add_argument("--ensemble-seeds", default=None, help="also predict each recipe and fold with these seeds' checkpoints averaged, e.g. 0,1")
    ap.add_argument("--no-speed", action="store_true", help="skip the copy-paste speed measurement")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (each run is one fold, recipe and seed)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: 2, or the cores if fewer)")
    ap.add_argument("--tag", default="", help="suffix of the recipe names (and run folders) of runs with --set, e.g. _lr2e-3")
    a = ap.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"real data not found at {REAL}")
    recipes, held_outs = a.recipes.split(","), a.held_out.split(",")
    unknown = sorted(set(recipes) - set(RECIPES)) + sorted(set(held_outs) - set(REAL_CASES))
    try:
        train_seeds = [int(x) for x in a.seeds.split(",")]
        ens_seeds = [int(x) for x in a.ensemble_seeds.split(",")] if a.ensemble_seeds else []
    except ValueError:
        raise SystemExit(f"--seeds {a.seeds!r} / --ensemble-seeds {a.ensemble_seeds!r}: expected whole numbers, comma-separated, e.g. 0,1,2") from None
    if ens_seeds and (len(ens_seeds) < 2 or not set(ens_seeds) <= set(train_seeds)):
        raise SystemExit(f"--ensemble-seeds {a.ensemble_seeds}: need two or more of --seeds {a.seeds}")
    if unknown:
        raise SystemExit(f"unknown recipe or scan {unknown}: recipes are {', '.join(RECIPES)}; scans {', '.join(REAL_CASES)}")
    overrides = parse_set(a.set)
    if overrides and not a.tag:
        raise SystemExit("--set needs --tag (runs with other options are cached under their own names)")
    import torch

    torch.set_num_threads(a.threads or min(2, os.cpu_count() or 1))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log(f"machine: {machine()}")
    t_all = time.perf_counter()
    pairs = build_pairs(work, a.phantoms)
    stores = build_stores(work, pairs)
    speed = None if a.no_speed else paste_speed(stores)
    if speed:
        log(f"copy-paste speed: {json.dumps(speed)}")
    budget = {"epochs": a.epochs, "samples": a.samples}
    results = []
    for train_seed in train_seeds:
        for held_out in held_outs:
            for recipe in recipes:
                t0 = time.perf_counter()
                r = rescore_min_lesion(work, run_fold(work, stores, pairs, recipe, held_out, budget, overrides, a.tag, train_seed))
                for v in MIN_LESION_SWEEP if a.min_lesion_sweep else ():
                    r = rescore_min_lesion(work, r, v)
                results.append(r)
                log(f"{r.get('run', recipe + a.tag + '-' + held_out)}: Dice {r['dice']:.3f}, found {r['lesions_found']}/{r['lesions_ref']}, FP {r['false_positive_lesions']} ({time.perf_counter() - t0:.0f} s)")
    report = {"machine": machine(), "budget": {**budget, "width": WIDTH, "batch": 8}, "overrides": overrides, "copy_paste_speed": speed, "results": results,
              "total_s": time.perf_counter() - t_all}
    ensembles = [run_ensemble(work, pairs, results, recipe + a.tag, held_out, ens_seeds) for recipe in recipes for held_out in held_outs] if ens_seeds else []
    report = {**report, "ensembles": ensembles}
    (work / f"results{a.tag}.json").write_text(json.dumps(report, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    print(table(results), flush=True)
    if a.min_lesion_sweep:
        print("\n" + sweep_table(results, MIN_LESION_SWEEP), flush=True)
    if ensembles:
        print("\n" + ensemble_table(ensembles), flush=True)
    log(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
