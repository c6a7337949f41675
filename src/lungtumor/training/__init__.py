"""Training: slice dataset and sampler, augmentation, losses, the LightningModule and the trainer.

``from lungtumor.training import train, TrainConfig`` keeps working (resolved lazily, so importing
``lungtumor.training.augment`` does not import Lightning).
"""

from __future__ import annotations

from typing import Any

_LAZY = {"train": "lungtumor.training.trainer", "TrainConfig": "lungtumor.training.trainer", "load_config_file": "lungtumor.training.trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lungtumor.training' has no attribute {name!r}")
