"""Every command imports only what it needs: the parser and the non-training commands never load Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Modules whose import would mean the training stack came along.
TRAINING_STACK = ("lightning", "lightning.pytorch", "tensorboard", "lungtumor.training.trainer", "lungtumor.training.module")


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return set(out.split())


def test_parser_imports_no_torch_or_lightning() -> None:
    loaded = _loaded_after("from lungtumor.cli import build_parser\nbuild_parser().parse_args(['train', 'store', '--out', 'run'])")
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "lightning", "numpy", "nibabel", "pydicom", "matplotlib", "monai"))
    assert heavy == []


@pytest.mark.parametrize(
    "modules",
    [
        "lungtumor.preprocessing.store",  # preprocess
        "lungtumor.evaluation.evaluate",  # evaluate
        "lungtumor.reporting.figures",  # visualize
        "lungtumor.predict, lungtumor.model.checkpoint",  # predict
        "lungtumor.io.importer",  # import-dicom
    ],
)
def test_commands_never_import_lightning(modules: str) -> None:
    loaded = _loaded_after(f"import {modules}")
    assert not [m for m in TRAINING_STACK if m in loaded]


def test_lungs_command_never_imports_lightning() -> None:
    loaded = _loaded_after("import lungtumor.preprocessing.lungs")
    assert not [m for m in TRAINING_STACK if m in loaded]
