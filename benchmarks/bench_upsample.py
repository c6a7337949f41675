"""Quality of transposed-convolution upsampling against the seed's bilinear one, before either is a default.

Issue 17 section 2: transposed upsampling is 1.26x faster on an H200 (with torch.compile and fused
Adam at batch 128, 1.57x). It changes the network, so this trains the demo's recipe (lung preset at
3 mm, width 16, 2.5D context 2, batch norm, BCE + Dice, cosine, the demo's augmentation) twice on
the same phantom store with the same seed, once per upsampling, for a fixed number of steps (not
minutes: the machine is shared), and reports the validation Dice per 3D case at the last epoch
(and the best) of each, and their ratio.

Run: ``PYTHONPATH=src python benchmarks/bench_upsample.py [--cases 32 --val-cases 8 --epochs 18]``.

``--quick``: a proxy for a machine too busy for the demo's recipe (which needs about 1,300 steps
before the validation Dice leaves 0): 2D slices of SMALL phantoms in the seed recipe at 64x64
(tumour slices and as many others), a width-8 U-Net with batch norm, BCE + Dice, Adam 3e-3, the
demo's augmentation on the batch, the same batches for both networks; Dice per case on the slices of
held-out phantoms, after a fixed number of steps, for several seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def last_val_dice(run_dir: Path) -> float | None:
    """val/dice_case of the last validation in the run's CSV logs."""
    value = None
    for path in sorted((run_dir / "logs" / "csv").glob("session-*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("val/dice_case"):
                    value = float(row["val/dice_case"])
    return value


def _slices(seeds: range) -> list[tuple[object, object]]:
    """Per phantom case: (CT slices, masks) of the seed recipe at 64x64, its tumour slices and as many others."""
    import numpy as np

    from lungtumor.config import PreprocessConfig
    from lungtumor.phantom.dataset import make_case
    from lungtumor.preprocessing.recipe import prepare_ct, prepare_mask

    cfg = PreprocessConfig(preset="seed", size=64)
    out = []
    for seed in seeds:
        ct, label = make_case(seed, size="SMALL", n_tumours=2)
        x, y = prepare_ct(ct, cfg).slices, prepare_mask(label, cfg)
        has = y.reshape(len(y), -1).any(1)
        rng = np.random.default_rng(seed)
        others = rng.choice(np.flatnonzero(~has), size=min(int(has.sum()), int((~has).sum())), replace=False)
        pick = np.sort(np.concatenate([np.flatnonzero(has), others]))
        out.append((x[pick], y[pick].astype(np.float32)))
    return out


def quick(a: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from lungtumor.demo import DEMO_AUGMENT
    from lungtumor.model.unet import ModelConfig, UNet
    from lungtumor.training.augment import AugmentConfig, augment_batch
    from lungtumor.training.losses import make_loss

    train_cases = _slices(range(0, a.cases - a.val_cases))
    val_cases = _slices(range(1000, 1000 + a.val_cases))
    x = torch.from_numpy(np.concatenate([c[0] for c in train_cases]))[:, None]
    y = torch.from_numpy(np.concatenate([c[1] for c in train_cases]))[:, None]
    aug = AugmentConfig.from_dict(dict(DEMO_AUGMENT))
    print(f"quick proxy: {len(x)} training slices from {len(train_cases)} cases, {sum(len(c[0]) for c in val_cases)} validation slices "
          f"from {len(val_cases)} cases, {a.steps} steps of batch 16, width 8")
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        for upsample in ("bilinear", "transpose"):
            torch.manual_seed(seed)
            net = UNet(ModelConfig(width=8, norm="batch", upsample=upsample))
            opt = torch.optim.Adam(net.parameters(), lr=3e-3)
            loss_fn = make_loss("bce+dice")
            gen = torch.Generator().manual_seed(seed)  # the same batches and augmentation for both networks
            t0 = time.perf_counter()
            for _ in range(a.steps):
                idx = torch.randint(0, len(x), (16,), generator=gen)
                xb, yb = augment_batch(x[idx], y[idx], aug, generator=gen)
                net.train()
                opt.zero_grad()
                loss_fn(net(xb), yb).backward()
                opt.step()
            net.eval()
            dices = []
            with torch.no_grad():
                for cx, cy in val_cases:
                    pred = (net(torch.from_numpy(cx)[:, None]) > 0).float().numpy()[:, 0]
                    dices.append(2 * float((pred * cy).sum()) / max(float(pred.sum() + cy.sum()), 1e-9))
            rows.append({"seed": seed, "upsample": upsample, "val_dice_case_mean": float(np.mean(dices)), "train_s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]))
    for u in ("bilinear", "transpose"):
        d = [r["val_dice_case_mean"] for r in rows if r["upsample"] == u]
        print(f"{u}: mean Dice per case {np.mean(d):.3f} +- {np.std(d):.3f} over seeds {a.seeds}")
    b = np.mean([r["val_dice_case_mean"] for r in rows if r["upsample"] == "bilinear"])
    t = np.mean([r["val_dice_case_mean"] for r in rows if r["upsample"] == "transpose"])
    print(f"ratio transpose / bilinear: {t / b:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from common import machine
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.demo import DEMO_AUGMENT, DemoConfig
    from lungtumor.phantom.dataset import write_phantom_dataset
    from lungtumor.preprocessing.store import preprocess_task
    from lungtumor.training.trainer import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=32)
    ap.add_argument("--val-cases", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--samples-per-epoch", type=int, default=400)
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--width", type=int, default=None, help="U-Net width (default the demo's, 16)")
    ap.add_argument("--tumour-fraction", type=float, default=None, help="tumour slices per batch (default the demo's: the seed's weights)")
    ap.add_argument("--val-every", type=int, default=None, help="validate every N epochs (default: at the last epoch only)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="the 2D proxy (see the module docstring)")
    ap.add_argument("--steps", type=int, default=400, help="--quick: training steps")
    a = ap.parse_args(argv)
    if a.quick:
        return quick(a)
    demo = DemoConfig()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_upsample_"))
    print(f"machine: {machine()}")
    if not (work / "store" / "manifest.json").exists():  # a --workdir keeps its store between runs
        task = write_phantom_dataset(work / "data", cases=a.cases, test_cases=0, size="SMALL", seed=0)
        pre = PreprocessConfig.from_preset("lung", spacing_mm=demo.spacing_mm)
        preprocess_task(task, work / "store", pre, SplitConfig(val_cases=a.val_cases), workers=1, progress=False)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        for upsample in ("bilinear", "transpose"):
            run = work / f"run-{upsample}-{seed}"
            if run.exists():
                import shutil

                shutil.rmtree(run)
            cfg = TrainConfig(
                store=str(work / "store"), out=str(run), epochs=a.epochs, width=a.width or demo.width, tumour_fraction=a.tumour_fraction, context=demo.context, norm=demo.norm,
                loss=demo.loss, batch_size=demo.batch_size, lr=demo.lr, lr_schedule=demo.lr_schedule, augment_options=dict(DEMO_AUGMENT),
                samples_per_epoch=a.samples_per_epoch, num_workers=1, seed=seed, image_every_n_steps=0,
                val_every_n_epochs=a.val_every or a.epochs, log_every_n_steps=5, progress=False, upsample=upsample,
            )
            t0 = time.perf_counter()
            summary = train(cfg)
            rows.append({"seed": seed, "upsample": upsample, "last_val_dice_case": last_val_dice(run), "best_val_dice_case": summary["best_val_dice_case"],
                         "steps": summary["global_step"], "train_s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]))
    for seed in sorted({r["seed"] for r in rows}):
        b, t = (next(r for r in rows if r["seed"] == seed and r["upsample"] == u) for u in ("bilinear", "transpose"))
        print(f"seed {seed}: last val Dice transpose/bilinear = {t['last_val_dice_case']:.3f}/{b['last_val_dice_case']:.3f} "
              f"= {t['last_val_dice_case'] / b['last_val_dice_case']:.3f}; train s {t['train_s']:.0f}/{b['train_s']:.0f}")
    print(f"budget: {a.cases} SMALL phantom cases ({a.val_cases} validation), {a.epochs} epochs x {a.samples_per_epoch} slices, "
          f"batch {demo.batch_size} ({a.epochs * a.samples_per_epoch // demo.batch_size} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
