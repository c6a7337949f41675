"""The LightningModule around the U-Net: one shared step for training and validation.

Validation scores the Dice per 3D case at the store's resolution by summing per-slice
intersections and volumes per case (no need to hold whole cases in memory), and also the
seed's soft Dice pooled over all validation slices, logged under a name that says so.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lungtumor.errors import ConfigError
from lungtumor.model.checkpoint import checkpoint_metadata
from lungtumor.model.unet import ModelConfig, UNet
from lungtumor.training.augment import AugmentConfig, apply_window, augment_batch
from lungtumor.training.losses import make_loss
from lungtumor.training.options import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)


def lever_on(mode: str, device_type: str) -> bool:
    """Whether a speed lever (``--compile``, ``--fused-adam``: ``auto``, ``on`` or ``off``) is used on ``device_type``.

    ``auto`` is on for CUDA only. Measured: torch.compile of the seed U-Net on a CPU takes 23-41 s
    to compile and trains no faster (DESIGN.md); on an H200, compile with transposed upsampling
    and fused Adam at batch 128 is 1.57x eager (BENCHMARKS.md, issue 17).
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"{mode!r}: expected auto, on or off")
    return mode == "on" or (mode == "auto" and device_type == "cuda")


def make_optimizer(params: Any, lr: float, *, fused: bool) -> torch.optim.Optimizer:
    """Adam (the seed's optimiser); ``fused``: one fused kernel for the whole update (CUDA and CPU)."""
    return torch.optim.Adam(params, lr=lr, fused=True if fused else None)


def compile_net(net: torch.nn.Module) -> torch.nn.Module:
    """Compile ``net`` in place (``nn.Module.compile``): its state dict, and so every checkpoint, keeps
    the plain parameter names, and inference loads it as an ordinary U-Net."""
    net.compile()
    return net


class SegmentationModule(L.LightningModule):
    """U-Net + loss + batched on-device augmentation + per-case validation Dice.

    Args:
        model: :class:`~lungtumor.model.unet.ModelConfig` as a dict.
        preprocess: the store's :class:`~lungtumor.config.PreprocessConfig` as a dict (with
            ``size`` set to the training size), embedded in every checkpoint.
        loss: ``bce`` (seed), ``dice`` or ``bce+dice``.
        lr: Adam learning rate.
        lr_schedule: ``constant`` (the seed's) or ``cosine`` (per step, down to 0 at the last
            planned step; the last checkpoint is a settled one only when the whole planned
            schedule ran, i.e. no ``max_minutes`` cap or early stop cut it).
        augment: :class:`~lungtumor.training.augment.AugmentConfig` as a dict.
        context: 2.5D neighbouring slices on each side.
        train_size: resize batches to this size on the device (None = the store's size).
        image_every_n_steps: TensorBoard image panel period (0 = never).
        seed: base seed of the augmentation randomness.
        channels_last: use the channels-last memory format.
        threshold: probability threshold for the validation Dice.
        split: the run's train/validation split (fold, folds, seed, case ids), embedded in every
            checkpoint so that a result can be traced to the cases it never saw.
        copy_paste: :class:`~lungtumor.training.copy_paste.CopyPasteConfig` as a dict, or None (off);
            its lesion bank is built from the training set when fitting starts.
        head_bias: initial bias of the output logit (None = PyTorch's initialisation).
        crops: lesion-crop samples (:mod:`lungtumor.training.crops`): ``{"rate", "items", "lesion_dir",
            ...}`` as recorded in the checkpoint, or None (off); the crops themselves are set as
            :attr:`crop_bank` by the trainer before fitting (read and checked before the run folder is written).
        compile: ``auto`` (torch.compile the U-Net on CUDA), ``on`` or ``off`` (:func:`lever_on`),
            resolved when fitting starts on the device.
        fused_adam: ``auto`` (Adam's fused kernel on CUDA), ``on`` or ``off``.
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
        split: dict[str, Any] | None = None,
        copy_paste: dict[str, Any] | None = None,
        head_bias: float | None = None,
        crops: dict[str, Any] | None = None,
        compile: str = "off",
        fused_adam: str = "off",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = UNet(ModelConfig.from_dict(model))
        if head_bias is not None:
            # Start at the tumour prior instead of p = 0.5 everywhere: the first epochs then learn
            # tumour, not that most pixels are background (Lin et al., focal loss, 2017).
            with torch.no_grad():
                self.net.head.bias.fill_(float(head_bias))
        self.loss_fn = make_loss(loss)
        self.augment_cfg = AugmentConfig.from_dict(augment or {})
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._val_sums: torch.Tensor | None = None
        self._val_case_index: torch.Tensor | None = None
        self._val_slices = 0
        self._copy_paster: Any = None
        self.crop_bank: Any = None  # a CropBank, set by the trainer when ``crops`` is on
        self._crop_mixer: Any = None

    def on_fit_start(self) -> None:
        if lever_on(self.hparams.get("compile", "off"), self.device.type) and not getattr(self, "_compiled", False):
            compile_net(self.net)
            self._compiled = True
        cp = self.hparams.get("copy_paste")
        if cp and self._copy_paster is None:
            from lungtumor.training.copy_paste import CopyPasteConfig, CopyPaster

            dm = self.trainer.datamodule
            self._copy_paster = CopyPaster.for_dataset(
                dm.train_set, CopyPasteConfig.from_dict(cp), exclude_cases=dm.splits["val"], seed=int(self.hparams.seed), device=self.device
            )

        crops = self.hparams.get("crops")
        if crops and self._crop_mixer is None:
            from lungtumor.training.crops import CropMixer

            if self.crop_bank is None:
                raise ConfigError("crop samples are on but no crops were loaded; train through lungtumor.training.trainer.train (it reads --lesion-dir)")
            self._crop_mixer = CropMixer(self.crop_bank, int(crops["items"]), device=self.device)

    # -- data on the device ------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        ct, mask, index = batch
        stored_hw = ct.shape[-2:]
        size = self.hparams.train_size
        if size is not None and ct.shape[-1] != size:
            ct = F.interpolate(ct, size=(size, size), mode="bilinear", align_corners=False)
            mask = F.interpolate(mask, size=(size, size), mode="nearest")
        paster, mixer = self._copy_paster, self._crop_mixer
        if self.trainer is not None and self.trainer.training and (self.augment_cfg.enabled or paster is not None or mixer is not None):
            # Different randomness per step, rank and epoch; reproducible for a seed.
            s = (int(self.hparams.seed) * 1_000_003 + self.global_step * 7919 + self.global_rank * 104_729) % (2**63)
            gen = torch.Generator(device=ct.device).manual_seed(s)
            if paster is not None:  # before the spatial augmentation: the lesion deforms with its slice
                scale = (stored_hw[0] / ct.shape[-2], stored_hw[1] / ct.shape[-1])
                ct, mask = paster(ct, mask, index, generator=gen, pixel_scale=scale)
            if mixer is not None:
                # Crop items join the slices after the paste (which needs the slices' cases) and before the
                # augmentation (which treats them as any item); their own random stream leaves the others' as they were.
                crop_gen = torch.Generator(device=ct.device).manual_seed((s + 1) % (2**63))
                ct, mask, index = mixer.mix(ct, mask, index, crop_gen)
            if self.augment_cfg.enabled:
                ct, mask = augment_batch(ct, mask, self.augment_cfg, generator=gen)
        ct = apply_window(ct, self.augment_cfg)  # every stage: the checkpoint's preprocessing clips the same way
        return ct.contiguous(memory_format=self.memory_format), mask, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, 1, H, W) logits
        return self.net(x)

    # -- one shared step ---------------------------------------------------------------------
    def _step(self, batch: Any, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        ct, mask, _ = batch
        logits = self(ct)
        if stage == "train" and self._crop_mixer is not None:  # crop canvases: only the crops' own pixels count
            from lungtumor.training.crops import masked_loss

            loss = masked_loss(self.hparams.loss, logits, mask)
        else:
            loss = self.loss_fn(logits, mask)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=ct.shape[0], sync_dist=stage != "train")
        return loss, logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits = self._step(batch, "train")
        if self._copy_paster is not None and self._copy_paster.last_fraction is not None:
            self.log("train/copy_paste_fraction", self._copy_paster.last_fraction, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        # Checked every log interval, not every step: on a GPU the check is a host sync, and a
        # non-finite loss stays non-finite (the weights it produced are NaN) until it is seen.
        check = self.global_step % max(1, int(self.trainer.log_every_n_steps if self._trainer else 1)) == 0
        if check and not torch.isfinite(loss.detach()):
            # NaN weights would otherwise be checkpointed and later predict nothing with exit 0.
            raise ConfigError(
                f"training loss is {float(loss.detach())} at step {self.global_step}; "
                "check the store for non-finite CT values, or lower --lr"
            )
        every = int(self.hparams.image_every_n_steps or 0)
        if every and self.global_step % every == 0:
            self._log_images(batch, logits, "train")
        return loss

    def on_train_epoch_end(self) -> None:
        # Between two loss checks the weights may have turned non-finite; never checkpoint them.
        if not all(bool(torch.isfinite(p).all()) for p in self.net.parameters()):
            raise ConfigError(f"the weights became non-finite in epoch {self.current_epoch}; lower --lr or check the store for non-finite CT values")

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
        self._val_slices += int(index.numel())
        if batch_idx == 0 and int(self.hparams.image_every_n_steps or 0):
            self._log_images(batch, logits, "val")

    def on_validation_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        n_cases = len(dm.val_set.cases)
        self._val_case_index = torch.as_tensor(dm.val_set.case_index, dtype=torch.long, device=self.device)
        self._val_sums = torch.zeros(n_cases, 5, dtype=torch.float64, device=self.device)
        self._val_slices = 0

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums
        if sums is None:
            return
        scored = torch.tensor(float(self._val_slices), dtype=torch.float64, device=sums.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            scored = self.trainer.strategy.reduce(scored, reduce_op="sum")
        inter, psum, rsum = sums[:, 0], sums[:, 1], sums[:, 2]
        both_empty = (psum + rsum) == 0
        dice = torch.where(both_empty, torch.full_like(inter, float("nan")), 2 * inter / (psum + rsum).clamp_min(1e-9))
        valid = dice[~both_empty]
        dice_case = valid.mean() if valid.numel() else torch.tensor(0.0, dtype=torch.float64)
        pooled = 2 * sums[:, 3].sum() / (sums[:, 4].sum() + rsum.sum()).clamp_min(1e-9)
        self.log("val/dice_case", dice_case.float(), prog_bar=True)
        self.log("val/cases_both_empty", both_empty.sum().float())
        self.log("val/slices_scored", scored.float())  # over all ranks: each validation slice once
        self.log("val/dice_pooled_soft_seed", pooled.float())

    def configure_optimizers(self) -> Any:
        fused = lever_on(self.hparams.get("fused_adam", "off"), self.device.type)
        opt = make_optimizer(self.parameters(), self.hparams.lr, fused=fused)
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
            split=self.hparams.get("split"),
            **({"crops": self.hparams["crops"]} if self.hparams.get("crops") else {}),
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
