"""``lungtumor demo``: the whole pipeline on built-in synthetic data (or a real MSD folder).

phantom -> preprocess -> train (a narrow U-Net on the lung region's slices, a few minutes on
2 CPU cores) -> predict the validation cases and choose the post-processing's minimum lesion
volume and minimum lesion score on them (``evaluation/postprocessing.json``) -> predict the
held-out and test cases in their original geometry -> evaluate per case -> GIF and PNG. Every stage prints its timing and where its output is.

On the phantom the held-out cases are a dataset of their own (the next dataset seed): they take
no part in training, in the validation curve, or in choosing the post-processing. With
``--task-dir`` the store's validation cases are the held-out ones and nothing is chosen on them.
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

from lungtumor.atomic import refuse_overwriting_inputs, write_text_atomic
from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.errors import ConfigError, InputError

#: Milder augmentation than the seed's for a few minutes of CPU training on small phantom
#: data: +-15 degrees, 0.9-1.1 zoom, 10 % shift, no elastic warp; and half the slices mirrored
#: left-right, so that the flip TTA averages two views the model knows (without it the mirrored
#: heart and great vessels gave false positives at p = 0.5 on tumour-free cases).
DEMO_AUGMENT: tuple[tuple[str, Any], ...] = (
    ("rotate_deg", 15.0), ("scale", (0.9, 1.1)), ("translate", 0.1), ("elastic_p", 0.0), ("flip_lr_p", 0.5),
)


@dataclass(frozen=True)
class DemoConfig:
    """Demo options; the defaults fit a 2-core laptop in well under 15 minutes.

    Attributes:
        workdir: where every output goes.
        task_dir: a real MSD-layout folder instead of the phantom (None = phantom).
        cases, test_cases: phantom labelled (training + validation) and unlabelled test cases.
            Many cases matter more than many epochs: with 11 training cases the model overfits
            (held-out Dice about 0.7), with 56 it generalises; generating them takes seconds.
        val_cases: validation cases (the last ones in sorted order): the training curve and the
            choice of the minimum lesion volume and score (phantom only; with ``task_dir`` they are the
            held-out cases).
        heldout_cases: phantom held-out cases, a dataset of their own (seed ``seed + 1``),
            predicted and scored once at the end.
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
        val_every_n_epochs: validation of 16 cases costs about half an epoch here; every sixth
            epoch buys more training in the same minutes (the last checkpoint is used anyway).
        tta: test-time augmentation of the predictions (``flip``: average with the mirror).
        batch_size, lr, lr_schedule: optimiser settings (cosine decays to 0 at the last planned step).
        augment_options: overrides of the augmentation config.
        seed: seed of the phantom and the training.
    """

    workdir: str = "demo_run"
    task_dir: str | None = None
    cases: int = 72
    test_cases: int = 2
    val_cases: int = 16
    heldout_cases: int = 16
    preset: str = "lung"
    spacing_mm: float | None = 3.0
    size: int = 128
    width: int = 16
    context: int = 2
    norm: str = "batch"
    loss: str = "bce+dice"
    epochs: int = 54
    val_every_n_epochs: int = 6
    tta: str = "flip"
    train_minutes: float | None = None
    batch_size: int = 16
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    head_bias: float | None = None
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
        least = 1 if self.task_dir is None else 0  # with --task-dir the held-out cases are the validation ones
        if not isinstance(self.heldout_cases, int) or isinstance(self.heldout_cases, bool) or self.heldout_cases < least:
            raise ConfigError(f"--heldout-cases {self.heldout_cases}: must be a whole number >= {least}")
        if self.task_dir is None and self.val_cases >= self.cases:
            raise ConfigError(f"--val-cases {self.val_cases}: must be fewer than --cases {self.cases}, so that some cases are left to train on")
        if self.train_minutes is not None and not (isinstance(self.train_minutes, (int, float)) and math.isfinite(self.train_minutes) and self.train_minutes > 0):
            raise ConfigError(f"--train-minutes {self.train_minutes}: must be a positive number of minutes (or leave it unset: no cap)")


#: Written beside a phantom dataset the demo generated: what it holds, so that a re-run reuses it
#: only when it is the data asked for.
DEMO_DATA_STAMP = "demo_data.json"


def _stamp(cases: int, test_cases: int, seed: int) -> dict[str, int]:
    return {"cases": cases, "test_cases": test_cases, "seed": seed}


def _phantom_matches(folder: Path, cases: int, test_cases: int, seed: int) -> bool:
    try:
        return json.loads((folder / DEMO_DATA_STAMP).read_text()) == _stamp(cases, test_cases, seed)
    except (OSError, ValueError):
        return False


def phantom_set(folder: Path, cases: int, test_cases: int, seed: int, *, progress: bool = True) -> bool:
    """The SMALL phantom dataset the demo trains or scores on, in ``folder``: reused when its stamp
    says it is this one, else made anew (a demo phantom of another size or seed is replaced) and
    stamped. Returns whether it was reused.

    Raises:
        ConfigError: ``folder`` is not empty and holds no demo stamp (a user's dataset, or a
            phantom made by ``lungtumor phantom``): the demo replaces only what it made.
    """
    if _phantom_matches(folder, cases, test_cases, seed):
        return True
    if folder.exists() and not (folder / DEMO_DATA_STAMP).is_file() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(
            f"{folder}: holds data the demo did not make (no {DEMO_DATA_STAMP}); the demo would replace it: pass another --workdir"
        )
    from lungtumor.phantom.dataset import write_phantom_dataset

    shutil.rmtree(folder, ignore_errors=True)
    write_phantom_dataset(folder, cases=cases, test_cases=test_cases, size="SMALL", seed=seed, progress=progress)
    write_text_atomic(folder / DEMO_DATA_STAMP, json.dumps(_stamp(cases, test_cases, seed)))
    return False


#: Written into a workdir the demo uses: its stages' folders there are the demo's to replace.
DEMO_WORKDIR_STAMP = "lungtumor_demo.json"
#: What the demo writes in its workdir (``data`` and ``heldout`` only on the phantom).
DEMO_OUTPUTS = ("data", "heldout", "store", "run", "predictions", "validation", "evaluation", "figures")


def claim_workdir(work: Path, task_dir: str | None) -> None:
    """Make ``work`` the demo's, or refuse it when something the demo did not make is in its way.

    The demo replaces its own stage folders (``run/`` is deleted before training, the phantom
    sets are rewritten); a workdir it made carries :data:`DEMO_WORKDIR_STAMP` (or, from before
    the stamp, a stamped phantom in ``data/``). In any other workdir, a stage folder that exists
    already (a user's dataset in ``data/``, a trained run in ``run/``) is refused, one line naming it.

    Raises:
        ConfigError: a folder in the way, or ``--task-dir`` among the demo's outputs.
    """
    parts = DEMO_OUTPUTS if task_dir is None else DEMO_OUTPUTS[2:]
    outputs = [work / part for part in parts]
    refuse_overwriting_inputs(outputs, [task_dir], command="lungtumor demo")
    if task_dir is not None:
        task = Path(task_dir).resolve()
        inside = next((o for o in outputs if o.resolve() == task or o.resolve() in task.parents), None)
        if inside is not None:
            raise ConfigError(f"{task_dir}: --task-dir lies in the demo's {inside}, which the demo replaces; pass another --workdir")
    ours = (work / DEMO_WORKDIR_STAMP).is_file() or (work / "data" / DEMO_DATA_STAMP).is_file()
    if not ours:
        in_way = next((o for o in outputs if o.exists()), None)
        if in_way is not None:
            raise ConfigError(
                f"{in_way}: already exists and the demo did not make it (no {work / DEMO_WORKDIR_STAMP}); "
                "the demo would replace it: pass another --workdir"
            )
    write_text_atomic(work / DEMO_WORKDIR_STAMP, json.dumps({"written_by": "lungtumor demo"}) + "\n")


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
    import numpy as np

    from lungtumor.evaluation.evaluate import evaluate_folder, format_table
    from lungtumor.io.datasets import find_cases
    from lungtumor.io.nifti import is_nifti, read_nifti
    from lungtumor.predict import predict_path
    from lungtumor.preprocessing.presets import preset_for
    from lungtumor.preprocessing.store import preprocess_task
    from lungtumor.reporting.figures import visualize
    from lungtumor.training.trainer import TrainConfig, train

    work = Path(cfg.workdir)
    claim_workdir(work, cfg.task_dir)  # creates the workdir
    timings: list[tuple[str, float, str]] = []
    t_start = time.perf_counter()

    heldout: Path | None = None
    if cfg.task_dir is None:
        task = work / "data"
        heldout = work / "heldout"

        def make_data() -> dict[str, Any]:
            for folder, n, n_test, seed in ((task, cfg.cases, cfg.test_cases, cfg.seed), (heldout, cfg.heldout_cases, 0, cfg.seed + 1)):
                if phantom_set(folder, n, n_test, seed):
                    print(f"   reusing {folder}")
            return {"where": f"{task}, {heldout}"}

        _stage("1/6 phantom data", timings)(make_data)
    else:
        task = Path(cfg.task_dir)
        if not task.is_dir():
            raise InputError(f"{task}: --task-dir not found; pass an MSD folder with imagesTr/ and labelsTr/")

    store = work / "store"
    pre = PreprocessConfig.from_preset(cfg.preset, **({"size": cfg.size} if preset_for(cfg.preset).fixed_size else {"spacing_mm": cfg.spacing_mm}))
    summary_store = _stage("2/6 preprocess", timings)(
        lambda: {**preprocess_task(task, store, pre, SplitConfig(val_cases=cfg.val_cases), workers=1), "where": str(store)}
    )
    val_ids = summary_store["splits"]["val"]
    n_train = len(summary_store["splits"]["train"])
    if heldout is None:
        print(f"   train cases {n_train}, held-out (validation) cases {val_ids}")
    else:
        print(f"   train cases {n_train}, validation cases {len(val_ids)}, held-out cases {cfg.heldout_cases} (in {heldout})")

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
        head_bias=cfg.head_bias,
        augment_options=dict(cfg.augment_options),
        samples_per_epoch=cfg.samples_per_epoch,
        num_workers=1,
        seed=cfg.seed,
        image_every_n_steps=100,
        val_every_n_epochs=cfg.val_every_n_epochs,
        log_every_n_steps=5,
    )
    train_summary = _stage("3/6 train", timings)(lambda: {**train(tcfg), "where": str(run_dir)})
    # The last checkpoint, not the best: picking the best epoch on the validation cases and then
    # reporting their Dice would flatter the model. The cosine schedule makes the last settle.
    ckpt = train_summary["last_checkpoint"]
    best = train_summary["best_val_dice_case"]
    print(
        f"   {train_summary['epochs']} epochs, {train_summary['global_step']} steps; best val Dice per case "
        f"during training {'n/a' if best is None else f'{best:.3f}'}; using {ckpt}"
    )

    cases = {c.case_id: c for c in find_cases(task)}
    pred_val = work / "predictions" / "val"
    pred_held = work / "predictions" / "heldout"
    pred_test = work / "predictions" / "test"
    ref_val = work / "validation" / "reference"
    choice: dict[str, Any] = {"min_lesion_ml": None, "min_lesion_score": None}

    def predict_all() -> dict[str, Any]:
        # Folders of links, so that the user-facing predict_path does all the work (the same
        # code path as `lungtumor predict CKPT FOLDER OUT`).
        val_in = work / "validation" / "images"
        for folder in (val_in, ref_val):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        for cid in val_ids:
            (val_in / cases[cid].image.name).symlink_to(cases[cid].image.resolve())
            (ref_val / cases[cid].label.name).symlink_to(cases[cid].label.resolve())
        n = len(predict_path(ckpt, val_in, pred_val, probabilities=True, tta=cfg.tta, progress=False))
        if heldout is not None:
            from lungtumor.evaluation.postprocessing import (
                choose_min_lesion_ml,
                choose_min_lesion_score,
                collect_lesion_candidates,
            )

            choice.update(choose_min_lesion_ml(pred_val, ref_val))
            tried = ", ".join(f"{c:g} ml {d:.3f}" for c, d in choice["dice_by_min_lesion_ml"].items())
            print(f"   minimum lesion volume chosen on the {len(val_ids)} validation cases: {choice['min_lesion_ml'] or 0:g} ml (mean Dice: {tried})")
            # The score's operating point, on the lesions that the chosen volume leaves.
            by_score = choose_min_lesion_score(collect_lesion_candidates(pred_val, ref_val, min_lesion_ml=choice["min_lesion_ml"]))
            choice["min_lesion_score"] = by_score["min_lesion_score"]
            choice["min_lesion_score_choice"] = by_score
            print(
                f"   minimum lesion score chosen on them: {by_score['min_lesion_score'] or 0:.3f} (false-positive lesions "
                f"{by_score['false_positive_lesions']} -> {by_score['false_positive_lesions_at_min_lesion_score']}, "
                f"found lesions {by_score['lesions_found']}/{by_score['lesions_ref']} kept)"
            )
            n += len(predict_path(ckpt, heldout / "imagesTr", pred_held, probabilities=True, tta=cfg.tta, progress=False,
                                  min_lesion_ml=choice["min_lesion_ml"], min_lesion_score=choice["min_lesion_score"]))
        test_dir = task / "imagesTs"
        if test_dir.is_dir() and any(is_nifti(q) for q in test_dir.iterdir()):
            n += len(predict_path(ckpt, test_dir, pred_test, tta=cfg.tta, progress=False, min_lesion_ml=choice["min_lesion_ml"],
                                  min_lesion_score=choice["min_lesion_score"]))
        return {"where": str(work / "predictions"), "n": n}

    _stage("4/6 predict", timings)(predict_all)

    eval_dir = work / "evaluation"
    scored, refs = (pred_val, ref_val) if heldout is None else (pred_held, heldout / "labelsTr")
    result = _stage("5/6 evaluate", timings)(
        lambda: evaluate_folder(scored, refs, out_dir=eval_dir, tolerance_mm=2.0, prob_dir=scored / "probabilities", progress=False)
    )
    timings[-1] = (timings[-1][0], timings[-1][1], str(eval_dir))
    write_text_atomic(eval_dir / "postprocessing.json", json.dumps(choice, indent=2))

    fig_dir = work / "figures"

    def figures() -> dict[str, Any]:
        # The held-out case with the most tumour shows the most.
        if heldout is None:
            images = {c: cases[c].image for c in val_ids}
            labels = {c: cases[c].label for c in val_ids}
        else:
            held = {c.case_id: c for c in find_cases(heldout)}
            images = {c: v.image for c, v in held.items()}
            labels = {c: v.label for c, v in held.items()}
        best = max(sorted(labels), key=lambda c: int(np.count_nonzero(read_nifti(labels[c]).array)))
        ct = read_nifti(images[best])
        mask = read_nifti(scored / images[best].name)
        ref = read_nifti(labels[best])
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
        f"\nmean per-case Dice on {s['cases']} held-out cases: {s['dice_mean']:.3f} "
        f"(median {s['dice_median']:.3f}); summary: {eval_dir / 'summary.json'}"
    )
    return {"summary": s, "workdir": str(work), "timings": timings, "checkpoint": ckpt, "postprocessing": choice}
