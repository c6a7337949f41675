"""Case generation (:func:`make_case`) and the MSD Task06_Lung-shaped dataset writer.

The tunable constants of the phantom live beside the code they shape (anatomy, vessels,
tumours, tissues, render) and are re-exported here, where the one-file phantom kept them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import write_text_atomic
from lungtumor.config import SEED_SKIP_INFERIOR_SLICES
from lungtumor.errors import ConfigError
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.phantom.anatomy import CT_NOISE_SIGMA_HU, HU_LUNG_RANGE, _sample_case_geometry
from lungtumor.phantom.grid import PHANTOM_SIZES, _SizeSpec
from lungtumor.phantom.render import CT_HU_RANGE, TEXTURE_CORRELATION_MM, _render
from lungtumor.phantom.tissues import BOWEL_TEXTURE_THRESHOLD, LUNG_DEPENDENT_HU_PER_MM
from lungtumor.phantom.tumours import (
    HU_TUMOUR_RANGE,
    JUXTAPLEURAL_FRACTION,
    PRIMARY_TUMOUR_MIN_MM,
    SECONDARY_TUMOUR_MAX_MM,
    TUMOUR_BOUNDARY_NOISE,
    TUMOUR_COUNT_PROBABILITIES,
    TUMOUR_DIAMETER_MM,
    _draw_tumour,
    _draw_tumour_count,
    _place_tumours,
)
from lungtumor.phantom.vessels import (
    HU_VESSEL,
    VESSEL_MIN_RADIUS_MM,
    VESSEL_REACH,
    VESSEL_ROOT_RADIUS_MM,
    VESSEL_SPLIT_FRACTION,
    VESSEL_TARGETS_PER_TREE,
    _draw_segments,
    _vessel_segments,
)
from lungtumor.progress import progress_bar

__all__ = [
    "BOWEL_TEXTURE_THRESHOLD",
    "CT_HU_RANGE",
    "CT_NOISE_SIGMA_HU",
    "HU_LUNG_RANGE",
    "HU_TUMOUR_RANGE",
    "HU_VESSEL",
    "JUXTAPLEURAL_FRACTION",
    "LUNG_DEPENDENT_HU_PER_MM",
    "PHANTOM_SIZES",
    "PRIMARY_TUMOUR_MIN_MM",
    "SECONDARY_TUMOUR_MAX_MM",
    "TEXTURE_CORRELATION_MM",
    "TUMOUR_BOUNDARY_NOISE",
    "TUMOUR_COUNT_PROBABILITIES",
    "TUMOUR_DIAMETER_MM",
    "VESSEL_MIN_RADIUS_MM",
    "VESSEL_REACH",
    "VESSEL_ROOT_RADIUS_MM",
    "VESSEL_SPLIT_FRACTION",
    "VESSEL_TARGETS_PER_TREE",
    "case_ids",
    "make_case",
    "write_phantom_dataset",
]


def _size_spec(size: str) -> _SizeSpec:
    spec = PHANTOM_SIZES.get(str(size).upper())
    if spec is None:
        raise ConfigError(f"unknown phantom size {size!r}; expected one of {sorted(PHANTOM_SIZES)}")
    return spec


def make_case(seed: int, size: str = "SMALL", n_tumours: int | None = None) -> tuple[Volume, Volume]:
    """Generate one synthetic chest CT and its tumour label.

    Args:
        seed: any non-negative integer; the same seed always gives the same arrays.
        size: ``"SMALL"`` (128x128, 60-110 slices of 3.5-5 mm) or ``"FULL"`` (512x512,
            100-300 slices of 1-2.5 mm, MSD-like).
        n_tumours: number of tumours; None draws 0-3 (P = 0.15, 0.5, 0.25, 0.10). Fewer may
            be placed when a lung has no room left (rare, small lungs with 3 large tumours).

    Returns:
        ``(ct, label)``: CT in HU (int16) and label (uint8, 1 = tumour) on the same grid, affine
        ``diag(-sx, sy, sz)`` plus an origin, nibabel axis codes ``('L', 'A', 'S')``.

    Raises:
        ConfigError: unknown ``size``, negative ``seed`` or ``n_tumours``.
    """
    spec = _size_spec(size)
    if int(seed) < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed}")
    if n_tumours is not None and int(n_tumours) < 0:
        raise ConfigError(f"n_tumours must be >= 0 or None (random), got {n_tumours}")
    rng = np.random.default_rng(int(seed))
    grid, anatomy = _sample_case_geometry(rng, spec)
    count = _draw_tumour_count(rng) if n_tumours is None else int(n_tumours)
    tumours = _place_tumours(rng, anatomy, grid, spec, count)

    r_min = max(VESSEL_MIN_RADIUS_MM, spec.min_vessel_radius_voxels * grid.spacing_mm[0])
    # Stored (K, J, I) so that an axial slice is contiguous for the renderer; drawn through
    # (I, J, K) views.
    kji = grid.shape[::-1]
    vessel_kji = np.zeros(kji, dtype=np.uint8)
    _draw_segments(vessel_kji.transpose(2, 1, 0), grid, _vessel_segments(rng, anatomy, r_min))
    tumour_kji = np.zeros(kji, dtype=np.uint8)
    for index, tumour in enumerate(tumours, start=1):
        _draw_tumour(rng, tumour_kji.transpose(2, 1, 0), grid, tumour, index)
    # Placement already keeps tumours above the dropped slices; this makes it a guarantee.
    tumour_kji[: SEED_SKIP_INFERIOR_SLICES + 1] = 0

    ct, label = _render(rng, grid, anatomy, spec, tumours, vessel_kji, tumour_kji)
    meta: dict[str, Any] = {"source": "lungtumor.phantom", "seed": int(seed), "size": _spec_name(spec),
                            "n_tumours": len(tumours)}
    return Volume(ct, grid.affine.copy(), dict(meta)), Volume(label, grid.affine.copy(), dict(meta))


def _spec_name(spec: _SizeSpec) -> str:
    """Name of a size spec in :data:`PHANTOM_SIZES`."""
    return next(name for name, s in PHANTOM_SIZES.items() if s is spec)


def case_ids(cases: int, test_cases: int) -> tuple[list[int], list[int]]:
    """MSD-like 3-digit case ids: test ids are spread among the training ids.

    Returns:
        (training ids, test ids), disjoint, sorted, all in 1..999.
    """
    total = cases + test_cases
    test = {int((n + 0.5) * total / test_cases) + 1 for n in range(test_cases)} if test_cases else set()
    ids = list(range(1, total + 1))
    return [i for i in ids if i not in test], sorted(test)


def _case_seed(seed: int, case_id: int) -> int:
    """Independent per-case seed derived from (dataset seed, case id)."""
    return int(np.random.SeedSequence([int(seed), int(case_id)]).generate_state(1)[0])


_MAX_CASE_ID = 999

#: The ``reference`` of every phantom's ``dataset.json``, written before its first case: it marks
#: the folder as the phantom's own, so a later run may replace it; any other non-empty folder is
#: refused (it may hold a user's dataset, whose cases the phantom's ``lung_XXX`` names would overwrite).
PHANTOM_REFERENCE = "lungtumor.phantom"


def is_phantom_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a phantom dataset this package wrote (its ``dataset.json`` says so)."""
    try:
        return json.loads((Path(folder) / "dataset.json").read_text()).get("reference") == PHANTOM_REFERENCE
    except (OSError, ValueError, AttributeError):
        return False


def _claim_folder(out: Path, description: str) -> None:
    """Refuse a non-empty ``out`` that is not a phantom dataset; mark it as the phantom's (a
    ``dataset.json`` without cases, replaced by the full one at the end)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; pass a new or empty folder for the phantom dataset")
    if out.is_dir() and any(out.iterdir()) and not is_phantom_folder(out):
        raise ConfigError(
            f"{out}: not empty and not a phantom dataset (its dataset.json is not the phantom's); the phantom would "
            "overwrite its cases: pass a new or empty folder"
        )
    stub = {"name": "LungPhantom", "description": description + " (being written)", "reference": PHANTOM_REFERENCE, "training": [], "test": []}
    write_text_atomic(out / "dataset.json", json.dumps(stub, indent=4) + "\n")


def write_phantom_dataset(
    out_dir: str | os.PathLike[str],
    cases: int = 10,
    test_cases: int = 2,
    size: str = "SMALL",
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the MSD Task06_Lung layout.

    Layout: ``imagesTr/lung_XXX.nii.gz`` (int16 HU), ``labelsTr/lung_XXX.nii.gz`` (uint8),
    ``imagesTs/lung_XXX.nii.gz`` (no labels) and ``dataset.json``. Every file is written
    atomically. Case ``lung_XXX`` is generated from a seed derived from ``(seed, XXX)``.

    Args:
        out_dir: dataset folder: new, empty, or a phantom dataset written before (replaced: its
            cases that the new one lacks are removed). Any other non-empty folder is refused.
        cases: number of labelled training cases (>= 1).
        test_cases: number of unlabelled test cases (>= 0).
        size: ``"SMALL"`` or ``"FULL"`` (see :func:`make_case`).
        seed: dataset seed.
        progress: show a rich progress bar.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: bad counts, size or seed; ``out_dir`` is a non-empty folder that is not a phantom dataset.
    """
    spec = _size_spec(size)
    if cases < 1 or test_cases < 0 or cases + test_cases > _MAX_CASE_ID:
        raise ConfigError(
            f"phantom dataset needs cases >= 1 and test_cases >= 0 with at most {_MAX_CASE_ID} in total "
            f"(3-digit ids), got cases={cases}, test_cases={test_cases}"
        )
    if int(seed) < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed}")
    out = Path(out_dir)
    train_ids, test_ids = case_ids(cases, test_cases)
    jobs = [(i, True) for i in train_ids] + [(i, False) for i in test_ids]
    training, test = [], []

    def work(case_id: int, labelled: bool) -> None:
        ct, label = make_case(_case_seed(seed, case_id), _spec_name(spec))
        name = f"lung_{case_id:03d}.nii.gz"
        if labelled:
            write_nifti(ct, out / "imagesTr" / name)
            write_nifti(label, out / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_nifti(ct, out / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")

    description = (
        "Synthetic chest CT with lung tumours generated by lungtumor.phantom (not patient data); "
        f"MSD Task06_Lung layout, size {_spec_name(spec)}, seed {int(seed)}"
    )
    _claim_folder(out, description)
    names = {"imagesTr": {f"lung_{i:03d}.nii.gz" for i in train_ids}, "imagesTs": {f"lung_{i:03d}.nii.gz" for i in test_ids}}
    names["labelsTr"] = names["imagesTr"]
    for sub, keep in names.items():
        (out / sub).mkdir(exist_ok=True)
        for stale in (out / sub).glob("lung_*.nii.gz"):  # a smaller set over a bigger one: no case left over
            if stale.name not in keep:
                stale.unlink()
    with progress_bar(total=len(jobs), description=f"phantom {_spec_name(spec)} cases", enabled=progress) as advance:
        for case_id, labelled in jobs:
            work(case_id, labelled)
            advance(1)

    dataset = {
        "name": "LungPhantom",
        "description": description,
        "reference": PHANTOM_REFERENCE,
        "licence": "CC0 (synthetic)",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    write_text_atomic(out / "dataset.json", json.dumps(dataset, indent=4) + "\n")
    return out
