"""Training benchmark: the seed's full-width U-Net at 256x256, batch 8, on this machine.

(a) the seed's way: float32, contiguous memory, per-sample CPU augmentation in 2 loader
    workers (scipy, like the seed's imgaug), plain training step (Adam, BCE).
(b) ours: same model and batch, our data path (memory-mapped store, batched augmentation
    on the device) and precision (bf16 autocast where supported) with channels-last.
Also: our data path alone (slices/s out of the loader, augmented) against the model step
alone, and the model's achieved GFLOP/s against this machine's matmul GFLOP/s.

Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 4]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the seed's reference augmentation lives with the tests (helpers/)
from common import machine
from helpers.seed_augment import augment_sample_numpy
from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.model.unet import ModelConfig, UNet, flops_per_slice
from lungtumor.phantom.dataset import write_phantom_dataset
from lungtumor.preprocessing.store import SliceStore, preprocess_task
from lungtumor.training.augment import AugmentConfig, augment_batch
from lungtumor.training.data import DataConfig, SliceDataset, make_datamodule
from lungtumor.training.trainer import bf16_supported

BATCH = 8
SIZE = 256


class SeedDataset(Dataset):
    """The seed's dataset: load a slice, augment it on the CPU, one sample at a time."""

    def __init__(self, ds: SliceDataset) -> None:
        self.ds = ds
        self.cfg = AugmentConfig()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, n: int):  # type: ignore[no-untyped-def]
        ct, mask, _ = self.ds[n]
        rng = np.random.default_rng(n + int(time.perf_counter_ns() % 1000))
        c, m = augment_sample_numpy(ct.numpy().astype(np.float64), mask.numpy(), self.cfg, rng)
        return torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)), torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))


def matmul_gflops(dtype: torch.dtype, seconds: float = 2.0) -> float:
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - t0) / 1e9


def run_steps(net, opt, batches, bf16: bool, channels_last: bool, augment_on_device: bool, steps: int) -> float:  # type: ignore[no-untyped-def]
    """Slices/s of ``steps`` training steps after one warm-up step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    t0 = None
    for i, batch in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        ct, mask = batch[0], batch[1]
        if augment_on_device:
            ct, mask = augment_batch(ct, mask, AugmentConfig(), generator=gen)
        ct = ct.contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net(ct).float(), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == steps:
            break
    return steps * BATCH / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method (after 1 warm-up)")
    ap.add_argument("--width", type=int, default=64)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        write_phantom_dataset(work / "task", cases=6, test_cases=0, size="SMALL", seed=0)
        preprocess_task(work / "task", work / "store", PreprocessConfig(preset="seed", size=SIZE), SplitConfig(val_cases=1), progress=False)
        store = SliceStore(work / "store")
        ds = SliceDataset(store, store.splits["train"])
        cfg = ModelConfig(width=a.width)
        gflop_step = 3 * flops_per_slice(cfg, SIZE, SIZE) / 1e9  # forward + backward ~ 3x forward
        bf16 = bf16_supported("cpu")
        res: dict[str, float] = {}

        # (a) the seed's way
        torch.manual_seed(0)
        net = UNet(cfg)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        seed_loader = DataLoader(SeedDataset(ds), batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True)
        res["seed_slices_per_s"] = run_steps(net, opt, iter(seed_loader), bf16=False, channels_last=False, augment_on_device=False, steps=a.steps)

        # (b) ours
        torch.manual_seed(0)
        net = UNet(cfg)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        dm = make_datamodule(work / "store", DataConfig(batch_size=BATCH, num_workers=2))
        res["ours_slices_per_s"] = run_steps(net, opt, iter(dm.train_dataloader()), bf16=bf16, channels_last=True, augment_on_device=True, steps=a.steps)

        # our data path alone: loader + batched augmentation
        gen = torch.Generator().manual_seed(1)

        def endless():  # type: ignore[no-untyped-def]
            while True:
                yield from dm.train_dataloader()

        it = endless()
        next(it)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 3.0:
            ct, mask, _ = next(it)
            augment_batch(ct, mask, AugmentConfig(), generator=gen)
            n += ct.shape[0]
        res["ours_data_path_slices_per_s"] = n / (time.perf_counter() - t0)

        # the model step alone on ready tensors
        fixed = [(torch.randn(BATCH, 1, SIZE, SIZE), (torch.rand(BATCH, 1, SIZE, SIZE) > 0.9).float())] * (a.steps + 1)
        res["ours_model_step_alone_slices_per_s"] = run_steps(net, opt, iter(fixed), bf16=bf16, channels_last=True, augment_on_device=False, steps=a.steps)

        res["matmul_fp32_gflops"] = matmul_gflops(torch.float32)
        res["matmul_bf16_gflops"] = matmul_gflops(torch.bfloat16)
        report = {
            "machine": machine(),
            "model": cfg.__dict__,
            "batch": BATCH,
            "size": SIZE,
            "precision_ours": "bf16 autocast + channels-last" if bf16 else "float32 + channels-last",
            **res,
            "speedup_vs_seed": res["ours_slices_per_s"] / res["seed_slices_per_s"],
            "data_path_over_model_step": res["ours_data_path_slices_per_s"] / res["ours_model_step_alone_slices_per_s"],
            "gflop_per_slice_train_step": gflop_step,
            "ours_achieved_gflops": res["ours_slices_per_s"] * gflop_step,
            "seed_achieved_gflops": res["seed_slices_per_s"] * gflop_step,
            "ours_fraction_of_matmul_peak": res["ours_slices_per_s"] * gflop_step / (res["matmul_bf16_gflops"] if bf16 else res["matmul_fp32_gflops"]),
        }
        print(json.dumps(report, indent=2))
        for k, ok in {
            ">= 3x the seed's way": report["speedup_vs_seed"] >= 3,
            "data path >= 5x faster than the model consumes it": report["data_path_over_model_step"] >= 5,
        }.items():
            print(f"{'PASS' if ok else 'FAIL'}  {k}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
