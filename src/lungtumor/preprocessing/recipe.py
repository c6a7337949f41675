"""The seed's slice recipe, bit for bit: a CT -> model slices and model outputs -> the CT's grid.

The arithmetic of the seed preset (:class:`~lungtumor.preprocessing.presets.SeedPreset` calls
:func:`prepare_stack` and :func:`restore_canonical` on the canonical array it was given);
:func:`prepare_ct`, :func:`prepare_mask` and :func:`restore_slices` are the recipe on a whole
Volume, the reference the preset is tested against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungtumor.config import PreprocessConfig
from lungtumor.errors import GeometryError, InputError
from lungtumor.io.volume import Volume, to_canonical, undo_reorient_array

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# One volume


@dataclass(frozen=True)
class PreparedCT:
    """A CT volume turned into model-ready axial slices, plus what is needed to undo it.

    Attributes:
        slices: (D, S, S) float32, HU / hu_scale, D = kept axial slices.
        ornt: nibabel orientation transform original -> canonical.
        canonical_shape: (I, J, K) shape after reorientation.
        kept_start: index of the first kept slice along the canonical axial axis.
    """

    slices: np.ndarray
    ornt: np.ndarray
    canonical_shape: tuple[int, int, int]
    kept_start: int


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output pixel for nearest-neighbour resizing.

    ``floor(i * n_in / n_out)``: the rule of OpenCV's INTER_NEAREST (the seed's) and of torch's
    ``mode="nearest"``.
    """
    return np.minimum((np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


#: Slices converted and resized at a time: bounds the float32 working memory of a big scan.
CHUNK_SLICES = 32


def _as_slice(indices: np.ndarray) -> np.ndarray | slice:
    """A regular index progression as a slice (a view instead of a gather), else unchanged."""
    if len(indices) > 1:
        step = int(indices[1] - indices[0])
        if step > 0 and np.array_equal(indices, np.arange(indices[0], indices[0] + step * len(indices), step)):
            return slice(int(indices[0]), int(indices[0]) + step * len(indices), step)
    return indices


def _torch_view(array: np.ndarray) -> Any:
    """A torch tensor over ``array`` without a copy where numpy's strides allow it (flipped
    axes have negative strides, which torch does not take: those are copied)."""
    import torch

    if any(st < 0 for st in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


def prepare_stack(canonical: np.ndarray, start: int, cfg: PreprocessConfig, *, is_mask: bool) -> np.ndarray:
    """Canonical (I, J, K) array -> (K - start, S, S) resized axial slices, in chunks.

    The chunks bound the float working memory of a big scan. The CT chunk is converted to
    float32 straight from its (possibly Fortran-ordered) view in one pass, resized, and only
    then divided by ``hu_scale`` (resizing is linear, so the order does not matter, and the
    division touches 4x fewer pixels at 512 -> 256). Masks with nearest neighbour are indexed
    directly, without a float copy.
    """
    import torch.nn.functional as F

    depth = canonical.shape[2] - start
    size = cfg.size
    out = np.empty((depth, size, size), dtype=np.uint8 if is_mask else np.float32)
    if is_mask and cfg.mask_interpolation == "nearest":
        rows = _as_slice(nearest_indices(canonical.shape[0], size))
        cols = _as_slice(nearest_indices(canonical.shape[1], size))
    for c0 in range(0, depth, CHUNK_SLICES):
        c1 = min(depth, c0 + CHUNK_SLICES)
        view = canonical[:, :, start + c0 : start + c1]  # (I, J, n)
        if is_mask and cfg.mask_interpolation == "nearest":
            out[c0:c1] = np.moveaxis(view[rows][:, cols], 2, 0) != 0
            continue
        t = _torch_view(view).permute(2, 0, 1).float().unsqueeze(1)  # (n, 1, I, J) float32
        mode = cfg.mask_interpolation if is_mask else cfg.image_interpolation
        # Out of place: for a float32 volume already at the slice size, ``t`` is a view of the caller's array.
        if not is_mask and cfg.clip_hu is not None:
            t = t.clamp(cfg.clip_hu[0], cfg.clip_hu[1])
        if t.shape[-2:] != (size, size):
            kwargs: dict[str, Any] = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            t = F.interpolate(t, size=(size, size), mode=mode, **kwargs)
        if is_mask:
            out[c0:c1] = (t[:, 0] > 0.5).numpy()
        else:
            t = t / cfg.hu_scale
            out[c0:c1] = t[:, 0].numpy()
    return out


def prepare_ct(ct: Volume, cfg: PreprocessConfig) -> PreparedCT:
    """Apply the preprocessing recipe to a CT in HU.

    Raises:
        InputError: the scan has no slices left after dropping ``skip_inferior_slices``.
    """
    canon = to_canonical(ct, cfg.axcodes)
    depth = canon.canonical.shape[2]
    if depth <= cfg.skip_inferior_slices:
        raise InputError(
            f"{ct.meta.get('path', 'CT')}: has {depth} axial slices, not more than the "
            f"{cfg.skip_inferior_slices} the recipe drops; use --skip-inferior-slices smaller than {depth}"
        )
    slices = prepare_stack(canon.canonical.array, cfg.skip_inferior_slices, cfg, is_mask=False)
    return PreparedCT(slices, canon.ornt, canon.canonical.shape, cfg.skip_inferior_slices)


def prepare_mask(mask: Volume, cfg: PreprocessConfig) -> np.ndarray:
    """The label counterpart of :func:`prepare_ct`: (D, S, S) uint8 {0, 1}."""
    canon = to_canonical(mask, cfg.axcodes)
    return prepare_stack(canon.canonical.array, cfg.skip_inferior_slices, cfg, is_mask=True)


def restore_canonical(
    probs: np.ndarray, canonical_shape: tuple[int, int, int], kept_start: int, threshold: float | None = None
) -> np.ndarray:
    """A (D, S, S) probability stack back onto the canonical grid (the reorientation is not undone).

    Probabilities (not binary masks) are resized back bilinearly to the canonical in-plane
    size and slices the recipe dropped are put back as zeros. With ``threshold`` the result is a
    uint8 mask ``prob > threshold`` (thresholded after resizing, chunk by chunk, so no full-size
    float copy is made); else float32 probabilities.
    """
    import torch
    import torch.nn.functional as F

    ci, cj, ck = canonical_shape
    canon = np.zeros((ci, cj, ck), dtype=np.float32 if threshold is None else np.uint8)
    depth = probs.shape[0]
    for c0 in range(0, depth, CHUNK_SLICES):
        c1 = min(depth, c0 + CHUNK_SLICES)
        t = torch.from_numpy(np.ascontiguousarray(probs[c0:c1], dtype=np.float32)).unsqueeze(1)
        if t.shape[-2:] != (ci, cj):
            t = F.interpolate(t, size=(ci, cj), mode="bilinear", align_corners=False)
        chunk = t.squeeze(1).numpy()  # (n, I, J)
        if threshold is not None:
            chunk = chunk > threshold
        canon[:, :, kept_start + c0 : kept_start + c1] = np.moveaxis(chunk, 0, 2)
    return canon


def restore_slices(
    probs: np.ndarray, prepared: PreparedCT, original_shape: tuple[int, ...], threshold: float | None = None
) -> np.ndarray:
    """Inverse of :func:`prepare_ct` for a (D, S, S) probability stack.

    :func:`restore_canonical` (bilinear resize back, dropped slices as zeros, optional
    threshold), then the reorientation is undone.

    Returns:
        Array with exactly ``original_shape``.
    """
    canon = restore_canonical(probs, prepared.canonical_shape, prepared.kept_start, threshold)
    out = undo_reorient_array(canon, prepared.ornt)
    if out.shape != tuple(original_shape):
        raise GeometryError(f"internal: restored shape {out.shape} != original {tuple(original_shape)}")
    return np.ascontiguousarray(out)
