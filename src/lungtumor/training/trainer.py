"""The trainer set-up behind ``lungtumor train``: data module, callbacks, loggers, the Lightning Trainer.

Options are config (:class:`~lungtumor.training.options.TrainConfig`), not subclasses.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lungtumor.atomic import atomic_output, write_text_atomic
from lungtumor.config import parse_list
from lungtumor.errors import ConfigError, InputError
from lungtumor.model.device import bf16_native
from lungtumor.model.unet import ModelConfig
from lungtumor.preprocessing.presets import preset_for
from lungtumor.runstate import check_recorded_config, exclusive_folder_lock
from lungtumor.training.augment import AugmentConfig, combined_clip
from lungtumor.training.copy_paste import config_from_train_options
from lungtumor.training.crops import CropBank, crop_items_per_batch, store_pixel_mm
from lungtumor.training.data import DataConfig, make_datamodule
from lungtumor.training.module import SegmentationModule
from lungtumor.training.options import LR_SCHEDULES, TrainConfig, load_config_file  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)




# ------------------------------------------------------------------------------------------------
# Trainer set-up


def bf16_supported(accelerator: str) -> bool:
    """True when bfloat16 mixed precision is native on the chosen accelerator."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return bf16_native("cuda" if gpu else "cpu")


def resolve_precision(cfg: TrainConfig) -> str:
    """The Lightning precision string for ``cfg``."""
    if cfg.precision:
        return cfg.precision
    return "bf16-mixed" if bf16_supported(cfg.accelerator) else "32-true"


def _devices(value: str | int) -> Any:
    if isinstance(value, int):
        return value
    v = str(value)
    if v.isdigit():
        return int(v)
    if v.startswith("[") or "," in v:
        return parse_list(v.strip("[]"), "--devices", item=int, example="0,1")
    return v


def write_curves_png(run_dir: Path) -> Path | None:
    """Plot train/val loss and val Dice from the CSV log into ``run_dir/curves.png``."""
    import csv

    rows: list[dict[str, str]] = []
    for csv_path in sorted((run_dir / "logs" / "csv").glob("session-*/metrics.csv"), key=lambda p: int(p.parent.name.split("-")[1])):
        with csv_path.open() as f:
            rows += list(csv.DictReader(f))
    if not rows:
        return None
    # The object-oriented API: no pyplot, so no global backend is chosen behind the caller's back.
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            if r.get(key) not in (None, ""):
                xs.append(float(r["step"]))
                ys.append(float(r[key]))
        return xs, ys

    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for key, label in (("train/loss_step", "train loss"), ("train/loss_epoch", "train loss (epoch)"), ("val/loss", "val loss")):
        xs, ys = series(key)
        if xs:
            ax1.plot(xs, ys, label=label, marker="." if len(xs) < 50 else None)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    for key, label in (("val/dice_case", "val Dice per 3D case (mean)"), ("val/dice_pooled_soft_seed", "val soft Dice, pooled (seed's)")):
        xs, ys = series(key)
        if xs:
            ax2.plot(xs, ys, label=label, marker=".")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = run_dir / "curves.png"
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=100)
    return out


def _make_trainer(cfg: TrainConfig, precision: str, callbacks: list[Any], loggers: list[Any], run_dir: Path) -> L.Trainer:
    """The Lightning Trainer for ``cfg`` (every checkpoint written atomically in the run folder)."""
    from lungtumor.training.checkpoint_io import AtomicCheckpointIO

    return L.Trainer(
        plugins=[AtomicCheckpointIO()],
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=_devices(cfg.devices),
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=precision,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        callbacks=callbacks,
        logger=loggers,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        log_every_n_steps=cfg.log_every_n_steps,
        check_val_every_n_epoch=cfg.val_every_n_epochs,
        fast_dev_run=cfg.fast_dev_run,
        enable_progress_bar=cfg.progress,
        enable_model_summary=cfg.progress,
        use_distributed_sampler=False,  # our sampler shards itself across ranks
        default_root_dir=run_dir,
        deterministic=False,
    )


def run_split(cfg: TrainConfig) -> tuple[dict[str, list[str]] | None, dict[str, Any]]:
    """The run's train/validation split: chosen by ``--fold``/``--val-cases``, else the store's.

    Returns the explicit case lists (None = use the store's) and the record embedded in checkpoints.
    """
    from lungtumor.config import SplitConfig
    from lungtumor.preprocessing.store import SliceStore, split_cases

    if cfg.fold is None and cfg.val_cases is None:
        store = SliceStore(cfg.store)
        return None, {"source": "store", **store.summary.get("split_config", {})}
    split = SplitConfig(folds=cfg.folds, fold=cfg.fold or 0, seed=cfg.split_seed, val_cases=cfg.val_cases)
    store = SliceStore(cfg.store)
    splits = split_cases(store.manifest["cases"].keys(), split)
    return splits, {"source": "run", **split.to_dict()}


#: Checkpoint facts a resumed run must share with the run it continues.
RESUME_MUST_MATCH = ("model", "preprocess", "context", "loss")


def check_resume_matches(last: Path, hparams: Any) -> None:
    """Refuse to resume ``last`` with another architecture, preprocessing or split (before anything is written)."""
    from lungtumor.model.checkpoint import read_checkpoint

    meta = read_checkpoint(last)["lungtumor"]
    now = {"model": dict(hparams["model"]), "preprocess": dict(hparams["preprocess"]), "context": int(hparams["context"]), "loss": hparams["loss"]}
    for key in RESUME_MUST_MATCH:
        if key in meta and meta[key] != now[key]:
            theirs, ours = meta[key], now[key]
            if isinstance(theirs, dict) and isinstance(ours, dict):
                diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
                detail = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in diff[:4])
            else:
                detail = f"{theirs!r} -> {ours!r}"
            raise ConfigError(f"{last}: cannot resume with a different {key} ({detail}); drop the changed options or start a new run with --out")
    saved_val = (meta.get("split") or {}).get("val")
    if saved_val is not None and sorted(saved_val) != sorted(hparams["split"]["val"]):
        raise ConfigError(f"{last}: cannot resume with different validation cases; keep the run's split (its fold/val-cases) or start a new run")


#: Options a resumed run must share with the run it continues (recorded in its ``config.yaml``).
RUN_MUST_MATCH = ("width", "depth", "norm", "upsample", "context", "loss", "size", "fold", "folds", "split_seed", "val_cases", "phantoms", "phantom_size")


def resume_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a resumed run continues: ``last.ckpt``, or when that does not load (a disk that
    filled up under an older writer, a copy cut short), the newest loadable of the previous last
    checkpoint and ``best.ckpt`` (both hold the optimizer state), with a warning.

    Raises:
        CheckpointError: nothing in ``run_dir`` loads; says what to delete.
    """
    from lungtumor.errors import CheckpointError
    from lungtumor.model.checkpoint import PREVIOUS_LAST, read_checkpoint

    last = run_dir / "last.ckpt"
    try:
        read_checkpoint(last)
        return last
    except CheckpointError as exc:
        damage = " ".join(str(exc).split())
    usable: list[tuple[int, Path]] = []
    for candidate in (run_dir / PREVIOUS_LAST, run_dir / "best.ckpt"):
        if not candidate.is_file():
            continue
        try:
            ckpt = read_checkpoint(candidate)
        except CheckpointError:
            continue
        if "optimizer_states" in ckpt:
            usable.append((int(ckpt.get("global_step") or 0), candidate))
    if not usable:
        raise CheckpointError(
            f"{damage.rstrip('.')}; no earlier checkpoint of the run loads either, so it cannot be resumed: "
            f"delete the run folder {run_dir} and train again (or train into a new --out)"
        )
    step, chosen = max(usable)
    log.warning("%s; resuming from %s (step %d) instead", damage, chosen, step)
    return chosen


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train a U-Net on a slice store; write checkpoints, logs, curves and the resolved config.

    Args:
        cfg: all options (see :class:`TrainConfig`).
        resume: continue ``cfg.out/last.ckpt`` (optimizer, step count and sampler state).

    Returns:
        Summary: best checkpoint path and score, epochs and steps run, seconds.

    Raises:
        ConfigError: another ``train`` is writing the same run folder now (an exclusive lock), or
            a resume with options other than the run's.
    """
    if not cfg.store:
        raise ConfigError("no store given; pass STORE_DIR (made by `lungtumor preprocess`)")
    if not cfg.out:
        raise ConfigError("no run folder given; pass --out RUN_DIR")
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--accelerator {cfg.accelerator}: no CUDA GPU is visible on this machine; use --accelerator cpu or auto")
    run_dir = Path(cfg.out)
    last = run_dir / "last.ckpt"
    if resume and not last.exists():
        raise InputError(f"{last}: nothing to resume (no last.ckpt); start a new run with --out")
    if not resume and last.exists():
        raise ConfigError(f"{run_dir}: already holds a run (last.ckpt); use --resume {run_dir} or a new --out folder")
    resume_from = resume_checkpoint(run_dir) if resume else None
    if resume_from is not None:
        check_recorded_config(  # the phantoms the run folder records, before other ones are built
            run_dir, "config.yaml", dataclasses.asdict(cfg), ("phantoms", "phantom_size"), what="training run",
            fix="drop the changed options to resume it, or start a new run with another --out",
        )

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    splits, split_record = run_split(cfg)
    crop_items = crop_items_per_batch(cfg.crop_rate, cfg.batch_size) if cfg.lesion_dir else 0
    if cfg.crop_rate and not cfg.lesion_dir:
        log.warning("crop samples off: --crop-rate %g without --lesion-dir, so real lesion crops are left out (training on the store's slices alone)", cfg.crop_rate)
    dm = make_datamodule(
        cfg.store,
        DataConfig(
            context=cfg.context,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            tumour_fraction=cfg.tumour_fraction,
            samples_per_epoch=cfg.samples_per_epoch,
            seed=cfg.seed,
            splits=splits,
            crop_items=crop_items,
            negative_weighting=cfg.negative_weighting,
        ),
    )
    if not dm.val_set.cases:
        raise ConfigError(f"{cfg.store}: the store's split has no validation cases; re-run preprocess with --val-cases or --folds")
    store_pre = dm.store.preprocess
    preset = preset_for(store_pre)
    if cfg.size is not None and not preset.fixed_size:
        raise ConfigError(
            f"--size {cfg.size}: the store {cfg.store} uses the {store_pre.preset} preset, whose slices keep their physical "
            "spacing; drop --size (or change the pixel size with `preprocess --spacing-mm`)"
        )
    if not preset.fixed_size:  # a fixed-size (seed) preset is checked below at the training size
        preset.check_model_input(store_pre, cfg.depth)
    size = cfg.size or store_pre.size
    if size > store_pre.size:
        raise ConfigError(f"--size {size} is larger than the store's {store_pre.size}; re-preprocess with --size {size}")
    augment_cfg = AugmentConfig.from_dict({**cfg.augment_options, "hu_scale": store_pre.hu_scale, "enabled": cfg.augment})
    # --no-augment turns every augmentation off, copy-paste included.
    copy_paste = config_from_train_options(cfg.copy_paste_rate if cfg.augment else 0.0, cfg.lesion_dir, cfg.copy_paste_options)
    if copy_paste.enabled and copy_paste.lesion_dir is None:
        # The real-CT recipes paste lesion crops too; without --lesion-dir they run, and say what they leave out.
        log.warning("copy-paste without --lesion-dir: only the training cases' own tumours are pasted; lesion crops "
                    "(e.g. the LIDC nodule crops) are left out")
    # A training HU window is part of the preprocessing that inference must repeat.
    pre = dataclasses.replace(store_pre, size=size, clip_hu=combined_clip(store_pre.clip_hu, augment_cfg.clip_hu))
    crop_bank, crops = None, None
    if crop_items:  # read and checked here, before anything is written
        crop_bank = CropBank.build(
            cfg.lesion_dir, pixel_mm=store_pixel_mm(dm.store, dm.splits["train"], store_pre.size / size if preset.fixed_size else 1.0), hu_scale=store_pre.hu_scale, clip_hu=pre.clip_hu,
            context=cfg.context, context_step_mm=store_pre.context_step_mm, store_cases=dm.splits,
            exclude=[e.strip() for e in (cfg.crop_exclude or "").split(",") if e.strip()], overlap=cfg.crop_overlap,
        )
        crops = {"rate": cfg.crop_rate, "items": crop_items, "lesion_dir": str(cfg.lesion_dir), **crop_bank.summary()}
        log.info("crop samples: %d of every %d batch items from %d crops of %d patients (%d lesion slices)",
                 crop_items, cfg.batch_size, len(crop_bank), len(crop_bank.patients), crop_bank.n_slices)
    model_cfg = ModelConfig(in_channels=2 * cfg.context + 1, width=cfg.width, depth=cfg.depth, norm=cfg.norm, upsample=cfg.upsample)
    if preset.fixed_size and size % (2**cfg.depth):
        raise ConfigError(f"--size {size} is not divisible by 2**depth = {2**cfg.depth}; use --size {size - size % 2**cfg.depth + 2**cfg.depth}")
    if cfg.phantoms:  # after every check of the options and inputs: built once (a resumed run reuses them)
        from lungtumor.training.phantoms import phantom_store

        root = Path(cfg.phantom_dir) if cfg.phantom_dir else run_dir / "phantoms"
        dm.join_phantoms(phantom_store(root, cfg.phantoms, store_pre, size=cfg.phantom_size, progress=cfg.progress))
    module = SegmentationModule(
        model=model_cfg.to_dict(),
        preprocess=pre.to_dict(),
        loss=cfg.loss,
        lr=cfg.effective_lr,
        lr_schedule=cfg.lr_schedule,
        augment=augment_cfg.to_dict(),
        copy_paste=copy_paste.to_dict() if copy_paste.enabled else None,
        context=cfg.context,
        head_bias=cfg.head_bias,
        train_size=size if size != store_pre.size else None,
        image_every_n_steps=cfg.image_every_n_steps,
        seed=cfg.seed,
        channels_last=cfg.channels_last,
        threshold=cfg.threshold,
        split={**split_record, "train": dm.splits["train"], "val": dm.splits["val"]},
        crops=crops,
        compile=cfg.compile,
        fused_adam=cfg.fused_adam,
    )
    module.crop_bank = crop_bank
    if resume_from is not None:
        check_resume_matches(resume_from, module.hparams)  # what the checkpoint records
        check_recorded_config(  # and the options the run folder records
            run_dir, "config.yaml", dataclasses.asdict(cfg), RUN_MUST_MATCH, what="training run",
            fix="drop the changed options to resume it, or start a new run with another --out",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_folder_lock(run_dir, command="lungtumor train", what="run folder"):
        if not resume and last.exists():  # another run finished here while this one was setting up
            raise ConfigError(f"{run_dir}: already holds a run (last.ckpt); use --resume {run_dir} or a new --out folder")
        summary = _fit(cfg, run_dir, dm, module, resume_from)
        if cfg.rescorer_steps and _global_zero():  # one process writes the checkpoints (DDP runs this on every rank)
            summary["rescorer"] = _add_run_rescorer(cfg, summary)
        return summary


def _global_zero() -> bool:
    """True in the process of rank 0 (the only one in a single-device run)."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def _add_run_rescorer(cfg: TrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """``rescorer_steps`` > 0: the second-stage re-scorer (:mod:`lungtumor.training.rescorer`) trained for the
    run's last checkpoint on the same store and crops, written into best.ckpt and last.ckpt (each atomically)."""
    from lungtumor.training.rescorer import add_rescorer, train_rescorer

    last = summary.get("last_checkpoint")
    if not last:
        raise ConfigError(f"{cfg.out}: no last.ckpt was written, so there is no U-Net to train a re-scorer for")
    net, info = train_rescorer(
        last, cfg.store, lesion_dir=cfg.lesion_dir, crop_exclude=cfg.crop_exclude, steps=int(cfg.rescorer_steps), seed=int(cfg.seed), progress=bool(cfg.progress),
    )
    for path in dict.fromkeys(p for p in (summary.get("best_checkpoint"), last) if p):
        add_rescorer(path, path, net, info)
    return {k: info[k] for k in ("steps", "store_pos", "crops", "store_fp", "store_neg", "crop_neg", "loss_last_50", "train_s")}


def _fit(cfg: TrainConfig, run_dir: Path, dm: Any, module: SegmentationModule, resume_from: Path | None) -> dict[str, Any]:
    """Callbacks, loggers, the Trainer and the fit, in the locked run folder; the run's summary."""
    import yaml
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    resume = resume_from is not None
    last = run_dir / "last.ckpt"

    resolved = dataclasses.asdict(cfg)
    precision = resolve_precision(cfg)
    resolved["precision"] = precision

    # Two callbacks: with one (save_last=True), this Lightning refreshes last.ckpt only when the
    # best improves, so "last" could silently be an old epoch.
    best_cb = ModelCheckpoint(
        dirpath=run_dir, filename="best", monitor="val/dice_case", mode="max", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    last_cb = ModelCheckpoint(
        dirpath=run_dir, filename="last", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
    )
    callbacks: list[Any] = [best_cb, last_cb]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/dice_case", mode="max", patience=cfg.early_stopping_patience))
    # Lightning's CSV logger overwrites its file, so every (resumed) session gets its own;
    # the curves read them all in order.
    session = len(list((run_dir / "logs" / "csv").glob("session-*"))) if resume else 0
    loggers = [
        TensorBoardLogger(save_dir=run_dir / "logs", name="tensorboard", version="", default_hp_metric=False),
        CSVLogger(save_dir=run_dir / "logs" / "csv", name="", version=f"session-{session}"),
    ]
    try:
        trainer = _make_trainer(cfg, precision, callbacks, loggers, run_dir)
    except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's MisconfigurationException is a ValueError
        raise ConfigError(f"invalid trainer option ({str(exc).splitlines()[0]}); see `lungtumor train -h`") from exc
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from is not None else None)
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful shutdown and exit(1); report it as the interrupt it was.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    seconds = time.perf_counter() - t0
    ckpt_cb = best_cb
    curves = write_curves_png(run_dir) if trainer.is_global_zero else None
    best_score = ckpt_cb.best_model_score
    summary = {
        "run_dir": str(run_dir),
        "best_checkpoint": str(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else None,
        "last_checkpoint": str(last) if last.exists() else None,
        "best_val_dice_case": float(best_score) if best_score is not None else None,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "seconds": seconds,
        "precision": precision,
        "curves": str(curves) if curves else None,
    }
    return summary
