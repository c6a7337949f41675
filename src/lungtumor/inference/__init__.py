"""Inference: a checkpoint and a CT -> probabilities and a mask on the input's exact grid.

``from lungtumor.inference import segment`` gives the function :func:`~lungtumor.inference.predictor.segment`
(resolved lazily, so that importing this package loads neither numpy nor torch). The file driver
(files and folders in, NIfTI / DICOM-SEG / reports out) is :mod:`lungtumor.predict`, above every room.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "segment": "lungtumor.inference.predictor",
    "predict_slices": "lungtumor.inference.predictor",
    "load_ensemble": "lungtumor.inference.predictor",
    "prepare": "lungtumor.inference.predictor",
    "run_models": "lungtumor.inference.predictor",
    "finish": "lungtumor.inference.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lungtumor.inference' has no attribute {name!r}")
