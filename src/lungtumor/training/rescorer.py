"""Training the second-stage lesion re-scorer (:mod:`lungtumor.model.rescorer`) for a trained U-Net.

:func:`train_rescorer` takes a checkpoint and the slice store it was trained on (and optionally a
crop folder, ``--lesion-dir``) and returns the re-scorer as a checkpoint block;
:func:`add_rescorer` writes it into a checkpoint (atomically). Patches are cut from the store's
model slices (``image.npy``: HU / ``hu_scale`` on the slice grid, exactly what inference cuts from:
:mod:`lungtumor.inference.rescore`) and from the crops at their own spacing, always at the
re-scorer's fixed physical patch size.

**Positives**: every labelled lesion (26-connected component) of the store's training cases, centred
on its centroid; every crop of the crop folder (less the excluded patients,
:func:`~lungtumor.training.crops.crop_excluded`, and crops of the store's own patients), resampled
in-plane to the store's pixel size and centred on its label's centroid. Every patch centre
(negatives too) is jittered by up to :attr:`RescorerTrainConfig.jitter_mm` per axis.

**Negatives**: (a) the U-Net's own false positives on the training cases: components of
probability > 0.5 (26-connected) touching no label voxel (the hard negatives: the vessels and hila it
marks); (b) random dense points (HU > :data:`~lungtumor.config.AIR_TISSUE_HU`: vessels, hila,
mediastinum, chest wall) of the store's cases at least :attr:`RescorerTrainConfig.negative_distance_mm`
from any label voxel; (c) the same in the crops' surroundings where a crop is big enough.

**The crop shortcut.** LIDC crops are tight (about 30 mm of surroundings), so a crop patch usually
runs off the crop's edge and is filled there (:attr:`RescorerTrainConfig.crop_fill_hu`, lung-like).
If only positives showed such edges, the classifier would learn the edge, not the nodule. So every
draw is first made *edged* or *plain* with the same probability for both classes
(:attr:`RescorerTrainConfig.edged_share`): an edged positive is a crop, or a store lesion cut out of
a box of a real crop's extent (drawn from the crops in use, placed at the crop's own offset from
its lesion centre) and filled outside exactly as a crop is; an edged negative is a crop-surround
negative or a store negative cut out of such a box (half of a class's edged draws from crops where
that class has crop points, so crop textures, from other scanners, are not a positive's mark either).
Edges thus say nothing about the class. Where a
class has no plain source (a store without lesions: positives come only from crops), every draw
of both classes is edged. ``tests/training/test_rescorer_training.py`` holds a data set where the edge alone
would separate the classes and checks the classifier stays at chance there.

**Steps**: balanced batches (half positive), random flips of every axis and 90-degree in-plane
rotations, BCE, Adam; a fixed number of steps, seeded (numpy ``default_rng`` for the data and a
forked torch generator for the weights): the same inputs give the same weights. Cost, measured on
an AMD EPYC core (one torch thread, load average 3 on 2 cores): 227 ms per step of 32 default patches
(15 ms of it cutting and augmenting them), so the default 600 steps take about 2.3 minutes, plus the
U-Net's forward pass over the training cases to find its false positives.

**Not yet measured on real scans**: whether the re-scorer's probability alone ranks the lesions better
than the U-Net's ``prob_max`` (or a combination) is what ``benchmarks/bench_rescorer.py`` measures on
the leave-one-scan-out folds. A risk it will show: a tumour larger than the 30 mm patch is seen from
inside (all tissue), as are points of the mediastinum and chest wall among the negatives.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from lungtumor.config import AIR_TISSUE_HU, HU_AIR
from lungtumor.errors import CheckpointError, ConfigError, InputError
from lungtumor.lesions.components import CONNECTIVITY_STRUCTURE
from lungtumor.model.checkpoint import load_model, read_checkpoint, save_checkpoint_file
from lungtumor.model.rescorer import (
    RESCORER_KEY,
    RESCORER_MIN_LESION_SCORE,
    Rescorer,
    RescorerConfig,
    cut_patches,
    lesion_centres,
    normalise_hu,
    rescorer_block,
)
from lungtumor.training.crops import LUNG_FILL_HU

log = logging.getLogger(__name__)

#: The U-Net's probability above which a voxel is marked, when the checkpoint records no threshold (``predict``'s default).
FP_THRESHOLD = 0.5


@dataclass(frozen=True)
class RescorerTrainConfig:
    """Options of :func:`train_rescorer`.

    Attributes:
        steps: optimiser steps (a fixed number, never a time cap); 0 = no re-scorer.
        batch: patches per step, half of them positive.
        seed: seeds the sampling, the augmentation and the initial weights.
        lr: Adam's learning rate.
        jitter_mm: every patch centre moves by up to this much along each axis (uniform).
        negative_distance_mm: random negatives lie at least this far from any label voxel.
        dense_hu: random negatives are voxels above this HU (tissue, not lung air).
        random_negatives_per_case: random dense points drawn per store case.
        random_negatives_per_crop: random dense points drawn per crop (where there are any).
        edged_share: the share of draws (of each class) with a crop's edge (see the module docstring);
            used only when crops are given.
        crop_fill_hu: the value around a crop (and around the crop-shaped boxes of store patches).
        model: the re-scorer's patch geometry, window and widths.
    """

    steps: int = 600
    batch: int = 32
    seed: int = 0
    lr: float = 1e-3
    jitter_mm: float = 3.0
    negative_distance_mm: float = 10.0
    dense_hu: float = AIR_TISSUE_HU
    random_negatives_per_case: int = 300
    random_negatives_per_crop: int = 2
    edged_share: float = 0.5
    crop_fill_hu: float = LUNG_FILL_HU
    model: RescorerConfig = field(default_factory=RescorerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", RescorerConfig.from_dict(self.model))
        for name in ("steps", "batch", "random_negatives_per_case", "random_negatives_per_crop", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"rescorer {name} {v!r}: must be a whole number >= 0")
        if self.batch < 2:
            raise ConfigError(f"rescorer batch {self.batch}: must be >= 2 (half positive, half negative)")
        if not (0.0 <= self.edged_share <= 1.0):
            raise ConfigError(f"rescorer edged_share {self.edged_share}: must be in [0, 1]")
        if not (self.lr > 0 and self.jitter_mm >= 0 and self.negative_distance_mm >= 0):
            raise ConfigError("rescorer lr must be > 0, jitter_mm and negative_distance_mm >= 0")


@dataclass
class PatchSource:
    """A volume patches are cut from.

    Attributes:
        name: case or crop id (messages, summaries).
        volume: ``(D, H, W)`` array (a store's memory map, or a crop's HU).
        spacing_mm: voxel size along (D, H, W).
        scale: HU per volume unit.
        fill_hu: the value outside the volume (air for a scan, ``crop_fill_hu`` for a crop).
        crop: True for a crop (its patches have crop edges).
    """

    name: str
    volume: np.ndarray
    spacing_mm: tuple[float, float, float]
    scale: float
    fill_hu: float
    crop: bool


@dataclass
class PatchPool:
    """Points of one kind: ``(source index, centre in voxels)`` pairs."""

    sources: list[int] = field(default_factory=list)
    centres: list[np.ndarray] = field(default_factory=list)

    def add(self, source: int, centres: np.ndarray) -> None:
        for c in np.atleast_2d(centres):
            self.sources.append(source)
            self.centres.append(np.asarray(c, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.sources)


class RescorerSampler:
    """Balanced, edge-neutral batches of HU patches (see the module docstring).

    Args:
        sources: the volumes.
        pools: ``store_pos``, ``crop_pos``, ``store_neg`` (random dense), ``store_fp`` (the U-Net's
            false positives), ``crop_neg``: :class:`PatchPool` each (may be empty).
        crop_boxes_mm: ``(lo, hi)`` per crop sample: the crop's extent relative to its lesion centre
            (mm, per axis), the boxes store patches are edged with.
        cfg: the options.
    """

    def __init__(self, sources: list[PatchSource], pools: dict[str, PatchPool], crop_boxes_mm: list[tuple[np.ndarray, np.ndarray]], cfg: RescorerTrainConfig) -> None:
        self.sources, self.pools, self.boxes, self.cfg = sources, pools, crop_boxes_mm, cfg
        has = {k: len(v) > 0 for k, v in pools.items()}
        if not (has["store_pos"] or has["crop_pos"]):
            raise ConfigError("rescorer: no positive to train on (no labelled lesion in the store's training cases and no crop); add labels or --lesion-dir")
        if not (has["store_neg"] or has["store_fp"] or has["crop_neg"]):
            raise ConfigError("rescorer: no negative to train on (no dense voxel far from the labels); check the store")
        plain = {"pos": has["store_pos"], "neg": has["store_neg"] or has["store_fp"]}
        edged = {"pos": bool(self.boxes) and (has["crop_pos"] or has["store_pos"]), "neg": bool(self.boxes) and (has["crop_neg"] or plain["neg"])}
        if not (edged["pos"] and edged["neg"]):
            self.edged_share = 0.0
        elif not (plain["pos"] and plain["neg"]):
            self.edged_share = 1.0  # one class has only crop-edged patches: so must the other
        else:
            self.edged_share = float(cfg.edged_share)

    def _point(self, pool: PatchPool, rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray]:
        """A point of ``pool``: its source, the point (the anchor of a crop-shaped box) and the patch centre
        (the point jittered: every kind alike, so that the box's offset from the patch centre is the same
        for both classes)."""
        k = int(rng.integers(len(pool)))
        src, anchor = pool.sources[k], pool.centres[k]
        centre = anchor + rng.uniform(-self.cfg.jitter_mm, self.cfg.jitter_mm, 3) / np.asarray(self.sources[src].spacing_mm)
        return src, anchor, centre

    def _cut(self, src: int, anchor: np.ndarray, centre: np.ndarray, box_mm: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        s = self.sources[src]
        if box_mm is None:
            return cut_patches(s.volume, s.spacing_mm, centre[None], self.cfg.model, scale=s.scale, fill_hu=s.fill_hu)[0]
        # A store point cut out of a crop-shaped box around it, in whole voxels as a crop is, filled as a crop is.
        # The voxels whose centres lie in [anchor + lo, anchor + hi): as many as the box holds, the anchor
        # within half a voxel of the crop's own offset, symmetrically (rounding would shift every box by
        # half a voxel on average: a cue measured to let a classifier tell them from crops).
        sp = np.asarray(s.spacing_mm)
        lo = np.ceil(anchor + box_mm[0] / sp).astype(int)
        hi = np.ceil(anchor + box_mm[1] / sp).astype(int)
        lo, hi = np.clip(lo, 0, s.volume.shape), np.clip(hi, 0, s.volume.shape)
        hi = np.maximum(hi, lo + 1)
        sub = np.asarray(s.volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
        return cut_patches(sub, s.spacing_mm, (centre - lo)[None], self.cfg.model, scale=s.scale, fill_hu=self.cfg.crop_fill_hu)[0]

    def _draw(self, positive: bool, edged: bool, rng: np.random.Generator) -> np.ndarray:
        p = self.pools
        if positive:
            crop_pool, store_pools = p["crop_pos"], [p["store_pos"]]
        else:
            crop_pool, store_pools = p["crop_neg"], [p["store_fp"], p["store_neg"]]
        store_pools = [q for q in store_pools if len(q)]
        if edged and len(crop_pool) and (not store_pools or rng.random() < 0.5):
            return self._cut(*self._point(crop_pool, rng), None)
        pool = store_pools[int(rng.integers(len(store_pools)))] if store_pools else crop_pool
        src, anchor, centre = self._point(pool, rng)
        box = self.boxes[int(rng.integers(len(self.boxes)))] if edged and not self.sources[src].crop else None
        return self._cut(src, anchor, centre, box)

    def draw(self, n: int, rng: np.random.Generator, *, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``n`` HU patches ``(n, d, h, w)`` and their labels ``(n,)`` {0, 1}: the first half positive."""
        labels = (np.arange(n) < (n + 1) // 2).astype(np.float32)
        out = np.empty((n, *self.cfg.model.patch_shape), dtype=np.float32)
        for i in range(n):
            patch = self._draw(bool(labels[i]), bool(rng.random() < self.edged_share), rng)
            if augment:
                patch = augment_patch(patch, rng)
            out[i] = patch
        return out, labels


def augment_patch(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip of each axis and a random 90-degree rotation in-plane (rows and columns)."""
    for axis in range(3):
        if rng.random() < 0.5:
            patch = patch[(slice(None),) * axis + (slice(None, None, -1),)]
    return np.ascontiguousarray(np.rot90(patch, int(rng.integers(4)), axes=(1, 2)))


def component_centroids(mask: np.ndarray, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected components of a mask: their labels array and ``(count, 3)`` patch centres
    (:func:`~lungtumor.model.rescorer.lesion_centres`: the centroid, inside the component)."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=CONNECTIVITY_STRUCTURE)
    return labels, lesion_centres(labels, count, spacing_mm)


def dense_points_far(volume_hu: np.ndarray, label: np.ndarray, spacing_mm: Sequence[float], *, dense_hu: float, distance_mm: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` random voxels ``(k, 3)`` above ``dense_hu`` at least ``distance_mm`` from every label voxel."""
    ok = np.asarray(volume_hu) > dense_hu
    if np.any(label):
        ok &= ndimage.distance_transform_edt(~(np.asarray(label) > 0), sampling=spacing_mm) >= distance_mm
    idx = np.flatnonzero(ok)
    if idx.size == 0 or n == 0:
        return np.zeros((0, 3))
    pick = rng.choice(idx, size=min(n, idx.size), replace=False)
    return np.stack(np.unravel_index(np.sort(pick), ok.shape), axis=1).astype(np.float64)


@torch.no_grad()
def unet_probabilities(net: torch.nn.Module, image: np.ndarray, offsets: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
    """The U-Net's ``(D, H, W)`` float32 probabilities of a store case's slices (2.5D context by ``offsets``),
    on the default device (CUDA when there is one, else the CPU) in bfloat16 autocast where it is native,
    as ``predict`` runs it (so the false positives mined are those inference makes). ``batch_size``:
    slices a pass (default 4 on the CPU, 32 on CUDA)."""
    from contextlib import nullcontext

    from lungtumor.model.device import bf16_native, default_device
    from lungtumor.preprocessing.grid import context_stack

    device = default_device()
    batch = batch_size or (32 if device.type == "cuda" else 4)
    net.eval().to(device)
    out = np.empty(image.shape, dtype=np.float32)
    with torch.autocast(device.type, dtype=torch.bfloat16) if bf16_native(device.type) else nullcontext():
        for start in range(0, image.shape[0], batch):
            idx = np.arange(start, min(image.shape[0], start + batch))
            x = torch.from_numpy(np.ascontiguousarray(context_stack(image, idx, offsets), dtype=np.float32)).to(device)
            out[idx] = torch.sigmoid(net(x).float())[:, 0].cpu().numpy()
    return out


def _case_spacing(store: Any, case: str) -> tuple[float, float, float]:
    from lungtumor.training.copy_paste import case_geometry

    return case_geometry(store, case)


def crop_on_pixel(ct_hu: np.ndarray, mask: np.ndarray, spacing_mm: Sequence[float], pixel_mm: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A crop ``(Z, H, W)`` resampled in-plane to the store's pixel size, as :mod:`lungtumor.training.crops`
    brings crops onto the store's grid (bilinear, antialiased when shrinking; the label by nearest):
    the crop's patches then have the sharpness of the model slices inference cuts from, not the scan's
    finer native pixels (a cue that would tell crops, hence positives, apart)."""
    _, hh, ww = ct_hu.shape
    h, w = max(1, round(hh * spacing_mm[1] / pixel_mm)), max(1, round(ww * spacing_mm[2] / pixel_mm))
    hu = torch.from_numpy(np.ascontiguousarray(ct_hu, dtype=np.float32))[:, None]
    ct = F.interpolate(hu, size=(h, w), mode="bilinear", align_corners=False, antialias=pixel_mm > min(spacing_mm[1:]))[:, 0].numpy()
    lab = F.interpolate(torch.from_numpy(mask.astype(np.float32))[:, None], size=(h, w), mode="nearest-exact")[:, 0].numpy() > 0
    return ct, lab, (float(spacing_mm[0]), hh * float(spacing_mm[1]) / h, ww * float(spacing_mm[2]) / w)


def collect_pools(
    loaded: Any, store: Any, cfg: RescorerTrainConfig, *, cases: Sequence[str], lesion_dir: str | os.PathLike[str] | None,
    crop_exclude: Sequence[str], rng: np.random.Generator, progress: Callable[[int], None] | None = None,
) -> tuple[list[PatchSource], dict[str, PatchPool], list[tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """The volumes and the points of every kind (see the module docstring), and counts for the summary."""
    sources: list[PatchSource] = []
    pools = {k: PatchPool() for k in ("store_pos", "crop_pos", "store_neg", "store_fp", "crop_neg")}
    hu_scale = float(store.preprocess.hu_scale)
    counts: dict[str, Any] = {"cases": list(cases), "fp_per_case": {}}
    for case in cases:
        image, mask = store.arrays(case)
        spacing = _case_spacing(store, case)
        src = len(sources)
        sources.append(PatchSource(case, image, spacing, hu_scale, float(HU_AIR), False))
        label = np.asarray(mask) > 0
        _, centres = component_centroids(label, spacing)
        pools["store_pos"].add(src, centres)
        pools["store_neg"].add(src, dense_points_far(
            np.asarray(image, dtype=np.float32) * hu_scale, label, spacing, dense_hu=cfg.dense_hu, distance_mm=cfg.negative_distance_mm,
            n=cfg.random_negatives_per_case, rng=rng,
        ))
        prob = unet_probabilities(loaded.net, image, store.context_offsets(case, loaded.context))
        pred_labels, pred_centres = component_centroids(prob > float(loaded.info.get("threshold") or FP_THRESHOLD), spacing)
        touching = set(np.unique(pred_labels[label]).tolist()) - {0}
        fp = [c for i, c in enumerate(pred_centres) if i + 1 not in touching]
        if fp:
            pools["store_fp"].add(src, np.asarray(fp))
        counts["fp_per_case"][case] = len(fp)
        if progress is not None:
            progress(1)
    boxes: list[tuple[np.ndarray, np.ndarray]] = []
    counts["crops"] = 0
    if lesion_dir is not None:
        from lungtumor.training.copy_paste import crop_pairs, read_crop
        from lungtumor.training.crops import check_crop_geometry, crop_excluded

        pixel_mm = float(np.mean([s.spacing_mm[1:] for s in sources])) if sources else 1.5
        own = [*cases, *store.splits.get("val", []), *store.splits.get("train", [])]
        for crop_id, ct_path, label_path in crop_pairs(lesion_dir):
            if crop_excluded(crop_id, crop_exclude) or crop_excluded(crop_id, own):
                continue
            check_crop_geometry(ct_path)
            lesion = read_crop(crop_id, ct_path, label_path)
            if not lesion.mask.any():
                raise InputError(f"{label_path}: crop label is empty (no lesion voxel); remove the pair or draw its lesion")
            ct_hu, lab, sp = crop_on_pixel(lesion.ct_hu, lesion.mask, lesion.spacing_mm, pixel_mm)
            if not lab.any():
                continue  # a lesion thinner than half a store pixel
            src = len(sources)
            sources.append(PatchSource(crop_id, ct_hu, sp, 1.0, float(cfg.crop_fill_hu), True))
            centre = lesion_centres(lab.astype(np.int32), 1, sp)[0]  # the crop's one lesion, even in parts
            pools["crop_pos"].add(src, centre)
            spa = np.asarray(sp)
            shape = np.asarray(lab.shape, dtype=np.float64)
            boxes.append(((-centre - 0.5) * spa, (shape - 0.5 - centre) * spa))
            pools["crop_neg"].add(src, dense_points_far(
                ct_hu, lab, sp, dense_hu=cfg.dense_hu, distance_mm=cfg.negative_distance_mm, n=cfg.random_negatives_per_crop, rng=rng,
            ))
            counts["crops"] += 1
    counts.update({k: len(v) for k, v in pools.items()})
    return sources, pools, boxes, counts


def train_rescorer(
    checkpoint: str | os.PathLike[str], store: str | os.PathLike[str] | Any, *, lesion_dir: str | os.PathLike[str] | None = None,
    crop_exclude: str | Sequence[str] | None = None, cfg: RescorerTrainConfig | None = None, cases: Sequence[str] | None = None,
    progress: bool = False, **options: Any,
) -> tuple[Rescorer, dict[str, Any]]:
    """Train the re-scorer of a U-Net checkpoint on its store (and crops); nothing is written.

    Args:
        checkpoint: the U-Net's checkpoint (its false positives on the training cases are the hard negatives).
        store: the slice store the U-Net was trained on (a path or a ``SliceStore``); must match the
            checkpoint's preprocessing.
        lesion_dir: a crop folder (``--lesion-dir``) for more positives, or None.
        crop_exclude: patient or crop ids whose crops are left out (e.g. a held-out test patient);
            comma-separated or a list. The store's own cases' crops are always left out.
        cfg: the options; ``options`` (e.g. ``steps=``, ``batch=``, ``seed=``) override its fields.
        cases: the store cases to use (default: its training split).
        progress: a progress bar on the terminal.

    Returns:
        The trained re-scorer (eval mode) and a summary (counts, loss, seconds).

    Raises:
        CheckpointError: an unreadable checkpoint or one without a U-Net.
        InputError: a missing store, a bad crop; ConfigError: no positives or negatives, bad options,
            a store of another preprocessing.
    """
    from lungtumor.preprocessing.store import SliceStore
    from lungtumor.progress import progress_bar

    cfg = cfg or RescorerTrainConfig()
    if options:
        unknown = sorted(set(options) - set(cfg.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"rescorer options {unknown}: unknown; expected some of {', '.join(cfg.__dataclass_fields__)}")
        cfg = RescorerTrainConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, **options})
    if cfg.steps < 1:
        raise ConfigError(f"rescorer steps {cfg.steps}: must be >= 1 to train one")
    loaded = load_model(checkpoint)
    st = store if isinstance(store, SliceStore) else SliceStore(store)
    if st.preprocess != loaded.preprocess:
        raise ConfigError(f"{st.root}: this store's preprocessing differs from the checkpoint {checkpoint}'s; pass the store the U-Net was trained on")
    use = list(cases) if cases is not None else list(st.splits.get("train", []))
    if not use:
        raise ConfigError(f"{st.root}: the store has no training cases to train the re-scorer on")
    exclude = [e.strip() for e in crop_exclude.split(",") if e.strip()] if isinstance(crop_exclude, str) else list(crop_exclude or ())
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    with progress_bar(len(use), "re-scorer: mining cases", enabled=progress) as advance:
        sources, pools, boxes, counts = collect_pools(loaded, st, cfg, cases=use, lesion_dir=lesion_dir, crop_exclude=exclude, rng=rng, progress=advance)
    sampler = RescorerSampler(sources, pools, boxes, cfg)
    mining_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    net, losses = fit_rescorer(sampler, cfg, progress=progress)
    summary = {
        **counts, "steps": cfg.steps, "batch": cfg.batch, "seed": cfg.seed, "edged_share": sampler.edged_share,
        "loss_last_50": float(np.mean(losses[-50:])), "mining_s": mining_s, "train_s": time.perf_counter() - t0,
        "crop_exclude": exclude, "lesion_dir": str(lesion_dir) if lesion_dir is not None else None,
    }
    log.info("re-scorer: %d steps, loss %.3f (last 50), %d store positives, %d crops, %d U-Net false positives", cfg.steps, summary["loss_last_50"], counts["store_pos"], counts["crops"], counts["store_fp"])
    return net, summary


def fit_rescorer(sampler: RescorerSampler, cfg: RescorerTrainConfig, *, progress: bool = False) -> tuple[Rescorer, list[float]]:
    """``cfg.steps`` Adam steps on the sampler's balanced batches; the net (eval mode, carrying the operating
    point :data:`~lungtumor.model.rescorer.RESCORER_MIN_LESION_SCORE`) and the losses."""
    from lungtumor.progress import progress_bar

    rng = np.random.default_rng([cfg.seed, 1])
    with torch.random.fork_rng(devices=[]):  # the caller's torch generator is left as it was
        torch.manual_seed(cfg.seed)
        net = Rescorer(cfg.model)
    net.min_lesion_score = RESCORER_MIN_LESION_SCORE
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    net.train()
    losses: list[float] = []
    with progress_bar(cfg.steps, "re-scorer: training", enabled=progress) as advance:
        for _ in range(cfg.steps):
            patches, labels = sampler.draw(cfg.batch, rng)
            logits = net(normalise_hu(patches, cfg.model))
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            advance(1)
    if not np.isfinite(losses[-1]):
        raise ConfigError(f"rescorer training diverged (loss {losses[-1]}); lower the learning rate")
    return net.eval(), losses


def add_rescorer(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], net: Rescorer, summary: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint`` with the re-scorer under :data:`~lungtumor.model.checkpoint.RESCORER_KEY` to ``out``
    (atomically; ``out`` may be ``checkpoint`` itself: then it is replaced in one rename)."""
    ckpt = read_checkpoint(checkpoint)
    if not any(k.startswith("net.") for k in ckpt["state_dict"]):
        raise CheckpointError(f"{checkpoint}: the checkpoint holds no U-Net weights; pass a checkpoint of `lungtumor train`")
    facts = {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}
    ckpt[RESCORER_KEY] = rescorer_block(net, summary=facts)
    return save_checkpoint_file(ckpt, out)
