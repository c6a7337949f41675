"""Lesion crops as training samples (lungtumor.training.crops): the grid, the batch, the checks, ground glass."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers.crops import write_crop
from helpers.store import make_store
from lungtumor.errors import ConfigError, InputError
from lungtumor.training.crops import (
    IGNORE_LABEL,
    CropBank,
    CropMixer,
    crop_items_per_batch,
    crop_patient,
    crop_to_store_grid,
    masked_loss,
)
from lungtumor.training.losses import make_loss


def build(folder: Path, **kw) -> CropBank:
    args = {"pixel_mm": 1.5, "hu_scale": 3071.0, "clip_hu": (-1024.0, 3071.0), "context": 1, "context_step_mm": 2.5, "store_cases": {"train": [], "val": []}}
    return CropBank.build(folder, **{**args, **kw})


def test_patient_of_a_crop() -> None:
    assert crop_patient("LIDC-IDRI-0001_R_12") == "LIDC-IDRI-0001"
    assert crop_patient("case7") == "case7"
    assert crop_patient("a_R_b") == "a_R_b"


def test_crop_on_the_store_grid() -> None:
    z, h, w = 8, 40, 40
    hu = np.full((z, h, w), -850.0, np.float32)
    mask = np.zeros((z, h, w), bool)
    mask[2:6, 14:26, 14:26] = True
    hu[mask] = 20.0
    hu[np.arange(z)[:, None, None].repeat(h, 1).repeat(w, 2) == 7] = -700.0  # a marker slice (most superior)
    ct, lab, fill = crop_to_store_grid(hu, mask, (1.25, 0.75, 0.75), pixel_mm=1.5, hu_scale=3071.0, clip_hu=(-1024.0, 3071.0), context=1, context_step_mm=2.5)
    # 40 px of 0.75 mm -> 20 px of 1.5 mm; only the 4 lesion slices; 3 channels
    assert ct.shape == (4, 3, 20, 20) and lab.shape == (4, 20, 20)
    assert set(np.unique(lab)) == {0, 1} and lab.sum(axis=(1, 2)).tolist() == [36] * 4  # 12 voxels -> 6 px
    assert fill == pytest.approx(-850.0 / 3071.0)
    # Context 2.5 mm apart = 2 crop slices: the last lesion slice (5) sees slice 7, the marker.
    assert ct[3, 2, 0, 0] * 3071.0 == pytest.approx(-700.0, abs=1e-2)
    assert ct[3, 0, 0, 0] * 3071.0 == pytest.approx(-850.0, abs=1e-2)
    assert ct[0, 1, 10, 10] * 3071.0 == pytest.approx(20.0, abs=1e-2)  # the centre channel at the lesion


def test_bank_groups_by_patient_and_excludes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for cid in ("P1_R_1", "P1_R_2", "P1_R_3", "P2_R_1", "HELD_R_1"):
        write_crop(tmp_path, cid)
    with caplog.at_level(logging.WARNING):
        bank = build(tmp_path, exclude=["HELD"])
    assert [s.crop_id for s in bank.samples] == ["P1_R_1", "P1_R_2", "P1_R_3", "P2_R_1"]
    assert bank.patients == ["P1", "P2"]
    assert bank.summary()["left_out"] == ["HELD_R_1 (--crop-exclude)"]
    assert "HELD_R_1" in caplog.text
    # Drawn by patient: P2's one crop as often as P1's three together.
    mixer = CropMixer(bank, items=4000)
    draws = mixer.draw(torch.Generator().manual_seed(0))
    share_p2 = np.mean([bank.samples[c].patient == "P2" for c, _ in draws])
    assert share_p2 == pytest.approx(0.5, abs=0.03)


def test_crop_of_a_store_patient_is_refused_or_left_out(tmp_path: Path) -> None:
    write_crop(tmp_path, "LIDC-IDRI-0001_R_1")
    write_crop(tmp_path, "LIDC-IDRI-0002_R_1")
    with pytest.raises(InputError, match=r"LIDC-IDRI-0001_R_1_ct.nii.gz: .*validation case LIDC-IDRI-0001 \(leakage"):
        build(tmp_path, store_cases={"train": [], "val": ["LIDC-IDRI-0001"]})
    with pytest.raises(InputError, match="training case LIDC-IDRI-0001.*--crop-overlap exclude"):
        build(tmp_path, store_cases={"train": ["LIDC-IDRI-0001"], "val": []})
    bank = build(tmp_path, store_cases={"train": ["LIDC-IDRI-0001"], "val": []}, overlap="exclude")
    assert [s.crop_id for s in bank.samples] == ["LIDC-IDRI-0002_R_1"]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        ("unpaired_ct", ["A_R_1_ct.nii.gz", "has no mask"]),
        ("unpaired_label", ["B_R_1_label.nii.gz", "has no crop"]),
        ("label_255", ["A_R_1_label.nii.gz", "0/1"]),
        ("no_spacing", ["A_R_1_ct.nii.gz", "no spacing"]),
        ("empty_label", ["A_R_1_label.nii.gz", "empty"]),
    ],
)
def test_bad_crop_folders_end_in_one_line_naming_the_file(tmp_path: Path, make: str, words: list[str]) -> None:
    folder = tmp_path / "crops"
    if make == "unpaired_ct":
        write_crop(folder, "A_R_1")
        (folder / "A_R_1_label.nii.gz").unlink()
    elif make == "unpaired_label":
        write_crop(folder, "A_R_1")
        write_crop(folder, "B_R_1")
        (folder / "B_R_1_ct.nii.gz").unlink()
    elif make == "label_255":
        write_crop(folder, "A_R_1", label_value=255)
    elif make == "no_spacing":
        write_crop(folder, "A_R_1", affine=np.eye(4))
    elif make == "empty_label":
        write_crop(folder, "A_R_1", label_value=0)
    with pytest.raises(InputError) as err:
        build(folder)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_header_without_sform_or_qform_has_no_spacing(tmp_path: Path) -> None:
    write_crop(tmp_path, "A_R_1")
    img = nib.load(tmp_path / "A_R_1_ct.nii.gz")
    bare = nib.Nifti1Image(np.asarray(img.dataobj), None)
    bare.header.set_zooms((0.7, 0.7, 2.5))
    bare.set_sform(None, code=0)
    bare.set_qform(None, code=0)
    nib.save(bare, tmp_path / "A_R_1_ct.nii.gz")
    with pytest.raises(InputError, match="no sform or qform"):
        build(tmp_path)


def test_canvases_ignore_everything_but_the_crop(tmp_path: Path) -> None:
    write_crop(tmp_path, "P_R_1")
    bank = build(tmp_path)
    mixer = CropMixer(bank, items=3)
    ct, lab = mixer.canvases(48, 32, 3, torch.Generator().manual_seed(1))
    assert ct.shape == (3, 3, 48, 32) and lab.shape == (3, 1, 48, 32)
    for i in range(3):
        counted = lab[i, 0] != IGNORE_LABEL
        assert int(counted.sum()) == 20 * 20  # the crop's own pixels
        assert int((lab[i, 0] == 1).sum()) == 36
        outside = ct[i][:, ~counted]
        assert torch.allclose(outside, torch.full_like(outside, bank.samples[0].fill))  # its surrounding lung, not air
    # A crop larger than the canvas is cut around its centre.
    small_ct, small_lab = mixer.canvases(16, 16, 3, torch.Generator().manual_seed(1))
    assert small_ct.shape[-2:] == (16, 16) and bool((small_lab == 1).any()) and not bool((small_lab == IGNORE_LABEL).any())
    with pytest.raises(InputError, match="channels"):
        mixer.canvases(48, 32, 1, torch.Generator().manual_seed(1))


def test_mix_appends_crop_items() -> None:
    bank = CropBank(samples=[], patients=[])
    from lungtumor.training.crops import CropSample

    bank.samples.append(CropSample("a", "a", np.zeros((2, 1, 4, 4), np.float32), np.ones((2, 4, 4), np.uint8), -0.3))
    mixer = CropMixer(bank, items=2)
    ct, mask, index = torch.zeros(6, 1, 16, 16), torch.zeros(6, 1, 16, 16), torch.arange(6)
    ct2, mask2, index2 = mixer.mix(ct, mask, index, torch.Generator().manual_seed(0))
    assert ct2.shape == (8, 1, 16, 16) and mask2.shape == (8, 1, 16, 16) and index2.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    assert torch.equal(mask2[:6], mask) and int((mask2[6:] == 1).sum()) == 32


@pytest.mark.parametrize("name", ["bce", "dice", "bce+dice"])
def test_masked_loss_is_the_loss_and_ignores_the_canvas(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 16, 16, generator=g)
    target = (torch.rand(4, 1, 16, 16, generator=g) > 0.7).float()
    assert float(masked_loss(name, logits, target)) == pytest.approx(float(make_loss(name)(logits, target)), rel=1e-5)
    label = target.clone()
    label[:, :, :, 8:] = IGNORE_LABEL
    changed = logits.clone()
    changed[:, :, :, 8:] = 50.0  # "tumour" predicted on the ignored canvas: no cost
    assert float(masked_loss(name, changed, label)) == pytest.approx(float(masked_loss(name, logits, label)), rel=1e-5)
    assert float(masked_loss(name, logits[..., :8], target[..., :8])) == pytest.approx(float(masked_loss(name, logits, label)), rel=1e-5)


def test_items_per_batch() -> None:
    assert crop_items_per_batch(0.0, 8) == 0
    assert crop_items_per_batch(0.25, 8) == 2
    assert crop_items_per_batch(0.01, 8) == 1
    assert crop_items_per_batch(0.99, 8) == 7
    for rate, batch in ((1.0, 8), (-0.1, 8), (0.5, 1)):
        with pytest.raises(ConfigError, match="--crop-rate"):
            crop_items_per_batch(rate, batch)


def test_datamodule_keeps_the_steps_with_fewer_slices(tmp_path: Path) -> None:
    from lungtumor.training.data import DataConfig, SliceDataModule

    store = make_store(tmp_path, n=3, size=32)
    plain = SliceDataModule(store, DataConfig(batch_size=8, num_workers=0, samples_per_epoch=40))
    mixed = SliceDataModule(store, DataConfig(batch_size=8, num_workers=0, samples_per_epoch=40, crop_items=2))
    assert len(plain.train_dataloader()) == len(mixed.train_dataloader()) == 5
    assert next(iter(mixed.train_dataloader()))[0].shape[0] == 6
    with pytest.raises(ConfigError, match="crop items"):
        SliceDataModule(store, DataConfig(batch_size=8, num_workers=0, crop_items=8))


def test_options_validate_the_crop_flags() -> None:
    from lungtumor.training.options import TrainConfig

    with pytest.raises(ConfigError, match="--crop-rate 1.0"):
        TrainConfig(crop_rate=1.0)
    with pytest.raises(ConfigError, match="--crop-overlap 'keep'"):
        TrainConfig(crop_overlap="keep")
    TrainConfig(crop_rate=0.25, lesion_dir="/x")  # crops without copy-paste: fine
    TrainConfig(crop_rate=0.25)  # no folder: the trainer says it leaves crops out


@pytest.mark.slow
def test_training_with_crops_records_them_and_warns_without_a_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lungtumor.model.checkpoint import read_checkpoint
    from lungtumor.training.options import TrainConfig
    from lungtumor.training.trainer import train

    store = make_store(tmp_path, n=3, size=32)
    write_crop(tmp_path / "crops", "P_R_1")
    write_crop(tmp_path / "crops", "lung_000_R_1")  # patient lung_000 is a training case of the store
    base = {"store": str(store), "epochs": 1, "samples_per_epoch": 16, "width": 4, "num_workers": 0, "progress": False, "image_every_n_steps": 0,
            "context": 1, "crop_rate": 0.25, "lesion_dir": str(tmp_path / "crops")}
    with pytest.raises(InputError, match="lung_000_R_1_ct.nii.gz"):
        train(TrainConfig(**base, out=str(tmp_path / "refused")))
    assert not (tmp_path / "refused").exists()  # nothing half-written
    summary = train(TrainConfig(**base, out=str(tmp_path / "run"), crop_overlap="exclude"))
    meta = read_checkpoint(summary["last_checkpoint"])
    crops = meta["lungtumor"]["crops"]
    assert crops["items"] == 2 and crops["crops"] == 1 and crops["left_out"] == ["lung_000_R_1 (patient is training case lung_000)"]
    assert "crop_rate: 0.25" in (tmp_path / "run" / "config.yaml").read_text()
    with caplog.at_level(logging.WARNING):
        off = train(TrainConfig(**{**base, "lesion_dir": None}, out=str(tmp_path / "off")))
    assert "real lesion crops are left out" in caplog.text
    assert "crops" not in read_checkpoint(off["last_checkpoint"])["lungtumor"]


def _recipe_intensity(all_on: bool):
    from helpers import REPO
    from lungtumor.training.augment import AugmentConfig
    from lungtumor.training.options import load_config_file

    opts = {**load_config_file(REPO / "configs" / "real_ct.yaml")["augment_options"], "hu_scale": 3071.0}
    if all_on:
        opts.update({k: 1.0 for k in ("noise_p", "blur_p", "thick_slice_p", "contrast_p", "gamma_p")})
    return AugmentConfig.from_dict(opts)


def test_ground_glass_stays_between_lung_and_solid_under_the_intensity_augmentation() -> None:
    from lungtumor.training.augment import intensity_batch
    from lungtumor.training.crops import CropSample

    # A 24 x 24 px crop: lung at -850 HU, a ground-glass nodule at -550 HU, a vessel at +40 HU.
    hu = np.full((1, 3, 24, 24), -850.0, np.float32)
    yy, xx = np.mgrid[0:24, 0:24]
    ggo = (yy - 12) ** 2 + (xx - 9) ** 2 <= 25
    vessel = (yy - 12) ** 2 + (xx - 19) ** 2 <= 4
    hu[..., ggo] = -550.0
    hu[..., vessel] = 40.0
    sample = CropSample("g_R_1", "g", hu / 3071.0, ggo[None].astype(np.uint8), -850.0 / 3071.0)
    mixer = CropMixer(CropBank([sample], ["g"]), items=128)
    ct, lab = mixer.canvases(64, 48, 3, torch.Generator().manual_seed(0))
    for all_on in (False, True):
        out = intensity_batch(ct, _recipe_intensity(all_on), torch.Generator().manual_seed(1)) * 3071.0
        for i in range(out.shape[0]):
            counted = lab[i, 0] != IGNORE_LABEL
            tumour = out[i, 1][lab[i, 0] == 1].median()
            around = out[i, 1][counted & (lab[i, 0] == 0) & (ct[i, 1] * 3071.0 < -800)].median()
            solid = out[i, 1][counted & (ct[i, 1] * 3071.0 > 0)].median()
            assert around < tumour < solid  # the order survives every draw
            assert -850.0 - 60 < tumour < -300.0  # ground glass never becomes solid nor parenchyma


def test_real_ground_glass_crops_under_the_recipe(real_data: Path) -> None:
    import csv

    from lungtumor.training.augment import intensity_batch

    folder = real_data / "lidc_nodule_crops"
    hu_in = {r["case"]: float(r["hu_in"]) for r in csv.DictReader((folder / "manifest.tsv").open(), delimiter="\t")}
    ggo = sorted(c for c, h in hu_in.items() if h < -300)[:60]
    bank = CropBank.build(folder, pixel_mm=1.5, hu_scale=3071.0, clip_hu=(-1024.0, 3071.0), context=1, context_step_mm=2.5,
                          store_cases={}, exclude=[c for c in hu_in if c not in ggo])
    mixer = CropMixer(bank, items=256)
    ct, lab = mixer.canvases(160, 112, 3, torch.Generator().manual_seed(0))
    out = intensity_batch(ct, _recipe_intensity(False), torch.Generator().manual_seed(1))
    tumour = lab[:, 0] == 1
    before, after = ct[:, 1][tumour] * 3071.0, out[:, 1][tumour] * 3071.0
    assert float((after > -100).float().mean()) <= float((before > -100).float().mean()) + 0.02  # not made solid
    assert float((after < -850).float().mean()) <= float((before < -850).float().mean()) + 0.02  # not erased into lung
    assert abs(float(after.median() - before.median())) < 60.0
