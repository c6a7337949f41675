"""Alignment of a follow-up CT to a baseline CT of the same patient (SimpleITK), restricted to the lungs.

What :func:`register_followup` does, and why:

- **Frames.** :class:`~lungtumor.io.volume.Volume` affines map voxel indices to RAS+ mm; ITK
  (SimpleITK) images live in LPS mm. :func:`to_sitk` converts once (x and y negated: origin and
  direction), and every transform handed back is converted to RAS+ the same way
  (``M_ras = F @ M_lps @ F`` with ``F = diag(-1, -1, 1, 1)``), tested with known motions on LAS and
  LPS grids.
- **Direction.** ITK estimates the map from *fixed* (baseline) physical points to *moving*
  (follow-up) physical points, the direction a resampler needs. The record keeps that one
  (``baseline_to_followup_ras``) and its inverse (``followup_to_baseline_ras``), which takes a
  follow-up lesion's coordinates into the baseline's world.
- **Masks.** The metric only samples the tumour-inclusive lung regions of
  :func:`lungtumor.preprocessing.lungs.find_lung_region` (fixed and moving masks): the lungs,
  the chest wall and mediastinum next to them, not the arms, the table or the abdomen, which move
  independently between visits.
- **Method.** Mattes mutual information (:data:`MI_BINS` bins, on HU) or mean squares, a random
  :data:`SAMPLES_PER_LEVEL` of the mask's voxels per level (fixed seed), linear interpolation, image
  gradients at the sample points (ITK's default gradient-image filter costs a whole-image pass per
  level: 1.1 s of 1.4 s per metric set-up here), regular-step gradient descent with scales from
  physical shift, two resolution levels
  (:data:`SHRINK_FACTORS`, smoothing in mm). Rigid: 6 degrees of freedom
  (``sitk.Euler3DTransform``); ``affine=True`` then refines a 12-parameter affine from the rigid
  result. Initialised by the centroids of the two lung-air masks (``CenteredTransformInitializer``,
  moments), which takes care of different table positions and fields of view.
- **Working grid.** Both CTs are first bin-averaged (``sitk.BinShrink``, integer factors) to about
  :data:`WORK_SPACING_MM`: a 512x512 CT at 0.7 mm becomes 2.8 mm in-plane, which keeps
  registration at about a second while the final accuracy stays well below a millimetre-scale
  voxel (landmark error measured in ``benchmarks/bench_followup.py``).
- **Quality.** The Dice overlap of the two lung-air masks after alignment (the follow-up's resampled
  onto the baseline's lung grid, nearest neighbour), and before it for comparison. An alignment is
  refused as implausible (``ok=False``, with a plain statement) when a scan has no lungs, the lung
  Dice is below :data:`MIN_LUNG_DICE`, the rotation exceeds :data:`MAX_ROTATION_DEG` (patients lie
  supine at both visits), an affine scales by more than :data:`AFFINE_SCALE_RANGE`, or SimpleITK
  fails. The caller then matches lesions by centroid distance alone through
  :attr:`Alignment.fallback_followup_to_baseline_ras` (the lung-centroid translation where both
  scans have lungs, else the scanners' own coordinates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lungtumor.errors import ConfigError
from lungtumor.io.volume import Volume
from lungtumor.preprocessing.lungs import LungRegion, find_lung_region

#: RAS+ <-> LPS (x and y negated); its own inverse.
FLIP_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: CTs are bin-averaged to about this spacing (mm, integer factors per axis) before registration.
WORK_SPACING_MM = 2.5
#: Multi-resolution pyramid over the working grid: shrink factors and Gaussian smoothing (mm) per
#: level, coarse to fine. A third level at the working grid itself (shrink 1) cost 0.5-0.8 s more on
#: the SMALL phantom for a landmark error of 0.03-0.1 mm instead of 0.05-0.1 mm, so it is left out.
SHRINK_FACTORS = (4, 2)
SMOOTHING_MM = (4.0, 2.0)
#: Mattes mutual information: histogram bins.
MI_BINS = 32
#: Voxels of the fixed lung region sampled by the metric at each iteration of each level (random,
#: fixed seed): 30,000 instead of 10,000 took 1.5-2.5x longer for no better landmark error.
SAMPLES_PER_LEVEL = 10_000
SAMPLING_SEED = 20240613
#: Regular-step gradient descent: first step (mm of physical shift), smallest step, iterations per level.
LEARNING_RATE = 2.0
MIN_STEP = 1e-2
MAX_ITERATIONS = 200
RELAXATION = 0.5
#: An alignment whose lung-air Dice is below this is implausible (then: centroid matching only).
MIN_LUNG_DICE = 0.8
#: Rotations larger than this (degrees, axis-angle) are implausible between two supine chest CTs.
MAX_ROTATION_DEG = 30.0
#: An affine whose singular values leave this range is implausible (lungs do not double in size).
AFFINE_SCALE_RANGE = (0.8, 1.25)
METRICS = ("mattes", "meansquares")
METRIC_TEXT = {
    "mattes": f"Mattes mutual information ({MI_BINS} bins) on HU",
    "meansquares": "mean squares of HU differences",
}
DIRECTION_TEXT = (
    "followup_to_baseline_ras maps a point of the follow-up scan (RAS+ mm of its own file) to the same anatomy in the "
    "baseline scan (RAS+ mm); baseline_to_followup_ras is its inverse (ITK's fixed-to-moving map, converted from LPS)"
)


def _sitk() -> Any:
    import SimpleITK as sitk

    return sitk


# --------------------------------------------------------------------------------------------
# Frames


def to_sitk(volume: Volume, dtype: Any = None) -> Any:
    """The volume as a SimpleITK image in LPS mm (same voxels, exactly the same points in space).

    Args:
        volume: any Volume (RAS+ affine, array indexed ``[i, j, k]``).
        dtype: numpy dtype of the image's voxels (default: the array's).

    Returns:
        ``sitk.Image`` whose voxel (i, j, k) lies at ``F @ volume.affine @ (i, j, k, 1)``.
    """
    sitk = _sitk()
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    if array.dtype == bool:
        array = array.view(np.uint8)
    # SimpleITK's numpy view is (k, j, i); the transpose of a Fortran-ordered NIfTI array is C-ordered.
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    lps = FLIP_LPS_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    return image


def sitk_affine_ras(image: Any) -> np.ndarray:
    """The RAS+ voxel -> mm affine of a SimpleITK image (inverse of :func:`to_sitk`'s geometry)."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = image.GetOrigin()
    return FLIP_LPS_RAS @ lps


def transform_matrix_lps(transform: Any) -> np.ndarray:
    """4x4 matrix of an affine-family SimpleITK transform acting on LPS points (read off by probing)."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    out = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        out[:3, axis] = np.asarray(transform.TransformPoint(tuple(unit))) - origin
    out[:3, 3] = origin
    return out


def lps_to_ras_matrix(matrix_lps: np.ndarray) -> np.ndarray:
    """A 4x4 point map in LPS mm as the same map in RAS+ mm."""
    return FLIP_LPS_RAS @ np.asarray(matrix_lps, dtype=np.float64) @ FLIP_LPS_RAS


def sitk_affine_transform(matrix_ras: np.ndarray) -> Any:
    """A 4x4 RAS+ point map as a ``sitk.AffineTransform`` acting on LPS points."""
    sitk = _sitk()
    lps = FLIP_LPS_RAS @ np.asarray(matrix_ras, dtype=np.float64) @ FLIP_LPS_RAS
    out = sitk.AffineTransform(3)
    out.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    out.SetTranslation([float(v) for v in lps[:3, 3]])
    return out


def map_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) points through a 4x4 matrix."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Axis-angle rotation of the nearest rotation to a 4x4's linear part (polar decomposition), degrees."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64)[:3, :3])
    rot = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def resample_onto(
    volume: Volume,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    target_to_source_ras: np.ndarray | None = None,
    *,
    label: bool,
    fill: float | None = None,
) -> Volume:
    """Resample ``volume`` onto the grid (``shape``, ``affine``) through a point map.

    The kind of image chooses the interpolator: labels nearest neighbour, CT linear.

    Args:
        volume: the source.
        shape, affine: the target grid (RAS+ affine).
        target_to_source_ras: 4x4 map from target-grid RAS+ mm to source RAS+ mm (None = identity:
            the same points in space).
        label: True for masks and instance labels (nearest neighbour, dtype kept), False for CT (linear).
        fill: value outside the source (default 0 for labels, -1024 HU for CT).

    Returns:
        The resampled Volume (source's meta).
    """
    sitk = _sitk()
    reference = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    lps = FLIP_LPS_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetOrigin([float(v) for v in lps[:3, 3]])
    reference.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    transform = sitk_affine_transform(np.eye(4) if target_to_source_ras is None else target_to_source_ras)
    source = to_sitk(volume, None if label else np.float32)
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    default = float(fill if fill is not None else (0.0 if label else -1024.0))
    out = sitk.Resample(source, reference, transform, interpolator, default, source.GetPixelID())
    array = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    return Volume(array, np.asarray(affine, dtype=np.float64), dict(volume.meta))


# --------------------------------------------------------------------------------------------
# The alignment record


@dataclass(frozen=True)
class Alignment:
    """The result of :func:`register_followup` (see the module docstring).

    Attributes:
        ok: the alignment is usable for overlap matching.
        statement: one plain sentence about the result (what failed, and what the matching does then).
        kind: ``"rigid"``, ``"affine"`` or ``"none"`` (not attempted).
        followup_to_baseline_ras: 4x4 RAS+ map found by the registration (identity when not attempted).
        fallback_followup_to_baseline_ras: 4x4 RAS+ map used when ``ok`` is False: the translation
            between the lung-air centroids, or identity without lungs.
        metric_value: final metric value (Mattes MI is negative: lower is better).
        lung_dice, lung_dice_before: lung-air Dice after and before (identity) the alignment.
        record: everything else for the JSON record (ITK parameters, optimizer, levels, timing).
    """

    ok: bool
    statement: str
    kind: str
    followup_to_baseline_ras: np.ndarray
    fallback_followup_to_baseline_ras: np.ndarray
    metric_value: float | None = None
    lung_dice: float | None = None
    lung_dice_before: float | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline_to_followup_ras(self) -> np.ndarray:
        """Inverse of :attr:`followup_to_baseline_ras`."""
        return np.linalg.inv(self.followup_to_baseline_ras)

    @property
    def matching_followup_to_baseline_ras(self) -> np.ndarray:
        """The map the lesion matching uses: the registration's when ``ok``, else the fallback."""
        return self.followup_to_baseline_ras if self.ok else self.fallback_followup_to_baseline_ras

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (matrices as nested lists, RAS+ mm)."""
        forward = self.followup_to_baseline_ras
        used = self.matching_followup_to_baseline_ras
        return {
            "ok": self.ok,
            "statement": self.statement,
            "kind": self.kind,
            "direction": DIRECTION_TEXT,
            "followup_to_baseline_ras": forward.tolist(),
            "baseline_to_followup_ras": np.linalg.inv(forward).tolist(),
            "translation_mm_ras": forward[:3, 3].tolist(),
            "rotation_deg": rotation_angle_deg(forward),
            "metric_value": self.metric_value,
            "lung_dice": self.lung_dice,
            "lung_dice_before": self.lung_dice_before,
            "min_lung_dice": MIN_LUNG_DICE,
            "used_for_matching": "registration" if self.ok else "fallback",
            "matching_followup_to_baseline_ras": used.tolist(),
            **self.record,
        }


# --------------------------------------------------------------------------------------------
# Registration


def _shrink(image: Any, target_mm: float) -> Any:
    """Bin-average to about ``target_mm`` (integer factors per axis, never below 1)."""
    sitk = _sitk()
    factors = [max(1, int(round(target_mm / s))) for s in image.GetSpacing()]
    return image if factors == [1, 1, 1] else sitk.BinShrink(image, factors)


def _mask_on(image_like: Any, mask: Volume) -> Any:
    """A lung mask resampled (nearest) onto the grid of a working image, uint8."""
    sitk = _sitk()
    return sitk.Resample(to_sitk(mask, np.uint8), image_like, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return None if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def lung_dice(baseline_lungs: Volume, followup_lungs: Volume, followup_to_baseline_ras: np.ndarray) -> float | None:
    """Dice of two lung masks within their common field of view, after mapping the follow-up's onto the
    baseline's grid (nearest neighbour).

    Only baseline voxels that map inside the follow-up's grid count (and, by construction, only the
    follow-up lung that maps inside the baseline's grid), so a follow-up that covers fewer slices of
    the lungs does not read as a poor alignment.

    Args:
        baseline_lungs, followup_lungs: lung masks, each on its own grid.
        followup_to_baseline_ras: the alignment (follow-up RAS+ -> baseline RAS+).

    Returns:
        Dice in [0, 1], or None when both are empty there.
    """
    inverse = np.linalg.inv(followup_to_baseline_ras)
    moved = resample_onto(followup_lungs, baseline_lungs.shape, baseline_lungs.affine, inverse, label=True)
    cover = resample_onto(
        followup_lungs.with_array(np.ones(followup_lungs.shape, dtype=np.uint8)), baseline_lungs.shape, baseline_lungs.affine, inverse, label=True
    )
    inside = np.asarray(cover.array) != 0
    return _dice((np.asarray(baseline_lungs.array) != 0) & inside, np.asarray(moved.array) != 0)


def _centroid_ras(mask: Volume) -> np.ndarray | None:
    idx = np.argwhere(np.asarray(mask.array) != 0)
    if idx.size == 0:
        return None
    return map_points(mask.affine, idx.mean(axis=0))[0]


def _fallback(baseline_lungs: LungRegion, followup_lungs: LungRegion) -> np.ndarray:
    """The lung-air centroid translation (follow-up -> baseline), identity without lungs in both."""
    out = np.eye(4)
    if baseline_lungs.found and followup_lungs.found:
        a, b = _centroid_ras(baseline_lungs.lung_mask), _centroid_ras(followup_lungs.lung_mask)
        if a is not None and b is not None:
            out[:3, 3] = a - b
    return out


def _plausibility(matrix: np.ndarray, dice: float | None, affine: bool) -> str | None:
    """Why an alignment is implausible, or None."""
    if dice is None or dice < MIN_LUNG_DICE:
        shown = "none" if dice is None else f"{dice:.3f}"
        return f"the lungs overlap poorly after alignment (lung Dice {shown} < {MIN_LUNG_DICE:g})"
    angle = rotation_angle_deg(matrix)
    if angle > MAX_ROTATION_DEG:
        return f"the alignment rotates the follow-up by {angle:.1f} degrees (more than {MAX_ROTATION_DEG:g})"
    if affine:
        scales = np.linalg.svd(matrix[:3, :3], compute_uv=False)
        lo, hi = AFFINE_SCALE_RANGE
        if scales.min() < lo or scales.max() > hi:
            return f"the affine scales the follow-up by {scales.min():.2f}-{scales.max():.2f} (outside {lo:g}-{hi:g})"
    return None


def _run(method: Any, fixed: Any, moving: Any, transform: Any, levels: tuple[int, ...], smoothing: tuple[float, ...]) -> Any:
    method.SetInitialTransform(transform, inPlace=True)
    method.SetShrinkFactorsPerLevel(list(levels))
    method.SetSmoothingSigmasPerLevel(list(smoothing))
    return method.Execute(fixed, moving)


def register_followup(
    baseline: Volume,
    followup: Volume,
    *,
    baseline_lungs: LungRegion | None = None,
    followup_lungs: LungRegion | None = None,
    affine: bool = False,
    metric: str = "mattes",
) -> Alignment:
    """Align the follow-up CT to the baseline CT within the lungs (see the module docstring).

    Args:
        baseline: baseline CT (HU), the fixed image.
        followup: follow-up CT (HU), the moving image; any grid, orientation or position.
        baseline_lungs, followup_lungs: their lung regions (found here when None).
        affine: refine a 12-parameter affine after the rigid alignment.
        metric: ``"mattes"`` (mutual information) or ``"meansquares"``.

    Returns:
        The alignment; ``ok=False`` (never an exception) when it failed or is implausible.

    Raises:
        ConfigError: unknown ``metric``.
    """
    if metric not in METRICS:
        raise ConfigError(f"registration metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    sitk = _sitk()
    t0 = time.perf_counter()
    b_lungs = baseline_lungs if baseline_lungs is not None else find_lung_region(baseline)
    f_lungs = followup_lungs if followup_lungs is not None else find_lung_region(followup)
    fallback = _fallback(b_lungs, f_lungs)
    kind = "affine" if affine else "rigid"
    record: dict[str, Any] = {
        "method": (
            f"SimpleITK ImageRegistrationMethod: {METRIC_TEXT[metric]}, masked to the tumour-inclusive lung regions of both "
            f"scans, regular-step gradient descent, {len(SHRINK_FACTORS)} levels (shrink {list(SHRINK_FACTORS)}, smoothing "
            f"{list(SMOOTHING_MM)} mm), working grid about {WORK_SPACING_MM:g} mm, initialised by the lung-air centroids; "
            + ("rigid (Euler3DTransform, 6 dof) then affine (12 dof)" if affine else "rigid (Euler3DTransform, 6 degrees of freedom)")
        ),
        "metric": metric,
        "baseline_lungs_found": b_lungs.found,
        "followup_lungs_found": f_lungs.found,
        "baseline_lung_air_ml": b_lungs.lung_volume_ml,
        "followup_lung_air_ml": f_lungs.lung_volume_ml,
        "lung_warnings": [*b_lungs.warnings, *f_lungs.warnings],
    }
    missing = [name for name, region in (("baseline", b_lungs), ("follow-up", f_lungs)) if not region.found]
    if missing:
        statement = (
            f"alignment not attempted: no lungs found in the {' and '.join(missing)} scan; lesions are matched by centroid "
            "distance alone in the scanners' own coordinates, which assumes both scans share a patient position (flagged)"
        )
        record["seconds"] = time.perf_counter() - t0
        return Alignment(False, statement, "none", np.eye(4), np.eye(4), record=record)

    fixed_full, moving_full = to_sitk(baseline), to_sitk(followup)
    fixed = sitk.Cast(_shrink(fixed_full, WORK_SPACING_MM), sitk.sitkFloat32)
    moving = sitk.Cast(_shrink(moving_full, WORK_SPACING_MM), sitk.sitkFloat32)
    del fixed_full, moving_full
    fixed_mask, moving_mask = _mask_on(fixed, b_lungs.mask), _mask_on(moving, f_lungs.mask)
    record["working_spacing_mm"] = {"baseline": list(fixed.GetSpacing()), "followup": list(moving.GetSpacing())}

    method = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=MI_BINS)
    else:
        method.SetMetricAsMeanSquares()
    method.SetMetricSamplingStrategy(method.RANDOM)
    mask_voxels = max(1, int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask))))
    method.SetMetricSamplingPercentagePerLevel(
        [min(1.0, SAMPLES_PER_LEVEL * factor**3 / mask_voxels) for factor in SHRINK_FACTORS], SAMPLING_SEED
    )
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetMetricFixedMask(fixed_mask)
    method.SetMetricMovingMask(moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=LEARNING_RATE, minStep=MIN_STEP, numberOfIterations=MAX_ITERATIONS, relaxationFactor=RELAXATION,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()

    iterations: list[int] = []
    levels_seen: list[float] = []

    def _level() -> None:  # the optimizer's iteration count of the level that just ended
        if levels_seen:
            iterations.append(int(method.GetOptimizerIteration()))
        levels_seen.append(time.perf_counter())

    method.AddCommand(sitk.sitkMultiResolutionIterationEvent, _level)
    method.AddCommand(sitk.sitkEndEvent, lambda: iterations.append(int(method.GetOptimizerIteration())))
    try:
        initial = sitk.CenteredTransformInitializer(
            sitk.Cast(to_sitk(b_lungs.lung_mask, np.uint8), sitk.sitkFloat32),
            sitk.Cast(to_sitk(f_lungs.lung_mask, np.uint8), sitk.sitkFloat32),
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
        rigid = sitk.Euler3DTransform(initial)
        _run(method, fixed, moving, rigid, SHRINK_FACTORS, SMOOTHING_MM)
        final: Any = rigid
        stops = [method.GetOptimizerStopConditionDescription()]
        itk = {"transform": "Euler3DTransform", "parameters": list(rigid.GetParameters()), "fixed_parameters": list(rigid.GetFixedParameters())}
        if affine:
            refined = sitk.AffineTransform(3)
            refined.SetCenter(rigid.GetCenter())
            refined.SetMatrix(rigid.GetMatrix())
            refined.SetTranslation(rigid.GetTranslation())
            _run(method, fixed, moving, refined, SHRINK_FACTORS[1:], SMOOTHING_MM[1:])
            final = refined
            stops.append(method.GetOptimizerStopConditionDescription())
            itk = {
                "transform": "AffineTransform", "parameters": list(refined.GetParameters()), "fixed_parameters": list(refined.GetFixedParameters()),
                "rigid_parameters": itk["parameters"],
            }
        metric_value = float(method.GetMetricValue())
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for everything (too few samples, ...)
        message = " ".join(str(exc).split())[-300:]
        statement = f"alignment failed in SimpleITK ({message}); lesions are matched by centroid distance alone after the lung-centroid translation (flagged)"
        record["seconds"] = time.perf_counter() - t0
        return Alignment(False, statement, kind, np.eye(4), fallback, record=record)

    baseline_to_followup = lps_to_ras_matrix(transform_matrix_lps(final))
    forward = np.linalg.inv(baseline_to_followup)
    dice = lung_dice(b_lungs.lung_mask, f_lungs.lung_mask, forward)
    before = lung_dice(b_lungs.lung_mask, f_lungs.lung_mask, np.eye(4))
    record.update(
        {
            "itk": {**itk, "frame": "LPS mm; maps baseline (fixed) points to follow-up (moving) points, as ITK resamples"},
            "optimizer_stop": stops,
            "iterations_per_level": iterations,
            "seconds": time.perf_counter() - t0,
        }
    )
    problem = _plausibility(forward, dice, affine)
    if problem is None:
        shift = float(np.linalg.norm(forward[:3, 3]))
        statement = (
            f"{kind} alignment succeeded: lung Dice {dice:.3f} (before {before:.3f}), rotation {rotation_angle_deg(forward):.1f} degrees, "
            f"translation {shift:.1f} mm"
        )
        return Alignment(True, statement, kind, forward, fallback, metric_value, dice, before, record)
    statement = (
        f"alignment implausible: {problem}; lesions are matched by centroid distance alone after the lung-centroid translation (flagged)"
    )
    return Alignment(False, statement, kind, forward, fallback, metric_value, dice, before, record)
