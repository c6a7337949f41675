"""A nodule benchmark measured the way the field does: k-fold by patient over the LIDC crops, and
leave-one-scan-out over the whole real scans with the crops of the other patients in training.

(a) ``crops``: k-fold by patient (default 5) over the nodule crops of ``lidc_nodule_crops``
(``manifest.tsv``). Each fold trains the project's U-Net (``model/unet.py``) with the project's loss
(``training/losses.py``), augmentation and HU window (``training/augment.py``), all as the recipe file
sets them, on 2.5D slices of the crops of the other folds' patients, the crops resampled in-plane to
the lung preset's spacing (``LUNG_SPACING_MM``) and padded by reflection to a fixed square patch
(their surroundings are the crop's own ~30 mm: the crops are tight). The held-out crops are predicted
slice by slice, the probabilities brought back to each crop's own grid and thresholded at 0.5. Reported
per size band (``lesions/recist.py``: the longest axial diameter of the crop's label) and per kind
(``solid``: mean HU inside the label >= ``SOLID_HU_IN``, else ``subsolid``, i.e. ground glass or
part-solid; partial volume pulls small solid nodules under it): sensitivity (a nodule is found when a
predicted 26-connected component overlaps its label), per-crop Dice (mean, median, 10th percentile)
and false-positive components per crop (components that do not touch the label). The crops are
nodule-centred, so this sensitivity is easier than a whole-scan one: it measures the segmenter,
not the detector.

(b) ``loso``: leave-one-scan-out over the whole real scans (LUNG1-001 from DICOM, LUNG1-002,
LIDC-IDRI-0001): train with ``lungtumor train STORE --out RUN --config RECIPE --lesion-dir CROPS``'s own
code (``training.trainer.train`` on the recipe file's options, the recipe's schedule unless
``--set`` changes it) on a store of the other two scans plus phantoms (the last phantom validates;
the held-out scan takes no part in training or model selection; a recipe's own ``phantoms`` train
beside them, and the benchmark's are drawn with another seed, so the validation case is never one
of them), the crops of every patient but the
held-out one in the copy-paste bank (``copy_paste_options.exclude``); predict the held-out scan with
``predict_path`` (no recipe-specific options) and evaluate all held-out predictions together with
``evaluate_folder``: per-case Dice mean / median / 10th percentile, pooled Dice, size-band
sensitivity, false positives per scan, lesion FROC and CPM.

Results: ``WORK/results.json`` (and ``--json``) and a printed table. Finished folds are kept in WORK:
a re-run resumes. ``--tiny`` runs both parts on a few synthetic crops and SMALL phantoms (seconds; the
test suite and ``gpu_check.py --tiny --real-ct`` use it).

Run: ``python benchmarks/bench_nodules.py --part crops --folds 5 --steps 2000``;
``python benchmarks/bench_nodules.py --part loso --recipe configs/real_ct_cpu.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real import (  # a store view without the held-out scan; its last case (a phantom here) validates
    fold_store,
    link_real_pairs,
)
from common import machine, parse_set

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
CPU_RECIPE = REPO / "configs" / "real_ct_cpu.yaml"
GPU_RECIPE = REPO / "configs" / "real_ct.yaml"
CROPS_DIR = "lidc_nodule_crops"
MANIFEST = "manifest.tsv"
#: A crop's label is "solid" when its mean HU inside is at least this, else "subsolid" (ground glass or part-solid).
#: Pure ground-glass nodules average about -600 HU and solid ones over -300 (partial volume included).
SOLID_HU_IN = -300.0
KINDS = ("solid", "subsolid")
#: Crop patches: in-plane pixels of the training patch (at the lung preset's spacing: 48 mm at 1.5 mm).
PATCH_PX = 32
#: The U-Net's input must be divisible by this (2 ** depth; depth 3).
DIVISOR = 8
#: Probability threshold of the crop predictions (``lungtumor predict``'s).
THRESHOLD = 0.5
#: Phantom scans added to every leave-one-scan-out fold (the last one validates).
LOSO_PHANTOMS = 1
#: Their dataset seed: not the recipe's ``--phantoms`` seed (training.phantoms.PHANTOM_SEED, 7), so that the
#: validation phantom is no training scan. Work folders of earlier sessions were written with seed 7.
LOSO_PHANTOM_SEED = 11


def log(msg: str) -> None:
    """A timestamped line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def patient_of(crop_id: str) -> str:
    """``LIDC-IDRI-0011_R_6`` -> ``LIDC-IDRI-0011``."""
    return crop_id.rsplit("_R_", 1)[0]


def kind_of(hu_in: float) -> str:
    """``solid`` or ``subsolid`` by the mean HU inside the label (:data:`SOLID_HU_IN`)."""
    return "solid" if hu_in >= SOLID_HU_IN else "subsolid"


def patient_folds(patients: Sequence[str], k: int, seed: int = 0) -> dict[str, int]:
    """Patient -> fold in 0..k-1: a seeded shuffle of the sorted patients, dealt round-robin."""
    order = sorted(set(patients))
    np.random.default_rng(seed).shuffle(order)
    return {p: i % k for i, p in enumerate(order)}


# ------------------------------------------------------------------------------------------------
# (a) crops


@dataclass
class Crop:
    """One nodule crop: resampled slices for the model, and its own grid for scoring.

    Attributes:
        crop_id: ``<patient>_R_<n>``.
        ct_hu: (Z, H, W) float32 HU at the lung preset's in-plane spacing, unpadded.
        mask: (Z, H, W) float32 0/1 on the same grid (the label resampled, thresholded at 0.5).
        label: (X, Y, Z) uint8 on the crop's own grid (scoring).
        affine: the crop's affine (scoring: diameters in mm).
        diameter_mm: longest axial diameter of the label.
        hu_in: mean HU inside the label (from the manifest when it has one).
    """

    crop_id: str
    ct_hu: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    diameter_mm: float
    hu_in: float

    @property
    def band(self) -> str:
        from lungtumor.lesions.recist import size_band

        return size_band(self.diameter_mm)

    @property
    def kind(self) -> str:
        return kind_of(self.hu_in)


def read_manifest(crops: Path) -> dict[str, dict[str, str]]:
    """``manifest.tsv`` rows by crop id (empty when there is none)."""
    path = crops / MANIFEST
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {r["case"]: r for r in csv.DictReader(handle, delimiter="\t")}


def load_crop(crop_id: str, ct_path: Path, label_path: Path, spacing_mm: float, hu_in: float | None) -> Crop:
    """Read one crop and resample its slices in-plane to ``spacing_mm`` (CT bilinear, label as a fraction > 0.5)."""
    import torch
    import torch.nn.functional as F

    from lungtumor.io.nifti import read_nifti
    from lungtumor.lesions.recist import longest_diameters_mm

    ct, lab = read_nifti(ct_path), read_nifti(label_path)
    label = (np.asarray(lab.array) > 0).astype(np.uint8)
    sx, sy = (float(s) for s in ct.spacing_mm[:2])
    x, y = label.shape[:2]
    h, w = max(1, round(x * sx / spacing_mm)), max(1, round(y * sy / spacing_mm))
    # (X, Y, Z) -> (Z, 1, X, Y): one 2D image per axial slice.
    ct_t = torch.from_numpy(np.asarray(ct.array, dtype=np.float32)).permute(2, 0, 1)[:, None]
    lab_t = torch.from_numpy(label.astype(np.float32)).permute(2, 0, 1)[:, None]
    ct_r = F.interpolate(ct_t, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    lab_r = (F.interpolate(lab_t, size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0.5).float()
    diameter = float(longest_diameters_mm(label.astype(np.int32), 1, lab.affine)[0]) if label.any() else 0.0
    if hu_in is None:
        hu_in = float(np.asarray(ct.array)[label > 0].mean()) if label.any() else 0.0
    return Crop(crop_id, ct_r.numpy(), lab_r.numpy(), label, np.asarray(lab.affine), diameter, float(hu_in))


def load_crops(crops: Path, spacing_mm: float, limit: int | None = None) -> list[Crop]:
    """Every crop of the folder (``<id>_ct.nii.gz`` + ``<id>_label.nii.gz``), sorted by id."""
    manifest = read_manifest(crops)
    ids = sorted(p.name[: -len("_ct.nii.gz")] for p in crops.glob("*_ct.nii.gz"))
    if limit:
        ids = ids[:limit]
    out = []
    for cid in ids:
        row = manifest.get(cid)
        hu_in = float(row["hu_in"]) if row and row.get("hu_in") not in (None, "") else None
        out.append(load_crop(cid, crops / f"{cid}_ct.nii.gz", crops / f"{cid}_label.nii.gz", spacing_mm, hu_in))
    return out


def _context_stack(vol: np.ndarray, z: int, context: int) -> np.ndarray:
    """(2c+1, H, W) slices z-c..z+c, the edge slice repeated beyond the ends."""
    idx = np.clip(np.arange(z - context, z + context + 1), 0, vol.shape[0] - 1)
    return vol[idx]


def _pad_to(a: np.ndarray, h: int, w: int, mode: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the last two axes to (h, w), centred; returns the array and the (top, left) offsets."""
    ph, pw = h - a.shape[-2], w - a.shape[-1]
    top, left = ph // 2, pw // 2
    pad = [(0, 0)] * (a.ndim - 2) + [(top, ph - top), (left, pw - left)]
    if mode == "reflect" and (a.shape[-2] < 2 or a.shape[-1] < 2 or ph >= a.shape[-2] or pw >= a.shape[-1]):
        mode = "symmetric" if min(a.shape[-2:]) >= 1 else "edge"
    return np.pad(a, pad, mode=mode), (top, left)


def _fit_patch(ct: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop then pad (CT by reflection, mask with 0) the last two axes to ``size``."""
    h, w = ct.shape[-2:]
    t, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    ct, mask = ct[..., t : t + size, left : left + size], mask[..., t : t + size, left : left + size]
    ct, _ = _pad_to(ct, size, size, "symmetric")
    mask, _ = _pad_to(mask, size, size, "constant")
    return ct, mask


class CropSlices:
    """Training items from crops: (2c+1, P, P) HU and (1, P, P) mask per crop slice."""

    def __init__(self, crops: Sequence[Crop], context: int, patch_px: int = PATCH_PX) -> None:
        self.items = [(i, z) for i, c in enumerate(crops) for z in range(c.ct_hu.shape[0])]
        self.crops, self.context, self.patch_px = list(crops), context, patch_px

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: np.ndarray) -> tuple[Any, Any]:
        import torch

        cts, masks = [], []
        for k in indices:
            i, z = self.items[int(k)]
            c = self.crops[i]
            ct, mask = _fit_patch(_context_stack(c.ct_hu, z, self.context), c.mask[z : z + 1], self.patch_px)
            cts.append(ct)
            masks.append(mask)
        return torch.from_numpy(np.stack(cts).astype(np.float32)), torch.from_numpy(np.stack(masks).astype(np.float32))


def recipe_options(recipe: Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe file's options (``lungtumor train --config``), then ``overrides``."""
    from lungtumor.training.options import load_config_file

    return {**load_config_file(recipe), **(overrides or {})}


def crop_augment_config(opts: dict[str, Any]) -> Any:
    """The recipe's AugmentConfig as the trainer builds it for a lung preset store (its HU scale, its window)."""
    from lungtumor.config import PreprocessConfig
    from lungtumor.training.augment import AugmentConfig, combined_clip

    pre = PreprocessConfig.from_preset("lung")
    aug = dict(opts.get("augment_options") or {})
    window = AugmentConfig.from_dict(aug).clip_hu
    return AugmentConfig.from_dict({**aug, "hu_scale": pre.hu_scale, "clip_hu": combined_clip(pre.clip_hu, window), "enabled": bool(opts.get("augment", True))})


def train_on_crops(
    crops: Sequence[Crop], opts: dict[str, Any], steps: int, batch: int, seed: int, log_every: int = 0
) -> tuple[Any, dict[str, Any]]:
    """Train the recipe's U-Net on crop slices for ``steps`` steps of ``batch``; returns (model, stats)."""
    import torch

    from lungtumor.model.device import bf16_native
    from lungtumor.model.unet import ModelConfig, UNet
    from lungtumor.training.augment import apply_window, augment_batch
    from lungtumor.training.losses import make_loss

    torch.manual_seed(seed)
    context = int(opts.get("context", 0))
    model_cfg = ModelConfig.from_dict({"in_channels": 2 * context + 1, "width": int(opts.get("width", 16)), "depth": int(opts.get("depth", 3)),
                                       "norm": opts.get("norm", "none"), "upsample": opts.get("upsample", "bilinear")})
    net = UNet(model_cfg).to(memory_format=torch.channels_last)
    if opts.get("head_bias") is not None:
        with torch.no_grad():
            net.head.bias.fill_(float(opts["head_bias"]))
    aug = crop_augment_config(opts)
    loss_fn = make_loss(opts.get("loss", "bce"))
    lr = float(opts.get("lr", 1e-4))
    optim = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=steps) if opts.get("lr_schedule") == "cosine" else None
    data = CropSlices(crops, context)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    use_bf16 = bf16_native("cpu")
    net.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        ct, mask = data.batch(rng.integers(0, len(data), size=batch))
        ct = ct / aug.hu_scale  # the store's convention: HU / hu_scale
        if aug.enabled:
            ct, mask = augment_batch(ct, mask, aug, generator=gen)
        x = apply_window(ct, aug).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = net(x)
        loss = loss_fn(logits.float(), mask)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log(f"  step {step + 1}/{steps}: loss {np.mean(losses[-log_every:]):.3f} ({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - t0
    stats = {"steps": steps, "batch": batch, "slices_seen": steps * batch, "width": model_cfg.width, "patch_px": PATCH_PX,
             "train_s": seconds, "slices_per_s": steps * batch / seconds if seconds else None, "bf16": use_bf16,
             "loss_first": float(np.mean(losses[: max(1, steps // 10)])), "loss_last": float(np.mean(losses[-max(1, steps // 10):]))}
    return net, stats


def predict_crop(net: Any, crop: Crop, opts: dict[str, Any]) -> np.ndarray:
    """Probabilities on the crop's own (X, Y, Z) grid."""
    import torch
    import torch.nn.functional as F

    from lungtumor.model.device import bf16_native
    from lungtumor.training.augment import apply_window

    context = int(opts.get("context", 0))
    aug = crop_augment_config(opts)
    h, w = crop.ct_hu.shape[-2:]
    hp, wp = max(PATCH_PX, -(-h // DIVISOR) * DIVISOR), max(PATCH_PX, -(-w // DIVISOR) * DIVISOR)
    stacks = np.stack([_context_stack(crop.ct_hu, z, context) for z in range(crop.ct_hu.shape[0])])
    padded, (top, left) = _pad_to(stacks, hp, wp, "symmetric")
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_native("cpu")):
        x = apply_window(torch.from_numpy(padded.astype(np.float32)) / aug.hu_scale, aug).contiguous(memory_format=torch.channels_last)
        prob = torch.sigmoid(net(x).float())[:, :, top : top + h, left : left + w]
    x_n, y_n = crop.label.shape[:2]
    prob = F.interpolate(prob, size=(x_n, y_n), mode="bilinear", align_corners=False)[:, 0]  # (Z, X, Y)
    return prob.permute(1, 2, 0).numpy()


def score_crop(crop: Crop, prob: np.ndarray) -> dict[str, Any]:
    """Dice, found (a predicted component overlaps the label) and false-positive components of one crop."""
    from lungtumor.evaluation.metrics import dice
    from lungtumor.lesions.components import label_instances

    pred = prob >= THRESHOLD
    labels, count = label_instances(pred)
    overlapping = set(np.unique(labels[(crop.label > 0) & pred]).tolist()) - {0}
    return {"crop": crop.crop_id, "patient": patient_of(crop.crop_id), "band": crop.band, "kind": crop.kind,
            "diameter_mm": crop.diameter_mm, "hu_in": crop.hu_in, "dice": dice(pred, crop.label > 0),
            "found": bool(overlapping), "false_positive_components": int(count - len(overlapping))}


def crop_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sensitivity, per-crop Dice spread and FP components per crop: overall, by size band and by kind."""
    from lungtumor.evaluation.evaluate import dice_spread
    from lungtumor.lesions.recist import SIZE_BAND_NAMES

    def group(rs: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rs)
        return {"crops": n, "found": sum(r["found"] for r in rs), "sensitivity": sum(r["found"] for r in rs) / n if n else None,
                "dice": dice_spread(r["dice"] for r in rs),
                "false_positive_components_per_crop": sum(r["false_positive_components"] for r in rs) / n if n else None}

    return {
        "all": group(rows),
        "by_band": {b: group([r for r in rows if r["band"] == b]) for b in SIZE_BAND_NAMES},
        "by_kind": {k: group([r for r in rows if r["kind"] == k]) for k in KINDS},
        "kind_rule": f"solid: mean HU inside the label >= {SOLID_HU_IN:g} (manifest hu_in), else subsolid (ground glass or part-solid)",
        "found_rule": "a predicted 26-connected component (probability >= 0.5) overlaps the label by one voxel or more",
    }


def run_crops(work: Path, crops_dir: Path, recipe: Path, overrides: dict[str, Any], *, folds: int, run_folds: Sequence[int], steps: int,
              batch: int, seed: int, limit: int | None = None, tag: str = "") -> dict[str, Any]:
    """k-fold by patient over the crops; each fold cached in ``WORK/crops/fold-K-...json`` (named by its budget; ``tag``
    names runs with recipe overrides)."""
    from lungtumor.config import LUNG_SPACING_MM

    opts = recipe_options(recipe, overrides)
    t0 = time.perf_counter()
    crops = load_crops(crops_dir, LUNG_SPACING_MM, limit)
    log(f"crops: {len(crops)} read and resampled to {LUNG_SPACING_MM} mm in {time.perf_counter() - t0:.0f} s")
    fold_of = patient_folds([patient_of(c.crop_id) for c in crops], folds, seed)
    out_dir = work / "crops"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for k in run_folds:
        # The file names the fold's budget, so a re-run with another budget never reuses it.
        path = out_dir / f"fold-{k}-of-{folds}-steps{steps}-batch{batch}-seed{seed}{'-tag' + tag if tag else ''}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        train_set = [c for c in crops if fold_of[patient_of(c.crop_id)] != k]
        test_set = [c for c in crops if fold_of[patient_of(c.crop_id)] == k]
        log(f"crop fold {k}: train on {len(train_set)} crops, test {len(test_set)}")
        net, stats = train_on_crops(train_set, opts, steps, batch, seed + k, log_every=max(1, steps // 5))
        rows = [score_crop(c, predict_crop(net, c, opts)) for c in test_set]
        rec = {"fold": k, "folds": folds, "train_crops": len(train_set), "test_crops": len(test_set),
               "train_patients": len({patient_of(c.crop_id) for c in train_set}), "test_patients": len({patient_of(c.crop_id) for c in test_set}),
               "train": stats, "rows": rows}
        path.write_text(json.dumps(rec, indent=2))
        log(f"crop fold {k}: sensitivity {np.mean([r['found'] for r in rows]):.3f}, "
            f"median Dice {np.nanmedian([r['dice'] for r in rows]):.3f} ({stats['train_s']:.0f} s training)")
        results.append(rec)
    rows = [r for rec in results for r in rec["rows"]]
    return {"recipe": str(recipe), "overrides": overrides, "folds": folds, "folds_run": [r["fold"] for r in results],
            "per_fold": [{k: v for k, v in r.items() if k != "rows"} for r in results], "summary": crop_summary(rows), "rows": rows}


def crop_table(res: dict[str, Any]) -> str:
    """Markdown: sensitivity, Dice spread and FP components per crop, overall / by band / by kind."""
    s = res["summary"]

    def f(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    lines = ["| group | crops | sensitivity | Dice mean | Dice median | Dice q10 | FP components per crop |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    groups = [("all", s["all"])] + [(f"band {b}", g) for b, g in s["by_band"].items()] + [(k, g) for k, g in s["by_kind"].items()]
    for name, g in groups:
        if not g["crops"]:
            continue
        d = g["dice"]
        lines.append(f"| {name} | {g['crops']} | {f(g['sensitivity'])} | {f(d['mean'])} | {f(d['median'])} | {f(d['q10'])} | "
                     f"{f(g['false_positive_components_per_crop'])} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# (b) leave one scan out


def build_pairs(work: Path, real: Path | None, pairs_dir: Path | None, n_phantoms: int, phantom_size: str) -> Path:
    """``WORK/pairs``: the real scans (from ``real``'s layout, LUNG1-001 imported from DICOM, or from a
    ready ``pairs_dir`` of ``<case>_ct/_label.nii.gz``, e.g. ``make_gpu_data.py``'s) and the phantoms."""
    from lungtumor.phantom.dataset import write_phantom_dataset

    pairs = work / "pairs"
    pairs.mkdir(parents=True, exist_ok=True)
    if pairs_dir is not None:
        for src in sorted(pairs_dir.glob("*.nii.gz")):
            link = pairs / src.name
            if not link.exists():
                link.symlink_to(src.resolve())
    else:
        assert real is not None
        link_real_pairs(real, work, pairs)
    phantoms = work / "phantoms"
    if n_phantoms and not (phantoms / "dataset.json").exists():
        write_phantom_dataset(phantoms, cases=n_phantoms, test_cases=0, size=phantom_size, seed=LOSO_PHANTOM_SEED)
    have = len(list((phantoms / "imagesTr").glob("*.nii.gz"))) if n_phantoms else 0
    if n_phantoms and have != n_phantoms:
        raise SystemExit(f"{phantoms} holds {have} phantoms, not --phantoms {n_phantoms}; use another --work")
    for img in sorted((phantoms / "imagesTr").glob("*.nii.gz")) if n_phantoms else ():
        case = "zz_" + img.name[: -len(".nii.gz")]  # sorted after every real scan: the validation case
        for kind, src in (("ct", img), ("label", phantoms / "labelsTr" / img.name)):
            link = pairs / f"{case}_{kind}.nii.gz"
            if not link.exists():
                link.symlink_to(src.resolve())
    return pairs


def real_cases(pairs: Path) -> list[str]:
    """The real scans of a pairs folder (every case but the phantoms)."""
    return sorted(p.name[: -len("_ct.nii.gz")] for p in pairs.glob("*_ct.nii.gz") if not p.name.startswith("zz_"))


#: The checkpoints each fold predicts with: the last one (the recipe's fixed schedule) and the best one on the
#: fold's validation case (a phantom: the held-out scan takes no part in the choice).
LOSO_CHECKPOINTS = ("last", "best")


def predict_fold(run: Path, pairs: Path, held_out: str, kind: str) -> float:
    """Predict ``held_out`` with the fold's ``kind`` checkpoint (``train/last.ckpt`` or ``train/best.ckpt``)
    into ``run/pred`` (last) or ``run/pred_best`` with probabilities; returns the seconds."""
    from lungtumor.predict import predict_path

    out = run / ("pred" if kind == "last" else f"pred_{kind}")
    t0 = time.perf_counter()
    predict_path(run / "train" / f"{kind}.ckpt", (pairs / f"{held_out}_ct.nii.gz").resolve(), out / f"{held_out}.nii.gz", probabilities=True, progress=False)
    return time.perf_counter() - t0


def evaluate_loso(work: Path, done: Sequence[str], kind: str) -> dict[str, Any]:
    """Every held-out prediction of checkpoint ``kind`` scored together with ``evaluate_folder``: spread,
    pooled, size bands, FP per scan, lesion FROC."""
    from lungtumor.evaluation.evaluate import evaluate_folder

    sub = "pred" if kind == "last" else f"pred_{kind}"
    keep = work / "loso" / ("eval_pred" if kind == "last" else f"eval_{sub}")
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir()
    for h in done:
        (keep / f"{h}.nii.gz").symlink_to((work / "loso" / h / sub / f"{h}.nii.gz").resolve())
        (keep / f"{h}_prob.nii.gz").symlink_to((work / "loso" / h / sub / f"{h}_prob.nii.gz").resolve())
    res = evaluate_folder(keep, work / "loso" / "labels", work / "loso" / ("eval" if kind == "last" else f"eval_{kind}"), progress=False, prob_dir=keep)
    s = res.summary
    out = {k: s.get(k) for k in ("cases", "dice_mean", "dice_median", "dice_q10", "dice_pooled", "dice_pooled_label", "lesions_ref",
                                 "lesions_found", "lesion_sensitivity", "false_positive_lesions_per_scan", "lesion_size_bands")}
    out["lesion_froc"] = {k: s["lesion_froc"].get(k) for k in ("fp_rates", "sensitivity_at_fp_rates", "cpm", "candidates")} if "lesion_froc" in s else None
    out["per_case"] = [{k: r.get(k) for k in ("case", "dice", "lesions_found", "lesions_ref", "false_positive_lesions", "volume_pred_ml", "volume_ref_ml")}
                       for r in res.rows]
    return out


def run_loso(
    work: Path, recipe: Path, overrides: dict[str, Any], *, real: Path | None = None, pairs_dir: Path | None = None, crops_dir: Path | None,
    held_outs: Sequence[str] | None = None, seed: int = 0, n_phantoms: int = LOSO_PHANTOMS, phantom_size: str = "FULL",
    preprocess: dict[str, Any] | None = None, deadline: float | None = None, on_fold: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Leave-one-scan-out with the recipe file; each fold cached in ``WORK/loso/HELD_OUT/result.json``.

    Args:
        deadline: ``time.monotonic()`` by which the folds must be done: a fold is not started when the time left
            is shorter than the last fold took (the folds run so far are reported).
        on_fold: called with the partial report after every fold (e.g. to save it).
    """
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.evaluation.evaluate import evaluate_folder
    from lungtumor.predict import predict_path
    from lungtumor.preprocessing.store import preprocess_task
    from lungtumor.training.options import TrainConfig
    from lungtumor.training.trainer import train

    t_all = time.perf_counter()
    pairs = build_pairs(work, real, pairs_dir, n_phantoms, phantom_size)
    store = work / "store_lung"
    t0 = time.perf_counter()
    preprocess_task(pairs, store, PreprocessConfig.from_preset("lung", **(preprocess or {})), SplitConfig(val_cases=1), progress=False, layout="pairs")
    store_s = time.perf_counter() - t0
    cases = list(held_outs or real_cases(pairs))
    opts = recipe_options(recipe, overrides)
    pred_all, label_all, prob_all = work / "loso" / "pred", work / "loso" / "labels", work / "loso" / "prob"
    for d in (pred_all, label_all, prob_all):
        d.mkdir(parents=True, exist_ok=True)
    folds: list[dict[str, Any]] = []
    report: dict[str, Any] = {"recipe": str(recipe), "overrides": overrides, "store_s": store_s, "folds": folds}
    for held_out in cases:
        run = work / "loso" / held_out
        res_path = run / "result.json"
        if res_path.exists():
            cached = json.loads(res_path.read_text())
            if "recipe" in cached and (cached["recipe"], cached.get("overrides"), cached.get("phantoms", 1)) != (str(recipe), overrides, n_phantoms):
                raise SystemExit(f"{run} holds a fold of another recipe, --set or --phantoms ({cached.get('recipe')}, {cached.get('overrides')}, "
                                 f"{cached.get('phantoms', 1)} phantoms); use another --work")
            folds.append(cached)
            continue
        # Not started when it would not finish: the time left is shorter than the last fold took.
        last_s = folds[-1]["train_s"] + folds[-1]["predict_s"] if folds else 0.0
        if deadline is not None and time.monotonic() + last_s > deadline:
            report["stopped"] = f"time ran out before {held_out} (the last fold took {last_s:.0f} s)"
            break
        if run.exists():
            shutil.rmtree(run)
        fstore = fold_store(store, held_out, work / "folds" / held_out)
        fold_opts = dict(opts)
        if crops_dir is not None:
            fold_opts["lesion_dir"] = str(crops_dir)
            # The held-out patient is no case of the fold's store: name its crops here.
            fold_opts["copy_paste_options"] = {**(fold_opts.get("copy_paste_options") or {}), "exclude": [held_out]}
            # Crop samples: never the held-out patient's; a training scan's own crops are left out too
            # (the same patient twice, which the trainer refuses unless told to exclude them).
            fold_opts["crop_exclude"] = held_out
            fold_opts["crop_overlap"] = "exclude"
        fold_opts.update(seed=seed, progress=False, image_every_n_steps=0)
        if fold_opts.get("phantoms"):  # the recipe's training phantoms: built once for every fold
            fold_opts.setdefault("phantom_dir", str(work / "phantom_stores"))
        cfg = TrainConfig.from_dict({**fold_opts, "store": str(fstore), "out": str(run / "train")})
        t0 = time.perf_counter()
        summary = train(cfg)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        name = f"{held_out}.nii.gz"
        predict_path(summary["last_checkpoint"], (pairs / f"{held_out}_ct.nii.gz").resolve(), run / "pred" / name, probabilities=True, progress=False)
        predict_s = time.perf_counter() - t0
        for src, dst in ((run / "pred" / name, pred_all / name), (run / "pred" / f"{held_out}_prob.nii.gz", prob_all / f"{held_out}_prob.nii.gz"),
                         ((pairs / f"{held_out}_label.nii.gz").resolve(), label_all / name)):
            dst.unlink(missing_ok=True)
            dst.symlink_to(src.resolve())
        (run / "labels").mkdir(exist_ok=True)
        (run / "labels" / name).symlink_to((pairs / f"{held_out}_label.nii.gz").resolve())
        row = evaluate_folder(run / "pred", run / "labels", None, progress=False, prob_dir=run / "pred").rows[0]
        rec = {"held_out": held_out, "recipe": str(recipe), "overrides": overrides, "phantoms": n_phantoms, "dice": row["dice"], "lesions_found": row["lesions_found"], "lesions_ref": row["lesions_ref"],
               "false_positive_lesions": row["false_positive_lesions"], "volume_pred_ml": row["volume_pred_ml"], "volume_ref_ml": row["volume_ref_ml"],
               "steps": summary["global_step"], "batch": cfg.batch_size, "slices_seen": summary["global_step"] * cfg.batch_size, "width": cfg.width,
               "train_s": train_s, "predict_s": predict_s, "crops_excluded": [held_out] if crops_dir is not None else None,
               "lesion_dir": str(crops_dir) if crops_dir is not None else None}
        res_path.write_text(json.dumps(rec, indent=2))
        log(f"loso {held_out}: Dice {rec['dice']:.3f}, found {rec['lesions_found']}/{rec['lesions_ref']}, FP {rec['false_positive_lesions']} "
            f"({train_s:.0f} s training, {rec['slices_seen']} slices at width {rec['width']})")
        folds.append(rec)
        if on_fold is not None:
            on_fold(report)
    done = [f["held_out"] for f in folds]
    for h in done:  # the validation-selected checkpoint too (folds cached before it was measured get it here)
        run = work / "loso" / h
        if (run / "train" / "best.ckpt").exists() and not (run / "pred_best" / f"{h}_prob.nii.gz").exists():
            predict_fold(run, pairs, h, "best")
    if done:
        # Every held-out prediction scored together: spread, pooled, size bands, FP per scan, lesion FROC.
        report["summary"] = evaluate_loso(work, done, "last")
        if all((work / "loso" / h / "pred_best" / f"{h}_prob.nii.gz").exists() for h in done):
            report["summary_best"] = evaluate_loso(work, done, "best")
    report["total_s"] = time.perf_counter() - t_all
    return report


def loso_table(rep: dict[str, Any]) -> str:
    """Markdown: per held-out scan, then the summary lines."""
    lines = ["| held-out scan | Dice | lesions found | FP lesions | pred / ref ml | slices seen | width | train s |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for f in rep["folds"]:
        lines.append(f"| {f['held_out']} | {f['dice']:.3f} | {f['lesions_found']}/{f['lesions_ref']} | {f['false_positive_lesions']} | "
                     f"{f['volume_pred_ml']:.1f} / {f['volume_ref_ml']:.1f} | {f['slices_seen']} | {f['width']} | {f['train_s']:.0f} |")
    for key, title in (("summary", "last checkpoint"), ("summary_best", "best checkpoint on the validation case")):
        s = rep.get(key)
        if not s:
            continue
        lines += ["", f"**{title}**"]
        if key != "summary":
            lines += [f"  {c['case']}: Dice {c['dice']:.3f}, found {c['lesions_found']}/{c['lesions_ref']}, FP {c['false_positive_lesions']}, "
                      f"pred / ref {c['volume_pred_ml']:.1f} / {c['volume_ref_ml']:.1f} ml" for c in s.get("per_case") or []]
        lines += [f"Dice per case: mean {s['dice_mean']:.3f}, median {s['dice_median']:.3f}, 10th percentile {s['dice_q10']:.3f} ({s['cases']} scans)",
                  f"Dice pooled: {s['dice_pooled']:.3f} ({s['dice_pooled_label']})",
                  f"lesions: sensitivity {s['lesion_sensitivity']:.2f} ({s['lesions_found']}/{s['lesions_ref']}), FP per scan {s['false_positive_lesions_per_scan']:.1f}"]
        for b in s.get("lesion_size_bands") or []:
            if b["lesions_ref"] or b["false_positive_lesions"]:
                sens = "-" if b["sensitivity"] is None or math.isnan(b["sensitivity"]) else f"{b['sensitivity']:.2f}"
                lines.append(f"  {b['band']}: sensitivity {sens} "
                             f"({b['lesions_found']}/{b['lesions_ref']}), FP per scan {b['false_positives_per_scan']:.1f}")
        lf = s.get("lesion_froc")
        if lf:
            pts = ", ".join(f"{r:g}: {v:.2f}" for r, v in zip(lf["fp_rates"], lf["sensitivity_at_fp_rates"]))
            lines.append(f"lesion FROC (sensitivity at FP/scan) {pts}; CPM {lf['cpm']:.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Tiny synthetic data (tests, gpu_check --tiny)


def write_tiny_crops(out: Path, n: int = 8, seed: int = 0) -> Path:
    """``n`` synthetic nodule crops (spheres of -100 or -550 HU in -800 HU lung) with a manifest, 4 patients."""
    from lungtumor.io.nifti import write_nifti
    from lungtumor.io.volume import Volume

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cid = f"TINY-{i % 4:04d}_R_{i // 4 + 1}"
        spacing = (0.7, 0.7, 2.5)
        shape = (40, 40, 6)
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1) * np.array(spacing)
        r = rng.uniform(3.0, 12.0)
        label = (np.linalg.norm(ijk - ijk[20, 20, 3], axis=-1) <= r).astype(np.uint8)
        hu_in = -100.0 if i % 2 else -550.0
        ct = np.where(label > 0, hu_in, -800.0) + rng.normal(0, 20, shape)
        affine = np.diag([*spacing, 1.0])
        write_nifti(Volume(ct.astype(np.int16), affine), out / f"{cid}_ct.nii.gz")
        write_nifti(Volume(label, affine), out / f"{cid}_label.nii.gz")
        rows.append({"case": cid, "hu_in": f"{hu_in:.1f}"})
    with open(out / MANIFEST, "w", newline="") as handle:
        w = csv.DictWriter(handle, fieldnames=["case", "hu_in"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return out


def write_tiny_scans(out: Path, n: int = 2, seed: int = 3) -> Path:
    """``n`` SMALL phantom scans named like real ones (``TINYSCAN-<i>_ct/_label.nii.gz``): the layout of ``make_gpu_data.py``'s ``pairs/``."""
    from lungtumor.phantom.dataset import write_phantom_dataset

    tmp = out.parent / (out.name + ".phantoms")
    write_phantom_dataset(tmp, cases=n, test_cases=0, size="SMALL", seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(sorted((tmp / "imagesTr").glob("*.nii.gz"))):
        shutil.copy(img, out / f"TINYSCAN-{i}_ct.nii.gz")
        shutil.copy(tmp / "labelsTr" / img.name, out / f"TINYSCAN-{i}_label.nii.gz")
    shutil.rmtree(tmp)
    return out


#: Options that make any recipe tiny (``--tiny``): width 4, a few steps.
TINY_OVERRIDES = {"width": 4, "epochs": 1, "samples_per_epoch": 16, "batch_size": 4, "num_workers": 0, "limit_val_batches": 1, "val_every_n_epochs": 1,
                  "phantoms": 1, "phantom_size": "SMALL", "rescorer_steps": 2}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="crops,loso", help="crops, loso or both (comma-separated)")
    ap.add_argument("--work", default="/tmp/bench_nodules", help="work folder (kept: a re-run resumes)")
    ap.add_argument("--real", default=str(REAL), help="the real-data folder (LUNG1-001/, LUNG1-002/, LIDC-IDRI-0001/, lidc_nodule_crops/)")
    ap.add_argument("--pairs", default=None, help="leave-one-scan-out from this folder of <case>_ct/_label.nii.gz instead (make_gpu_data.py's pairs/)")
    ap.add_argument("--crops", default=None, help="the crops folder (default REAL/lidc_nodule_crops)")
    ap.add_argument("--recipe", default=str(CPU_RECIPE), help="recipe file (lungtumor train --config)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="recipe override, e.g. width=16")
    ap.add_argument("--folds", type=int, default=5, help="crops: folds by patient")
    ap.add_argument("--run-folds", default=None, help="crops: run only these folds, e.g. 0,1 (default all)")
    ap.add_argument("--steps", type=int, default=2000, help="crops: training steps per fold")
    ap.add_argument("--batch", type=int, default=32, help="crops: slices per step")
    ap.add_argument("--held-out", default=None, help="loso: scans to hold out, comma-separated (default every real scan)")
    ap.add_argument("--phantoms", type=int, default=LOSO_PHANTOMS, help="loso: FULL phantom scans in every fold's store; the last validates, "
                    "the others train (default 1: the validation case only)")
    ap.add_argument("--no-crops-in-loso", action="store_true", help="loso: train without --lesion-dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: 2, or the cores if fewer)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--tag", default="", help="crops: names the cached folds of runs with --set (required with --set)")
    ap.add_argument("--tiny", action="store_true", help="synthetic crops and SMALL phantoms, width 4, a few steps (seconds)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads or min(2, os.cpu_count() or 1))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    overrides = parse_set(a.set)
    parts = [p.strip() for p in a.part.split(",") if p.strip()]
    real = Path(a.real)
    crops_dir = Path(a.crops) if a.crops else real / CROPS_DIR
    pairs_dir = Path(a.pairs) if a.pairs else None
    steps, batch, n_phantoms, phantom_size, limit = a.steps, a.batch, a.phantoms, "FULL", None
    if a.tiny:
        crops_dir = write_tiny_crops(work / "tiny_crops")
        pairs_dir = write_tiny_scans(work / "tiny_pairs")
        overrides = {**TINY_OVERRIDES, **overrides}
        steps, batch, phantom_size, a.folds = 2, 4, "SMALL", min(a.folds, 2)
    elif pairs_dir is None and not real.is_dir():
        raise SystemExit(f"real data not found at {real}; give --real DIR or --pairs DIR")
    report: dict[str, Any] = {"machine": machine(), "load_average_start": os.getloadavg(), "recipe": a.recipe, "overrides": overrides}
    t0 = time.perf_counter()
    if "crops" in parts:
        run_folds = [int(x) for x in a.run_folds.split(",")] if a.run_folds else list(range(a.folds))
        if a.set and not a.tag and not a.tiny:
            raise SystemExit("--set with --part crops needs --tag (its folds are cached under their own names)")
        report["crops"] = run_crops(work, crops_dir, Path(a.recipe), overrides, folds=a.folds, run_folds=run_folds, steps=steps, batch=batch,
                                    seed=a.seed, limit=limit, tag=a.tag)
        print(crop_table(report["crops"]), flush=True)
    if "loso" in parts:
        held = a.held_out.split(",") if a.held_out else None
        report["loso"] = run_loso(work, Path(a.recipe), overrides, real=real, pairs_dir=pairs_dir, crops_dir=None if a.no_crops_in_loso else crops_dir,
                                  held_outs=held, seed=a.seed, n_phantoms=n_phantoms, phantom_size=phantom_size)
        print(loso_table(report["loso"]), flush=True)
    report["load_average_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2, default=str)
    (work / "results.json").write_text(text)
    if a.json:
        Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
