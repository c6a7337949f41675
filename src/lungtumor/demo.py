"""``lungtumor demo``: the whole pipeline on built-in synthetic data (or a real MSD folder).

phantom -> preprocess -> train (a narrow U-Net on 128x128 slices, a few minutes on 2 CPU
cores) -> predict the held-out and test cases in their original geometry -> evaluate per
case -> GIF and PNG. Every stage prints its timing and where its output is.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.errors import ConfigError, InputError

#: Milder augmentation than the seed's for a few minutes of CPU training on small phantom
#: data: +-15 degrees, 0.9-1.1 zoom, 10 % shift, no elastic warp.
DEMO_AUGMENT: tuple[tuple[str, Any], ...] = (("rotate_deg", 15.0), ("scale", (0.9, 1.1)), ("translate", 0.1), ("elastic_p", 0.0))


@dataclass(frozen=True)
class DemoConfig:
    """Demo options; the defaults fit a 2-core laptop in well under 15 minutes.

    Attributes:
        workdir: where every output goes.
        task_dir: a real MSD-layout folder instead of the phantom (None = phantom).
        cases, test_cases: phantom training (labelled) and test cases. Many cases matter more
            than many epochs: with 11 training cases the model overfits (held-out Dice about
            0.7), with 56 it generalises (about 0.87); generating them takes seconds.
        val_cases: held-out labelled cases (the last ones in sorted order).
        preset: the slice grid: ``lung`` (default: crop to the lung region, ``spacing_mm`` pixels,
            the slices of the lung extent) or ``seed`` (the seed's recipe: every slice resized to
            ``size``), to compare the two on the same data and budget.
        spacing_mm: lung preset: model pixel in mm. 3 mm is the SMALL phantom's own pixel
            (2.6-3.4 mm), so its slices are not upsampled; on real CT the preset's 1.5 mm applies.
        size: seed preset: slice size of the store and the model.
        width: U-Net base width (the seed's is 64; 16 costs 1/16 of it).
        context: 2.5D neighbouring slices on each side. 2D alone cannot tell a tumour from the
            dome of the liver rising into the lung base; 5 slices can.
        norm, loss: batch norm and BCE + Dice converge within minutes; the seed's plain BCE
            without normalisation needs far longer.
        epochs: training length. There is no time cap by default (``train_minutes`` None), so the
            result does not depend on the machine's speed; the schedule is sized to finish in
            well under 15 minutes on a 2-core AVX2-only CPU (float32) as well as on a bf16 one.
        train_minutes: an optional cap; when it cuts the schedule the result depends on speed.
        val_every_n_epochs: validation costs about a third of an epoch here; every third
            epoch buys more training in the same minutes.
        tta: test-time augmentation of the predictions (``flip``: average with the mirror).
        batch_size, lr, lr_schedule: optimiser settings (cosine decays to 0 at the last planned step).
        augment_options: overrides of the augmentation config.
        seed: seed of the phantom and the training.
    """

    workdir: str = "demo_run"
    task_dir: str | None = None
    cases: int = 64
    test_cases: int = 2
    val_cases: int = 8
    preset: str = "lung"
    spacing_mm: float | None = 3.0
    size: int = 128
    width: int = 16
    context: int = 2
    norm: str = "batch"
    loss: str = "bce+dice"
    epochs: int = 54
    val_every_n_epochs: int = 3
    tta: str = "flip"
    train_minutes: float | None = None
    batch_size: int = 16
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    samples_per_epoch: int | None = 400
    augment_options: tuple[tuple[str, Any], ...] = DEMO_AUGMENT
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cases", "val_cases", "size", "width", "epochs", "val_every_n_epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {v}: must be a whole number >= 1")
        if self.test_cases < 0:
            raise ConfigError(f"--test-cases {self.test_cases}: must be >= 0")
        if self.task_dir is None and self.val_cases >= self.cases:
            raise ConfigError(f"--val-cases {self.val_cases}: must be fewer than --cases {self.cases}, so that some cases are left to train on")
        if self.train_minutes is not None and not (isinstance(self.train_minutes, (int, float)) and math.isfinite(self.train_minutes) and self.train_minutes > 0):
            raise ConfigError(f"--train-minutes {self.train_minutes}: must be a positive number of minutes (or leave it unset: no cap)")


def _stage(name: str, log: list[tuple[str, float, str]]) -> Callable[[Callable[[], Any]], Any]:
    def run(fn: Callable[[], Any]) -> Any:
        print(f"\n== {name} ==", flush=True)
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        where = result.get("where", "") if isinstance(result, dict) else ""
        log.append((name, dt, where))
        print(f"   {name}: {dt:.1f} s{'  -> ' + where if where else ''}", flush=True)
        return result

    return run


def run_demo(cfg: DemoConfig = DemoConfig()) -> dict[str, Any]:
    """Run the whole pipeline; returns the evaluation summary and output paths."""
    from lungtumor.evaluation.evaluate import evaluate_folder, format_table
    from lungtumor.inference.segment import predict_path
    from lungtumor.io.datasets import find_cases
    from lungtumor.io.nifti import is_nifti, read_nifti
    from lungtumor.preprocessing.store import preprocess_task
    from lungtumor.reporting.figures import visualize
    from lungtumor.training.trainer import TrainConfig, train

    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    timings: list[tuple[str, float, str]] = []
    t_start = time.perf_counter()

    if cfg.task_dir is None:
        task = work / "data"

        def make_data() -> dict[str, Any]:
            from lungtumor.phantom.dataset import write_phantom_dataset

            if (task / "dataset.json").exists():
                print(f"   reusing {task}")
            else:
                write_phantom_dataset(task, cases=cfg.cases, test_cases=cfg.test_cases, size="SMALL", seed=cfg.seed, progress=True)
            return {"where": str(task)}

        _stage("1/6 phantom data", timings)(make_data)
    else:
        task = Path(cfg.task_dir)
        if not task.is_dir():
            raise InputError(f"{task}: --task-dir not found; pass an MSD folder with imagesTr/ and labelsTr/")

    store = work / "store"
    pre = PreprocessConfig.from_preset(cfg.preset, spacing_mm=cfg.spacing_mm) if cfg.preset == "lung" else PreprocessConfig(size=cfg.size)
    summary_store = _stage("2/6 preprocess", timings)(
        lambda: {**preprocess_task(task, store, pre, SplitConfig(val_cases=cfg.val_cases), workers=1), "where": str(store)}
    )
    val_ids = summary_store["splits"]["val"]
    print(f"   train cases {len(summary_store['splits']['train'])}, held-out cases {val_ids}")

    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tcfg = TrainConfig(
        store=str(store),
        out=str(run_dir),
        epochs=cfg.epochs,
        max_minutes=cfg.train_minutes,
        width=cfg.width,
        context=cfg.context,
        norm=cfg.norm,
        loss=cfg.loss,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        augment_options=dict(cfg.augment_options),
        samples_per_epoch=cfg.samples_per_epoch,
        num_workers=1,
        seed=cfg.seed,
        image_every_n_steps=100,
        val_every_n_epochs=cfg.val_every_n_epochs,
        log_every_n_steps=5,
    )
    train_summary = _stage("3/6 train", timings)(lambda: {**train(tcfg), "where": str(run_dir)})
    # The last checkpoint, not the best: picking the best epoch on the held-out cases and then
    # reporting their Dice would flatter the model. The cosine schedule makes the last settle.
    ckpt = train_summary["last_checkpoint"]
    best = train_summary["best_val_dice_case"]
    print(
        f"   {train_summary['epochs']} epochs, {train_summary['global_step']} steps; best val Dice per case "
        f"during training {'n/a' if best is None else f'{best:.3f}'}; using {ckpt}"
    )

    cases = {c.case_id: c for c in find_cases(task)}
    pred_val = work / "predictions" / "val"
    pred_test = work / "predictions" / "test"
    ref_val = work / "evaluation" / "reference"

    def predict_all() -> dict[str, Any]:
        # The held-out images as a folder of links, so that the user-facing predict_path does
        # all the work (the same code path as `lungtumor predict CKPT FOLDER OUT`).
        val_in = work / "held_out_images"
        shutil.rmtree(val_in, ignore_errors=True)
        val_in.mkdir(parents=True)
        ref_val.mkdir(parents=True, exist_ok=True)
        for cid in val_ids:
            (val_in / cases[cid].image.name).symlink_to(cases[cid].image.resolve())
            shutil.copyfile(cases[cid].label, ref_val / cases[cid].label.name)
        n = len(predict_path(ckpt, val_in, pred_val, probabilities=True, tta=cfg.tta, progress=False))
        test_dir = task / "imagesTs"
        if test_dir.is_dir() and any(is_nifti(q) for q in test_dir.iterdir()):
            n += len(predict_path(ckpt, test_dir, pred_test, tta=cfg.tta, progress=False))
        return {"where": str(work / "predictions"), "n": n}

    _stage("4/6 predict", timings)(predict_all)

    eval_dir = work / "evaluation"
    result = _stage("5/6 evaluate", timings)(
        lambda: evaluate_folder(pred_val, ref_val, out_dir=eval_dir, tolerance_mm=2.0, prob_dir=pred_val / "probabilities", progress=False)
    )
    timings[-1] = (timings[-1][0], timings[-1][1], str(eval_dir))

    fig_dir = work / "figures"

    def figures() -> dict[str, Any]:
        # The held-out case with the most tumour shows the most.
        best = max(val_ids, key=lambda c: json.loads((store / "cases" / c / "meta.json").read_text())["tumour_voxels_original"])
        ct = read_nifti(cases[best].image)
        mask = read_nifti(pred_val / cases[best].image.name)
        ref = read_nifti(cases[best].label)
        gif = visualize(ct, mask, fig_dir / f"{best}.gif", reference=ref)
        png = visualize(ct, mask, fig_dir / f"{best}.png", reference=ref)
        return {"where": f"{gif}, {png}"}

    _stage("6/6 figures", timings)(figures)

    print("\n" + format_table(result))
    total = time.perf_counter() - t_start
    print("\nstage timings:")
    for name, dt, where in timings:
        print(f"  {name:<18} {dt:7.1f} s   {where}")
    print(f"  {'total':<18} {total:7.1f} s")
    s = result.summary
    print(
        f"\nmean per-case Dice on {len(val_ids)} held-out cases: {s['dice_mean']:.3f} "
        f"(median {s['dice_median']:.3f}); summary: {eval_dir / 'summary.json'}"
    )
    return {"summary": s, "workdir": str(work), "timings": timings, "checkpoint": ckpt}
