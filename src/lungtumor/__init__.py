"""lungtumor: lung tumour segmentation in chest CT.

The Python API is the product; the ``lungtumor`` command line only wraps it. The names below
are resolved on first use, so ``import lungtumor`` (and the command line's ``--help``) does not
pay for nibabel, pydicom or torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LungTumorError": "lungtumor.errors",
    "Volume": "lungtumor.io.volume",
    "read_nifti": "lungtumor.io.nifti",
    "write_nifti": "lungtumor.io.nifti",
    "read_volume": "lungtumor.io.readers",
}
__all__ = ["LungTumorError", "Volume", "__version__", "read_nifti", "read_volume", "write_nifti"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lungtumor' has no attribute {name!r}")
