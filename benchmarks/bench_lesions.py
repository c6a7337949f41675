"""Time `lungtumor lesions --report` on a FULL phantom scan with 3 lesions, and the HTML's size.

Two measurements in one run:

- in process (what ``predict --report`` adds after a prediction, the volumes already in memory):
  measure the lesions, render report.html, write lesions.csv, lesions.json, instances.nii.gz and
  report.html; the first (cold: matplotlib import, font cache) and the median of the next runs;
- the command line in a fresh process (Python start, imports, reading the 70 MB CT and the mask).

Usage: ``.venv/bin/python benchmarks/bench_lesions.py [--repeats 3] [--seed 3]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.lesions.export import write_lesion_outputs
from lungtumor.lesions.recist import measure_lesions
from lungtumor.phantom.dataset import make_case
from lungtumor.reporting.html import REPORT_HTML, report_html

#: Target of issue 8: lesions + report.html in under this many seconds.
TARGET_S = 2.0


def _once(ct, mask, out: Path) -> dict[str, float]:
    times = {}
    t0 = time.perf_counter()
    report = measure_lesions(mask, ct)
    t1 = time.perf_counter()
    text = report_html(ct, report)
    t2 = time.perf_counter()
    write_lesion_outputs(report, out, extra_files={REPORT_HTML: text.encode("utf-8")})
    t3 = time.perf_counter()
    times.update(measure=t1 - t0, html=t2 - t1, write=t3 - t2, total=t3 - t0, lesions=len(report.lesions))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ct, label = make_case(args.seed, "FULL", n_tumours=3)
        ct_path, mask_path = write_nifti(ct, root / "ct.nii.gz"), write_nifti(label, root / "mask.nii.gz")
        ct, mask = read_nifti(ct_path), read_nifti(mask_path)
        print(f"scan {ct.shape}, spacing {tuple(round(s, 3) for s in ct.spacing_mm)} mm, CT file {ct_path.stat().st_size / 1e6:.1f} MB")
        cold = _once(ct, mask, root / "cold")
        warm = [_once(ct, mask, root / f"warm{i}") for i in range(args.repeats)]
        html_bytes = (root / "cold" / REPORT_HTML).stat().st_size
        print(f"lesions: {cold['lesions']}")
        print("in process (s)      measure   html   write   total")
        print(f"  cold (1st run)    {cold['measure']:7.2f} {cold['html']:6.2f} {cold['write']:7.2f} {cold['total']:7.2f}")
        med = {k: statistics.median(w[k] for w in warm) for k in ("measure", "html", "write", "total")}
        print(f"  warm (median {args.repeats})  {med['measure']:7.2f} {med['html']:6.2f} {med['write']:7.2f} {med['total']:7.2f}")
        cli = [sys.executable, "-m", "lungtumor.cli", "lesions", str(mask_path), str(ct_path), "--out", str(root / "cli"), "--report"]
        t0 = time.perf_counter()
        subprocess.run(cli, check=True, capture_output=True)
        cli_s = time.perf_counter() - t0
        print(f"command line, fresh process (incl. Python start, imports, reading CT + mask): {cli_s:.2f} s")
        print(f"report.html: {html_bytes / 1024:.0f} KiB")
        verdict = "met" if cold["total"] < TARGET_S else "NOT met"
        print(f"target < {TARGET_S:g} s for lesions + report.html in process: {verdict} (cold {cold['total']:.2f} s, warm {med['total']:.2f} s)")


if __name__ == "__main__":
    main()
