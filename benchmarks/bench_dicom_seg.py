"""DICOM-SEG output cost beside the NIfTI mask, on the real LUNG1-001 series (134 slices).

Times, in one process on the same mask (the series' GTV-1 label): reading the series, writing
the uint8 NIfTI mask, and writing the DICOM-SEG (first call, which includes importing highdicom,
then the median of warm calls); file sizes. Skips with a message when the data is absent.

Run: ``.venv/bin/python benchmarks/bench_dicom_seg.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from lungtumor import __version__
from lungtumor.io.dicom import read_dicom_series
from lungtumor.io.nifti import read_nifti, write_nifti

LUNG1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "LUNG1-001"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (LUNG1 / "dicom").is_dir() or not (LUNG1 / "gtv1_label.nii.gz").is_file():
        print(f"skipped: {LUNG1} not found")
        return
    out: dict = {"machine": machine()}
    t0 = time.perf_counter()
    ct = read_dicom_series(LUNG1 / "dicom")
    out["read_series_s"] = time.perf_counter() - t0
    mask = read_nifti(LUNG1 / "gtv1_label.nii.gz")
    out["shape"] = list(ct.shape)
    out["tumour_slices"] = int(mask.array.any(axis=(0, 1)).sum())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_nifti(mask, Path(tmp) / "mask.nii.gz")
        out["write_nifti_s"] = time.perf_counter() - t0
        out["nifti_bytes"] = (Path(tmp) / "mask.nii.gz").stat().st_size
        from lungtumor.io.dicom_seg import write_dicom_seg

        times = []
        for _ in range(1 + args.repeats):
            t0 = time.perf_counter()
            write_dicom_seg(mask, ct, Path(tmp) / "seg.dcm", algorithm_version=__version__, checkpoint_name="best.ckpt")
            times.append(time.perf_counter() - t0)
        out["write_dicom_seg_first_s"] = times[0]
        out["write_dicom_seg_warm_s"] = statistics.median(times[1:])
        out["dicom_seg_bytes"] = (Path(tmp) / "seg.dcm").stat().st_size
    out["seg_over_nifti_time"] = out["write_dicom_seg_warm_s"] / out["write_nifti_s"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
