"""A tiny slice store for data/training/inference tests (bright square tumours in noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers import affine_for
from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.preprocessing.store import preprocess_task


def make_task(root: Path, n: int = 4, shape=(32, 32, 40), seed: int = 0) -> Path:
    """MSD-layout folder: noisy lung-like CT with a soft-tissue box tumour in most cases."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        ct = rng.normal(-800, 30, shape).astype(np.int16)
        m = np.zeros(shape, np.uint8)
        if i % 4 != 3:
            x, y = rng.integers(4, shape[0] - 14, 2)
            m[x : x + 8, y : y + 10, 32:38] = 1
        ct[m > 0] = 40
        write_nifti(Volume(ct, affine_for("LAS")), root / "imagesTr" / f"lung_{i:03d}.nii.gz")
        write_nifti(Volume(m, affine_for("LAS")), root / "labelsTr" / f"lung_{i:03d}.nii.gz")
    return root


def make_store(root: Path, n: int = 4, size: int = 32, val_cases: int = 1) -> Path:
    """Task + store under ``root``; returns the store folder."""
    task = make_task(root / "task", n=n)
    preprocess_task(task, root / "store", PreprocessConfig(preset="seed", size=size), SplitConfig(val_cases=val_cases), progress=False)
    return root / "store"
