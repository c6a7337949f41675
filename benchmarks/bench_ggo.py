"""Ground glass under the recipe's intensity augmentation: tumour HU of the LIDC crops before and after.

The crops of ``../shared/data/real/lidc_nodule_crops`` become crop items as in training
(:class:`lungtumor.training.crops.CropBank` at 1.5 mm pixels, 2.5D context 2.5 mm, lung-filled canvases
of 160 x 112 px); :func:`lungtumor.training.augment.intensity_batch` runs on them with
``configs/real_ct.yaml``'s ``augment_options`` (``recipe``) and with every intensity transform on every
item (``all_on``). Per group (mean HU inside < -300 from ``manifest.tsv``: ground glass or part-solid;
else solid): the tumour pixels' median HU, 5th/95th percentile, the share above -100 HU (solid) and
below -850 HU (parenchyma), before -> after, and the per-crop shift of the median. The result is in the
docstring of :mod:`lungtumor.training.crops`.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_ggo.py`` (about 4 minutes on 2 shared cores).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CROPS = REPO.parent / "shared" / "data" / "real" / "lidc_nodule_crops"
GGO_HU = -300.0
CANVAS = (160, 112)
ITEMS, REPEATS = 256, 4


def main() -> None:
    from lungtumor.training.augment import AugmentConfig, intensity_batch
    from lungtumor.training.crops import CropBank, CropMixer
    from lungtumor.training.options import load_config_file

    crops = Path(sys.argv[1]) if len(sys.argv) > 1 else CROPS
    torch.set_num_threads(1)
    hu_in = {r["case"]: float(r["hu_in"]) for r in csv.DictReader((crops / "manifest.tsv").open(), delimiter="\t")}
    bank = CropBank.build(crops, pixel_mm=1.5, hu_scale=3071.0, clip_hu=(-1024.0, 3071.0), context=1, context_step_mm=2.5, store_cases={})
    opts = {**load_config_file(REPO / "configs" / "real_ct.yaml")["augment_options"], "hu_scale": 3071.0}
    configs = {
        "recipe": AugmentConfig.from_dict(opts),
        "all_on": AugmentConfig.from_dict({**opts, **{k: 1.0 for k in ("noise_p", "blur_p", "thick_slice_p", "contrast_p", "gamma_p")}}),
    }
    for kind, chosen in (("ggo", lambda h: h < GGO_HU), ("solid", lambda h: h >= GGO_HU)):
        samples = [s for s in bank.samples if chosen(hu_in[s.crop_id])]
        mixer = CropMixer(CropBank(samples, list(dict.fromkeys(s.patient for s in samples))), items=ITEMS)
        for name, cfg in configs.items():
            before, after, shift = [], [], []
            for rep in range(REPEATS):
                ct, lab = mixer.canvases(*CANVAS, 3, torch.Generator().manual_seed(rep))
                out = intensity_batch(ct, cfg, torch.Generator().manual_seed(100 + rep))
                tumour = lab[:, 0] == 1
                for i in range(ct.shape[0]):
                    b, a = ct[i, 1][tumour[i]] * 3071.0, out[i, 1][tumour[i]] * 3071.0
                    before.append(b.numpy())
                    after.append(a.numpy())
                    shift.append(float(a.median() - b.median()))
            b, a = np.concatenate(before), np.concatenate(after)
            print(
                f"{kind:5s} {name:6s} crops {len(samples)}: median HU {np.median(b):.0f} -> {np.median(a):.0f}; "
                f"p5/p95 {np.percentile(b, 5):.0f}/{np.percentile(b, 95):.0f} -> {np.percentile(a, 5):.0f}/{np.percentile(a, 95):.0f}; "
                f"> -100 HU {100 * np.mean(b > -100):.1f} % -> {100 * np.mean(a > -100):.1f} %; < -850 HU {100 * np.mean(b < -850):.1f} % -> "
                f"{100 * np.mean(a < -850):.1f} %; per-crop median shift p5/p50/p95 {np.percentile(shift, 5):.0f}/{np.median(shift):.0f}/"
                f"{np.percentile(shift, 95):.0f} HU",
                flush=True,
            )


if __name__ == "__main__":
    main()
