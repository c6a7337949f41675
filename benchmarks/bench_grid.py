"""Slice-grid benchmark: the seed preset against the lung preset on the same scans, in one run.

Measured per scan (FULL phantom cases written here; LUNG1-002 and LIDC-IDRI-0001 from
``../shared/data/real`` when present):

* store: slices, slice size, bytes of the case in the store, tumour voxels inside the processed
  region (coverage) and preprocessing seconds, for ``--preset seed`` and ``--preset lung``;
* cost: model pixels (slices x H x W) of the lung preset at several spacings, relative to the seed's;
* predict: whole-scan :func:`lungtumor.inference.predictor.segment` seconds for one FULL phantom CT with
  an untrained U-Net of ``--width`` (same weights, same precision) under both presets, split into the
  lung finder, slicing, model and mapping back.

Run: ``.venv/bin/python benchmarks/bench_grid.py [--cases 2] [--width 16] [--spacings 1.25,1.5]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import du, machine
from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.inference.predictor import predict_slices, segment
from lungtumor.io.nifti import read_nifti
from lungtumor.model.checkpoint import LoadedModel
from lungtumor.model.unet import ModelConfig, UNet
from lungtumor.preprocessing.grid import fit_grid
from lungtumor.preprocessing.lungs import find_lung_region, include_label
from lungtumor.preprocessing.presets import preset_for
from lungtumor.preprocessing.store import preprocess_task

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_CASES = {"LUNG1-002": ("LUNG1-002/ct.nii.gz", "LUNG1-002/gtv1_label.nii.gz"), "LIDC-IDRI-0001": ("LIDC-IDRI-0001/ct.nii.gz", "LIDC-IDRI-0001/nodule_label.nii.gz")}


def scans(work: Path, n_phantom: int) -> dict[str, tuple[Path, Path]]:
    """(CT, label) paths: FULL phantom cases written into ``work`` and the shared real scans."""
    from lungtumor.phantom import write_phantom_dataset

    ds = write_phantom_dataset(work / "phantom", cases=n_phantom, test_cases=0, size="FULL", seed=0)
    out = {f"phantom_{p.name.split('.')[0]}": (p, ds / "labelsTr" / p.name) for p in sorted((ds / "imagesTr").glob("*.nii.gz"))}
    for name, (ct, lab) in REAL_CASES.items():
        if (REAL / ct).exists():
            out[name] = (REAL / ct, REAL / lab)
    return out


def store_case(name: str, ct: Path, label: Path, work: Path, cfg: PreprocessConfig) -> dict:
    """Preprocess one scan alone into a store; slices, size, bytes, coverage, seconds."""
    task = work / f"task_{name}"
    for sub, src in (("imagesTr", ct), ("labelsTr", label)):
        (task / sub).mkdir(parents=True, exist_ok=True)
        link = task / sub / "case_000.nii.gz"
        if not link.exists():
            link.symlink_to(src)
    store = work / f"store_{name}_{cfg.preset}"
    t0 = time.perf_counter()
    preprocess_task(task, store, cfg, SplitConfig(val_cases=0), progress=False)
    seconds = time.perf_counter() - t0
    meta = json.loads((store / "cases" / "case_000" / "meta.json").read_text())
    return {
        "slices": meta["n_slices"],
        "of_slices": meta["canonical_shape"][2],
        "slice_shape": meta["slice_shape"],
        "pixel_mm": [round(float(v), 3) for v in fit_pixel_mm(meta)],
        "store_mb": du(store / "cases") / 1e6,
        "coverage": meta["tumour_voxels_covered"] / max(1, meta["tumour_voxels_original"]),
        "tumour_voxels": meta["tumour_voxels_original"],
        "seconds": seconds,
    }


def fit_pixel_mm(meta: dict) -> tuple[float, float]:
    from lungtumor.preprocessing.grid import SliceGrid

    return SliceGrid.from_dict(meta["grid"]).pixel_spacing_mm


def cost_table(ct_path: Path, label_path: Path, spacings: list[float]) -> dict:
    """Model pixels of the lung preset per spacing, relative to the seed's (no model run)."""
    ct, label = read_nifti(ct_path), read_nifti(label_path)
    region, _ = include_label(find_lung_region(ct), label)
    seed = fit_grid(ct, None, PreprocessConfig(preset="seed"))
    seed_px = seed.n_slices * seed.out_shape[0] * seed.out_shape[1]
    out = {}
    for sp in spacings:
        g = fit_grid(ct, region.mask, PreprocessConfig.from_preset("lung", spacing_mm=sp))
        out[f"{sp:g}mm"] = {"shape": [g.n_slices, *g.out_shape], "cost_vs_seed": g.n_slices * g.out_shape[0] * g.out_shape[1] / seed_px}
    return out


def predict_times(ct_path: Path, label_path: Path, width: int, spacings: list[float], repeats: int) -> dict:
    """Whole-scan seconds for the seed and the lung preset(s), best of ``repeats``.

    The presets take turns within every repeat (seed, lung, seed, lung, ...), so load from other
    processes on a shared machine biases none of them. Pieces: lung finder, grid fit + slicing,
    model, mapping back (thresholded), post-processing; ``segment_s`` is one end-to-end call (and
    ``segment_no_postprocess_s`` one with ``postprocess=False``: an untrained model marks about a
    third of the scan, a mask no trained model gives, which makes labelling its components cost
    far more than it does in use).
    """
    from lungtumor.lesions.components import postprocess_mask

    ct = read_nifti(ct_path)
    torch.manual_seed(0)
    net = UNet(ModelConfig(width=width)).eval()
    res: dict = {"ct_shape": list(ct.shape), "spacing_mm": [round(s, 3) for s in ct.spacing_mm], "width": width}
    presets = [("seed", PreprocessConfig(preset="seed"))] + [(f"lung_{sp:g}mm", PreprocessConfig.from_preset("lung", spacing_mm=sp)) for sp in spacings]
    runs: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for name, cfg in presets:
            model = LoadedModel(net, cfg, 0, {"threshold": 0.5})
            parts: dict = {}
            t0 = time.perf_counter()
            region = find_lung_region(ct).mask if preset_for(cfg).needs_lung_region else None
            parts["lung_finder_s"] = time.perf_counter() - t0
            t = time.perf_counter()
            grid = fit_grid(ct, region, cfg)
            slices = grid.image_to_slices(ct)
            parts["slicing_s"] = time.perf_counter() - t
            t = time.perf_counter()
            probs = predict_slices(model, slices, device="cpu")
            parts["model_s"] = time.perf_counter() - t
            t = time.perf_counter()
            mask = grid.slices_to_volume(probs, threshold=0.5)
            parts["back_s"] = time.perf_counter() - t
            t = time.perf_counter()
            if region is not None:
                postprocess_mask(mask.array, region.array, mask.voxel_volume_ml)
            parts["postprocess_s"] = time.perf_counter() - t
            parts["total_s"] = time.perf_counter() - t0
            parts["mask_fraction"] = float(mask.array.mean())
            t, c = time.perf_counter(), time.process_time()
            segment(ct, model, device="cpu")  # end to end, as users call it (finds the region itself)
            parts["segment_s"] = time.perf_counter() - t
            # CPU seconds of this process: the work done, robust to other processes on a shared machine
            parts["segment_cpu_s"] = time.process_time() - c
            t = time.perf_counter()
            segment(ct, model, device="cpu", postprocess=False)
            parts["segment_no_postprocess_s"] = time.perf_counter() - t
            parts["model_slices"] = [grid.n_slices, *grid.out_shape]
            runs.setdefault(name, []).append(parts)
    for name, _ in presets:
        res[name] = {
            **min(runs[name], key=lambda r: r["total_s"]),
            "segment_s": min(r["segment_s"] for r in runs[name]),
            "segment_cpu_s": min(r["segment_cpu_s"] for r in runs[name]),
            "segment_no_postprocess_s": min(r["segment_no_postprocess_s"] for r in runs[name]),
        }
    for name, _ in presets[1:]:
        for key in ("total_s", "segment_s", "segment_cpu_s", "segment_no_postprocess_s", "model_s"):
            res[name][f"speedup_vs_seed_{key[:-2]}"] = res["seed"][key] / res[name][key]
    res["postprocess_realistic"] = realistic_postprocess(ct, label_path)
    return res


def realistic_postprocess(ct, label_path: Path, n_false: int = 20) -> dict:
    """Post-processing of a mask a trained model could give: the reference tumours plus
    ``n_false`` 5 mm false positives outside the lung region (half of them touching it)."""
    import numpy as np

    from lungtumor.lesions.components import postprocess_mask

    region = find_lung_region(ct).mask.array
    mask = (read_nifti(label_path).array != 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    side = [max(1, round(5.0 / s)) for s in ct.spacing_mm]
    placed = 0
    while placed < n_false:
        c = [int(rng.integers(0, n - w)) for n, w in zip(ct.shape, side)]
        box = tuple(slice(a, a + w) for a, w in zip(c, side))
        if region[box].all():
            continue
        mask[box] = 1
        placed += 1
    t = time.perf_counter()
    kept = postprocess_mask(mask, region, ct.voxel_volume_ml)
    return {"seconds": time.perf_counter() - t, "mask_voxels": int(mask.sum()), "kept_voxels": int(kept.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2, help="FULL phantom cases")
    ap.add_argument("--width", type=int, default=16, help="U-Net width of the predict timing")
    ap.add_argument("--spacings", default="1.25,1.5", help="lung-preset spacings (mm) of the predict timing")
    ap.add_argument("--repeats", type=int, default=3, help="predict timings: best of this many (presets interleaved)")
    ap.add_argument("--predict-only", action="store_true", help="skip the store and cost tables")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if a.threads:
        torch.set_num_threads(a.threads)
    spacings = [float(s) for s in a.spacings.split(",")]
    out: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        found = scans(work, a.cases)
        out["phantom_seconds"] = time.perf_counter() - t0
        if not a.predict_only:
            out["store"] = {
                name: {preset: store_case(name, ct, lab, work, PreprocessConfig.from_preset(preset)) for preset in ("seed", "lung")}
                for name, (ct, lab) in found.items()
            }
            out["cost"] = {name: cost_table(ct, lab, [1.0, 1.25, 1.5]) for name, (ct, lab) in found.items()}
        first = next(iter(found.values()))
        out["predict"] = predict_times(first[0], first[1], a.width, spacings, a.repeats)
    print(json.dumps(out, indent=1, default=lambda x: round(x, 4) if isinstance(x, float) else str(x)))


if __name__ == "__main__":
    main()
