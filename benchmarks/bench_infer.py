"""Inference benchmark: a 512x512x300 CT through the seed's full-width U-Net on this CPU.

Seed's way: float32, contiguous memory, one slice at a time (normalise, OpenCV resize,
forward, sigmoid). Ours: :func:`lungtumor.inference.predictor.segment` end to end (preprocess, batched
bf16 channels-last forward, resize back, threshold, undo orientation) with the same weights.
Bare forward: the model alone on ready tensors at our precision and batch size.
Peak memory: ``segment`` on a 512x512x600 CT in a fresh process (ru_maxrss).

Run: ``.venv/bin/python benchmarks/bench_infer.py [--slices 300] [--seed-slices 24]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from lungtumor.config import HU_SCALE, SEED_SKIP_INFERIOR_SLICES, SEED_SLICE_SIZE, PreprocessConfig
from lungtumor.inference.predictor import segment, use_bf16
from lungtumor.io.volume import Volume
from lungtumor.model.checkpoint import LoadedModel
from lungtumor.model.unet import ModelConfig, UNet, flops_per_slice


def make_ct(depth: int, seed: int = 0) -> Volume:
    """A FULL phantom case stretched or cut to ``depth`` slices (512x512 in-plane)."""
    from lungtumor.phantom.dataset import make_case

    ct, _ = make_case(seed, size="FULL")
    idx = np.linspace(0, ct.shape[2] - 1, depth).round().astype(int)
    return Volume(np.ascontiguousarray(ct.array[:, :, idx]), ct.affine)


def seed_way(net: torch.nn.Module, ct: Volume, n: int) -> float:
    """Slices/s of the seed's per-slice float32 path on ``n`` slices."""
    import cv2

    data = ct.array[:, :, SEED_SKIP_INFERIOR_SLICES:]
    net = net.to(memory_format=torch.contiguous_format)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(n):
            s = cv2.resize(data[:, :, i].astype(np.float64) / HU_SCALE, (SEED_SLICE_SIZE, SEED_SLICE_SIZE))
            x = torch.tensor(s, dtype=torch.float32)[None, None]
            _ = torch.sigmoid(net(x))[0, 0].numpy() > 0.5
    return n / (time.perf_counter() - t0)


def bare_forward(net: torch.nn.Module, batch: int, n_batches: int, bf16: bool) -> float:
    x = torch.randn(batch, 1, SEED_SLICE_SIZE, SEED_SLICE_SIZE).contiguous(memory_format=torch.channels_last)
    net = net.to(memory_format=torch.channels_last)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        net(x)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            net(x)
    return batch * n_batches / (time.perf_counter() - t0)


def peak_memory_child(path: str, width: int) -> None:
    """Run in a fresh process: read a CT NIfTI and segment it, print peak RSS in GB.

    ru_maxrss only grows, so the CT is made by the parent and written to disk: the peak then
    covers exactly what ``lungtumor predict`` does (read, preprocess, forward, restore).
    """
    from lungtumor.io.nifti import read_nifti

    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    model = LoadedModel(UNet(ModelConfig(width=width)).eval(), PreprocessConfig(preset="seed"), 0, {"threshold": 0.5})
    t0 = time.perf_counter()
    mask = segment(read_nifti(path), model)
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "rss_after_imports_gb": base, "seconds": time.perf_counter() - t0, "shape": list(mask.shape)}))


def peak_memory(depth: int, width: int) -> dict:
    """Peak memory of segmenting a 512x512xdepth CT, measured in a fresh process."""
    import tempfile

    from lungtumor.io.nifti import write_nifti

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "ct.nii.gz")
        write_nifti(make_ct(depth), path)
        child = subprocess.run(
            [sys.executable, __file__, "--child", path, "--memory-width", str(width)], capture_output=True, text=True, check=True
        )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--seed-slices", type=int, default=24, help="slices timed for the seed's way (it is slow)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--memory-slices", type=int, default=600)
    ap.add_argument("--memory-width", type=int, default=64)
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory measurement")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        peak_memory_child(a.child, a.memory_width)
        return
    if a.memory_only:
        mem = peak_memory(a.memory_slices, a.memory_width)
        print(json.dumps({"machine": machine(), "ct_shape": [512, 512, a.memory_slices], "memory": mem}, indent=2))
        print(f"{'PASS' if mem['peak_rss_gb'] < 3.0 else 'FAIL'}  peak memory < 3 GB for 512x512x{a.memory_slices}")
        return
    torch.manual_seed(0)
    net = UNet(ModelConfig()).eval()
    ct = make_ct(a.slices)
    kept = a.slices - SEED_SKIP_INFERIOR_SLICES
    bf16 = use_bf16(torch.device("cpu"))
    model = LoadedModel(net, PreprocessConfig(preset="seed"), 0, {"threshold": 0.5})

    seed_sps = seed_way(net, ct, a.seed_slices)
    bare_sps = bare_forward(net, a.batch, max(2, 24 // a.batch), bf16)
    t0 = time.perf_counter()
    mask = segment(ct, model, batch_size=a.batch)
    ours_s = time.perf_counter() - t0
    ours_sps = kept / ours_s
    assert mask.shape == ct.shape
    # Agreement of bf16 and float32 probabilities on a few slices with these weights.
    from lungtumor.inference.predictor import predict_slices
    from lungtumor.preprocessing.recipe import prepare_ct

    prep = prepare_ct(ct, PreprocessConfig(preset="seed"))
    sub = prep.slices[kept // 2 : kept // 2 + 8]
    p32 = predict_slices(model, sub, precision="fp32", device="cpu")
    p16 = predict_slices(model, sub, precision="bf16", device="cpu")
    gflop = flops_per_slice(ModelConfig(), SEED_SLICE_SIZE, SEED_SLICE_SIZE) / 1e9
    mem = peak_memory(a.memory_slices, a.memory_width)
    report = {
        "machine": machine(),
        "ct_shape": list(ct.shape),
        "slices_through_model": kept,
        "precision_ours": "bf16 autocast" if bf16 else "float32",
        "seed_way_slices_per_s": seed_sps,
        "seed_way_projected_s_for_scan": kept / seed_sps,
        "ours_slices_per_s": ours_sps,
        "ours_s_for_scan": ours_s,
        "speedup_vs_seed": ours_sps / seed_sps,
        "bare_forward_slices_per_s": bare_sps,
        "ours_fraction_of_bare_forward": ours_sps / bare_sps,
        "model_gflop_per_slice": gflop,
        "ours_achieved_gflop_per_s": ours_sps * gflop,
        "bf16_vs_fp32_max_prob_diff": float(np.abs(p32 - p16).max()),
        "bf16_vs_fp32_mask_disagreement": float(np.mean((p32 > 0.5) != (p16 > 0.5))),
        "memory": mem,
    }
    print(json.dumps(report, indent=2))
    for k, ok in {
        ">= 2.5x faster than the seed's way": report["speedup_vs_seed"] >= 2.5,
        ">= 80 % of bare forward throughput": report["ours_fraction_of_bare_forward"] >= 0.8,
        f"peak memory < 3 GB for 512x512x{a.memory_slices}": mem["peak_rss_gb"] < 3.0,
    }.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")


if __name__ == "__main__":
    main()
