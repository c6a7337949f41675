"""Tumour copy-paste (TumorCP): real lesions pasted into the lungs of training slices, batched on the device.

TumorCP (J. Yang, Y. Zhang, Y. Liang, Y. Zhang, L. He, Z. He, "TumorCP: A Simple but Effective
Object-Level Data Augmentation for Tumor Segmentation", MICCAI 2021) pastes tumours cut from
training cases into the organ of other training cases, with spatial and intensity transforms of the
pasted object; the pasted mask joins the label. Here:

**Lesions** (a :class:`LesionBank`) come from two sources, in physical units:

* the tumours of the *other* training cases of the store (3D connected components of the stored
  masks, 26-connectivity, cropped with a margin from the stored slices; HU = stored value x
  ``hu_scale``), at the case's pixel size;
* a folder of lesion crops (``<id>_ct.nii.gz`` HU + ``<id>_label.nii.gz`` mask pairs at their
  own spacing, e.g. the LIDC-IDRI nodule crops), reoriented to the store's canonical ('L','A','S')
  slice layout. A crop whose id is a validation case id, or starts with one followed by ``_``
  (``LIDC-IDRI-0001_R_1`` for case ``LIDC-IDRI-0001``), is left out: no lesion of a validation
  patient is ever pasted into training.

Each lesion's axial slices are resampled once onto a small canvas (``patch_px`` square, the
lesion's in-plane extent filling at most :data:`CANVAS_FILL` of it) at a per-lesion mm-per-pixel,
so that at paste time one ``grid_sample`` per batch maps every lesion to the target slice's own
pixel size (``mm per pixel`` of a stored case comes from its slice grid: for the seed preset it is
the field of view / 256 and differs per case, for the lung preset it is the fixed ``spacing_mm``;
a training ``--size`` smaller than the store's scales it). 2.5D context channels get the lesion's
slices at the channels' distances in mm (nearest lesion slice; none beyond the lesion).

**Where**: a cheap per-slice rule on the centre channel instead of the 3D lung finder
(:mod:`lungtumor.preprocessing.lungs`), because it runs batched on the device for every batch:
lung pixels have lung density (below ``lung_hu``, -500 HU), lie inside the body (between body
tissue, HU above ``lung_hu``, both along their row and along their column: outside air and the
padding touch the image border), and their local mean over ``mean_kernel_mm`` is above ``gas_hu``
(-950 HU: outside air, the trachea and bowel gas are purer gas than lung parenchyma, whose median
is about -870 to -810 HU). The lesion centre is drawn uniformly among those pixels after an
erosion by ``erode_mm``; a paste is kept only when at least ``min_inside_fraction`` of the pasted
mask lies on lung pixels and it does not touch the slice's own tumour (else that slice is left
as it is: ``rate`` is an upper bound of the pasted fraction, measured and logged as
``train/copy_paste_fraction``).

**How**: the lesion is rotated (uniform angle, random flip) and scaled by ``scale`` (uniform,
isotropic); its CT replaces the target's with a feathered weight ``alpha = min(1, 2 G_s * M)``
(``M`` the lesion mask, ``G_s`` a Gaussian of ``feather_mm``): the lesion keeps its own HU
and its own partial-volume edge inside its mask, and fades into the target over about
``2 * feather_mm`` outside it. The pasted mask (the lesion mask sampled bilinearly, >= 0.5) joins
the label. Pasted HU are the lesion's own, clipped like the store's CT (``clip_hu``).

The paste runs before the spatial augmentation (so the lesion is deformed with its slice), in
:meth:`lungtumor.training.module.SegmentationModule.on_after_batch_transfer`. Layouts: CT
``(N, C, H, W)`` in the store's units (HU / hu_scale), mask ``(N, 1, H, W)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lungtumor.config import AIR_TISSUE_HU, CANONICAL_AXCODES, HU_SCALE, check_known_keys
from lungtumor.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: File name endings of a lesion crop pair.
CROP_CT_SUFFIX = "_ct.nii.gz"
CROP_LABEL_SUFFIX = "_label.nii.gz"
#: Pure gas: a local mean below this HU is outside air, trachea or bowel gas, not lung.
GAS_HU = -950.0
#: A lesion's in-plane extent fills at most this share of its canvas (the rest holds its feathered edge).
CANVAS_FILL = 0.75
#: Margin (mm) around a store lesion's component when it is cut from the stored slices.
STORE_LESION_MARGIN_MM = 6.0
#: Lesion slices whose mask covers less than this (mm^2) are never the centre slice of a paste.
MIN_CENTRE_AREA_MM2 = 12.0
#: Smallest store lesion (voxels) that joins the bank.
MIN_STORE_LESION_VOXELS = 8
#: The lung rule runs on a grid this many times coarser than the slice (when it divides H and W) ...
LUNG_MAP_FACTOR = 2
#: ... and the slice is at least this many pixels across.
LUNG_MAP_MIN_PX = 64
#: Range fields of :class:`CopyPasteConfig`.
_RANGE_FIELDS = ("scale",)


@dataclass(frozen=True)
class CopyPasteConfig:
    """Tumour copy-paste options (all lengths in mm, densities in HU).

    Attributes:
        rate: probability that a training slice gets one pasted lesion (0 = off).
        lesion_dir: folder of lesion crops (``<id>_ct.nii.gz`` + ``<id>_label.nii.gz``); None = none.
        from_store: also paste the tumours of the other training cases of the store.
        scale: ``(low, high)`` isotropic size factor of a pasted lesion, uniform.
        rotate: rotate by a uniform angle and flip at random.
        feather_mm: width of the blend at the lesion's border (Gaussian sigma).
        lung_hu, gas_hu: the lung-pixel rule (see the module docstring).
        mean_kernel_mm: window of the local mean that separates lung from pure gas.
        erode_mm: erosion of the lung pixels where a lesion centre may land.
        min_inside_fraction: share of the pasted mask that must lie on lung pixels.
        max_lesions: at most this many lesions in the bank (a seeded random subset of the crops).
        patch_px: canvas size of a lesion slice in the bank (pixels, square).
        exclude: lesion-crop ids (or id prefixes followed by ``_``) to leave out.
    """

    rate: float = 0.0
    lesion_dir: str | None = None
    from_store: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    rotate: bool = True
    feather_mm: float = 1.0
    lung_hu: float = AIR_TISSUE_HU  # pixels below it can be lung (tissue above it bounds the body)
    gas_hu: float = GAS_HU
    mean_kernel_mm: float = 5.0
    erode_mm: float = 3.0
    min_inside_fraction: float = 0.7
    max_lesions: int = 1000
    patch_px: int = 48
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            scale = tuple(float(v) for v in self.scale)
        except (TypeError, ValueError):
            scale = (self.scale,)  # type: ignore[assignment]
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"copy-paste config: scale must be (low, high) with 0 < low <= high, got {self.scale!r}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "exclude", tuple(str(e) for e in (self.exclude or ())))
        if not isinstance(self.rate, (int, float)) or not 0.0 <= float(self.rate) <= 1.0:
            raise ConfigError(f"copy-paste rate (--copy-paste-rate) is a probability in [0, 1], got {self.rate!r}")
        if not 0.0 <= self.min_inside_fraction <= 1.0:
            raise ConfigError(f"copy-paste config: min_inside_fraction must be in [0, 1], got {self.min_inside_fraction!r}")
        for name in ("feather_mm", "mean_kernel_mm", "erode_mm"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"copy-paste config: {name} must be a length >= 0 mm, got {getattr(self, name)!r}")
        if not self.gas_hu < self.lung_hu:
            raise ConfigError(f"copy-paste config: gas_hu ({self.gas_hu}) must be below lung_hu ({self.lung_hu})")
        if self.max_lesions < 1 or self.patch_px < 8:
            raise ConfigError(f"copy-paste config: max_lesions >= 1 and patch_px >= 8 needed, got {self.max_lesions!r}, {self.patch_px!r}")

    @property
    def enabled(self) -> bool:
        """Whether anything is ever pasted."""
        return self.rate > 0 and (self.from_store or self.lesion_dir is not None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CopyPasteConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError."""
        check_known_keys(cls, d, "copy-paste")
        d = dict(d)
        for name in (*_RANGE_FIELDS, "exclude"):
            if name in d and d[name] is not None and not isinstance(d[name], str):
                d[name] = tuple(d[name])
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"invalid copy-paste option ({exc})") from exc


# ------------------------------------------------------------------------------------------------
# Lesions


@dataclass(frozen=True)
class Lesion:
    """One 3D lesion in the canonical slice layout.

    Attributes:
        source: crop id, or ``<case>#<component>`` for a lesion of a store case.
        case: the store case it was cut from (None for a crop).
        ct_hu: ``(Z, H, W)`` float32 HU; slice axis inferior -> superior, H right -> left, W posterior -> anterior.
        mask: ``(Z, H, W)`` bool.
        spacing_mm: ``(slice, H, W)`` voxel size in mm.
    """

    source: str
    case: str | None
    ct_hu: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float, float]


def crop_pairs(lesion_dir: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """The ``(id, ct, label)`` crop pairs of a lesion folder, sorted by id.

    Raises:
        InputError: no such folder, no crops in it, a crop without its mask or a mask without its crop.
    """
    root = Path(lesion_dir)
    if not root.is_dir():
        raise InputError(f"{root}: lesion folder not found; pass a folder of <id>{CROP_CT_SUFFIX} / <id>{CROP_LABEL_SUFFIX} pairs (--lesion-dir)")
    pairs = []
    for ct in sorted(root.glob("*" + CROP_CT_SUFFIX)):
        if ct.name.startswith("."):
            continue
        lesion_id = ct.name[: -len(CROP_CT_SUFFIX)]
        label = root / (lesion_id + CROP_LABEL_SUFFIX)
        if not label.is_file():
            raise InputError(f"{ct}: lesion crop has no mask {label.name}; add the mask or remove the crop from {root}")
        pairs.append((lesion_id, ct, label))
    orphans = sorted(
        lab for lab in root.glob("*" + CROP_LABEL_SUFFIX) if not lab.name.startswith(".") and not (root / (lab.name[: -len(CROP_LABEL_SUFFIX)] + CROP_CT_SUFFIX)).is_file()
    )
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise InputError(f"{orphans[0]}: lesion mask has no crop {orphans[0].name[: -len(CROP_LABEL_SUFFIX)]}{CROP_CT_SUFFIX}{more}; add the crop or remove the mask from {root}")
    if not pairs:
        raise InputError(f"{root}: no lesion crops (<id>{CROP_CT_SUFFIX} with <id>{CROP_LABEL_SUFFIX}); pass another --lesion-dir")
    return pairs


def _excluded(lesion_id: str, excluded: Iterable[str]) -> bool:
    return any(lesion_id == e or lesion_id.startswith(e + "_") for e in excluded)


def read_crop(lesion_id: str, ct_path: Path, label_path: Path) -> Lesion:
    """Read one crop pair into the canonical slice layout.

    Raises:
        GeometryError: the mask is not on the crop's grid.
    """
    from lungtumor.io.nifti import read_nifti
    from lungtumor.io.volume import reorient, require_same_grid

    ct = read_nifti(ct_path)
    label = read_nifti(label_path)
    require_same_grid(label, ct, "lesion mask", "crop", fix="the mask grid must be the crop's grid (cut both from the same CT)")
    ct_c, _ = reorient(ct, CANONICAL_AXCODES)
    lab_c, _ = reorient(label, CANONICAL_AXCODES)
    si, sj, sk = ct_c.spacing_mm
    return Lesion(
        source=lesion_id,
        case=None,
        ct_hu=np.ascontiguousarray(np.asarray(ct_c.array, dtype=np.float32).transpose(2, 0, 1)),
        mask=np.ascontiguousarray(np.asarray(lab_c.array).transpose(2, 0, 1) > 0),
        spacing_mm=(float(sk), float(si), float(sj)),
    )


def read_crops(
    lesion_dir: str | os.PathLike[str], *, exclude: Iterable[str] = (), max_lesions: int | None = None, seed: int = 0
) -> list[Lesion]:
    """The lesions of a crop folder, less the ``exclude``d ids; a seeded random ``max_lesions`` subset."""
    excluded = list(exclude)
    pairs = [p for p in crop_pairs(lesion_dir) if not _excluded(p[0], excluded)]
    if max_lesions is not None and len(pairs) > max_lesions:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_lesions, replace=False))
        pairs = [pairs[i] for i in keep]
    return [read_crop(*p) for p in pairs]


def case_geometry(store: Any, case: str) -> tuple[float, float, float]:
    """``(slice_mm, pixel_h_mm, pixel_w_mm)`` of a stored case, from its slice grid (or, for stores
    written before the grid was recorded, from ``meta.json``: original affine, orientation and the
    seed preset's resize of the whole slice)."""
    grid = store.grid(case)
    if grid is not None:
        sp = grid.spacing_mm
        ph, pw = grid.pixel_spacing_mm
        return float(sp[2]), float(ph), float(pw)
    meta = store.meta(case)
    spacing = meta["spacing_mm"]
    canon = [0.0, 0.0, 0.0]
    for src, (dst, _) in enumerate(meta["ornt"]):
        canon[int(dst)] = float(spacing[src])
    ci, cj, _ = meta["canonical_shape"]
    h, w = meta.get("slice_shape", [store.preprocess.size, store.preprocess.size])[-2:]
    return canon[2], canon[0] * ci / h, canon[1] * cj / w


def store_lesions(store: Any, cases: Sequence[str], *, margin_mm: float = STORE_LESION_MARGIN_MM) -> list[Lesion]:
    """The tumours of ``cases`` in a slice store, one :class:`Lesion` per 3D connected component."""
    from scipy import ndimage

    from lungtumor.lesions.components import CONNECTIVITY_STRUCTURE

    hu_scale = float(store.preprocess.hu_scale)
    out: list[Lesion] = []
    for case in cases:
        if not np.any(store.tumour_voxels(case) > 0):
            continue
        image, mask = store.arrays(case)
        slices = np.flatnonzero(store.tumour_voxels(case) > 0)
        z0, z1 = int(slices[0]), int(slices[-1]) + 1
        labels, _ = ndimage.label(np.asarray(mask[z0:z1]) > 0, structure=CONNECTIVITY_STRUCTURE)
        slice_mm, ph, pw = case_geometry(store, case)
        mh, mw = math.ceil(margin_mm / ph), math.ceil(margin_mm / pw)
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            comp = labels[box] == k
            if int(comp.sum()) < MIN_STORE_LESION_VOXELS:
                continue
            zs, hs, ws = box
            h0, h1 = max(0, hs.start - mh), min(image.shape[1], hs.stop + mh)
            w0, w1 = max(0, ws.start - mw), min(image.shape[2], ws.stop + mw)
            ct = np.asarray(image[z0 + zs.start : z0 + zs.stop, h0:h1, w0:w1], dtype=np.float32) * hu_scale
            m = labels[zs, h0:h1, w0:w1] == k
            out.append(Lesion(f"{case}#{k}", case, ct, m, (slice_mm, ph, pw)))
    return out


# ------------------------------------------------------------------------------------------------
# The bank: every lesion slice on a canvas, flat on the device


def _feathered_alpha(binary: np.ndarray, sigma_px: float) -> np.ndarray:
    """``min(1, 2 * G_sigma * binary)`` per slice of ``(Z, P, P)`` (1 inside, fading outside)."""
    if sigma_px <= 0:
        return binary.astype(np.float32)
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(binary.astype(np.float32), sigma=(0.0, sigma_px, sigma_px), mode="constant", truncate=3.0)
    return np.minimum(1.0, 2.0 * smooth).astype(np.float32)


@dataclass
class LesionBank:
    """Lesion slices resampled onto ``P x P`` canvases, flat over all lesions (see the module docstring).

    Attributes:
        ct_hu: ``(S, P, P)`` float16 HU.
        alpha: ``(S, P, P)`` float16 feathered blend weight.
        mask: ``(S, P, P)`` float16 {0, 1}.
        start, count: ``(L,)`` first flat slice and number of slices of each lesion.
        slice_mm: ``(L,)`` slice spacing of each lesion (mm).
        canvas_mm: ``(L,)`` mm per canvas pixel of each lesion.
        centres: flat slice indices that can be the centre slice of a paste, grouped by lesion.
        centre_start, centre_count: ``(L,)`` each lesion's share of ``centres``.
        case_pos: ``(L,)`` position of the lesion's store case among the training cases (-1: a crop).
        sources: lesion names.
    """

    ct_hu: torch.Tensor
    alpha: torch.Tensor
    mask: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor
    slice_mm: torch.Tensor
    canvas_mm: torch.Tensor
    centres: torch.Tensor
    centre_start: torch.Tensor
    centre_count: torch.Tensor
    case_pos: torch.Tensor
    sources: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def patch_px(self) -> int:
        """Canvas size P."""
        return int(self.ct_hu.shape[-1])

    def to(self, device: torch.device | str) -> LesionBank:
        """The bank on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if f.name != "sources"}
        return LesionBank(**moved, sources=list(self.sources))

    @classmethod
    def build(cls, lesions: Sequence[Lesion], cfg: CopyPasteConfig, case_positions: dict[str, int] | None = None) -> LesionBank:
        """Resample every lesion onto its canvas (CPU, once).

        Raises:
            ConfigError: no lesion has a slice large enough to paste.
        """
        p = int(cfg.patch_px)
        positions = case_positions or {}
        cts, alphas, masks = [], [], []
        start, count, slice_mm, canvas_mm, centres, c_start, c_count, case_pos, sources = ([] for _ in range(9))
        flat = 0
        for les in lesions:
            zs = np.flatnonzero(les.mask.reshape(les.mask.shape[0], -1).any(axis=1))
            if zs.size == 0:
                continue
            z0, z1 = int(zs[0]), int(zs[-1]) + 1
            ct, m = les.ct_hu[z0:z1], les.mask[z0:z1]
            sz, sh, sw = les.spacing_mm
            area_mm2 = m.reshape(m.shape[0], -1).sum(axis=1) * sh * sw
            good = np.flatnonzero(area_mm2 >= MIN_CENTRE_AREA_MM2)
            if good.size == 0:
                continue
            hh, ww = np.nonzero(m.any(axis=0))
            extent_mm = max((hh.max() - hh.min() + 1) * sh, (ww.max() - ww.min() + 1) * sw)
            cmm = max(extent_mm / (p * CANVAS_FILL), 0.5 * min(sh, sw))
            centre = (0.5 * (hh.min() + hh.max()), 0.5 * (ww.min() + ww.max()))
            ct_c, m_c = _to_canvas(ct, m, (sh, sw), centre, cmm, p)
            binary = m_c >= 0.5
            cts.append(ct_c)
            alphas.append(_feathered_alpha(binary, cfg.feather_mm / cmm))
            masks.append(binary.astype(np.float32))
            start.append(flat)
            count.append(z1 - z0)
            slice_mm.append(sz)
            canvas_mm.append(cmm)
            c_start.append(len(centres))
            c_count.append(int(good.size))
            centres.extend((flat + good).tolist())
            case_pos.append(positions.get(les.case, -1) if les.case is not None else -1)
            sources.append(les.source)
            flat += z1 - z0
        if not sources:
            raise ConfigError("copy-paste has no lesion to paste (no tumour in the training cases and no usable lesion crop); pass --lesion-dir or set --copy-paste-rate 0")

        def t(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype)

        return cls(
            ct_hu=torch.from_numpy(np.concatenate(cts)).to(torch.float16),
            alpha=torch.from_numpy(np.concatenate(alphas)).to(torch.float16),
            mask=torch.from_numpy(np.concatenate(masks)).to(torch.float16),
            start=t(start, torch.long),
            count=t(count, torch.long),
            slice_mm=t(slice_mm, torch.float32),
            canvas_mm=t(canvas_mm, torch.float32),
            centres=t(centres, torch.long),
            centre_start=t(c_start, torch.long),
            centre_count=t(c_count, torch.long),
            case_pos=t(case_pos, torch.long),
            sources=sources,
        )


def _to_canvas(
    ct: np.ndarray, mask: np.ndarray, spacing_hw: tuple[float, float], centre: tuple[float, float], canvas_mm: float, p: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``(Z, H, W)`` slices onto ``p x p`` canvases of ``canvas_mm`` centred on ``centre``
    (index units): bilinear, CT replicated at the border, mask 0 outside (soft values)."""
    z, h, w = ct.shape
    off_mm = ((np.arange(p, dtype=np.float64) + 0.5) - p / 2.0) * canvas_mm
    rows = centre[0] + off_mm / spacing_hw[0]
    cols = centre[1] + off_mm / spacing_hw[1]
    gy = torch.from_numpy((2.0 * rows + 1.0) / h - 1.0).float()
    gx = torch.from_numpy((2.0 * cols + 1.0) / w - 1.0).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].expand(z, p, p, 2)
    ct_t = torch.from_numpy(np.ascontiguousarray(ct, dtype=np.float32))[:, None]
    m_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[:, None]
    ct_c = F.grid_sample(ct_t, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    m_c = F.grid_sample(m_t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    return ct_c.numpy(), m_c.numpy()


# ------------------------------------------------------------------------------------------------
# Where: lung pixels of a slice


def _box_mean(x: torch.Tensor, radius_px: int) -> torch.Tensor:
    """Mean of ``(N, H, W)`` over a ``2 r + 1`` square (separable; pixels beyond the image not counted)."""
    k = 2 * radius_px + 1
    y = F.avg_pool2d(x[:, None], (1, k), stride=1, padding=(0, radius_px), count_include_pad=False)
    return F.avg_pool2d(y, (k, 1), stride=1, padding=(radius_px, 0), count_include_pad=False)[:, 0]


def lung_pixels(ct_hu: torch.Tensor, pixel_mm: float, cfg: CopyPasteConfig) -> torch.Tensor:
    """The per-slice lung-pixel rule (module docstring) on ``(N, H, W)`` HU: ``(N, H, W)`` bool."""
    tissue = ct_hu > cfg.lung_hu
    t = tissue.to(torch.int32)
    inside_rows = (t.cumsum(-1) > 0) & (t.flip(-1).cumsum(-1).flip(-1) > 0)
    inside_cols = (t.cumsum(-2) > 0) & (t.flip(-2).cumsum(-2).flip(-2) > 0)
    mean = _box_mean(ct_hu, max(1, round(0.5 * cfg.mean_kernel_mm / pixel_mm)))
    return ~tissue & inside_rows & inside_cols & (mean > cfg.gas_hu)


def erode(mask: torch.Tensor, radius_px: int) -> torch.Tensor:
    """Binary erosion of ``(N, H, W)`` with a square of ``2 r + 1`` pixels (pixels beyond the image do not erode)."""
    if radius_px <= 0:
        return mask
    return _box_mean(mask.float(), radius_px) > 1.0 - 1e-4


# ------------------------------------------------------------------------------------------------
# The paste


class CopyPaster:
    """Pastes bank lesions into training batches (see the module docstring).

    Args:
        bank: the lesions.
        cfg: options.
        item_case: ``(n_items,)`` training-case position of every dataset item.
        case_pixel_mm: ``(n_cases, 2)`` stored pixel size (H, W) of every training case.
        case_offsets_mm: ``(n_cases, C)`` distance in mm of every 2.5D channel from the centre slice.
        hu_scale: CT values are HU / hu_scale.
        clip_hu: the store's HU clip (pasted HU are clipped the same way), or None.
    """

    def __init__(
        self,
        bank: LesionBank,
        cfg: CopyPasteConfig,
        item_case: torch.Tensor,
        case_pixel_mm: torch.Tensor,
        case_offsets_mm: torch.Tensor,
        hu_scale: float = HU_SCALE,
        clip_hu: tuple[float, float] | None = None,
    ) -> None:
        self.bank = bank
        self.cfg = cfg
        self.item_case = item_case.long()
        self.case_pixel_mm = case_pixel_mm.float()
        self.case_offsets_mm = case_offsets_mm.float()
        self.hu_scale = float(hu_scale)
        self.clip_hu = clip_hu
        self.last_fraction: torch.Tensor | None = None
        self._mean_pixel_mm = float(self.case_pixel_mm.mean()) if self.case_pixel_mm.numel() else 1.0

    @classmethod
    def for_dataset(
        cls, dataset: Any, cfg: CopyPasteConfig, *, exclude_cases: Iterable[str] = (), seed: int = 0, device: torch.device | str = "cpu"
    ) -> CopyPaster:
        """The paster for a :class:`~lungtumor.training.data.SliceDataset` of training cases.

        Args:
            dataset: the training set (its store, cases, context and item -> case table).
            cfg: options.
            exclude_cases: validation case ids: crops of these patients are left out.
            seed: seed of the crop subset.
            device: where the bank lives (the batches' device).
        """
        store = dataset.store
        cases = list(dataset.cases)
        geometry = [case_geometry(store, c) for c in cases]
        lesions: list[Lesion] = []
        if cfg.from_store:
            lesions += store_lesions(store, cases)
        if cfg.lesion_dir is not None:
            excluded = [*cfg.exclude, *exclude_cases]
            lesions += read_crops(cfg.lesion_dir, exclude=excluded, max_lesions=cfg.max_lesions, seed=seed)
        bank = LesionBank.build(lesions, cfg, {c: i for i, c in enumerate(cases)}).to(device)
        context = int(getattr(dataset, "context", 0))
        offsets = []
        for case, (slice_mm, _, _) in zip(cases, geometry, strict=True):
            offsets.append(np.asarray(store.context_offsets(case, context), dtype=np.float64) * slice_mm)
        log.info("copy-paste: %d lesions (%d slices) from %s", len(bank), int(bank.ct_hu.shape[0]), "store + crops" if cfg.lesion_dir else "store")
        return cls(
            bank,
            cfg,
            torch.as_tensor(np.asarray(dataset.case_index), dtype=torch.long, device=device),
            torch.tensor([[g[1], g[2]] for g in geometry], dtype=torch.float32, device=device),
            torch.tensor(np.stack(offsets), dtype=torch.float32, device=device),
            hu_scale=float(store.preprocess.hu_scale),
            clip_hu=store.preprocess.clip_hu,
        )

    def __call__(
        self,
        ct: torch.Tensor,
        mask: torch.Tensor,
        index: torch.Tensor,
        generator: torch.Generator | None = None,
        pixel_scale: tuple[float, float] = (1.0, 1.0),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste at most one lesion into each slice of a batch.

        Args:
            ct: ``(N, C, H, W)`` CT in the store's units.
            mask: ``(N, 1, H, W)`` label.
            index: ``(N,)`` dataset item of every sample.
            generator: random source (seeded: reproducible); None = torch's global RNG.
            pixel_scale: stored pixels per batch pixel along (H, W) (a training ``--size``
                below the store's makes batch pixels larger).

        Returns:
            New ``(ct, mask)``, same shapes and dtypes.
        """
        n, c, h, w = ct.shape
        if n == 0 or self.cfg.rate <= 0:
            return ct, mask
        dev = ct.device
        gen_dev = generator.device if generator is not None else dev
        bank = self.bank
        if self.case_offsets_mm.shape[1] != c:
            raise InputError(f"copy-paste: batch has {c} CT channels but the training set {self.case_offsets_mm.shape[1]}; build the paster for this dataset")
        case = self.item_case.to(dev)[index.to(dev).long()]
        px_mm = self.case_pixel_mm[case] * torch.tensor(pixel_scale, device=dev, dtype=torch.float32)  # (n, 2)
        u = torch.rand(n, 5, generator=generator, device=gen_dev).to(dev)
        apply = u[:, 0] < self.cfg.rate

        # Which lesion: any lesion that does not come from the sample's own case.
        allowed = (bank.case_pos[None, :] != case[:, None]).float()  # (n, L)
        has_lesion = allowed.sum(1) > 0
        allowed = torch.where(has_lesion[:, None], allowed, torch.ones_like(allowed))
        les = torch.multinomial(allowed.to(gen_dev), 1, generator=generator).to(dev)[:, 0]
        centre = bank.centres[bank.centre_start[les] + (u[:, 1] * bank.centre_count[les]).long().clamp_max(bank.centre_count[les] - 1)]
        z_centre = centre - bank.start[les]
        dz = torch.round(self.case_offsets_mm[case] / bank.slice_mm[les][:, None]).long()  # (n, C)
        z = z_centre[:, None] + dz
        valid = (z >= 0) & (z < bank.count[les][:, None])
        flat = bank.start[les][:, None] + z.clamp(min=0).minimum(bank.count[les][:, None] - 1)

        # Where: a random pixel of the eroded lung of the centre channel, found on a grid r times
        # coarser (4x cheaper; the lung rule needs no finer detail), centred in its r x r block.
        hu = ct[:, c // 2].float() * self.hu_scale
        r = LUNG_MAP_FACTOR if h % LUNG_MAP_FACTOR == 0 and w % LUNG_MAP_FACTOR == 0 and min(h, w) >= LUNG_MAP_MIN_PX else 1
        if r > 1:
            hu = F.avg_pool2d(hu[:, None], r)[:, 0]
        hs, ws = hu.shape[-2:]
        coarse_px = self._mean_pixel_mm * float(sum(pixel_scale)) / 2.0 * r
        lung_coarse = lung_pixels(hu, coarse_px, self.cfg)
        target = erode(lung_coarse, round(self.cfg.erode_mm / coarse_px))
        score = torch.rand(n, hs * ws, generator=generator, device=gen_dev).to(dev)
        score = torch.where(target.flatten(1), score, torch.full_like(score, -1.0))
        pos = score.argmax(1)
        has_lung = target.flatten(1).any(1)
        yc = (pos // ws).float() * r + 0.5 * (r - 1)
        xc = (pos % ws).float() * r + 0.5 * (r - 1)
        lung = lung_coarse.float()
        if r > 1:
            lung = lung.repeat_interleave(r, dim=-2).repeat_interleave(r, dim=-1)

        # How: rotation, flip, size. Batch pixel (y, x) lies (dy, dx) mm from the lesion centre; the
        # canvas reads it at R(angle) (flip * dy, dx) / zoom, an affine map of the output grid.
        zoom = self.cfg.scale[0] + (self.cfg.scale[1] - self.cfg.scale[0]) * u[:, 2]
        angle = 2.0 * math.pi * u[:, 3] if self.cfg.rotate else torch.zeros(n, device=dev)
        flip = torch.where((u[:, 4] < 0.5) & self.cfg.rotate, -1.0, 1.0)
        half = bank.canvas_mm[les] * (bank.patch_px / 2.0) * zoom  # mm of half a canvas
        cos, sin = torch.cos(angle) / half, torch.sin(angle) / half
        ph, pw = px_mm[:, 0], px_mm[:, 1]
        # affine_grid's normalised output coordinates (align_corners=False): y = (Y * h + h - 1) / 2.
        dy_per, dy0 = flip * ph * (h / 2.0), flip * ph * ((h - 1) / 2.0 - yc)
        dx_per, dx0 = pw * (w / 2.0), pw * ((w - 1) / 2.0 - xc)
        theta = torch.stack(
            (
                torch.stack((cos * dx_per, sin * dy_per, cos * dx0 + sin * dy0), dim=1),  # canvas column
                torch.stack((-sin * dx_per, cos * dy_per, cos * dy0 - sin * dx0), dim=1),  # canvas row
            ),
            dim=1,
        )  # (n, 2, 3)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        centre_flat = flat[:, c // 2]
        patches = torch.cat(
            (bank.ct_hu[flat].float(), bank.alpha[flat].float(), bank.mask[centre_flat].float()[:, None]), dim=1
        )  # (n, 2C + 1, P, P)
        out = F.grid_sample(patches, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        les_hu, alpha, pasted = out[:, :c], out[:, c : 2 * c], (out[:, 2 * c] >= 0.5).float()

        # Keep a paste that lies in the lungs and does not touch the slice's own tumour.
        area = pasted.sum((1, 2))
        inside = (pasted * lung).sum((1, 2))
        overlap = (pasted * mask[:, 0].float()).amax((1, 2)) > 0
        ok = apply & has_lesion & has_lung & (area > 0) & (inside >= self.cfg.min_inside_fraction * area) & ~overlap
        self.last_fraction = ok.float().mean()
        weight = alpha * (valid & ok[:, None]).float()[:, :, None, None]
        if self.clip_hu is not None:
            les_hu = les_hu.clamp(float(self.clip_hu[0]), float(self.clip_hu[1]))
        ct_f = ct.float()
        ct_out = ct_f + weight * (les_hu / self.hu_scale - ct_f)
        mask_out = torch.where(((pasted > 0) & ok[:, None, None])[:, None], torch.ones_like(mask), mask)
        return ct_out.to(ct.dtype), mask_out


def config_from_train_options(rate: float, lesion_dir: str | None, options: dict[str, Any]) -> CopyPasteConfig:
    """The copy-paste config of ``lungtumor train`` (``--copy-paste-rate``, ``--lesion-dir`` and the
    config file's ``copy_paste_options``); checks the lesion folder before any training starts.

    Raises:
        ConfigError: bad options, or ``rate``/``lesion_dir`` inside ``copy_paste_options``.
        InputError: a lesion folder that is missing, empty, or has a crop without its mask.
    """
    both = sorted({"rate", "lesion_dir"} & set(options))
    if both:
        raise ConfigError(f"copy_paste_options must not set {both}; use the options copy_paste_rate / lesion_dir (--copy-paste-rate, --lesion-dir)")
    cfg = CopyPasteConfig.from_dict({**options, "rate": float(rate), "lesion_dir": str(lesion_dir) if lesion_dir else None})
    if cfg.enabled and cfg.lesion_dir is not None:
        crop_pairs(cfg.lesion_dir)
    return cfg
