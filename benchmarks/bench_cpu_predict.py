"""CPU prediction as a user runs it: ``lungtumor predict`` as a fresh process, fast vs full (issue 17).

Timing (``--time``): a 512x512x300 CT (a FULL phantom case stretched to 300 slices, or a given
NIfTI such as the real scans in ../shared/data/real/), a width-64 lung-preset checkpoint (random
weights: the architecture, the preset and the spacing decide the cost; batch norm, 2.5D context 1
as configs/real_ct.yaml), ``--tta flip``, ``--device cpu``. Every run is a fresh process, fast and
full alternating, best of ``--repeats``:

- ``cli``: ``python -m lungtumor.cli predict CKPT CT OUT --tta flip --device cpu [--mode full]``, wall clock;
- ``split``: the same steps in a fresh process with a clock between them: process start and imports,
  read, lung finder, grid (+ coarse grid), model (coarse and fine passes), back to the input grid
  (+ post-processing), write; ``first_slice_s`` is process start to the first batch entering the model.

Random weights say nothing about where the candidates are, so the fast path's fine pass is timed
twice: ``--candidates none`` (the head's bias at -30: nothing is a candidate, the floor) and with
the candidates a trained model finds (``fine_fraction`` of the quality run: the fine pass's share
of the full path's pixels), projected from the measured full-path model time.

Quality (``--quality CKPT DATA``): per case of an MSD-style folder (imagesTr/ + labelsTr/), Dice
and lesion detection (26-connected, any overlap) of ``segment(mode="full")`` and
``segment(mode="fast")`` with the same model and ``--tta flip``, and the fast path's fine fraction.
``--quality-loso WORK``: the same on real CT, every held-out scan of a ``bench_nodules.py --part loso``
work folder with the fold's own model (which never saw that scan).

Run: ``python benchmarks/bench_cpu_predict.py --time [--ct FILE] [--avx2]`` and
``python benchmarks/bench_cpu_predict.py --quality RUN/best.ckpt HELDOUT_DIR``.
``--avx2`` runs the children as on a Zen 3 (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``:
no bf16, 256-bit kernels; an emulation on this machine, not a Zen 3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

ROOT = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

# The child: predict's steps with a clock between them (lungtumor.inference.predictor.segment, unrolled).
SPLIT_CHILD = r"""
import json, sys, time
T = {"t_spawn": float(sys.argv[5])}
def tick(name):
    T[name] = time.time()
PREFETCH = sys.argv[6] == "prefetch"  # as `lungtumor predict` does for one NIfTI file
STOP_AT_FIRST = sys.argv[7] == "stop"  # --startup: the clock stops when the first slice reaches the model
from lungtumor.io import prefetch
if PREFETCH:
    from lungtumor.cli import _lung_region_ahead
    prefetch.start(sys.argv[2], then=_lung_region_ahead)
import numpy as np
from lungtumor.inference import predictor
from lungtumor.inference import fast as fastmod
from lungtumor.io.nifti import write_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import to_canonical
from lungtumor.lesions.components import postprocess_mask
from lungtumor.model.checkpoint import load_model
from lungtumor.preprocessing.grid import fit_grid
tick("imports")
ckpt, ct_path, out, mode = sys.argv[1:5]
model = load_model(ckpt)
tick("checkpoint")
ct = read_volume(ct_path)
tick("read")
from lungtumor.preprocessing.lungs import lung_region_or_whole_scan
cfg = model.preprocess
canonical = to_canonical(ct, cfg.axcodes)
ahead = prefetch.after(ct)  # as prepare() takes it
if ahead is not None:
    region = ahead[0][1]
else:
    found, _ = lung_region_or_whole_scan(canonical, fallback="whole scan")
    region = found.mask if found.found else None
tick("lungs")
grid = fit_grid(canonical, region, cfg)
slices = grid.image_to_slices(canonical)
if mode == "fast":
    coarse = fit_grid(canonical, region, fastmod.coarse_config(cfg))
    coarse_slices = coarse.image_to_slices(canonical)
tick("grid")
offsets = grid.context_offsets(model.context)
first = []
def predict(stack, centres, flip):
    if not first:
        first.append(time.time())
        if STOP_AT_FIRST:
            T["first_slice"] = first[0]
            print(json.dumps({"times": T}))
            sys.exit(0)
    return predictor.predict_slices(model, stack, device="cpu", tta="flip" if flip else "none", offsets=offsets, centres=centres)
stats = None
if mode == "fast":
    probs, st = fastmod.fast_probabilities(grid, slices, coarse, coarse_slices, predict, tta=True, multiple=model.net.config.multiple)
    stats = {"coarse_slices": st.coarse_slices, "coarse_shape": st.coarse_shape, "boxes": st.boxes, "fine_fraction": st.fine_fraction,
             "coarse_s": st.coarse_seconds, "fine_s": st.fine_seconds}
else:
    probs = predict(slices, None, True)
tick("model")
mask = grid.slices_to_volume(probs, threshold=0.5, meta=dict(ct.meta))
kept = postprocess_mask(mask.array, None if region is None else region.array, mask.voxel_volume_ml, None)
tick("back")
from lungtumor.io.volume import Volume
write_nifti(Volume(kept, mask.affine, {}), out, dtype=np.uint8)
tick("write")
T["first_slice"] = first[0] if first else T["model"]
print(json.dumps({"times": T, "fast": stats, "slices": list(grid.slice_shape), "coarse": list(coarse.slice_shape) if mode == "fast" else None}))
"""
STAGES = ("imports", "checkpoint", "read", "lungs", "grid", "model", "back", "write")


def make_ct(depth: int, seed: int = 0):
    """A FULL phantom case (512x512, 0.7-0.9 mm pixels) stretched or cut to ``depth`` slices."""
    from lungtumor.io.volume import Volume
    from lungtumor.phantom.dataset import make_case

    ct, _ = make_case(seed, size="FULL")
    idx = np.linspace(0, ct.shape[2] - 1, depth).round().astype(int)
    return Volume(np.ascontiguousarray(ct.array[:, :, idx]), ct.affine)


def make_checkpoint(path: Path, width: int, head_bias: float | None) -> dict:
    """A lung-preset checkpoint of a width-``width`` U-Net (random weights, batch norm, context 1)."""
    import torch

    from lungtumor.config import PreprocessConfig
    from lungtumor.model.checkpoint import checkpoint_metadata
    from lungtumor.model.unet import ModelConfig, UNet

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, width=width, norm="batch")
    net = UNet(cfg).eval()
    if head_bias is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.fill_(head_bias)
    pre = PreprocessConfig.from_preset("lung")
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "lungtumor": checkpoint_metadata(cfg.to_dict(), pre.to_dict(), 1, threshold=0.5)}, path)
    return cfg.to_dict()


def child_env(avx2: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if avx2:
        env.update(AVX2_ENV)
    return env


def run_split(ckpt: Path, ct: Path, out: Path, mode: str, avx2: bool, *, prefetch: bool = True, stop_at_first: bool = False) -> dict:
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", SPLIT_CHILD, str(ckpt), str(ct), str(out), mode, repr(t0),
                          "prefetch" if prefetch else "serial", "stop" if stop_at_first else "all"],
                         check=True, capture_output=True, text=True, env=child_env(avx2))
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    t = rec["times"]
    if stop_at_first:
        prev, split = t["t_spawn"], {}
        for name in ("imports", "checkpoint", "read", "lungs", "grid"):
            split[name] = t[name] - prev
            prev = t[name]
        split["first_slice_s"] = t["first_slice"] - t["t_spawn"]
        return split
    prev, split = t["t_spawn"], {}
    for name in STAGES:
        split[name] = t[name] - prev
        prev = t[name]
    split["total"] = t["write"] - t["t_spawn"]
    split["first_slice_s"] = t["first_slice"] - t["t_spawn"]
    return {"split": split, "fast": rec["fast"], "slices": rec["slices"], "coarse": rec["coarse"]}


def run_cli(ckpt: Path, ct: Path, out: Path, mode: str, avx2: bool) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lungtumor.cli", "predict", str(ckpt), str(ct), str(out), "--tta", "flip", "--device", "cpu",
                    "--mode", mode], check=True, capture_output=True, text=True, env=child_env(avx2))
    return time.perf_counter() - t0


def startup_main(a: argparse.Namespace) -> dict:
    """Process start to the first slice entering the model, fast mode, with and without the prefetched
    read (io/prefetch.py, what ``lungtumor predict`` does for one NIfTI file), alternating, ``--startup`` pairs."""
    from lungtumor.io.nifti import write_nifti

    work = Path(tempfile.mkdtemp(prefix="bench_cpu_startup_"))
    ct_path = Path(a.ct) if a.ct else work / "ct.nii.gz"
    if not a.ct:
        write_nifti(make_ct(a.slices), ct_path)
    ckpt = work / f"w{a.width}_none.ckpt"
    make_checkpoint(ckpt, a.width, -30.0)
    runs: dict[str, list[dict]] = {"prefetch": [], "serial": []}
    for _ in range(a.startup):
        for kind in ("serial", "prefetch"):
            runs[kind].append(run_split(ckpt, ct_path, work / "out.nii.gz", "fast", a.avx2, prefetch=kind == "prefetch", stop_at_first=True))
    out: dict = {"machine": machine(), "load": os.getloadavg(), "avx2_emulation": a.avx2, "ct": str(ct_path), "pairs": a.startup}
    for kind, rows in runs.items():
        out[kind] = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
        out[kind]["first_slice_all"] = [round(r["first_slice_s"], 3) for r in rows]
    return out


def time_main(a: argparse.Namespace) -> dict:
    from lungtumor.io.nifti import write_nifti
    from lungtumor.model.unet import ModelConfig, flops_per_slice

    work = Path(tempfile.mkdtemp(prefix="bench_cpu_predict_"))
    if a.ct:
        ct_path = Path(a.ct)
    else:
        ct_path = work / "ct.nii.gz"
        write_nifti(make_ct(a.slices), ct_path)
    result: dict = {"machine": machine(), "load_before": os.getloadavg(), "avx2_emulation": a.avx2, "ct": str(ct_path)}
    for cand in a.candidates.split(","):
        ckpt = work / f"w{a.width}_{cand}.ckpt"
        mcfg = make_checkpoint(ckpt, a.width, -30.0 if cand == "none" else None)
        rows: dict = {}
        for rep in range(a.repeats):
            for mode in ("fast", "full") if rep % 2 == 0 else ("full", "fast"):
                r = run_split(ckpt, ct_path, work / f"{mode}.nii.gz", mode, a.avx2)
                best = rows.get(f"split_{mode}")
                if best is None or r["split"]["total"] < best["split"]["total"]:
                    rows[f"split_{mode}"] = r
                if a.cli:
                    s = run_cli(ckpt, ct_path, work / f"cli_{mode}.nii.gz", mode, a.avx2)
                    rows[f"cli_{mode}_s"] = min(s, rows.get(f"cli_{mode}_s", s))
        full = rows["split_full"]
        cfg = ModelConfig(**mcfg)
        d, h, w = full["slices"]
        flops_full = 2 * d * flops_per_slice(cfg, h, w)  # TTA flip: two forwards per slice
        rows["full_tflop"] = flops_full / 1e12
        rows["full_model_gflops_per_s"] = flops_full / full["split"]["model"] / 1e9
        fast = rows["split_fast"]["fast"]
        if fast is not None:
            cd, (ch, cw) = fast["coarse_slices"], fast["coarse_shape"]
            rows["coarse_tflop"] = cd * flops_per_slice(cfg, ch, cw) / 1e12
        for frac in a.project_fractions:
            # The fine pass costs about its share of the full path's model time (same pixels, same TTA).
            rows[f"projected_fast_total_at_fine_fraction_{frac}"] = rows["split_fast"]["split"]["total"] + frac * full["split"]["model"]
        result[f"candidates_{cand}"] = rows
    result["load_after"] = os.getloadavg()
    return result


def quality_cases(ckpt: str, data: str, cases: int | None) -> list[tuple[str, Path, Path]]:
    """(checkpoint, CT, label) of an MSD-style folder's ``imagesTr/`` + ``labelsTr/`` cases, one model."""
    paths = sorted((Path(data) / "imagesTr").glob("*.nii.gz"))[:cases]
    return [(ckpt, p, Path(data) / "labelsTr" / p.name) for p in paths]


def loso_cases(work: str, kind: str = "best") -> list[tuple[str, Path, Path]]:
    """(checkpoint, CT, label) of every finished fold of a ``bench_nodules.py --part loso`` work folder:
    each held-out real scan with the model that never saw it (``WORK/loso/SCAN/train/KIND.ckpt``)."""
    w = Path(work)
    out = []
    for res in sorted((w / "loso").glob("*/result.json")):
        held_out = res.parent.name
        out.append((str(res.parent / "train" / f"{kind}.ckpt"), w / "pairs" / f"{held_out}_ct.nii.gz", w / "pairs" / f"{held_out}_label.nii.gz"))
    if not out:
        raise SystemExit(f"{w}: no finished leave-one-scan-out fold (WORK/loso/*/result.json); run bench_nodules.py --part loso --work {w} first")
    return out


def quality_main(items: list[tuple[str, Path, Path]]) -> dict:
    """Per (checkpoint, CT, label): Dice, lesions found and false-positive lesions of ``segment`` full
    and fast (same model, ``--tta flip``, the CPU), their masks' agreement, the fast path's fine fraction
    and both paths' seconds in this process."""
    import logging

    from lungtumor.evaluation.metrics import dice, lesion_detection
    from lungtumor.inference import segment
    from lungtumor.io.readers import read_volume
    from lungtumor.model.checkpoint import load_model

    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger("lungtumor.inference.predictor")
    log.addHandler(Grab())
    log.setLevel(logging.INFO)
    rows = []
    for ckpt, p, label in items:
        model = load_model(ckpt)
        ct = read_volume(p)
        ref = read_volume(label).array > 0
        row: dict = {"case": p.name, "checkpoint": ckpt}
        for mode in ("full", "fast"):
            t0 = time.perf_counter()
            mask = segment(ct, model, mode=mode, tta="flip", device="cpu").array > 0
            row[f"{mode}_s"] = time.perf_counter() - t0
            row[f"{mode}_dice"] = dice(mask, ref)
            det = lesion_detection(mask, ref)
            row[f"{mode}_found"], row["lesions"], row[f"{mode}_fp"] = det["lesions_found"], det["lesions_ref"], det["false_positive_lesions"]
            row[f"{mode}_ml"] = float(mask.sum() * ct.voxel_volume_ml)
            row[mode] = mask
        row["fast_vs_full_dice"] = dice(row.pop("fast"), row.pop("full"))
        msg = next((m for m in reversed(records) if m.startswith("fast mode")), "")
        row["fine_fraction"] = float(msg.split("fine pass ")[1].split(" %")[0]) / 100 if "fine pass " in msg else None
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if r[key] == r[key]]  # NaN (both empty) excluded
        return float(np.mean(vals)) if vals else float("nan")

    fines = [r["fine_fraction"] for r in rows if r["fine_fraction"] is not None]
    summary = {
        "cases": len(rows),
        "dice_full": mean("full_dice"), "dice_fast": mean("fast_dice"),
        "sensitivity_full": sum(r["full_found"] for r in rows) / max(1, sum(r["lesions"] for r in rows)),
        "sensitivity_fast": sum(r["fast_found"] for r in rows) / max(1, sum(r["lesions"] for r in rows)),
        "fp_per_scan_full": sum(r["full_fp"] for r in rows) / max(1, len(rows)),
        "fp_per_scan_fast": sum(r["fast_fp"] for r in rows) / max(1, len(rows)),
        "fast_vs_full_dice_mean": mean("fast_vs_full_dice"),
        "fine_fraction_mean": float(np.mean(fines)) if fines else None,
        "seconds_full": sum(r["full_s"] for r in rows), "seconds_fast": sum(r["fast_s"] for r in rows),
    }
    return {"machine": machine(), "load": os.getloadavg(), "rows": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", action="store_true", help="the fresh-process timing, fast vs full")
    ap.add_argument("--ct", default=None, help="a NIfTI CT to time (default: a FULL phantom stretched to --slices)")
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cli", action="store_true", help="also time the real `lungtumor predict` command end to end")
    ap.add_argument("--candidates", default="none,random", help="none (the floor), random (random weights' own candidates)")
    ap.add_argument("--project-fractions", type=float, nargs="*", default=[0.05, 0.15, 0.3])
    ap.add_argument("--avx2", action="store_true", help="children as on a Zen 3 (an emulation)")
    ap.add_argument("--quality", nargs=2, metavar=("CKPT", "DATA"), default=None)
    ap.add_argument("--quality-loso", default=None, metavar="WORK", help="quality on every finished fold of a bench_nodules.py --part loso WORK folder")
    ap.add_argument("--loso-checkpoint", default="best", choices=["best", "last"], help="--quality-loso: each fold's best (validation) or last checkpoint")
    ap.add_argument("--startup", type=int, default=0, metavar="N", help="N alternating pairs: start-up to the first slice with and without the prefetched read")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    res = {}
    if a.quality:
        res["quality"] = quality_main(quality_cases(*a.quality, a.cases))
        print(json.dumps(res["quality"]["summary"], indent=2))
    if a.quality_loso:
        res["quality_loso"] = quality_main(loso_cases(a.quality_loso, a.loso_checkpoint))
        print(json.dumps(res["quality_loso"]["summary"], indent=2))
    if a.startup:
        res["startup"] = startup_main(a)
        print(json.dumps(res["startup"], indent=2))
    if a.time:
        res["time"] = time_main(a)
        print(json.dumps(res["time"], indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
