"""Cropped copies of the real scans for the GPU check's real-CT stage (``gpu_check.sh --real-ct DIR``).

A GPU machine gets only what is carried to it (64 MiB at most), so each whole real scan (LUNG1-001
from its DICOM series, LUNG1-002, LIDC-IDRI-0001) is cut to its lung region (the project's lung-region
finder, ``preprocessing/lungs.py``, grown over the tumour label) plus ``MARGIN_MM`` on every side,
with the affine moved so that the voxels keep their place in the patient, and written as
``DIR/pairs/<case>_ct.nii.gz`` + ``_label.nii.gz``; the nodule crops are copied to ``DIR/crops/``
(with their manifest): as many as fit in ``--budget-mib`` with the scans, whole patients in a seeded
random order (all 990 need about 27 MiB more than fits beside the scans' 51 MiB). The lung preset's own crop (lung region + 5 mm) lies inside these copies, so
the stage's store is the one the whole scans give. Sizes are printed; the folder is git-ignored
(``.gpu_data/``) and must never be committed (the data's licences: see the data folder's README).

Run: ``python benchmarks/make_gpu_data.py [--real ../shared/data/real] [--out .gpu_data]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
DEFAULT_OUT = REPO / ".gpu_data"
#: Margin around the lung region, mm (the lung preset crops at 5 mm: this leaves room for it).
MARGIN_MM = 12.0
#: Real scans: case -> (CT source, label) under the real-data folder.
REAL_CASES = {
    "LUNG1-001": ("LUNG1-001/dicom", "LUNG1-001/gtv1_label.nii.gz"),
    "LUNG1-002": ("LUNG1-002/ct.nii.gz", "LUNG1-002/gtv1_label.nii.gz"),
    "LIDC-IDRI-0001": ("LIDC-IDRI-0001/ct.nii.gz", "LIDC-IDRI-0001/nodule_label.nii.gz"),
}
CROPS_DIR = "lidc_nodule_crops"
#: What the run tool carries at most, bytes (the working tree included).
CARRY_LIMIT_BYTES = 64 * 2**20
#: The whole folder is kept under this, so that the repository (about 2 MB) fits beside it.
DEFAULT_BUDGET_MIB = 60.0


def crop_box(shape: tuple[int, ...], bbox: tuple[tuple[int, int], ...], spacing_mm: tuple[float, ...], margin_mm: float) -> tuple[slice, ...]:
    """The index box ``bbox`` grown by ``margin_mm`` on each side (in voxels of each axis), clipped to ``shape``."""
    out = []
    for (lo, hi), n, sp in zip(bbox, shape, spacing_mm):
        m = int(np.ceil(margin_mm / float(sp)))
        out.append(slice(max(0, lo - m), min(n, hi + m)))
    return tuple(out)


def cropped_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of ``array[box]``: the same voxels at the same place in the patient."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], dtype=np.float64) + affine[:3, 3]
    return out


def make_case(case: str, ct_src: Path, label_src: Path, out: Path, margin_mm: float) -> dict[str, object]:
    """Crop one scan and its label to the lung region + margin; returns sizes."""
    from lungtumor.io.nifti import read_nifti, write_nifti
    from lungtumor.io.readers import read_volume
    from lungtumor.io.volume import Volume
    from lungtumor.preprocessing.lungs import find_lung_region, include_label

    ct, label = read_volume(ct_src), read_nifti(label_src)
    region = find_lung_region(ct)
    if region.found:
        region, _ = include_label(region, label)
    bbox = region.bbox_ijk or tuple((0, n) for n in ct.shape)
    box = crop_box(ct.shape, bbox, ct.spacing_mm, margin_mm)
    affine = cropped_affine(ct.affine, box)
    ct_arr = np.clip(np.asarray(ct.array)[box], -32768, 32767).astype(np.int16)
    lab_arr = (np.asarray(label.array)[box] > 0).astype(np.uint8)
    if int(lab_arr.sum()) != int((np.asarray(label.array) > 0).sum()):
        raise SystemExit(f"{case}: the crop would cut the tumour label; widen --margin-mm")
    ct_out, lab_out = out / f"{case}_ct.nii.gz", out / f"{case}_label.nii.gz"
    write_nifti(Volume(ct_arr, affine), ct_out)
    write_nifti(Volume(lab_arr, affine), lab_out)
    return {"case": case, "shape": list(ct.shape), "cropped": list(ct_arr.shape), "bytes": ct_out.stat().st_size + lab_out.stat().st_size}


def copy_crops(src: Path, dst: Path, budget_bytes: int, seed: int = 0) -> tuple[int, int, int]:
    """Copy whole patients' crops (both files, seeded random patient order) while they fit in ``budget_bytes``,
    and the manifest's lines of those crops. Returns (crops copied, bytes, crops in ``src``)."""
    import csv

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    ids = sorted(p.name[: -len("_ct.nii.gz")] for p in src.glob("*_ct.nii.gz"))
    by_patient: dict[str, list[str]] = {}
    for cid in ids:
        by_patient.setdefault(cid.rsplit("_R_", 1)[0], []).append(cid)
    order = sorted(by_patient)
    np.random.default_rng(seed).shuffle(order)
    kept: list[str] = []
    used = 0
    for patient in order:
        files = [src / f"{cid}_{kind}.nii.gz" for cid in by_patient[patient] for kind in ("ct", "label")]
        size = sum(f.stat().st_size for f in files)
        if used + size > budget_bytes:
            continue
        for f in files:
            shutil.copy(f, dst / f.name)
        used += size
        kept.extend(by_patient[patient])
    manifest = src / "manifest.tsv"
    if manifest.is_file():
        with open(manifest, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            rows = [r for r in reader if r["case"] in set(kept)]
            fields = reader.fieldnames or []
        with open(dst / "manifest.tsv", "w", newline="") as handle:
            w = csv.DictWriter(handle, fieldnames=fields, delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        used += (dst / "manifest.tsv").stat().st_size
    return len(kept), used, len(ids)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", default=str(REAL), help="the real-data folder")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (git-ignored .gpu_data/ by default)")
    ap.add_argument("--margin-mm", type=float, default=MARGIN_MM)
    ap.add_argument("--no-crops", action="store_true", help="leave the nodule crops out")
    ap.add_argument("--budget-mib", type=float, default=DEFAULT_BUDGET_MIB, help="the folder's size at most (crops fill what the scans leave)")
    a = ap.parse_args(argv)
    real, out = Path(a.real), Path(a.out)
    if not real.is_dir():
        raise SystemExit(f"real data not found at {real}; give --real DIR")
    if a.budget_mib * 2**20 > CARRY_LIMIT_BYTES:
        raise SystemExit(f"--budget-mib {a.budget_mib}: more than can be carried ({CARRY_LIMIT_BYTES / 2**20:.0f} MiB)")
    pairs = out / "pairs"
    pairs.mkdir(parents=True, exist_ok=True)
    total = 0
    for case, (ct_src, label_src) in REAL_CASES.items():
        t0 = time.perf_counter()
        info = make_case(case, real / ct_src, real / label_src, pairs, a.margin_mm)
        total += int(info["bytes"])  # type: ignore[call-overload]
        print(f"{case}: {info['shape']} -> {info['cropped']}, {int(info['bytes']) / 2**20:.1f} MiB ({time.perf_counter() - t0:.0f} s)", flush=True)  # type: ignore[call-overload]
    if not a.no_crops:
        n, crops_bytes, n_all = copy_crops(real / CROPS_DIR, out / "crops", int(a.budget_mib * 2**20) - total)
        total += crops_bytes
        print(f"crops: {n} of {n_all} copied (whole patients, seeded order), {crops_bytes / 2**20:.1f} MiB", flush=True)
    print(f"total {total / 2**20:.1f} MiB in {out} (the run tool carries {CARRY_LIMIT_BYTES / 2**20:.0f} MiB at most)", flush=True)
    if total > CARRY_LIMIT_BYTES:
        print("warning: more than can be carried; use --no-crops (the stage then trains without --lesion-dir)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
