"""The LightningModule around the U-Net, and the trainer set-up behind ``lungtumor train``.

One shared step for training and validation; options are config, not subclasses.
Validation scores the Dice per 3D case at the store's resolution by summing per-slice
intersections and volumes per case (no need to hold whole cases in memory), and also the
seed's soft Dice pooled over all validation slices, logged under a name that says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lungtumor.atomic import atomic_output, write_text_atomic
from lungtumor.training.augment import AugmentConfig, augment_batch
from lungtumor.model.checkpoint import checkpoint_metadata
from lungtumor.training.data import DataConfig, make_datamodule
from lungtumor.errors import ConfigError, InputError
from lungtumor.training.losses import make_loss
from lungtumor.model.unet import ModelConfig, UNet

log = logging.getLogger(__name__)

#: Probability threshold that turns the sigmoid into a mask (the seed thresholds at 0.5).
DEFAULT_THRESHOLD = 0.5
LR_SCHEDULES = ("constant", "cosine")


class SegmentationModule(L.LightningModule):
    """U-Net + loss + batched on-device augmentation + per-case validation Dice.

    Args:
        model: :class:`~lungtumor.model.unet.ModelConfig` as a dict.
        preprocess: the store's :class:`~lungtumor.config.PreprocessConfig` as a dict (with
            ``size`` set to the training size), embedded in every checkpoint.
        loss: ``bce`` (seed), ``dice`` or ``bce+dice``.
        lr: Adam learning rate.
        lr_schedule: ``constant`` (the seed's) or ``cosine`` (per step, down to 0 at the last
            planned step, so the last checkpoint is a settled one).
        augment: :class:`~lungtumor.training.augment.AugmentConfig` as a dict.
        context: 2.5D neighbouring slices on each side.
        train_size: resize batches to this size on the device (None = the store's size).
        image_every_n_steps: TensorBoard image panel period (0 = never).
        seed: base seed of the augmentation randomness.
        channels_last: use the channels-last memory format.
        threshold: probability threshold for the validation Dice.
    """

    def __init__(
        self,
        model: dict[str, Any],
        preprocess: dict[str, Any],
        loss: str = "bce",
        lr: float = 1e-4,
        lr_schedule: str = "constant",
        augment: dict[str, Any] | None = None,
        context: int = 0,
        train_size: int | None = None,
        image_every_n_steps: int = 50,
        seed: int = 0,
        channels_last: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = UNet(ModelConfig.from_dict(model))
        self.loss_fn = make_loss(loss)
        self.augment_cfg = AugmentConfig.from_dict(augment or {})
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._val_sums: torch.Tensor | None = None
        self._val_case_index: torch.Tensor | None = None

    # -- data on the device ------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        ct, mask, index = batch
        size = self.hparams.train_size
        if size is not None and ct.shape[-1] != size:
            ct = F.interpolate(ct, size=(size, size), mode="bilinear", align_corners=False)
            mask = F.interpolate(mask, size=(size, size), mode="nearest")
        if self.trainer is not None and self.trainer.training and self.augment_cfg.enabled:
            # Different randomness per step, rank and epoch; reproducible for a seed.
            s = (int(self.hparams.seed) * 1_000_003 + self.global_step * 7919 + self.global_rank * 104_729) % (2**63)
            gen = torch.Generator(device=ct.device).manual_seed(s)
            ct, mask = augment_batch(ct, mask, self.augment_cfg, generator=gen)
        return ct.contiguous(memory_format=self.memory_format), mask, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, 1, H, W) logits
        return self.net(x)

    # -- one shared step ---------------------------------------------------------------------
    def _step(self, batch: Any, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        ct, mask, _ = batch
        logits = self(ct)
        loss = self.loss_fn(logits, mask)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=ct.shape[0], sync_dist=stage != "train")
        return loss, logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits = self._step(batch, "train")
        every = int(self.hparams.image_every_n_steps or 0)
        if every and self.global_step % every == 0:
            self._log_images(batch, logits, "train")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        _, logits = self._step(batch, "val")
        _, mask, index = batch
        probs = torch.sigmoid(logits.float())
        pred = (probs > self.hparams.threshold).float()
        ref = mask.float()
        per_slice = torch.stack(
            [
                (pred * ref).flatten(1).sum(1),
                pred.flatten(1).sum(1),
                ref.flatten(1).sum(1),
                (probs * ref).flatten(1).sum(1),
                probs.flatten(1).sum(1),
            ],
            dim=1,
        ).double()
        if self._val_sums is None or self._val_case_index is None:  # set in on_validation_epoch_start
            return
        cases = self._val_case_index.to(index.device)[index]
        self._val_sums.index_add_(0, cases, per_slice)
        if batch_idx == 0 and int(self.hparams.image_every_n_steps or 0):
            self._log_images(batch, logits, "val")

    def on_validation_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        n_cases = len(dm.val_set.cases)
        self._val_case_index = torch.as_tensor(dm.val_set.case_index, dtype=torch.long, device=self.device)
        self._val_sums = torch.zeros(n_cases, 5, dtype=torch.float64, device=self.device)

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums
        if sums is None:
            return
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        inter, psum, rsum = sums[:, 0], sums[:, 1], sums[:, 2]
        both_empty = (psum + rsum) == 0
        dice = torch.where(both_empty, torch.full_like(inter, float("nan")), 2 * inter / (psum + rsum).clamp_min(1e-9))
        valid = dice[~both_empty]
        dice_case = valid.mean() if valid.numel() else torch.tensor(0.0, dtype=torch.float64)
        pooled = 2 * sums[:, 3].sum() / (sums[:, 4].sum() + rsum.sum()).clamp_min(1e-9)
        self.log("val/dice_case", dice_case.float(), prog_bar=True)
        self.log("val/cases_both_empty", both_empty.sum().float())
        self.log("val/dice_pooled_soft_seed", pooled.float())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if self.hparams.lr_schedule == "constant":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints carry everything inference needs ---------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lungtumor"] = checkpoint_metadata(
            self.hparams.model,
            self.hparams.preprocess,
            self.hparams.context,
            loss=self.hparams.loss,
            threshold=float(self.hparams.threshold),
        )

    # -- pictures ---------------------------------------------------------------------------
    def _log_images(self, batch: Any, logits: torch.Tensor, stage: str) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        ct, mask, _ = batch
        centre = ct.shape[1] // 2
        # Lung window on HU / hu_scale values, for display only.
        scale = float(self.hparams.preprocess.get("hu_scale", 3071.0))
        img = ((ct[0, centre].float() * scale + 1350.0) / 1500.0).clamp(0, 1)
        panel = torch.cat([img, mask[0, 0].float(), torch.sigmoid(logits[0, 0].float())], dim=1)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"{stage}/ct_label_prediction", panel.detach().cpu()[None], self.global_step)


# ------------------------------------------------------------------------------------------------
# Trainer set-up


@dataclass
class TrainConfig:
    """Every option of ``lungtumor train``. The defaults are the seed's recipe.

    ``None`` for ``precision`` means bfloat16 mixed where the hardware supports it, else 32-bit.
    ``augment_options`` overrides fields of :class:`~lungtumor.training.augment.AugmentConfig` (e.g.
    ``{"rotate_deg": 15, "elastic_p": 0}``; config files only).
    """

    store: str = ""
    out: str = ""
    epochs: int = 30
    lr: float = 1e-4
    lr_schedule: str = "constant"
    batch_size: int = 8
    loss: str = "bce"
    width: int = 64
    depth: int = 3
    norm: str = "none"
    upsample: str = "bilinear"
    context: int = 0
    size: int | None = None
    augment: bool = True
    augment_options: dict[str, Any] = field(default_factory=dict)
    tumour_fraction: float | None = None
    samples_per_epoch: int | None = None
    num_workers: int = 2
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    channels_last: bool = True
    max_minutes: float | None = None
    seed: int = 0
    early_stopping_patience: int | None = None
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    image_every_n_steps: int = 50
    log_every_n_steps: int = 10
    val_every_n_epochs: int = 1
    threshold: float = DEFAULT_THRESHOLD
    fast_dev_run: bool = False
    progress: bool = True

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all options."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (config file); unknown keys are an error."""
        names = set(cls.field_names())
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}; valid options: {sorted(names)}")
        return cls(**{k.replace("-", "_"): v for k, v in d.items()})


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (keys with '-' become '_')."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) if p.suffix.lower() in (".yaml", ".yml") else json.loads(p.read_text())
    except Exception as exc:
        raise ConfigError(f"{p}: cannot parse config ({type(exc).__name__}: {exc}); use YAML or JSON key: value pairs") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of option: value, found {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def bf16_supported(accelerator: str) -> bool:
    """True when bfloat16 mixed precision is fast on the chosen hardware."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch without the probe
        return False


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
        return [int(x) for x in v.strip("[]").split(",") if x.strip()]
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            if r.get(key) not in (None, ""):
                xs.append(float(r["step"]))
                ys.append(float(r[key]))
        return xs, ys

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
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
    plt.close(fig)
    return out


def _make_trainer(cfg: TrainConfig, precision: str, callbacks: list[Any], loggers: list[Any], run_dir: Path) -> L.Trainer:
    """The Lightning Trainer for ``cfg``."""
    return L.Trainer(
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


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train a U-Net on a slice store; write checkpoints, logs, curves and the resolved config.

    Args:
        cfg: all options (see :class:`TrainConfig`).
        resume: continue ``cfg.out/last.ckpt`` (optimizer, step count and sampler state).

    Returns:
        Summary: best checkpoint path and score, epochs and steps run, seconds.
    """
    import yaml
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not cfg.store:
        raise ConfigError("no store given; pass STORE_DIR (made by `lungtumor preprocess`)")
    if not cfg.out:
        raise ConfigError("no run folder given; pass --out RUN_DIR")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"--lr-schedule {cfg.lr_schedule!r}: expected one of {LR_SCHEDULES}")
    run_dir = Path(cfg.out)
    last = run_dir / "last.ckpt"
    if resume and not last.exists():
        raise InputError(f"{last}: nothing to resume (no last.ckpt); start a new run with --out")
    if not resume and last.exists():
        raise ConfigError(f"{run_dir}: already holds a run (last.ckpt); use --resume {run_dir} or a new --out folder")
    run_dir.mkdir(parents=True, exist_ok=True)

    # Known, harmless Lightning notices that would only confuse users.
    warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*not supported by the model summary.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = make_datamodule(
        cfg.store,
        DataConfig(
            context=cfg.context,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            tumour_fraction=cfg.tumour_fraction,
            samples_per_epoch=cfg.samples_per_epoch,
            seed=cfg.seed,
        ),
    )
    if not dm.val_set.cases:
        raise ConfigError(f"{cfg.store}: the store's split has no validation cases; re-run preprocess with --val-cases or --folds")
    store_pre = dm.store.preprocess
    size = cfg.size or store_pre.size
    if size > store_pre.size:
        raise ConfigError(f"--size {size} is larger than the store's {store_pre.size}; re-preprocess with --size {size}")
    pre = dataclasses.replace(store_pre, size=size)
    model_cfg = ModelConfig(in_channels=2 * cfg.context + 1, width=cfg.width, depth=cfg.depth, norm=cfg.norm, upsample=cfg.upsample)
    if size % (2**cfg.depth):
        raise ConfigError(f"--size {size} is not divisible by 2**depth = {2**cfg.depth}; use --size {size - size % 2**cfg.depth + 2**cfg.depth}")
    module = SegmentationModule(
        model=model_cfg.to_dict(),
        preprocess=pre.to_dict(),
        loss=cfg.loss,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        augment=AugmentConfig.from_dict({**cfg.augment_options, "enabled": cfg.augment}).to_dict(),
        context=cfg.context,
        train_size=size if size != store_pre.size else None,
        image_every_n_steps=cfg.image_every_n_steps,
        seed=cfg.seed,
        channels_last=cfg.channels_last,
        threshold=cfg.threshold,
    )

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
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
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
