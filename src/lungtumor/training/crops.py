"""Lesion crops as training samples of their own: real nodules with their true surroundings in the batches.

A crop folder (``--lesion-dir``) holds pairs ``<id>_ct.nii.gz`` (CT in HU, any integer or float
type) and ``<id>_label.nii.gz`` (0/1 on the same grid), at the scan's own spacing: tight 3D
boxes around one lesion each, e.g. the 990 LIDC-IDRI nodule crops (median 44 x 44 x 6 voxels,
about 30 mm across). The patient of a crop is the part of its id before ``_R_<n>``
(``LIDC-IDRI-0001_R_2`` -> ``LIDC-IDRI-0001``), else the whole id.

**On the store's grid.** Every crop is read and checked once, before the run folder is written,
and kept in memory (the 990 LIDC crops: 7,567 lesion slices, about 40 MB at 1.5 mm with 3 context
channels; 51 s to read and resample on 2 cores at load 14). Each is brought to the store's
conventions: reoriented to the canonical ('L','A','S') slice layout, HU clipped as the store clips
and divided by its ``hu_scale``, resampled in-plane to the store's pixel size (the lung preset's
``spacing_mm``; for the seed preset the training cases' mean pixel, :func:`store_pixel_mm`;
bilinear for the CT, the voxel holding the pixel centre for the label, as the store's own slices),
and given the store's 2.5D context: channels ``context_step_mm`` apart along the crop's slice axis
(adjacent slices for the seed preset), linearly interpolated with the edge slices repeated
(:func:`~lungtumor.preprocessing.grid.context_stack`, the scan slices' own rule). A sample's centre
slice is one of the crop's slices with lesion.

**In the batch.** A crop patch is a few dozen pixels across, a training slice a whole lung field
(about 160 x 112 px at 2 mm). ``--crop-rate r`` makes ``k = round(r * batch_size)`` of the
``batch_size`` items of every training batch crops (at least 1 when r > 0; the loader then draws ``batch_size - k``
slices, so a step costs what it did and the schedule keeps its step count). Each crop is placed
at a random position on a canvas of the batch's slice size whose CT is the crop's own surrounding
lung (the median HU of the crop's border pixels below :data:`~lungtumor.config.AIR_TISSUE_HU`,
else :data:`LUNG_FILL_HU`) and whose label is :data:`IGNORE_LABEL` outside the crop: the loss
counts only the crop's own pixels, so the model is never taught that the canvas is background.
Why one batch and not a separate crop batch: the recipe uses batch norm, and a second forward
pass on a few crop patches would normalise them with their own statistics (and pull the running
statistics towards them); in one batch the crops share the slices' statistics. The price: a crop
item costs a whole slice of compute for a few hundred labelled pixels. The canvases go through
the same on-device augmentation as the slices (copy-paste is not applied to them); as for a slice,
a rotation or shift brings air labelled background in at the canvas border (air is never tumour).

**Sampled by patient**: each crop item draws a patient uniformly, then one of that patient's
crops, then one of its lesion slices (the folder's 990 crops come from 549 patients; a patient
with 12 nodules does not weigh 12 times).

**Leakage.** A crop whose patient id is a case id of the store's training or validation split (or
``--crop-exclude``) is refused with one line naming the file (``--crop-overlap exclude`` leaves it
out instead, with a warning): a validation patient's nodule in training inflates the validation
Dice; a training patient's is the same lesion twice.

**Ground glass and part-solid nodules are tumour too.** The recipe's intensity augmentation
(``configs/real_ct.yaml``: contrast x[0.8, 1.2] about the sample's mean, gamma [0.8, 1.25] on its
min-max range, noise <= 25 HU, blur, thick slice; each on 20-30 % of the items) is monotone in HU
within a sample (noise aside), so ground glass stays between the lung around it and solid tissue.
Measured on the LIDC crops as crop items (1.5 mm pixels, 160 x 112 lung-filled canvases, 4 x 256
items per group, centre channel, tumour pixels; ``benchmarks/bench_ggo.py``, 4 minutes on 2 shared Zen 4
cores at load 10-14): the 502 crops whose mean HU inside is below -300 (the
manifest's ``hu_in``: ground glass, part-solid, or small enough for partial volume) have a median
tumour HU of -501; with the recipe's probabilities it is -518 after augmentation (per crop, the
median moved by -121 to +67 HU, 5th-95th percentile), the share above -100 HU (solid) went from
9.7 % to 8.1 % and the share below -850 HU (parenchyma) stayed 1.9 %. With every transform on every
item (the worst case) the median is -572 and the share above -100 HU 2.0 %: the augmentation darkens
a little (gamma's range is the item's own, blur lowers peaks), it never makes ground glass solid
and never erases it into the lung (below -850: 1.3 %). The 488 solid crops: median -93 HU, -131
after (recipe), 5th-95th percentile -655 to 170, so the tumour HU the model sees spans the ground
glass range. ``tests/training/test_crops.py`` checks the order and the bounds on a synthetic
ground-glass crop, and on the real crops where they are present.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lungtumor.config import AIR_TISSUE_HU
from lungtumor.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: Label value of canvas pixels that the loss ignores (outside a crop).
IGNORE_LABEL = 2
#: CT of the canvas around a crop whose border has no lung pixel (HU; lung parenchyma's median is about -870 to -810).
LUNG_FILL_HU = -850.0
#: The patient of a crop id ``<patient>_R_<n>`` (the LIDC-IDRI crops' naming); other ids are their own patient.
PATIENT_PATTERN = re.compile(r"^(?P<patient>.+)_R_\d+$")
#: ``--crop-overlap`` choices.
OVERLAP_POLICIES = ("refuse", "exclude")


def crop_patient(crop_id: str) -> str:
    """The patient id of a crop id (the part before ``_R_<n>``, else the id itself)."""
    m = PATIENT_PATTERN.match(crop_id)
    return m.group("patient") if m else crop_id


def _matches(crop_id: str, case_ids: Iterable[str]) -> str | None:
    """The case id that names this crop's patient: equal to its patient id, or a prefix followed by ``_``."""
    patient = crop_patient(crop_id)
    for case in case_ids:
        if patient == case or crop_id == case or crop_id.startswith(case + "_"):
            return case
    return None


def crop_excluded(crop_id: str, ids: Iterable[str]) -> bool:
    """True when ``crop_id``'s patient is one of ``ids``, or the id equals one or starts with one and ``_``
    (the rule of ``--crop-exclude`` and of the leakage check)."""
    return _matches(crop_id, ids) is not None


def check_crop_geometry(path: Path) -> None:
    """Refuse a crop whose file carries no spacing.

    The rule: no spacing when the header has neither an sform nor a qform code (its pixdim then
    has no defined meaning), or when the affine is exactly the identity (1 mm voxels at the origin:
    what an array saved without geometry gets, e.g. ``Nifti1Image(array, np.eye(4))``; no CT crop
    has exactly 1 x 1 x 1 mm with its corner at the scanner's origin). A zero or negative pixdim is
    refused by :func:`~lungtumor.io.nifti.read_nifti`.

    Raises:
        InputError: one line naming the file and the fix.
    """
    import nibabel as nib

    img = nib.load(str(path))
    hdr = img.header
    no_code = int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0
    if no_code or np.allclose(img.affine, np.eye(4)):
        why = "no sform or qform" if no_code else "the identity affine (1 mm voxels at the origin)"
        raise InputError(f"{path}: crop has no spacing ({why}); write it with the scan's affine (its voxel size in mm), e.g. cut it with nibabel's slicer")


@dataclass(frozen=True)
class CropSample:
    """One crop on the store's grid.

    Attributes:
        crop_id: file id.
        patient: patient id (:func:`crop_patient`).
        ct: ``(Z, C, h, w)`` float32 model input of every lesion slice (store units: HU / hu_scale).
        label: ``(Z, h, w)`` uint8 {0, 1} of the same slices.
        fill: canvas CT value around the crop (store units).
    """

    crop_id: str
    patient: str
    ct: np.ndarray
    label: np.ndarray
    fill: float


def crop_to_store_grid(
    ct_hu: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float], *, pixel_mm: float, hu_scale: float,
    clip_hu: tuple[float, float] | None, context: int, context_step_mm: float | None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One crop in the canonical layout (``(Z, H, W)`` HU and mask, ``spacing_mm`` = (slice, H, W))
    -> ``(ct (Z', C, h, w), label (Z', h, w), fill)`` for its lesion slices on the store's grid."""
    from lungtumor.preprocessing.grid import context_stack

    _, hh, ww = ct_hu.shape
    h = max(1, round(hh * spacing_mm[1] / pixel_mm))
    w = max(1, round(ww * spacing_mm[2] / pixel_mm))
    hu = torch.from_numpy(np.ascontiguousarray(ct_hu, dtype=np.float32))
    if clip_hu is not None:
        hu = hu.clamp(float(clip_hu[0]), float(clip_hu[1]))
    border = torch.cat((hu[:, 0], hu[:, -1], hu[:, :, 0], hu[:, :, -1]), dim=1).flatten()
    lung = border[border < AIR_TISSUE_HU]
    fill_hu = float(lung.median()) if lung.numel() else LUNG_FILL_HU
    if clip_hu is not None:
        fill_hu = float(np.clip(fill_hu, *clip_hu))
    slices = F.interpolate(hu[:, None], size=(h, w), mode="bilinear", align_corners=False, antialias=pixel_mm > min(spacing_mm[1:]))[:, 0]
    lab = F.interpolate(torch.from_numpy(mask.astype(np.float32))[:, None], size=(h, w), mode="nearest-exact")[:, 0]
    scaled = (slices / hu_scale).numpy()
    offsets = np.arange(-context, context + 1, dtype=np.float64)
    if context_step_mm is not None:
        offsets = offsets * float(context_step_mm) / float(spacing_mm[0])
    centres = np.flatnonzero(lab.flatten(1).amax(1).numpy() > 0)
    if centres.size == 0:
        return np.zeros((0, 2 * context + 1, h, w), np.float32), np.zeros((0, h, w), np.uint8), fill_hu / hu_scale
    ct = context_stack(scaled, centres, offsets)
    return ct.astype(np.float32), lab.numpy()[centres].astype(np.uint8), fill_hu / hu_scale


@dataclass
class CropBank:
    """Every usable crop on the store's grid, grouped by patient (see the module docstring).

    Attributes:
        samples: the crops, sorted by patient then id.
        patients: patient ids, in ``samples`` order of first appearance.
        left_out: ``(crop id, why)`` of crops not used.
    """

    samples: list[CropSample]
    patients: list[str]
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def n_slices(self) -> int:
        """Lesion slices in the bank."""
        return int(sum(s.ct.shape[0] for s in self.samples))

    def summary(self) -> dict[str, Any]:
        """What the run records: counts and the crops left out."""
        return {"crops": len(self.samples), "patients": len(self.patients), "slices": self.n_slices, "left_out": [f"{c} ({why})" for c, why in self.left_out]}

    @classmethod
    def build(
        cls, lesion_dir: str | os.PathLike[str], *, pixel_mm: float, hu_scale: float, clip_hu: tuple[float, float] | None,
        context: int, context_step_mm: float | None, store_cases: dict[str, Sequence[str]], exclude: Sequence[str] = (),
        overlap: str = "refuse",
    ) -> CropBank:
        """Read, check and resample a crop folder.

        Args:
            lesion_dir: the crop folder.
            pixel_mm: the store's in-plane pixel size (mm).
            hu_scale, clip_hu: the store's CT scaling and clip.
            context, context_step_mm: 2.5D channels on each side and their distance (None = adjacent slices).
            store_cases: ``{"train": [...], "val": [...]}``: case ids a crop's patient must not be.
            exclude: further patient or crop ids to leave out (e.g. a held-out test patient).
            overlap: ``refuse`` (a crop of a training or validation patient is an error) or ``exclude``.

        Raises:
            InputError: unpaired files, a crop without spacing, a label that is not 0/1 or is empty,
                a mask off the crop's grid, a crop of a store patient under ``refuse``; one line naming the file.
            ConfigError: no crop left.
        """
        import nibabel as nib

        from lungtumor.lesions.components import require_binary
        from lungtumor.training.copy_paste import crop_pairs, read_crop

        if overlap not in OVERLAP_POLICIES:
            raise ConfigError(f"--crop-overlap {overlap!r}: expected one of {', '.join(OVERLAP_POLICIES)}")
        pairs = crop_pairs(lesion_dir)
        left_out: list[tuple[str, str]] = []
        kept = []
        for crop_id, ct_path, label_path in pairs:
            if _matches(crop_id, exclude) is not None:
                left_out.append((crop_id, "--crop-exclude"))
                continue
            hits = [(part, case) for key, part in (("val", "validation"), ("train", "training")) if (case := _matches(crop_id, store_cases.get(key, ()))) is not None]
            if hits:
                part, case = hits[0]
                if overlap == "refuse":
                    raise InputError(
                        f"{ct_path}: crop of patient {crop_patient(crop_id)}, who is the store's {part} case {case} "
                        f"({'leakage into validation' if part == 'validation' else 'the same patient twice in training'}); "
                        "remove the crop, or pass --crop-overlap exclude to leave such crops out"
                    )
                left_out.append((crop_id, f"patient is {part} case {case}"))
                continue
            kept.append((crop_id, ct_path, label_path))
        if left_out:
            log.warning("crops: %d left out (%s%s)", len(left_out), ", ".join(f"{c}: {w}" for c, w in left_out[:3]), ", ..." if len(left_out) > 3 else "")
        samples = []
        for crop_id, ct_path, label_path in kept:
            check_crop_geometry(ct_path)
            check_crop_geometry(label_path)
            lesion = read_crop(crop_id, ct_path, label_path)
            require_binary(np.asarray(nib.load(str(label_path)).dataobj), "label", source=str(label_path), fix="save the crop's label as 0/1 (uint8)")
            if not lesion.mask.any():
                raise InputError(f"{label_path}: crop label is empty (no lesion voxel); remove the pair or draw its lesion")
            ct, lab, fill = crop_to_store_grid(
                lesion.ct_hu, lesion.mask, lesion.spacing_mm, pixel_mm=pixel_mm, hu_scale=hu_scale, clip_hu=clip_hu,
                context=context, context_step_mm=context_step_mm,
            )
            if ct.shape[0] == 0:  # a lesion thinner than half a model pixel
                left_out.append((crop_id, "lesion vanishes at the store's pixel size"))
                continue
            samples.append(CropSample(crop_id, crop_patient(crop_id), ct, lab, fill))
        if not samples:
            raise ConfigError(f"{lesion_dir}: no crop left to train on ({len(pairs)} pairs, {len(left_out)} left out); pass another --lesion-dir or --crop-rate 0")
        samples.sort(key=lambda s: (s.patient, s.crop_id))
        patients = list(dict.fromkeys(s.patient for s in samples))
        return cls(samples, patients, left_out)


class CropMixer:
    """Puts crop items into training batches on the device (see the module docstring).

    Args:
        bank: the crops.
        items: crop items per batch (``k``).
        device: where the crop tensors live.
    """

    def __init__(self, bank: CropBank, items: int, device: torch.device | str = "cpu") -> None:
        if items < 1:
            raise ConfigError(f"crop items per batch must be >= 1, got {items}")
        self.items = int(items)
        self.ct = [torch.from_numpy(s.ct).to(device) for s in bank.samples]
        self.label = [torch.from_numpy(s.label).to(device) for s in bank.samples]
        self.fill = [float(s.fill) for s in bank.samples]
        by_patient: dict[str, list[int]] = {}
        for i, s in enumerate(bank.samples):
            by_patient.setdefault(s.patient, []).append(i)
        self.by_patient = list(by_patient.values())

    def draw(self, generator: torch.Generator) -> list[tuple[int, int]]:
        """``items`` draws of (crop, slice): a patient uniformly, one of its crops, one of its lesion slices."""
        u = torch.rand(self.items, 3, generator=generator, device=generator.device).cpu().tolist()
        out = []
        for a, b, c in u:
            crops = self.by_patient[min(int(a * len(self.by_patient)), len(self.by_patient) - 1)]
            crop = crops[min(int(b * len(crops)), len(crops) - 1)]
            n = self.ct[crop].shape[0]
            out.append((crop, min(int(c * n), n - 1)))
        return out

    def canvases(self, h: int, w: int, channels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``items`` crop canvases ``(k, C, h, w)`` and labels ``(k, 1, h, w)`` ({0, 1, IGNORE_LABEL}).

        A crop larger than the canvas is cut around its centre.
        """
        draws = self.draw(generator)
        dev = self.ct[0].device
        ct = torch.empty(self.items, channels, h, w, device=dev)
        lab = torch.full((self.items, 1, h, w), float(IGNORE_LABEL), device=dev)
        pos = torch.rand(self.items, 2, generator=generator, device=generator.device).cpu().tolist()
        for i, ((crop, z), (py, px)) in enumerate(zip(draws, pos, strict=True)):
            patch, m = self.ct[crop][z], self.label[crop][z]
            if patch.shape[0] != channels:
                raise InputError(f"crops: {patch.shape[0]} CT channels but the batch has {channels}; build the crops with the run's --context")
            ph, pw = patch.shape[-2:]
            if ph > h:
                patch, m = patch[:, (ph - h) // 2 : (ph - h) // 2 + h], m[(ph - h) // 2 : (ph - h) // 2 + h]
                ph = h
            if pw > w:
                patch, m = patch[:, :, (pw - w) // 2 : (pw - w) // 2 + w], m[:, (pw - w) // 2 : (pw - w) // 2 + w]
                pw = w
            y0, x0 = int(py * (h - ph + 1)), int(px * (w - pw + 1))
            ct[i] = self.fill[crop]
            ct[i, :, y0 : y0 + ph, x0 : x0 + pw] = patch
            lab[i, 0, y0 : y0 + ph, x0 : x0 + pw] = m.float()
        return ct, lab

    def mix(self, ct: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch with ``items`` crop canvases appended (index -1 for them)."""
        _, c, h, w = ct.shape
        cc, cl = self.canvases(h, w, c, generator)
        idx = torch.full((self.items,), -1, dtype=index.dtype, device=index.device)
        return torch.cat((ct, cc.to(ct.dtype)), 0), torch.cat((mask, cl.to(mask.dtype)), 0), torch.cat((index, idx), 0)


def crop_items_per_batch(rate: float, batch_size: int) -> int:
    """``round(rate * batch_size)`` crop items per batch; at least one and at most ``batch_size - 1`` when ``rate`` > 0.

    Raises:
        ConfigError: ``rate`` outside [0, 1), or a batch too small to hold a slice and a crop.
    """
    if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
        raise ConfigError(f"--crop-rate {rate}: must be a fraction of the batch in [0, 1)")
    if rate == 0:
        return 0
    if batch_size < 2:
        raise ConfigError(f"--crop-rate {rate} needs --batch-size >= 2 (a slice and a crop per batch), got {batch_size}")
    return min(batch_size - 1, max(1, round(rate * batch_size)))


def masked_loss(name: str, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The training loss ``name`` counting only pixels whose label is not :data:`IGNORE_LABEL`.

    Equal to :func:`~lungtumor.training.losses.make_loss` ``(name)`` when no pixel is ignored
    (BCE: mean over counted pixels; soft Dice: per sample over counted pixels, as the plain loss).
    """
    from lungtumor.training.losses import DICE_SMOOTH, make_loss

    make_loss(name)  # the name check
    valid = (label != IGNORE_LABEL).float()
    target = (label == 1).float()
    x = logits.float()
    total = torch.zeros((), device=x.device)
    if name in ("bce", "bce+dice"):
        bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
        total = total + (bce * valid).sum() / valid.sum().clamp_min(1.0)
    if name in ("dice", "bce+dice"):
        prob = torch.sigmoid(x) * valid
        dims = tuple(range(1, x.ndim))
        dice = (2.0 * (prob * target).sum(dims) + DICE_SMOOTH) / (prob.sum(dims) + target.sum(dims) + DICE_SMOOTH)
        total = total + (1.0 - dice).mean()
    return total


def store_pixel_mm(store: Any, cases: Sequence[str], train_scale: float = 1.0) -> float:
    """The model pixel size (mm) crops are resampled to: the lung preset's ``spacing_mm`` (every case's
    pixel), or for the seed preset (a whole slice resized to N px, so a pixel size per case) the training
    cases' mean; times ``train_scale`` (store pixels per training pixel, a seed-preset ``--size``)."""
    from lungtumor.training.copy_paste import case_geometry

    sizes = [v for c in cases for v in case_geometry(store, c)[1:]]
    if not sizes:
        raise ConfigError("crop samples need training cases to take the pixel size from; the split has none")
    return float(np.mean(sizes)) * float(train_scale)


__all__ = [
    "IGNORE_LABEL",
    "CropBank",
    "CropMixer",
    "CropSample",
    "check_crop_geometry",
    "crop_items_per_batch",
    "crop_patient",
    "crop_to_store_grid",
    "masked_loss",
    "store_pixel_mm",
]
