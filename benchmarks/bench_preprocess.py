"""Preprocessing benchmark: the seed's way against ours, on FULL (MSD-like) phantom volumes.

Seed's way (shared/seed/REFERENCE.md): nibabel ``get_fdata()`` (float64), / 3071, drop the 30
most inferior slices, per-slice OpenCV resize to 256x256 (bilinear CT, nearest mask), one
``.npy`` per slice for CT and mask. Ours: ``lungtumor.preprocessing.store.preprocess_task`` (one
process, then ``--workers 2``). Floor: reading and decompressing the NIfTI files as int16
alone, with the same reader. Also: disk footprint and random slice reads per second.

Run: ``.venv/bin/python benchmarks/bench_preprocess.py [--cases 4] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import du, machine
from lungtumor.config import HU_SCALE, SEED_SKIP_INFERIOR_SLICES, SEED_SLICE_SIZE, PreprocessConfig, SplitConfig
from lungtumor.io.datasets import find_cases
from lungtumor.io.nifti import read_nifti
from lungtumor.phantom.dataset import write_phantom_dataset
from lungtumor.preprocessing.store import SliceStore, preprocess_task
from lungtumor.training.data import SliceDataset


def seed_way(task: Path, out: Path) -> None:
    """The seed notebook's preprocessing, as it was run (one .npy per slice)."""
    import cv2

    for s, case in enumerate(find_cases(task)):
        ct = nib.load(str(case.image)).get_fdata() / HU_SCALE
        label = nib.load(str(case.label)).get_fdata()
        ct = ct[:, :, SEED_SKIP_INFERIOR_SLICES:]
        label = label[:, :, SEED_SKIP_INFERIOR_SLICES:]
        (out / str(s) / "data").mkdir(parents=True, exist_ok=True)
        (out / str(s) / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(ct.shape[-1]):
            slice_ = cv2.resize(ct[:, :, i], (SEED_SLICE_SIZE, SEED_SLICE_SIZE))
            mask = cv2.resize(label[:, :, i], (SEED_SLICE_SIZE, SEED_SLICE_SIZE), interpolation=cv2.INTER_NEAREST)
            np.save(out / str(s) / "data" / f"{i}.npy", slice_)
            np.save(out / str(s) / "masks" / f"{i}.npy", mask)


def floor(task: Path) -> None:
    """Read and decompress every image and label as stored (int16 / uint8), nothing else."""
    for case in find_cases(task):
        read_nifti(case.image)
        read_nifti(case.label)


def random_reads_ours(store: Path, n: int, rng: np.random.Generator) -> float:
    ds = SliceDataset(SliceStore(store), SliceStore(store).splits["train"] + SliceStore(store).splits["val"])
    for i in rng.integers(0, len(ds), 200):  # warm the page cache and the maps
        ds[int(i)]
    idx = rng.integers(0, len(ds), n)
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return n / (time.perf_counter() - t0)


def random_reads_seed(out: Path, n: int, rng: np.random.Generator) -> float:
    files = sorted(out.glob("*/data/*.npy"))
    for i in rng.integers(0, len(files), 200):
        np.load(files[int(i)])
    idx = rng.integers(0, len(files), n)
    t0 = time.perf_counter()
    for i in idx:
        f = files[int(i)]
        np.load(f)
        np.load(f.parent.parent / "masks" / f.name)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep the data here (default: a temporary folder)")
    a = ap.parse_args()
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench_pre_"))
    task = work / "task"
    if not (task / "dataset.json").exists():
        t0 = time.perf_counter()
        write_phantom_dataset(task, cases=a.cases, test_cases=0, size="FULL", seed=a.seed)
        print(f"generated {a.cases} FULL phantom cases in {time.perf_counter() - t0:.1f} s")
    cases = find_cases(task)
    shapes = [nib.load(str(c.image)).shape for c in cases]
    nifti_bytes = sum(c.image.stat().st_size + c.label.stat().st_size for c in cases)
    n = len(cases)
    res: dict[str, float] = {}
    # Each method reads the same files; run the floor first and once more at the end so that
    # every method sees a warm page cache.
    def timed(key: str, fn: Any) -> None:
        t0 = time.perf_counter()
        fn()
        res[key] = time.perf_counter() - t0

    floor(task)
    timed("floor_s", lambda: floor(task))
    for d in ("seed", "ours1", "ours2"):
        shutil.rmtree(work / d, ignore_errors=True)
    timed("seed_s", lambda: seed_way(task, work / "seed"))
    timed("ours_1proc_s", lambda: preprocess_task(task, work / "ours1", PreprocessConfig(preset="seed"), SplitConfig(val_cases=1), progress=False))
    timed("ours_2workers_s", lambda: preprocess_task(task, work / "ours2", PreprocessConfig(preset="seed"), SplitConfig(val_cases=1), workers=2, progress=False))
    timed("floor_again_s", lambda: floor(task))
    floor_s = min(res["floor_s"], res["floor_again_s"])
    rng = np.random.default_rng(0)
    reads_ours = random_reads_ours(work / "ours1", 5000, rng)
    reads_seed = random_reads_seed(work / "seed", 2000, rng)
    disk_seed, disk_ours = du(work / "seed"), du(work / "ours1")
    report = {
        "machine": machine(),
        "cases": n,
        "shapes": [list(s) for s in shapes],
        "nifti_mb": nifti_bytes / 1e6,
        "floor_cases_per_s": n / floor_s,
        "seed_cases_per_s": n / res["seed_s"],
        "ours_1proc_cases_per_s": n / res["ours_1proc_s"],
        "ours_2workers_cases_per_s": n / res["ours_2workers_s"],
        "speedup_1proc_vs_seed": res["seed_s"] / res["ours_1proc_s"],
        "speedup_2workers_vs_seed": res["seed_s"] / res["ours_2workers_s"],
        "ours_1proc_multiple_of_floor": res["ours_1proc_s"] / floor_s,
        "disk_seed_mb": disk_seed / 1e6,
        "disk_ours_mb": disk_ours / 1e6,
        "disk_ratio": disk_seed / disk_ours,
        "random_slice_reads_per_s_ours": reads_ours,
        "random_slice_reads_per_s_seed": reads_seed,
        "seconds": res,
    }
    print(json.dumps(report, indent=2))
    targets = {
        ">= 3x faster than the seed (1 process)": report["speedup_1proc_vs_seed"] >= 3,
        "within 2x of the floor": report["ours_1proc_multiple_of_floor"] <= 2,
        ">= 4x smaller on disk": report["disk_ratio"] >= 4,
        ">= 1000 random slice reads/s": reads_ours >= 1000,
    }
    for k, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
