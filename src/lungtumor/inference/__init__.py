"""Inference: a checkpoint and a CT -> probabilities and a mask on the input's exact grid.

``from lungtumor.inference import segment, predict_path`` keeps working (resolved lazily).
"""

from __future__ import annotations

from typing import Any

_LAZY = {"segment": "lungtumor.inference.predictor", "predict_path": "lungtumor.inference.predictor", "predict_slices": "lungtumor.inference.predictor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lungtumor.inference' has no attribute {name!r}")
