"""Quality of transposed-convolution upsampling against the seed's bilinear one, before either is a default.

Issue 17 section 2: transposed upsampling is 1.26x faster on an H200 (with torch.compile and fused
Adam at batch 128, 1.57x). It changes the network, so this trains the demo's recipe (lung preset at
3 mm, width 16, 2.5D context 2, batch norm, BCE + Dice, cosine, the demo's augmentation) twice on
the same phantom store with the same seed, once per upsampling, for a fixed number of steps (not
minutes: the machine is shared), and reports the validation Dice per 3D case at the last epoch
(and the best) of each, and their ratio.

Run: ``PYTHONPATH=src python benchmarks/bench_upsample.py [--cases 32 --val-cases 8 --epochs 18]``.
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
    a = ap.parse_args(argv)
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
