"""Helpers shared by the tests: tiny affines in every orientation, the real data folder, the repository root.

``helpers.store`` builds tiny slice stores, ``helpers.dicom`` writes synthetic DICOM series, ``helpers.seed_augment`` is
the seed notebook's scipy augmentation (the reference the batched augmentation is tested and benchmarked against).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


def affine_for(codes: str, spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A 4x4 affine whose axes point towards ``codes`` (e.g. 'LAS'), or an oblique one ('oblique')."""
    if codes == "oblique":
        theta = np.deg2rad(12.0)
        rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
        tilt = np.deg2rad(7.0)
        rot = rot @ np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
        a = np.eye(4)
        a[:3, :3] = rot @ np.diag([-spacing[0], spacing[1], spacing[2]])
        a[:3, 3] = origin
        return a
    axis = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    a = np.zeros((4, 4))
    a[3, 3] = 1
    for col, code in enumerate(codes):
        # nibabel axcodes name the direction an axis points *to*; RAS+ world: +x is the
        # patient's right, so 'L' is -x.
        direction = {"R": 1.0, "L": -1.0, "A": 1.0, "P": -1.0, "S": 1.0, "I": -1.0}[code]
        a[axis[code], col] = direction * spacing[col]
    a[:3, 3] = origin
    return a


def stub_checkpoint(path, size: int) -> None:
    """A real lungtumor checkpoint file (tiny U-Net, random weights)."""
    import torch

    from lungtumor.config import PreprocessConfig
    from lungtumor.model.checkpoint import checkpoint_metadata
    from lungtumor.model.unet import ModelConfig, UNet

    cfg = ModelConfig(width=2, depth=2)
    net = UNet(cfg)
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "lungtumor": checkpoint_metadata(cfg.__dict__, PreprocessConfig(preset="seed", size=size).to_dict(), 0, threshold=0.5),
        },
        path,
    )
