"""Predicted lesions re-scored by the checkpoint's second-stage 3D re-scorer (:mod:`lungtumor.model.rescorer`).

Each predicted lesion (a 26-connected component of the post-processed mask on the input's grid) is
scored at its centre (the centroid, or the lesion's voxel nearest to it where the centroid falls
outside the lesion: :func:`~lungtumor.model.rescorer.lesion_centres`): the centre goes through the input's affine and the slice grid's inverse
affine to continuous model-slice coordinates ``(slice, row, column)``, and the re-scorer's patch is
cut from the model slices (``PreparedScan.slices``: HU / ``hu_scale`` on the slice grid, exactly the
store's ``image.npy`` that the re-scorer was trained on) at the grid's spacing. An ensemble's
re-scorers are averaged.

The lesion score (:func:`lesion_scores`, :data:`~lungtumor.lesions.score.RESCORER_SCORE_TEXT`) is the
re-scorer's probability for a lesion whose longest axial diameter fits in the patch's width (30 mm by
default), and the U-Net's maximum probability (``prob_max``) for a larger one: a patch centred in a
large tumour sees tumour tissue from inside, as it sees the mediastinum among its negatives, and
scored masses under 0.5. Measured leave-one-scan-out at the CPU recipe's budget, three training
seeds (BENCHMARKS.md, "Nodule benchmark" (g)): at 0.5 this rule kept every tumour (9 of 9) with 1.1
false-positive lesions per scan, against 4.2 for ``prob_max``; the re-scorer's probability alone kept
6 of 9 (a mass lost in every seed; 0.2 per scan). A fourth run scored the 25 mm nodule 0.17, hence the
operating point 0.1 (:data:`~lungtumor.model.rescorer.RESCORER_MIN_LESION_SCORE`: 1.6 per scan).

Cost, measured on an AMD EPYC core (one torch thread, load average 3.7 on 2 cores): 20 lesions of a
150 x 220 x 180 slice stack take 9 ms to cut and 40 ms through the default network, against the
seconds to tens of seconds of the U-Net's pass over the scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lungtumor.io.volume import Volume
from lungtumor.lesions.components import LabelledInstances, label_cropped
from lungtumor.lesions.frame import slice_frame
from lungtumor.lesions.recist import instance_diameters_mm
from lungtumor.lesions.score import instance_scores, score_map
from lungtumor.model.rescorer import Rescorer, cut_patches, lesion_centres, score_patches
from lungtumor.preprocessing.grid import SliceGrid


def slice_spacing_mm(grid: SliceGrid) -> tuple[float, float, float]:
    """The model slices' voxel size along (slice, row, column) in mm."""
    row, col = grid.pixel_spacing_mm
    return (float(grid.spacing_mm[2]), float(row), float(col))


def input_to_slice_coords(grid: SliceGrid, ijk: np.ndarray) -> np.ndarray:
    """``(N, 3)`` continuous input voxel indices -> ``(N, 3)`` continuous model-slice coordinates (slice, row, column)."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    to_slices = np.linalg.inv(grid.slice_affine) @ np.asarray(grid.input_affine, dtype=np.float64)
    hwd = ijk @ to_slices[:3, :3].T + to_slices[:3, 3]
    return hwd[:, [2, 0, 1]]


def instance_centres(inst: LabelledInstances, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """``(count, 3)`` patch centres (indices of the full array) of instances 1..count
    (:func:`~lungtumor.model.rescorer.lesion_centres`: the centroid, inside the lesion)."""
    local = lesion_centres(inst.labels, inst.count, spacing_mm)
    return local + np.array([s.start for s in inst.box], dtype=np.float64)


def rescore_at(slices: np.ndarray, grid: SliceGrid, centres_slice: np.ndarray, rescorers: Sequence[Rescorer]) -> np.ndarray:
    """The mean re-scorer probability ``(N,)`` at model-slice coordinates ``centres_slice`` (N, 3)."""
    spacing = slice_spacing_mm(grid)
    total = np.zeros(len(centres_slice), dtype=np.float64)
    with torch.inference_mode():
        for net in rescorers:
            patches = cut_patches(slices, spacing, centres_slice, net.config, scale=grid.hu_scale)
            total += score_patches(net, patches)
    return total / max(1, len(rescorers))


def rescore_lesions(mask: Volume, slices: np.ndarray, grid: SliceGrid, rescorers: Sequence[Rescorer]) -> tuple[LabelledInstances, np.ndarray]:
    """The lesions of ``mask`` (on the input grid) and their re-scorer probabilities (by instance id 1..count)."""
    inst = label_cropped(np.asarray(mask.array) != 0)
    if inst.count == 0 or not rescorers:
        return inst, np.zeros(inst.count, dtype=np.float64)
    centres = input_to_slice_coords(grid, instance_centres(inst, mask.spacing_mm))
    return inst, rescore_at(slices, grid, centres, rescorers)


def patch_width_mm(rescorers: Sequence[Rescorer]) -> float:
    """The in-plane width (mm) of the narrowest re-scorer patch: lesions up to this long are theirs to score."""
    return min(float(net.config.extent_mm[1]) for net in rescorers)


def lesion_scores(mask: Volume, prob: Volume, slices: np.ndarray, grid: SliceGrid, rescorers: Sequence[Rescorer]) -> tuple[LabelledInstances, np.ndarray]:
    """The lesions of ``mask`` and their scores with re-scorers (by instance id 1..count): the re-scorers'
    mean probability for a lesion whose longest axial diameter is at most :func:`patch_width_mm`, the
    U-Net's maximum probability inside it (from ``prob``, on ``mask``'s grid) for a longer one."""
    inst, rescored = rescore_lesions(mask, slices, grid, rescorers)
    if inst.count == 0:
        return inst, rescored
    longest = instance_diameters_mm(inst, slice_frame(mask.affine, str(mask.meta.get("path") or "mask")))
    prob_max = instance_scores(inst, np.asarray(prob.array), mask.voxel_volume_ml, "prob_max")
    return inst, np.where(longest <= patch_width_mm(rescorers), rescored, prob_max)


def lesion_score_volume(mask: Volume, prob: Volume, slices: np.ndarray, grid: SliceGrid, rescorers: Sequence[Rescorer]) -> Volume:
    """A Volume on ``mask``'s grid holding each lesion's score (:func:`lesion_scores`) on its voxels
    (:func:`~lungtumor.lesions.score.score_map`; scored by ``prob_max`` it gives the scores back)."""
    inst, scores = lesion_scores(mask, prob, slices, grid, rescorers)
    return Volume(score_map(inst, scores, mask.shape), mask.affine, {**mask.meta, "path": None})
