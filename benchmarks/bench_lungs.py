"""Lung-region finder benchmark: tumour coverage, region size and speed.

Measures, for ``lungtumor.preprocessing.lungs.find_lung_region`` with its default config:

1. speed on a 512x512x300 CT (a FULL phantom case resampled to 300 slices, as
   ``bench_infer.py`` does) in nibabel's Fortran layout, in C layout and stored LPS;
2. on every labelled real scan in ``../shared/data/real`` (LUNG1-001 read from its DICOM folder)
   and on variants of them (cropped to the tumour's hemithorax with and without the lung cut by
   the field of view, slices subsampled to about 5 mm, slices repeated to 0.75 mm): the fraction
   of tumour voxels inside the region, the region's share of the scan, seconds;
3. the same on ``--phantoms`` FULL phantom cases (generated in memory);
4. the measurement behind the defaults (``--ablation``): on the analysis grid, the distance
   from each tumour voxel to the air lungs, to their per-slice convex hull and to the hull over
   a window of slices, i.e. the margin each strategy needs for 100 % coverage, and what it costs
   in region size; then the public config swept over hull window and margin on the real scans.

Run: ``.venv/bin/python benchmarks/bench_lungs.py [--phantoms 20] [--ablation] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from lungtumor.config import CANONICAL_AXCODES
from lungtumor.io.nifti import read_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import Volume, reorient
from lungtumor.phantom.dataset import make_case
from lungtumor.preprocessing import lungs as L
from lungtumor.preprocessing.lungs import LungRegionConfig, find_lung_region

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_CASES = (
    ("LUNG1-001 (DICOM)", "LUNG1-001/dicom", "LUNG1-001/gtv1_label.nii.gz"),
    ("LUNG1-002", "LUNG1-002/ct.nii.gz", "LUNG1-002/gtv1_label.nii.gz"),
    ("LIDC-IDRI-0001", "LIDC-IDRI-0001/ct.nii.gz", "LIDC-IDRI-0001/nodule_label.nii.gz"),
)
PHANTOM_SEED0 = 1000  # phantom cases are make_case(PHANTOM_SEED0 + n, "FULL")
TIMING_SLICES = 300
ABLATION_MARGIN_STEP_MM = 0.5
ABLATION_MAX_MARGIN_MM = 60.0
ABLATION_WINDOWS_MM = (0.0, 10.0, 20.0, 30.0)


# --------------------------------------------------------------------------------------------
# Cases


def crop(volume: Volume, box: tuple[tuple[int, int], ...]) -> Volume:
    """Sub-box with the affine moved to the box's first voxel."""
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array([b[0] for b in box], dtype=float) + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.array[tuple(slice(a, b) for a, b in box)]), affine, dict(volume.meta))


def every_nth_slice(volume: Volume, step: int) -> Volume:
    """Keep every ``step``-th slice (thicker slices, same anatomy)."""
    affine = volume.affine.copy()
    affine[:3, 2] *= step
    return Volume(np.ascontiguousarray(volume.array[:, :, ::step]), affine, dict(volume.meta))


def repeat_slices(volume: Volume, times: int) -> Volume:
    """Each slice ``times`` times (thinner slices, same anatomy)."""
    affine = volume.affine.copy()
    affine[:3, 2] /= times
    affine[:3, 3] -= affine[:3, 2] * (times - 1) / 2.0  # slice centres stay within the old slabs
    return Volume(np.repeat(volume.array, times, axis=2), affine, dict(volume.meta))


def variants(name: str, ct: Volume, label: Volume) -> list[tuple[str, Volume, Volume]]:
    """The scan itself, two hemithorax crops, ~5 mm and 0.75 mm slices (canonical orientation)."""
    ct_c, _ = reorient(ct, CANONICAL_AXCODES)
    lab_c, _ = reorient(label, CANONICAL_AXCODES)
    hit = np.argwhere(lab_c.array)
    n_i, n_j, n_k = ct_c.shape
    right = hit[:, 0].mean() < n_i / 2  # ('L','A','S'): low i is the patient's right
    half = ((0, int(0.55 * n_i)), (0, n_j), (0, n_k)) if right else ((int(0.45 * n_i), n_i), (0, n_j), (0, n_k))
    i0, i1 = int(hit[:, 0].min()), int(hit[:, 0].max())
    # tight: lung cut laterally (10 voxels past the tumour) and in front and behind (no body outline)
    lateral = (max(0, i0 - 10), min(n_i, i1 + 60)) if right else (max(0, i0 - 60), min(n_i, i1 + 10))
    tight = (lateral, (max(0, int(hit[:, 1].min()) - 15), min(n_j, int(hit[:, 1].max()) + 15)), (0, n_k))
    step = max(1, round(5.0 / ct_c.spacing_mm[2]))
    times = max(1, round(ct_c.spacing_mm[2] / 0.75))
    out = [(name, ct, label)]
    out.append((f"{name}, tumour's half (body outline kept)", crop(ct_c, half), crop(lab_c, half)))
    out.append((f"{name}, hemithorax crop (lung cut, no body outline)", crop(ct_c, tight), crop(lab_c, tight)))
    if step > 1:
        thick = every_nth_slice(ct_c, step)
        out.append((f"{name}, 1 slice in {step} ({thick.spacing_mm[2]:.1f} mm)", thick, every_nth_slice(lab_c, step)))
    if times > 1:
        thin = repeat_slices(ct_c, times)
        out.append((f"{name}, slices x{times} ({thin.spacing_mm[2]:.2f} mm)", thin, repeat_slices(lab_c, times)))
    return out


def real_cases() -> list[tuple[str, Volume, Volume]]:
    """The labelled real scans (empty when ../shared is absent)."""
    if not REAL.is_dir():
        return []
    return [(name, read_volume(REAL / ct), read_nifti(REAL / lab)) for name, ct, lab in REAL_CASES]


def timing_ct(seed: int = 0) -> Volume:
    """A FULL phantom case resampled (nearest slice) to 512x512x300, Fortran-ordered like nibabel's."""
    ct, _ = make_case(seed, size="FULL")
    idx = np.linspace(0, ct.shape[2] - 1, TIMING_SLICES).round().astype(int)
    affine = ct.affine.copy()
    affine[:3, 2] *= (ct.shape[2] - 1) / (TIMING_SLICES - 1)
    return Volume(np.asfortranarray(ct.array[:, :, idx]), affine, {"path": f"phantom FULL seed {seed}, 300 slices"})


# --------------------------------------------------------------------------------------------
# Measurements


def measure(name: str, ct: Volume, label: Volume, cfg: LungRegionConfig | None = None) -> dict[str, Any]:
    """Coverage, size and time of one region."""
    t0 = time.perf_counter()
    region = find_lung_region(ct, config=cfg)
    seconds = time.perf_counter() - t0
    tumour = np.asarray(label.array) > 0
    n = int(np.count_nonzero(tumour))
    inside = int(np.count_nonzero(region.mask.array[tumour]))
    return {
        "case": name,
        "shape": list(ct.shape),
        "spacing_mm": [round(s, 3) for s in ct.spacing_mm],
        "tumour_voxels": n,
        "inside_voxels": inside,
        "inside_pct": 100.0 * inside / n if n else float("nan"),
        "region_pct": 100.0 * float(region.volume_ml) / (ct.voxel_volume_ml * float(np.prod(ct.shape))),
        "region_ml": region.volume_ml,
        "lung_ml": region.lung_volume_ml,
        "found": region.found,
        "seconds": seconds,
        "warnings": list(region.warnings),
    }


def time_layouts(repeats: int) -> list[dict[str, Any]]:
    """find_lung_region on the 512x512x300 CT in three storage layouts (min and median of repeats)."""
    ct = timing_ct()
    flip_j = np.eye(4)
    flip_j[1, 1], flip_j[1, 3] = -1.0, ct.shape[1] - 1
    layouts = {
        "('L','A','S'), Fortran order (nibabel, MSD)": ct,
        "('L','A','S'), C order": Volume(np.ascontiguousarray(ct.array), ct.affine),
        "('L','P','S'), Fortran order (the real NSCLC/LIDC files)": Volume(np.asfortranarray(ct.array[:, ::-1]), ct.affine @ flip_j),
    }
    rows = []
    for name, vol in layouts.items():
        find_lung_region(vol)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            region = find_lung_region(vol)
            times.append(time.perf_counter() - t0)
        rows.append({"layout": name, "shape": list(vol.shape), "min_s": min(times), "median_s": statistics.median(times),
                     "region_pct": 100.0 * float(region.mask.array.mean())})
    return rows


def ablation(cases: list[tuple[str, Volume, Volume]]) -> dict[str, Any]:
    """Margin each strategy needs for 100 % coverage, measured on the default analysis grid.

    Conservative: a tumour voxel counts by its analysis-grid voxel's centre (up to half a block,
    1.5 mm, farther than the voxel itself), so the public config may need a little less.

    Strategies: dilate the air lungs; per-slice convex hull of both lungs, then dilate; the
    hull over a window of +-w mm of slices, then dilate. Distances (mm) are from each tumour
    voxel's analysis-grid voxel to the nearest voxel of the strategy's set (Euclidean, the grid's
    anisotropic spacing); the region share is that of the set dilated by the needed margin.
    """
    cfg = LungRegionConfig()
    strategies = ["air lungs", *[f"hull +-{w:g} mm" for w in ABLATION_WINDOWS_MM]]
    per_case: dict[str, dict[str, Any]] = {}
    for name, ct, label in cases:
        ct_c, _ = reorient(ct, CANONICAL_AXCODES)
        lab_c, _ = reorient(label, CANONICAL_AXCODES)
        spacing = ct_c.spacing_mm
        stride = (
            max(1, round(cfg.working_spacing_mm / spacing[0])),
            max(1, round(cfg.working_spacing_mm / spacing[1])),
            max(1, round(cfg.working_slice_mm / spacing[2])),
        )
        low = np.ascontiguousarray(ct_c.array[stride[0] // 2 :: stride[0], stride[1] // 2 :: stride[1], stride[2] // 2 :: stride[2]])
        low_spacing = tuple(s * t for s, t in zip(spacing, stride))
        lungs = L._lung_components(low, low_spacing, cfg)
        hit = np.argwhere(lab_c.array)
        if hit.size == 0 or not lungs.any():
            continue
        cells = np.minimum(hit // np.array(stride), np.array(low.shape) - 1)
        cells = np.unique(cells, axis=0)
        row = {}
        for strategy in strategies:
            if strategy == "air lungs":
                region = lungs
            else:
                window = round(float(strategy.split("+-")[1].split()[0]) / low_spacing[2])
                lo, hi = L._row_extremes(lungs)
                if window > 0:
                    lo = ndimage.minimum_filter1d(lo, 2 * window + 1, axis=1, mode="constant", cval=np.inf)
                    hi = ndimage.maximum_filter1d(hi, 2 * window + 1, axis=1, mode="constant", cval=-np.inf)
                lo, hi = L._hull_spans(lo, hi)
                i = np.arange(low.shape[0])[:, None, None]
                region = (i >= lo - 1e-9) & (i <= hi + 1e-9)
            distance = ndimage.distance_transform_edt(~region, sampling=low_spacing)
            margins = np.arange(0.0, ABLATION_MAX_MARGIN_MM + ABLATION_MARGIN_STEP_MM, ABLATION_MARGIN_STEP_MM)
            share = np.searchsorted(np.sort(distance.ravel()), margins, side="right") / distance.size
            row[strategy] = {
                "needed_margin_mm": float(distance[tuple(cells.T)].max()),
                "region_pct_by_margin": (100.0 * share).tolist(),  # at 0, 0.5, 1, ... mm
            }
        per_case[name] = row
    summary = {}
    for strategy in strategies:
        needed = max(per_case[c][strategy]["needed_margin_mm"] for c in per_case)
        step = min(int(np.ceil(needed / ABLATION_MARGIN_STEP_MM - 1e-9)), int(ABLATION_MAX_MARGIN_MM / ABLATION_MARGIN_STEP_MM))
        summary[strategy] = {
            "needed_margin_mm": needed,
            "mean_region_pct": statistics.mean(per_case[c][strategy]["region_pct_by_margin"][step] for c in per_case),
        }
    return {"per_case": per_case, "summary": summary}


def sweep(cases: list[tuple[str, Volume, Volume]]) -> list[dict[str, Any]]:
    """The public config over hull window x in-plane margin (z margin 10 mm, and two others), on the given cases."""
    rows = []
    combos = [(w, m, 10.0) for w in (0.0, 10.0, 20.0, 30.0) for m in (5.0, 7.5, 10.0, 15.0, 20.0)]
    combos += [(20.0, 15.0, 5.0), (20.0, 15.0, 15.0)]
    for window, margin, margin_z in combos:
        cfg = LungRegionConfig(hull_window_mm=window, margin_mm=margin, margin_z_mm=margin_z)
        results = [measure(name, ct, lab, cfg) for name, ct, lab in cases]
        rows.append({
            "hull_window_mm": window,
            "margin_mm": margin,
            "margin_z_mm": margin_z,
            "min_inside_pct": min(r["inside_pct"] for r in results),
            "outside_voxels": sum(r["tumour_voxels"] - r["inside_voxels"] for r in results),
            "mean_region_pct": statistics.mean(r["region_pct"] for r in results),
        })
    return rows


# --------------------------------------------------------------------------------------------
# Report


def print_rows(rows: list[dict[str, Any]]) -> None:
    print("| case | shape | spacing mm | tumour voxels | inside | region % of scan | region ml | lungs ml | s | warnings |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        inside = "no tumour" if r["tumour_voxels"] == 0 else f"{r['inside_pct']:.2f} %"
        warns = "; ".join(w.split(": ", 1)[-1] for w in r["warnings"]) or ""
        print(
            f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {' x '.join(f'{s:g}' for s in r['spacing_mm'])} | "
            f"{r['tumour_voxels']:,} | {inside} | {r['region_pct']:.1f} | {r['region_ml']:.0f} | {r['lung_ml']:.0f} | "
            f"{r['seconds']:.2f} | {warns} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=20, help="FULL phantom cases (default 20)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (default 5)")
    ap.add_argument("--ablation", action="store_true", help="also measure the strategies and sweep the config")
    ap.add_argument("--json", default=None, help="write every number to this JSON file")
    ap.add_argument("--timing-only", action="store_true", help="only the 512x512x300 speed measurement")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"defaults: {LungRegionConfig().to_dict()}\n")
    out: dict[str, Any] = {"machine": machine(), "config": LungRegionConfig().to_dict()}

    out["timing"] = time_layouts(a.repeats)
    print("## speed, 512x512x300 CT")
    for r in out["timing"]:
        print(f"- {r['layout']}: min {r['min_s']:.3f} s, median {r['median_s']:.3f} s (region {r['region_pct']:.1f} % of the scan)")
    if a.timing_only:
        return

    real = real_cases()
    if not real:
        print(f"\n(real scans absent at {REAL}: skipped)")
    rows = []
    for name, ct, label in real:
        for vname, vct, vlab in variants(name, ct, label):
            rows.append(measure(vname, vct, vlab))
    out["real"] = rows
    print("\n## real scans")
    print_rows(rows)

    phantom_rows, phantom_cases = [], []
    for n in range(a.phantoms):
        ct, label = make_case(PHANTOM_SEED0 + n, "FULL")
        phantom_rows.append(measure(f"phantom {PHANTOM_SEED0 + n}", ct, label))
        if a.ablation and np.any(label.array):
            phantom_cases.append((f"phantom {PHANTOM_SEED0 + n}", ct, label))
    out["phantom"] = phantom_rows
    print(f"\n## {a.phantoms} FULL phantom cases")
    print_rows(phantom_rows)
    with_tumour = [r for r in phantom_rows if r["tumour_voxels"]]
    if phantom_rows:
        print(
            f"\nphantom: {len(with_tumour)} cases with tumour, {sum(r['tumour_voxels'] for r in with_tumour):,} tumour voxels, "
            f"{sum(r['tumour_voxels'] - r['inside_voxels'] for r in with_tumour)} outside; min inside "
            f"{min((r['inside_pct'] for r in with_tumour), default=float('nan')):.2f} %; region {statistics.mean(r['region_pct'] for r in phantom_rows):.1f} % "
            f"of the scan (mean), {statistics.median(r['seconds'] for r in phantom_rows):.2f} s median"
        )

    if a.ablation:
        base = [(n, c, lab) for n, c, lab in real] + phantom_cases
        out["ablation"] = ablation(base)
        print("\n## margin each strategy needs for 100 % coverage (analysis grid)")
        print("| strategy | needed margin mm (max over cases) | worst case | region % at that margin (mean) |")
        print("| --- | ---: | --- | ---: |")
        for strategy, s in out["ablation"]["summary"].items():
            worst = max(out["ablation"]["per_case"], key=lambda c, s_=strategy: out["ablation"]["per_case"][c][s_]["needed_margin_mm"])
            print(f"| {strategy} | {s['needed_margin_mm']:.1f} | {worst} | {s['mean_region_pct']:.1f} |")
        out["sweep"] = sweep(real)
        print("\n## public config on the real scans: hull window x margins")
        print("| hull window mm | margin mm | z margin mm | min inside % | tumour voxels outside | region % (mean) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in out["sweep"]:
            print(
                f"| {r['hull_window_mm']:g} | {r['margin_mm']:g} | {r['margin_z_mm']:g} | {r['min_inside_pct']:.2f} | "
                f"{r['outside_voxels']} | {r['mean_region_pct']:.1f} |"
            )

    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
