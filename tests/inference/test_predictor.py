"""Whole-scan inference keeps the input's exact grid; CLI error paths of predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import affine_for, stub_checkpoint
from lungtumor.config import HU_SCALE, PreprocessConfig
from lungtumor.inference import segment
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.volume import Volume, reorient
from lungtumor.model.checkpoint import LoadedModel, checkpoint_metadata
from lungtumor.model.unet import ModelConfig
from lungtumor.predict import predict_path

THRESHOLD_HU = -300.0


class ThresholdNet(torch.nn.Module):
    """Stub model: 'tumour' wherever the centre channel is brighter than -300 HU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return 1000.0 * (centre - THRESHOLD_HU / HU_SCALE)


def stub_model(size: int, context: int = 0) -> LoadedModel:
    pre = PreprocessConfig(preset="seed", size=size)
    return LoadedModel(net=ThresholdNet(), preprocess=pre, context=context, info={"threshold": 0.5})


def _ct(shape, codes, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.normal(-800, 20, shape).astype(np.int16)
    arr[4:9, 5:11, :] = 50  # a bright bar through every slice
    return Volume(arr, affine_for(codes))


@pytest.mark.parametrize("codes", ["LAS", "LPS", "RPI", "oblique"])
def test_mask_has_the_input_grid_and_dropped_slices_are_zero(codes: str) -> None:
    ct = _ct((16, 16, 40), codes)
    canon_ct, _ = reorient(ct, ("L", "A", "S"))
    # In-plane size equal to the store size: resizing is the identity, so the stub's mask is exact.
    mask, prob = segment(ct, stub_model(size=16), return_probabilities=True)
    assert mask.shape == ct.shape and np.array_equal(mask.affine, ct.affine)
    assert mask.array.dtype == np.uint8 and prob.array.dtype == np.float32
    assert prob.shape == ct.shape and np.array_equal(prob.affine, ct.affine)
    canon_mask, _ = reorient(mask, ("L", "A", "S"))
    expected = (canon_ct.array > THRESHOLD_HU).astype(np.uint8)
    expected[:, :, :30] = 0  # the 30 most inferior slices are dropped by the recipe
    np.testing.assert_array_equal(canon_mask.array, expected)


def test_resize_back_from_a_smaller_model_grid() -> None:
    ct = _ct((32, 24, 36), "LPS")
    mask = segment(ct, stub_model(size=16))
    assert mask.shape == ct.shape
    canon, _ = reorient(mask, ("L", "A", "S"))
    assert canon.array[:, :, :30].sum() == 0 and canon.array[:, :, 30:].sum() > 0


def test_context_tta_and_fp32_paths() -> None:
    ct = _ct((16, 16, 34), "LAS")
    a = segment(ct, stub_model(16, context=2), tta="flip", precision="fp32")
    b = segment(ct, stub_model(16), precision="fp32")
    np.testing.assert_array_equal(a.array, b.array)


def test_predict_files_folders_and_errors(tmp_path) -> None:
    ckpt = tmp_path / "m.ckpt"
    stub_checkpoint(ckpt, size=16)
    src = tmp_path / "in"
    for i, codes in enumerate(["LAS", "LPS"]):
        write_nifti(_ct((16, 16, 34), codes, seed=i), src / f"case_{i}.nii.gz")
    res = predict_path(ckpt, src, tmp_path / "out", probabilities=True, progress=False)
    assert len(res) == 2
    for i in range(2):
        m = read_nifti(tmp_path / "out" / f"case_{i}.nii.gz")
        c = read_nifti(src / f"case_{i}.nii.gz")
        assert m.shape == c.shape and np.allclose(m.affine, c.affine, atol=1e-5) and m.array.dtype == np.uint8
        p = read_nifti(tmp_path / "out" / "probabilities" / f"case_{i}.nii.gz")
        assert p.array.dtype == np.float32 and p.shape == c.shape
    one = predict_path(ckpt, src / "case_0.nii.gz", tmp_path / "one.nii.gz", probabilities=True)
    assert (tmp_path / "one.nii.gz").exists() and (tmp_path / "one_prob.nii.gz").exists() and one[0]["shape"] == (16, 16, 34)

    from lungtumor.errors import CheckpointError, GeometryError, InputError

    with pytest.raises(InputError, match="not found"):
        predict_path(ckpt, tmp_path / "nope.nii.gz", tmp_path / "x.nii.gz")
    with pytest.raises(InputError, match="must be a folder"):
        predict_path(ckpt, src, tmp_path / "x.nii.gz")
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        predict_path(bad, src / "case_0.nii.gz", tmp_path / "x.nii.gz")
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(GeometryError, match="3D"):
        predict_path(ckpt, tmp_path / "4d.nii.gz", tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


def test_cli_predict_error_is_one_line(tmp_path, capsys) -> None:
    from lungtumor.cli import main

    rc = main(["predict", str(tmp_path / "none.ckpt"), str(tmp_path / "in.nii.gz"), str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "not found" in err and "Traceback" not in err


def test_real_dicom_and_nifti_predictions_sit_on_the_input_grid(real_data, tmp_path) -> None:
    """LUNG1-001 (DICOM series, LPS) and LUNG1-002 (NIfTI, LPS): masks on exactly the input grid."""
    import nibabel as nib

    from lungtumor.io.dicom import read_dicom_series

    ckpt = tmp_path / "m.ckpt"
    stub_checkpoint(ckpt, size=64)
    out1 = tmp_path / "lung1_001.nii.gz"
    predict_path(ckpt, real_data / "LUNG1-001" / "dicom", out1, probabilities=True, progress=False)
    series = read_dicom_series(real_data / "LUNG1-001" / "dicom")
    mask = read_nifti(out1)
    assert mask.shape == series.shape == (512, 512, 134)
    np.testing.assert_allclose(mask.affine, series.affine, atol=1e-4)
    # the DICOM geometry: origin (LPS) and spacing of the series, direction as LPS cosines
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(lps @ mask.affine[:3, 3], series.meta["origin_lps"], atol=1e-3)
    np.testing.assert_allclose(mask.spacing_mm, series.meta["spacing_mm"], atol=1e-4)
    reference = read_nifti(real_data / "LUNG1-001" / "gtv1_label.nii.gz")
    np.testing.assert_allclose(mask.affine, reference.affine, atol=1e-3)
    assert read_nifti(tmp_path / "lung1_001_prob.nii.gz").shape == series.shape

    src = real_data / "LUNG1-002" / "ct.nii.gz"
    out2 = tmp_path / "lung1_002.nii.gz"
    predict_path(ckpt, src, out2, progress=False)
    a, b = nib.load(str(src)), nib.load(str(out2))
    assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-5)
    assert nib.aff2axcodes(b.affine) == ("L", "P", "S")


def test_predict_with_a_lung_preset_checkpoint_keeps_the_grid_and_zero_outside_the_crop(tmp_path) -> None:
    """A model that says 'tumour' everywhere: the mask is exactly the lung crop (box and kept slices)
    of the grid, on the input's grid; post-processing keeps it (it touches the lungs)."""
    from lungtumor.model.unet import UNet
    from lungtumor.phantom.dataset import make_case
    from lungtumor.preprocessing.grid import fit_grid
    from lungtumor.preprocessing.lungs import find_lung_region

    cfg = ModelConfig(width=2, depth=2)
    net = UNet(cfg)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(5.0)
    pre = PreprocessConfig.from_preset("lung", spacing_mm=3.0)
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "lungtumor": checkpoint_metadata(cfg.__dict__, pre.to_dict(), 0, threshold=0.5)},
        tmp_path / "lung.ckpt",
    )
    ct, _ = make_case(4, size="SMALL")
    write_nifti(reorient(ct, ("L", "P", "S"))[0], tmp_path / "ct.nii.gz")
    predict_path(tmp_path / "lung.ckpt", tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz", progress=False)
    src, mask = read_nifti(tmp_path / "ct.nii.gz"), read_nifti(tmp_path / "mask.nii.gz")
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine, atol=1e-5) and mask.array.dtype == np.uint8
    grid = fit_grid(src, find_lung_region(src).mask, pre)
    expected = np.zeros(grid.canonical_shape, np.uint8)
    (i0, i1), (j0, j1), (k0, k1) = grid.box_ijk
    expected[i0:i1, j0:j1, k0:k1] = 1
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(reorient(mask, ("L", "A", "S"))[0].array, expected)
