"""Slice dataset over a store, tumour-oversampling sampler, and the LightningDataModule.

The dataset returns raw (un-augmented) slices; augmentation runs batched on the device in the
LightningModule (``on_after_batch_transfer``), so a GPU is not starved by CPU-side
per-sample augmentation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from lungtumor.config import AIR_TISSUE_HU
from lungtumor.errors import ConfigError, InputError
from lungtumor.preprocessing.grid import air_value, context_stack
from lungtumor.preprocessing.store import SliceStore
from lungtumor.training.options import NEGATIVE_WEIGHTINGS


class SliceDataset(Dataset):
    """Axial slices of some cases of a store.

    Item ``n`` is ``(ct (C, H, W) float32, mask (1, H, W) float32, index int64)`` where
    C = 2 * context + 1 neighbouring slices of the same case (edge slices repeated) and the
    centre channel is the slice itself. The neighbours are the adjacent slices (seed preset) or
    lie ``context_step_mm`` apart whatever the case's slice thickness (lung preset; interpolated,
    :func:`~lungtumor.preprocessing.grid.context_stack`). H and W may differ between cases (lung
    preset): batch them with :class:`PadCollate`.
    """

    def __init__(self, store: SliceStore, cases: Sequence[str], context: int = 0) -> None:
        if context < 0:
            raise ConfigError(f"context must be >= 0 (slices on each side), got {context}")
        self.store = store
        self.cases = list(cases)
        self.context = int(context)
        self.offsets = [store.context_offsets(c, self.context) for c in self.cases]
        counts = np.array([store.n_slices(c) for c in self.cases], dtype=np.int64)
        self.case_index = np.repeat(np.arange(len(self.cases)), counts)  # slice -> case position
        self.slice_index = np.concatenate([np.arange(n) for n in counts]) if len(counts) else np.zeros(0, np.int64)
        self.counts = counts

    def __len__(self) -> int:
        return int(self.case_index.shape[0])

    def tumour_voxels(self) -> np.ndarray:
        """Tumour voxels of every item, in item order, from the manifest."""
        if not self.cases:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.store.tumour_voxels(c) for c in self.cases])

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        pos = int(self.case_index[n])
        case = self.cases[pos]
        d = int(self.slice_index[n])
        image, mask = self.store.arrays(case)
        if self.context:
            ct = context_stack(image, d, self.offsets[pos])[0]
        else:
            ct = np.asarray(image[d], dtype=np.float32)[None]
        m = np.asarray(mask[d], dtype=np.float32)[None]
        return torch.from_numpy(ct), torch.from_numpy(m), n


class PadCollate:
    """Batch items whose slices differ in size (lung preset) by padding them to the batch's largest.

    CT channels are padded with ``pad_value`` (air, in the store's scaled units), masks with 0, at
    the high end of H and W. Items of one size are stacked exactly as the default collate does.
    """

    def __init__(self, pad_value: float) -> None:
        self.pad_value = float(pad_value)

    def __call__(self, items: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sizes = {tuple(ct.shape[-2:]) for ct, _, _ in items}
        if len(sizes) == 1:  # one size: the default collate (shared memory in loader workers)
            return default_collate(items)
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        cts, masks = [], []
        for ct, m, _ in items:
            ph, pw = h - int(ct.shape[-2]), w - int(ct.shape[-1])
            if ph or pw:
                ct = torch.nn.functional.pad(ct, (0, pw, 0, ph), value=self.pad_value)
                m = torch.nn.functional.pad(m, (0, pw, 0, ph), value=0.0)
            cts.append(ct)
            masks.append(m)
        return torch.stack(cts), torch.stack(masks), torch.tensor([int(i) for _, _, i in items], dtype=torch.int64)


def oversampling_weights(tumour_voxels: np.ndarray, target_fraction: float | None = None) -> np.ndarray:
    """Per-slice sampling weights that oversample tumour slices.

    Default (the seed's): tumour slices weigh ``n_negative / n_positive``, others 1, so that
    about half of the draws contain tumour. With ``target_fraction`` f, tumour slices weigh
    ``f / (1 - f) * n_negative / n_positive`` so a fraction f of draws contain tumour.
    """
    positive = np.asarray(tumour_voxels) > 0
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    weights = np.ones(positive.size, dtype=np.float64)
    if n_pos == 0 or n_neg == 0:
        return weights
    ratio = n_neg / n_pos
    if target_fraction is not None:
        if not 0.0 < target_fraction < 1.0:
            raise ConfigError(f"tumour fraction must be between 0 and 1 (exclusive), got {target_fraction}")
        ratio *= target_fraction / (1.0 - target_fraction)
    weights[positive] = ratio
    return weights


#: Lung-density HU range of :func:`lung_negative_weights` (below it: outside air, trachea, bowel gas; above: tissue).
LUNG_DENSITY_HU = (-950.0, AIR_TISSUE_HU)
#: Smallest weight of a tumour-free slice under ``lung`` weighting (relative to the mean: none becomes impossible).
MIN_NEGATIVE_WEIGHT = 0.1


def lung_negative_weights(dataset: SliceDataset) -> np.ndarray:
    """Per item: its lung-density pixels (``LUNG_DENSITY_HU``) over their mean on the tumour-free items.

    Tumour-free slices of a scan differ: apex and base slices hold little lung, mid-lung slices the
    vessels, fissures and hila that a model mistakes for nodules. Multiplied into the tumour-free
    weights (mean 1 over them, floored at ``MIN_NEGATIVE_WEIGHT``), it draws those slices more often
    and leaves the tumour fraction as it was. Reads every training slice once (the store is memory-mapped).
    """
    scale = float(dataset.store.preprocess.hu_scale)
    lo, hi = LUNG_DENSITY_HU[0] / scale, LUNG_DENSITY_HU[1] / scale
    counts = []
    for case in dataset.cases:
        image, _ = dataset.store.arrays(case)
        img = np.asarray(image, dtype=np.float32)
        counts.append(((img > lo) & (img < hi)).reshape(img.shape[0], -1).sum(1))
    area = np.concatenate(counts).astype(np.float64) if counts else np.zeros(0)
    negative = dataset.tumour_voxels() == 0
    mean = float(area[negative].mean()) if negative.any() else 0.0
    if mean <= 0:
        return np.ones_like(area)
    return np.maximum(area / mean, MIN_NEGATIVE_WEIGHT)


class TumourOversampler(Sampler[int]):
    """``WeightedRandomSampler`` semantics, reproducible per epoch, and sharded across ranks.

    Draws ``num_samples`` indices with replacement from ``torch.multinomial`` seeded with
    ``seed + epoch`` (Lightning calls :meth:`set_epoch`), so a resumed run draws what the
    uninterrupted run would have. Under DDP every rank draws the same sequence and keeps
    every ``world_size``-th index starting at its rank, so ranks see disjoint shares.
    """

    def __init__(self, weights: np.ndarray, num_samples: int | None = None, seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = int(num_samples if num_samples is not None else len(weights))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _rank, world = self._rank_world()
        return math.ceil(self.num_samples / world) if world > 1 else self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        rank, world = self._rank_world()
        if world > 1:
            total = len(self) * world
            draws = torch.cat([draws, draws[: total - self.num_samples]])[rank::world]
        return iter(draws.tolist())


class ValidationShard(Sampler[int]):
    """Every validation slice exactly once across DDP ranks: rank r takes items r, r + W, r + 2W, ...

    No padding (a padded sampler would count some slices twice in the per-case sums that the
    ranks add up); ranks may get one item more or less than each other, which the sum-reduce of
    per-case totals does not mind.
    """

    def __init__(self, n_items: int) -> None:
        self.n_items = int(n_items)

    def __len__(self) -> int:
        rank, world = TumourOversampler._rank_world()
        return len(range(rank, self.n_items, world))

    def __iter__(self) -> Iterator[int]:
        rank, world = TumourOversampler._rank_world()
        return iter(range(rank, self.n_items, world))


@dataclass(frozen=True)
class DataConfig:
    """Data loading options.

    Attributes:
        context: neighbouring slices on each side as extra channels (2.5D); 0 = the seed's 2D.
        batch_size: slices per batch (the seed: 8).
        num_workers: DataLoader worker processes (the seed: 2).
        tumour_fraction: None = the seed's weights (n_neg / n_pos); else the target fraction.
        samples_per_epoch: None = as many draws as training slices (the seed's).
        seed: sampler seed.
        splits: ``{"train": [...], "val": [...]}`` case ids chosen by the run; None = the store's.
        negative_weighting: ``uniform`` (the seed's) or ``lung``: tumour-free slices weighted by
            their lung-density pixels (:func:`lung_negative_weights`).
        crop_items: items of every training batch that are lesion crops (added on the device,
            :mod:`lungtumor.training.crops`): the loader draws ``batch_size - crop_items`` slices per
            batch and proportionally fewer slices per epoch, so the steps per epoch stay the same.
    """

    context: int = 0
    batch_size: int = 8
    num_workers: int = 2
    tumour_fraction: float | None = None
    samples_per_epoch: int | None = None
    seed: int = 0
    splits: dict[str, list[str]] | None = None
    crop_items: int = 0
    negative_weighting: str = "uniform"

    @property
    def slice_batch_size(self) -> int:
        """Slices the loader puts in a training batch."""
        return self.batch_size - self.crop_items


def _worker_init(_: int) -> None:
    # One thread per loader worker: the main process owns the cores for the model.
    torch.set_num_threads(1)


class SliceDataModule(L.LightningDataModule):
    """Store + split + oversampling sampler + loaders.

    Args:
        store_dir: a slice store from :func:`~lungtumor.preprocessing.store.preprocess_task`.
        cfg: loading options.
    """

    def __init__(self, store_dir: str | os.PathLike[str], cfg: DataConfig) -> None:
        super().__init__()
        self.store = SliceStore(store_dir)
        self.cfg = cfg
        splits = cfg.splits if cfg.splits is not None else self.store.splits
        known = set(self.store.manifest["cases"])
        missing = sorted(c for part in ("train", "val") for c in splits.get(part, []) if c not in known)
        if missing:
            raise InputError(f"{store_dir}: the split names cases the store does not hold ({', '.join(missing[:5])}); re-run preprocess or fix the split")
        self.splits = {"train": list(splits.get("train", [])), "val": list(splits.get("val", []))}
        self._store_dir = store_dir
        self._make_sets()

    def join_phantoms(self, phantom_store: str | os.PathLike[str]) -> None:
        """Add the cases of a phantom store preprocessed as this one (:func:`lungtumor.training.phantoms.phantom_store`)
        to the training split, as ``phantom-<id>``; the validation split stays the store's."""
        from lungtumor.training.phantoms import join_phantoms

        self.store, self.splits["train"] = join_phantoms(self.store, Path(phantom_store), self.splits["train"])
        self._make_sets()

    def _make_sets(self) -> None:
        cfg, store_dir = self.cfg, self._store_dir
        self.train_set = SliceDataset(self.store, self.splits["train"], cfg.context)
        self.val_set = SliceDataset(self.store, self.splits["val"], cfg.context)
        if len(self.train_set) == 0:
            raise InputError(f"{store_dir}: the training split has no slices; preprocess more cases")
        if not 0 <= cfg.crop_items < cfg.batch_size:
            raise ConfigError(f"crop items per batch ({cfg.crop_items}) must leave at least one slice of the batch size {cfg.batch_size}")
        draws = cfg.samples_per_epoch or len(self.train_set)
        if cfg.crop_items:  # the same number of steps: fewer slices per batch, the rest are crops
            draws = math.ceil(draws / cfg.batch_size) * cfg.slice_batch_size
        if cfg.negative_weighting not in NEGATIVE_WEIGHTINGS:
            raise ConfigError(f"--negative-weighting {cfg.negative_weighting!r}: expected one of {', '.join(NEGATIVE_WEIGHTINGS)}")
        weights = oversampling_weights(self.train_set.tumour_voxels(), cfg.tumour_fraction)
        if cfg.negative_weighting == "lung":
            negative = self.train_set.tumour_voxels() == 0
            weights[negative] *= lung_negative_weights(self.train_set)[negative]
        self.sampler = TumourOversampler(
            weights,
            num_samples=draws,
            seed=cfg.seed,
        )

    def _loader(self, dataset: Dataset, batch_size: int | None = None, **kw: Any) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size or self.cfg.batch_size,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
            collate_fn=PadCollate(air_value(self.store.preprocess)),
            **kw,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.cfg.slice_batch_size, sampler=self.sampler, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, sampler=ValidationShard(len(self.val_set)))

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_epoch": self.sampler.epoch, "sampler_seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.seed = int(state.get("sampler_seed", self.sampler.seed))
        self.sampler.set_epoch(int(state.get("sampler_epoch", 0)))


def make_datamodule(store_dir: str | os.PathLike[str], cfg: DataConfig) -> SliceDataModule:
    """A LightningDataModule over the store's train/val split."""
    return SliceDataModule(store_dir, cfg)
