"""Tests for lungtumor.training.copy_paste: pasted lesions land in the lungs, CT and mask stay aligned,
sizes follow the pixel size in mm, rate 0 is identity, reproducible, plausible HU; lesion sources."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import affine_for
from helpers.store import make_store
from lungtumor.config import HU_SCALE
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.training.copy_paste import (
    CopyPasteConfig,
    CopyPaster,
    Lesion,
    LesionBank,
    case_geometry,
    config_from_train_options,
    crop_pairs,
    lung_pixels,
    read_crop,
    read_crops,
    store_lesions,
)

REPO = Path(__file__).resolve().parents[2]
SIZE = 96
PIXEL_MM = 1.0
LESION_HU = 30.0
LESION_RADIUS_MM = 4.0
LESION_SLICE_MM = 2.5
LUNG_HU = -850.0
BODY_HU = 40.0
AIR_HU = -1000.0


def _phantom_slices(n: int, channels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ct (n, C, S, S) in HU / 3071, mask, true lung mask (S, S)): air, a body ellipse, two lungs."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    body = ((yy - 48) / 44) ** 2 + ((xx - 48) / 36) ** 2 <= 1
    left = ((yy - 28) / 16) ** 2 + ((xx - 48) / 22) ** 2 <= 1
    right = ((yy - 68) / 16) ** 2 + ((xx - 48) / 22) ** 2 <= 1
    lung = left | right
    hu = np.where(body, BODY_HU, AIR_HU)
    hu = np.where(lung, LUNG_HU, hu)
    rng = np.random.default_rng(seed)
    ct = hu[None, None] + rng.normal(0, 15, (n, channels, SIZE, SIZE))
    return torch.tensor(ct / HU_SCALE, dtype=torch.float32), torch.zeros(n, 1, SIZE, SIZE), torch.from_numpy(lung)


def _disk_lesion(radius_mm: float = LESION_RADIUS_MM, slices: int = 5, spacing: float = 0.5, per_slice_hu: bool = False, case: str | None = None) -> Lesion:
    """A sphere-ish lesion: disks of ``radius_mm`` in every slice (HU LESION_HU, or 100 * slice index + LESION_HU)."""
    n = int(2 * radius_mm / spacing) + 12
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2
    disk = ((yy - c) ** 2 + (xx - c) ** 2) * spacing**2 <= radius_mm**2
    mask = np.repeat(disk[None], slices, axis=0)
    hu = np.full(mask.shape, -800.0, dtype=np.float32)
    for z in range(slices):
        hu[z][disk] = LESION_HU + (100.0 * z if per_slice_hu else 0.0)
    return Lesion("disk" if case is None else f"{case}#1", case, hu, mask, (LESION_SLICE_MM, spacing, spacing))


def _paster(lesions: list[Lesion], cfg: CopyPasteConfig, n_items: int, offsets_mm=(0.0,), pixel_mm: float = PIXEL_MM, item_case: int = 0) -> CopyPaster:
    bank = LesionBank.build(lesions, cfg, {"case0": 0, "case1": 1})
    return CopyPaster(
        bank,
        cfg,
        torch.full((n_items,), item_case, dtype=torch.long),
        torch.tensor([[pixel_mm, pixel_mm], [pixel_mm, pixel_mm]]),
        torch.tensor([list(offsets_mm), list(offsets_mm)], dtype=torch.float32),
    )


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


CFG = CopyPasteConfig(rate=1.0, scale=(1.0, 1.0))


def test_pasted_lesions_land_inside_the_lungs() -> None:
    n = 24
    ct, mask, lung = _phantom_slices(n)
    paster = _paster([_disk_lesion()], CFG, n)
    ct2, mask2 = paster(ct, mask, torch.arange(n), _gen(0))
    pasted = mask2[:, 0] > 0
    assert pasted.flatten(1).any(1).sum() >= n // 2  # most slices got a lesion
    outside = pasted & ~lung
    assert outside.sum() <= (1 - CFG.min_inside_fraction) * pasted.sum()
    for i in range(n):
        if pasted[i].any():
            ys, xs = torch.nonzero(pasted[i], as_tuple=True)
            cy, cx = int(ys.float().mean().round()), int(xs.float().mean().round())
            assert lung[cy, cx], f"slice {i}: lesion centre ({cy}, {cx}) outside the lungs"
    # Nothing changed outside the lesion and its feathered edge.
    changed = (ct2 - ct).abs()[:, 0] * HU_SCALE > 1.0
    far = ~torch.nn.functional.max_pool2d(pasted[:, None].float(), 9, 1, 4)[:, 0].bool()
    assert not (changed & far).any()


def test_lung_rule_finds_lung_not_outside_air_or_tissue() -> None:
    ct, _, lung = _phantom_slices(2)
    found = lung_pixels(ct[:, 0] * HU_SCALE, PIXEL_MM, CFG)
    inter = (found & lung).sum().item()
    union = (found | lung).sum().item()
    assert inter / union > 0.9
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    body = torch.from_numpy(((yy - 48) / 44) ** 2 + ((xx - 48) / 36) ** 2 <= 1)
    assert not (found & ~body).any()  # outside air is never lung


def test_ct_and_mask_stay_aligned() -> None:
    n = 16
    ct, mask, _ = _phantom_slices(n)
    paster = _paster([_disk_lesion()], CFG, n)
    ct2, mask2 = paster(ct, mask, torch.arange(n), _gen(3))
    pasted = mask2[:, 0] > 0
    dense = ct2[:, 0] * HU_SCALE > -300.0  # above lung, below the lesion: only where a lesion went into lung
    lungish = ct[:, 0] * HU_SCALE < -500.0
    dense &= lungish
    inter = (dense & pasted).sum().item()
    union = (dense | pasted).sum().item()
    assert pasted.sum() > 100 and inter / union > 0.85
    # Inside the pasted mask the CT is the lesion's HU (edge pixels blend a little).
    inner = torch.nn.functional.max_pool2d((~pasted)[:, None].float(), 3, 1, 1)[:, 0] == 0
    assert torch.allclose(ct2[:, 0][inner] * HU_SCALE, torch.full_like(ct2[:, 0][inner], LESION_HU), atol=1.0)
    assert set(mask2.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("pixel_mm, pixel_scale", [(1.0, 1.0), (0.7, 1.0), (1.0, 2.0)])
def test_lesion_size_follows_the_pixel_size_in_mm(pixel_mm: float, pixel_scale: float) -> None:
    n = 12
    ct, mask, _ = _phantom_slices(n)
    cfg = CopyPasteConfig(rate=1.0, scale=(1.0, 1.0), min_inside_fraction=0.0)
    radius_mm = 8.0
    paster = _paster([_disk_lesion(radius_mm=radius_mm)], cfg, n, pixel_mm=pixel_mm)
    _, mask2 = paster(ct, mask, torch.arange(n), _gen(1), pixel_scale=(pixel_scale, pixel_scale))
    areas = mask2.flatten(1).sum(1)
    areas = areas[areas > 0]
    assert areas.numel() >= n // 2
    expected = math.pi * radius_mm**2 / (pixel_mm * pixel_scale) ** 2
    assert float(areas.mean()) == pytest.approx(expected, rel=0.06)
    assert torch.allclose(areas, torch.full_like(areas, expected), rtol=0.15)  # pixel quantisation of a 4-11 px radius


def test_rate_zero_and_no_lungs_are_identity() -> None:
    n = 6
    ct, mask, _ = _phantom_slices(n)
    off = _paster([_disk_lesion()], CopyPasteConfig(rate=0.0), n)
    ct2, mask2 = off(ct, mask, torch.arange(n), _gen(0))
    assert torch.equal(ct2, ct) and torch.equal(mask2, mask)
    soft = torch.full_like(ct, BODY_HU / HU_SCALE)  # a slice without lungs (abdomen)
    on = _paster([_disk_lesion()], CFG, n)
    ct3, mask3 = on(soft, mask, torch.arange(n), _gen(0))
    assert torch.equal(ct3, soft) and torch.equal(mask3, mask)
    assert float(on.last_fraction) == 0.0


def test_reproducible_for_a_seed() -> None:
    n = 8
    ct, mask, _ = _phantom_slices(n)
    paster = _paster([_disk_lesion()], CopyPasteConfig(rate=0.7), n)
    a = paster(ct, mask, torch.arange(n), _gen(5))
    b = paster(ct, mask, torch.arange(n), _gen(5))
    c = paster(ct, mask, torch.arange(n), _gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_pasted_hu_is_plausible_and_clipped_like_the_store() -> None:
    n = 12
    ct, mask, _ = _phantom_slices(n)
    hot = _disk_lesion()
    hot = Lesion(hot.source, None, np.where(hot.mask, 3000.0, hot.ct_hu).astype(np.float32), hot.mask, hot.spacing_mm)
    paster = _paster([hot], CFG, n)
    paster.clip_hu = (-1024.0, 400.0)
    ct2, mask2 = paster(ct, mask, torch.arange(n), _gen(2))
    hu = ct2 * HU_SCALE
    assert mask2.sum() > 0
    assert hu.max() <= 400.0 + 1e-3
    # Blends lie between the target and the lesion: never below the darkest input.
    assert hu.min() >= (ct * HU_SCALE).min() - 1e-3


def test_context_channels_get_the_lesion_slices_at_their_distance() -> None:
    n = 16
    ct, mask, _ = _phantom_slices(n, channels=3)
    # Channels at -2.5, 0, +2.5 mm; the lesion's slices are 2.5 mm apart with HU 30 + 100 z.
    paster = _paster([_disk_lesion(slices=5, per_slice_hu=True)], CFG, n, offsets_mm=(-LESION_SLICE_MM, 0.0, LESION_SLICE_MM))
    ct2, mask2 = paster(ct, mask, torch.arange(n), _gen(4))
    pasted = mask2[:, 0] > 0
    inner = torch.nn.functional.max_pool2d((~pasted)[:, None].float(), 3, 1, 1)[:, 0] == 0
    checked = 0
    for i in range(n):
        if not inner[i].any():
            continue
        centre = float((ct2[i, 1][inner[i]] * HU_SCALE).median())
        z = round((centre - LESION_HU) / 100.0)
        for ch, dz in ((0, -1), (2, 1)):
            values = ct2[i, ch][inner[i]] * HU_SCALE
            if 0 <= z + dz < 5:
                assert torch.allclose(values, torch.full_like(values, LESION_HU + 100.0 * (z + dz)), atol=1.0)
            else:  # beyond the lesion: the channel is left as it was
                assert torch.allclose(ct2[i, ch][inner[i]], ct[i, ch][inner[i]])
        checked += 1
    assert checked >= n // 2


def test_lesions_of_the_slice_own_case_are_not_pasted() -> None:
    n = 8
    ct, mask, _ = _phantom_slices(n)
    own = _disk_lesion(case="case0")
    paster = _paster([own], CFG, n, item_case=0)
    ct2, mask2 = paster(ct, mask, torch.arange(n), _gen(0))
    assert torch.equal(mask2, mask) and torch.equal(ct2, ct)
    other = _paster([own], CFG, n, item_case=1)
    assert other(ct, mask, torch.arange(n), _gen(0))[1].sum() > 0


def test_no_paste_over_the_slice_own_tumour() -> None:
    n = 8
    ct, mask, lung = _phantom_slices(n)
    mask[:, 0] = lung.float()  # the whole lung is "tumour": any paste would touch it
    paster = _paster([_disk_lesion()], CFG, n)
    _, mask2 = paster(ct, mask, torch.arange(n), _gen(0))
    assert torch.equal(mask2, mask)


def test_config_round_trip_and_validation() -> None:
    cfg = CopyPasteConfig(rate=0.5, lesion_dir="/x", scale=(0.9, 1.1), exclude=("a",))
    assert CopyPasteConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"rate": 1.5}, {"scale": (1.2, 0.8)}, {"gas_hu": -100.0}, {"min_inside_fraction": 2.0}, {"feather_mm": -1.0}):
        with pytest.raises(ConfigError):
            CopyPasteConfig(**bad)
    with pytest.raises(ConfigError, match="unknown copy-paste keys"):
        CopyPasteConfig.from_dict({"rat": 0.5})
    with pytest.raises(ConfigError, match="copy_paste_rate"):
        config_from_train_options(0.5, None, {"rate": 0.2})
    assert not config_from_train_options(0.0, None, {}).enabled
    with pytest.raises(ConfigError, match="no lesion"):
        LesionBank.build([], CopyPasteConfig(rate=1.0))


def _write_crop(folder: Path, lesion_id: str, codes: str = "LPS", with_label: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    ct = rng.integers(-900, -700, (20, 18, 6)).astype(np.int16)
    m = np.zeros(ct.shape, np.uint8)
    m[6:12, 5:13, 1:5] = 1  # off-centre box, longer along the first axis
    ct[m > 0] = 20
    aff = affine_for(codes, spacing=(0.7, 0.7, 2.5))
    write_nifti(Volume(ct, aff), folder / f"{lesion_id}_ct.nii.gz")
    if with_label:
        write_nifti(Volume(m, aff), folder / f"{lesion_id}_label.nii.gz")
    return m


def test_crop_folder_reading_reorients_and_excludes(tmp_path: Path) -> None:
    m = _write_crop(tmp_path, "P-0001_R_1", "LPS")
    _write_crop(tmp_path, "P-0002_R_1", "LAS")
    pairs = crop_pairs(tmp_path)
    assert [p[0] for p in pairs] == ["P-0001_R_1", "P-0002_R_1"]
    les = read_crop(*pairs[0])
    # LPS -> LAS flips the second axis; layout (slice, i, j); mask and CT stay together.
    expected = np.flip(m, axis=1).transpose(2, 0, 1) > 0
    assert np.array_equal(les.mask, expected)
    assert np.all(les.ct_hu[les.mask] == 20)
    assert les.spacing_mm == pytest.approx((2.5, 0.7, 0.7))
    # Cross-check the orientation with nibabel's own reorientation.
    img = nib.load(tmp_path / "P-0001_R_1_label.nii.gz")
    canon = nib.as_closest_canonical(img).get_fdata()  # RAS: flips i and j of LPS
    assert np.array_equal(les.mask, np.flip(canon, axis=0).transpose(2, 0, 1) > 0)
    kept = read_crops(tmp_path, exclude=["P-0001"])
    assert [x.source for x in kept] == ["P-0002_R_1"]
    assert len(read_crops(tmp_path, max_lesions=1)) == 1


def test_crop_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        crop_pairs(tmp_path / "missing")
    with pytest.raises(InputError, match="no lesion crops"):
        crop_pairs(tmp_path)
    _write_crop(tmp_path, "A_R_1", with_label=False)
    with pytest.raises(InputError, match="has no mask"):
        crop_pairs(tmp_path)
    with pytest.raises(InputError, match="has no mask"):
        config_from_train_options(0.5, str(tmp_path), {})
    other = tmp_path / "geo"
    other.mkdir()
    _write_crop(other, "B_R_1")
    write_nifti(Volume(np.zeros((4, 4, 4), np.uint8), affine_for("LAS")), other / "B_R_1_label.nii.gz")
    with pytest.raises(GeometryError, match="mask grid"):
        read_crops(other)


def test_store_lesions_and_geometry(tmp_path: Path) -> None:
    store_dir = make_store(tmp_path, n=3, size=32, val_cases=1)
    from lungtumor.preprocessing.store import SliceStore

    store = SliceStore(store_dir)
    cases = store.splits["train"]
    lesions = store_lesions(store, cases)
    assert lesions and all(les.case in cases for les in lesions)
    for les in lesions:
        assert np.median(les.ct_hu[les.mask]) == pytest.approx(40.0, abs=2.0)  # storefix tumours are 40 HU
    # The seed preset resizes 32 x 32 voxels of 0.8 x 0.9 mm to 32 pixels: the native spacing; slices 2.5 mm.
    slice_mm, ph, pw = case_geometry(store, cases[0])
    assert (slice_mm, ph, pw) == pytest.approx((2.5, 0.8, 0.9))
    # Fallback for stores without a recorded grid: the same numbers from meta.json.
    store._metas[cases[0]] = {k: v for k, v in store.meta(cases[0]).items() if k != "grid"}
    assert case_geometry(store, cases[0]) == pytest.approx((2.5, 0.8, 0.9))


#: The two real-CT recipes: file -> (width, training slices) each states as its budget.
RECIPES = {"real_ct.yaml": (64, 64_000), "real_ct_cpu.yaml": (16, 12_000)}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_real_ct_recipes_load_validate_and_state_their_budget(name: str) -> None:
    from lungtumor.training.augment import AugmentConfig
    from lungtumor.training.options import TrainConfig, load_config_file

    path = REPO / "configs" / name
    cfg = TrainConfig.from_dict(load_config_file(path))
    aug = AugmentConfig.from_dict(cfg.augment_options)
    # Crop samples on, so that `--lesion-dir CROPS` is the one extra argument; copy-paste off, as measured
    # (BENCHMARKS.md: 25 false-positive lesions per scan with it, 7 without).
    assert cfg.crop_rate > 0 and not config_from_train_options(cfg.copy_paste_rate, cfg.lesion_dir, cfg.copy_paste_options).enabled
    assert aug.uses_intensity and cfg.loss == "bce+dice" and cfg.norm == "batch" and cfg.phantoms == 7 and cfg.phantom_size == "FULL"
    # The re-scorer, measured at the CPU budget (BENCHMARKS.md, "Nodule benchmark" (g)): trained after the U-Net.
    assert cfg.rescorer_steps == 600
    # A fixed schedule, never a time cap; the header states the budget the schedule is.
    width, slices = RECIPES[name]
    assert cfg.max_minutes is None and cfg.width == width and cfg.epochs * cfg.samples_per_epoch == slices
    header = path.read_text().split("\nwidth:")[0]
    assert f"{slices:,}" in header and f"width {width}" in header and "--lesion-dir CROPS" in header


def test_real_lidc_crop_matches_its_manifest(real_data: Path) -> None:
    folder = real_data / "lidc_nodule_crops"
    rows = (folder / "manifest.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    row = dict(zip(header, rows[1].split("\t"), strict=False))
    les = read_crop(row["case"], folder / f"{row['case']}_ct.nii.gz", folder / f"{row['case']}_label.nii.gz")
    assert int(les.mask.sum()) == int(row["voxels"])
    assert float(les.ct_hu[les.mask].mean()) == pytest.approx(float(row["hu_in"]), abs=1.0)
    assert les.spacing_mm[0] == pytest.approx(float(row["spacing_xyz"].split(",")[2]))
    bank = LesionBank.build([les], CopyPasteConfig(rate=1.0))
    inside = bank.ct_hu[bank.mask > 0].float()
    assert -1024.0 <= float(inside.min()) and float(inside.max()) <= 3071.0


def _chest_task(root: Path, n: int = 3) -> Path:
    """MSD-layout cases with a body, two lungs and a soft-tissue tumour in the first lung."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:40, 0:40]
    body = ((yy - 20) / 18) ** 2 + ((xx - 20) / 15) ** 2 <= 1
    lungs = (((yy - 12) / 6) ** 2 + ((xx - 20) / 9) ** 2 <= 1) | (((yy - 28) / 6) ** 2 + ((xx - 20) / 9) ** 2 <= 1)
    for i in range(n):
        hu = np.where(lungs, -850, np.where(body, 40, -1000))[..., None].repeat(12, axis=2) + rng.normal(0, 10, (40, 40, 12))
        m = np.zeros((40, 40, 12), np.uint8)
        m[10:14, 17:22, 4:8] = 1
        hu[m > 0] = 30
        write_nifti(Volume(hu.astype(np.int16), affine_for("LAS")), root / "imagesTr" / f"lung_{i:03d}.nii.gz")
        write_nifti(Volume(m, affine_for("LAS")), root / "labelsTr" / f"lung_{i:03d}.nii.gz")
    return root


@pytest.mark.slow
def test_training_with_copy_paste_and_a_window(tmp_path: Path) -> None:
    import csv

    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.model.checkpoint import read_checkpoint
    from lungtumor.preprocessing.store import preprocess_task
    from lungtumor.training.options import TrainConfig
    from lungtumor.training.trainer import train

    task = _chest_task(tmp_path / "task")
    preprocess_task(task, tmp_path / "store", PreprocessConfig(preset="seed", size=32, skip_inferior_slices=0), SplitConfig(val_cases=1), progress=False)
    crops = tmp_path / "crops"
    crops.mkdir()
    _write_crop(crops, "X_R_1")
    cfg = TrainConfig(
        store=str(tmp_path / "store"), out=str(tmp_path / "run"), epochs=1, samples_per_epoch=16, width=4, batch_size=8, num_workers=0,
        progress=False, image_every_n_steps=0, log_every_n_steps=1, copy_paste_rate=1.0, lesion_dir=str(crops),
        copy_paste_options={"erode_mm": 1.0}, augment_options={"clip_hu": [-1000, 500], "noise_p": 0.5},
    )
    summary = train(cfg)
    meta = read_checkpoint(summary["last_checkpoint"])
    assert tuple(meta["lungtumor"]["preprocess"]["clip_hu"]) == (-1000.0, 500.0)  # inference clips as training did
    assert meta["hyper_parameters"]["copy_paste"]["rate"] == 1.0
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "csv" / "session-0" / "metrics.csv").open()))
    fractions = [float(r["train/copy_paste_fraction"]) for r in rows if r.get("train/copy_paste_fraction")]
    assert fractions and fractions[0] > 0.2
    # --no-augment turns copy-paste off too
    off = train(dataclasses.replace(cfg, out=str(tmp_path / "run_off"), augment=False))
    assert read_checkpoint(off["last_checkpoint"])["hyper_parameters"]["copy_paste"] is None


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_cli_trains_with_the_real_ct_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, recipe: str) -> None:
    import json

    from lungtumor.cli import main
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.preprocessing.store import preprocess_task

    task = _chest_task(tmp_path / "task")
    preprocess_task(task, tmp_path / "store", PreprocessConfig(preset="seed", size=32, skip_inferior_slices=0), SplitConfig(val_cases=1), progress=False)
    crops = tmp_path / "crops"
    crops.mkdir()
    _write_crop(crops, "X_R_1")
    def argv(run: str, lesions: Path) -> list[str]:
        # The crops folder is the only extra argument of the recipe (the rest: a tiny, one-batch run).
        return ["train", str(tmp_path / "store"), "--out", str(tmp_path / run), "--config", str(REPO / "configs" / recipe),
                "--lesion-dir", str(lesions), "--epochs", "1", "--samples-per-epoch", "2", "--limit-val-batches", "1", "--width", "4", "--batch-size", "2",
                "--num-workers", "0", "--no-progress", "--phantoms", "1", "--phantom-size", "SMALL", "--rescorer-steps", "2"]

    assert main(argv("run", crops)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == 1
    # The checkpoint carries the re-scorer and the operating point predict applies by default.
    from lungtumor.model.checkpoint import read_checkpoint

    block = read_checkpoint(summary["last_checkpoint"])["rescorer"]
    assert block["min_lesion_score"] == 0.1 and block["summary"]["steps"] == 2
    # predict with the checkpoint needs no recipe-specific flags.
    ct = task / "imagesTr" / "lung_000.nii.gz"
    assert main(["predict", summary["last_checkpoint"], str(ct), str(tmp_path / "pred.nii.gz")]) == 0
    assert (tmp_path / "pred.nii.gz").is_file()
    capsys.readouterr()
    if recipe == "real_ct_cpu.yaml":  # without the crops folder the recipe runs, and says what it leaves out
        import logging

        with caplog.at_level(logging.WARNING, logger="lungtumor.training.trainer"):
            args = argv("run3", crops)
            k = args.index("--lesion-dir")
            assert main(args[:k] + args[k + 2 :]) == 0
        assert "without --lesion-dir" in caplog.text and "left out" in caplog.text
        capsys.readouterr()
    assert main(argv("run2", tmp_path / "none")) == 2  # a one-line error before any training
    assert "lesion folder not found" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()
