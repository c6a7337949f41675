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


#: What a NIfTI predict never needs (DICOM, DICOM-SEG, training, figures).
NOT_FOR_NIFTI_PREDICT = ("pydicom", "highdicom", "lightning", "matplotlib")


def test_a_nifti_predict_runs_without_dicom_training_or_figure_libraries(tmp_path) -> None:
    """A NIfTI predict (fast path, the CPU default) runs with pydicom, highdicom, Lightning and matplotlib
    made unimportable, and loads none of highdicom, Lightning, matplotlib in a normal run. (pydicom itself is
    loaded by nibabel 5 whenever it is installed, for NIfTI DICOM extensions; BENCHMARKS.md measures it.)"""
    import numpy as np

    from helpers import affine_for
    from lungtumor.io.nifti import write_nifti
    from lungtumor.io.volume import Volume

    rng = np.random.default_rng(0)
    arr = rng.normal(-800, 20, (24, 24, 12)).astype(np.int16)
    arr[8:12, 8:12, 4:8] = 40
    write_nifti(Volume(arr, affine_for("LPS")), tmp_path / "ct.nii.gz")
    ckpt = tmp_path / "m.ckpt"
    code = f"""
import sys
import torch
from lungtumor.config import PreprocessConfig
from lungtumor.model.checkpoint import checkpoint_metadata
from lungtumor.model.unet import ModelConfig, UNet
cfg = ModelConfig(width=2, depth=2)
torch.save({{"state_dict": {{"net." + k: v for k, v in UNet(cfg).state_dict().items()}},
            "lungtumor": checkpoint_metadata(cfg.to_dict(), PreprocessConfig.from_preset("lung").to_dict(), 0, threshold=0.5)}}, {str(ckpt)!r})
BLOCK = {list(NOT_FOR_NIFTI_PREDICT)!r} if sys.argv[1] == "block" else []
for name in BLOCK:
    sys.modules[name] = None  # any import of it now fails
for name in [m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] in ("highdicom", "lightning", "matplotlib")]:
    raise SystemExit("loaded before predict: " + name)
from lungtumor.cli import main
rc = main(["predict", {str(ckpt)!r}, {str(tmp_path / "ct.nii.gz")!r}, {str(tmp_path / "out.nii.gz")!r}, "--device", "cpu", "--tta", "flip"])
print("rc", rc)
print("\\n".join(sorted(m for m in sys.modules if sys.modules[m] is not None)))
"""
    for how in ("block", "normal"):
        res = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out = res.stdout.split("\nrc ", 1)[1].split()  # after the command's own result line
        assert out[0] == "0", res.stdout[:500] + res.stderr[-2000:]
        loaded = set(out[1:])
        assert not [m for m in loaded if m.split(".")[0] in ("highdicom", "lightning", "matplotlib")]
