"""A folder of scans through ``lungtumor predict``: each scan's time split, and scans per minute
with and without ``--workers``, against reading the same files alone (issue 17, section 3).

For each scan, the stages ``predict_path`` times (``timings`` in its results): read (NIfTI
decompression), lungs (the lung finder), grid (fit and slices), model (the forward passes),
back (probabilities onto the input's grid, threshold, post-processing), write (mask NIfTI) and
report (lesion table, instances, HTML). Then the whole folder's wall time, as scans per minute,
with 0 workers (one scan after the other) and with N (the CPU stages of the next scans in worker
processes, writing in a thread), and the files read alone (``read_volume``, one after the other):
the pace a device-bound pipeline could at most reach. The outputs of both runs are compared.

Run: ``PYTHONPATH=src python benchmarks/bench_cohort.py [--cases 3 --size FULL --workers 2
--checkpoint CKPT]`` (default checkpoint: a random lung-preset U-Net of ``--width``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("read", "lungs", "grid", "model", "back", "write", "report")


def stub_lung_checkpoint(path: Path, width: int, *, empty: bool = False) -> Path:
    """A lung-preset checkpoint (the preset's own 1.5 mm pixels), random weights; ``empty``: it predicts
    no tumour anywhere (a random network's speckle would make post-processing and the report measure
    thousands of lesions)."""
    import torch

    from lungtumor.config import PreprocessConfig
    from lungtumor.model.checkpoint import NET_PREFIX, checkpoint_metadata
    from lungtumor.model.unet import ModelConfig, UNet

    torch.manual_seed(0)
    cfg = ModelConfig(width=width)
    net = UNet(cfg)
    if empty:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.fill_(-5.0)
    meta = checkpoint_metadata(cfg.to_dict(), PreprocessConfig.from_preset("lung").to_dict(), 0, threshold=0.5)
    torch.save({"lungtumor": meta, "state_dict": {NET_PREFIX + k: v for k, v in net.state_dict().items()}}, path)
    return path


def write_scans(folder: Path, cases: int, size: str) -> list[Path]:
    from lungtumor.io.nifti import write_nifti
    from lungtumor.phantom.dataset import make_case

    paths = []
    for seed in range(cases):
        path = folder / f"case{seed:03d}.nii.gz"
        if not path.exists():
            ct, _ = make_case(seed, size=size)
            write_nifti(ct, path)
        paths.append(path)
    return paths


def read_alone(paths: list[Path]) -> float:
    """Seconds to read every file once (decompression included), one after the other."""
    from lungtumor.io.readers import read_volume

    t0 = time.perf_counter()
    for p in paths:
        read_volume(p)
    return time.perf_counter() - t0


def run_folder(ckpt: Path, inputs: Path, out: Path, workers: int, report: bool, device: str | None) -> tuple[float, list[dict[str, Any]]]:
    from lungtumor.predict import predict_path

    t0 = time.perf_counter()
    results = predict_path(ckpt, inputs, out, progress=False, workers=workers, report=report, device=device)
    return time.perf_counter() - t0, results


def same_outputs(a: Path, b: Path) -> bool:
    import numpy as np

    from lungtumor.io.nifti import read_nifti

    names = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    if names != sorted(p.relative_to(b) for p in b.rglob("*.nii.gz")):
        return False
    return all(np.array_equal(read_nifti(a / n).array, read_nifti(b / n).array) for n in names)


def measure(ckpt: Path, paths: list[Path], work: Path, workers: int, report: bool = True, device: str | None = None) -> dict[str, Any]:
    """Read alone, then the folder with 0 and ``workers`` workers; per-scan splits and scans/minute."""
    inputs = paths[0].parent
    n = len(paths)
    read_s = read_alone(paths)
    rows: dict[str, Any] = {"scans": n, "read_alone_s": read_s, "read_alone_scans_per_min": 60 * n / read_s}
    for w in (0, workers):
        wall, results = run_folder(ckpt, inputs, work / f"out-w{w}", w, report, device)
        rows[f"workers_{w}"] = {
            "wall_s": wall,
            "scans_per_min": 60 * n / wall,
            "per_scan": [{"input": Path(r["input"]).name, "shape": list(r["shape"]), **{k: r["timings"][k] for k in STAGES}} for r in results],
        }
    rows["workers"] = workers
    rows["same_outputs"] = same_outputs(work / "out-w0", work / f"out-w{workers}")
    rows["pipelined_vs_read_alone"] = rows[f"workers_{workers}"]["wall_s"] / read_s
    rows["speedup_workers"] = rows["workers_0"]["wall_s"] / rows[f"workers_{workers}"]["wall_s"]
    return rows


def print_table(rows: dict[str, Any]) -> None:
    for key in ("workers_0", f"workers_{rows['workers']}"):
        run = rows[key]
        print(f"\n{key}: {run['wall_s']:.1f} s for {rows['scans']} scans = {run['scans_per_min']:.2f} scans/min")
        print(f"  {'scan':16s} {'shape':>16s} " + " ".join(f"{s:>7s}" for s in STAGES))
        for r in run["per_scan"]:
            print(f"  {r['input']:16s} {'x'.join(map(str, r['shape'])):>16s} " + " ".join(f"{r[s]:7.2f}" for s in STAGES))
    print(f"\nread alone: {rows['read_alone_s']:.1f} s = {rows['read_alone_scans_per_min']:.2f} scans/min")
    print(f"workers speed-up {rows['speedup_workers']:.2f}x; pipelined wall / read alone = {rows['pipelined_vs_read_alone']:.2f} "
          f"(target <= 2 on a GPU); outputs identical: {rows['same_outputs']}")


def main(argv: list[str] | None = None) -> int:
    from common import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--size", default="FULL", help="phantom size: FULL (512x512, 100-300 slices) or SMALL")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--width", type=int, default=16, help="U-Net width of the random stub checkpoint (without --checkpoint)")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--no-report", dest="report", action="store_false")
    ap.add_argument("--workdir", type=Path, default=None, help="keeps the phantom scans between runs")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at start")
    paths = write_scans(work / "in", a.cases, a.size)
    ckpt = a.checkpoint or stub_lung_checkpoint(work / "stub.ckpt", a.width, empty=True)
    for sub in work.glob("out-w*"):
        import shutil

        shutil.rmtree(sub)
    rows = measure(ckpt, paths, work, a.workers, report=a.report)
    rows["load_average_end"] = os.getloadavg()[0]
    rows["checkpoint"] = str(ckpt)
    print_table(rows)
    print(f"load average {rows['load_average_end']:.1f} at the end")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
