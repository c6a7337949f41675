"""The slice grid: one centre convention for CT and mask, invertible, physical, lung-aware; presets;
segment and TTA through it; training batches of cases whose slices differ in size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import affine_for
from lungtumor.config import HU_SCALE, PreprocessConfig
from lungtumor.errors import ConfigError, GeometryError
from lungtumor.io.volume import Volume, reorient
from lungtumor.preprocessing.grid import SliceGrid, context_stack, fit_grid
from lungtumor.preprocessing.presets import preset_for

LAS = ("L", "A", "S")
INSIDE_HU, OUTSIDE_HU = 1000, -1000


def lung_cfg(**kw) -> PreprocessConfig:
    return PreprocessConfig.from_preset("lung", **kw)


def _square_case(n: int, spacing: float, codes: str = "LAS", lo=(37, 61), hi=(101, 95), depth: int = 2):
    """CT and mask with one off-centre square [lo, hi) in canonical (i, j) on every slice."""
    canon = np.full((n, n, depth), OUTSIDE_HU, np.int16)
    m = np.zeros((n, n, depth), np.uint8)
    canon[lo[0] : hi[0], lo[1] : hi[1]] = INSIDE_HU
    m[lo[0] : hi[0], lo[1] : hi[1]] = 1
    las = Volume(canon, affine_for("LAS", spacing=(spacing, spacing, 2.0)))
    if codes == "LAS":
        return las, Volume(m, las.affine)
    ct, _ = reorient(las, tuple(codes))
    mask, _ = reorient(Volume(m, las.affine), tuple(codes))
    return ct, mask


def _pixel_centres_canonical(grid: SliceGrid) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (i, j) of every model pixel centre, through world coordinates (independent of the
    grid's own index arithmetic: slice affine, then the inverse of the canonical affine)."""
    h, w = grid.out_shape
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pts = np.stack([hh.ravel(), ww.ravel(), np.zeros(hh.size), np.ones(hh.size)])
    world = grid.slice_affine @ pts
    ijk = np.linalg.inv(grid.canonical_affine) @ world
    return ijk[0].reshape(h, w), ijk[1].reshape(h, w)


# (input pixels, target spacing factor): 512 -> 256, 333 -> 256, upsampling, odd and even sizes
RATIOS = [(512, 2.0), (333, 333 / 256), (100, 100 / 256), (101, 0.37), (160, 1.0)]


@pytest.mark.parametrize("n,factor", RATIOS)
def test_mask_lands_exactly_where_the_ct_square_does(n: int, factor: float) -> None:
    lo, hi = (n // 5, n // 3), (n // 5 + n // 3 + 1, n // 3 + n // 4)
    ct, mask = _square_case(n, 0.7, lo=lo, hi=hi)
    grid = fit_grid(ct, None, lung_cfg(spacing_mm=0.7 * factor, pad_multiple=1))
    ms = grid.mask_to_slices(mask)[0].astype(bool)
    ctm = grid.image_to_slices(ct)[0] > 0.0  # half-way between the two HU levels
    ci, cj = _pixel_centres_canonical(grid)
    # Oracle: the pixel centre lies in a voxel cell [i - 0.5, i + 0.5) of the square.
    inside = (ci >= lo[0] - 0.5) & (ci < hi[0] - 0.5) & (cj >= lo[1] - 0.5) & (cj < hi[1] - 0.5)
    cell_edges = np.concatenate([np.asarray(lo) - 0.5, np.asarray(hi) - 0.5])
    tie = (np.min(np.abs(ci[..., None] - cell_edges[None, None, [0, 2]]), -1) < 1e-6) | (
        np.min(np.abs(cj[..., None] - cell_edges[None, None, [1, 3]]), -1) < 1e-6
    )
    assert ms.any() and inside.any()
    np.testing.assert_array_equal(ms[~tie], inside[~tie])
    # The bilinear CT crosses its half level on the same cell edges; only where two edges meet
    # (within one source voxel of a corner) does the product of the weights differ.
    near_corner = np.zeros_like(ms)
    for ei in (lo[0] - 0.5, hi[0] - 0.5):
        for ej in (lo[1] - 0.5, hi[1] - 0.5):
            near_corner |= (np.abs(ci - ei) < 1) & (np.abs(cj - ej) < 1)
    np.testing.assert_array_equal(ctm[~(tie | near_corner)], ms[~(tie | near_corner)])
    assert (ctm != ms).sum() <= near_corner.sum() + tie.sum()


def test_the_seed_preset_mask_is_shifted_against_its_ct() -> None:
    """The documented property of the seed preset (half a voxel at 512 -> 256): CT and mask differ
    along the square's upper edge, where the physical grid agrees (test above)."""
    ct, mask = _square_case(512, 0.7, lo=(100, 150), hi=(201, 301))
    grid = fit_grid(ct, None, PreprocessConfig(preset="seed", skip_inferior_slices=0))
    ms = grid.mask_to_slices(mask)[0].astype(bool)
    ctm = grid.image_to_slices(ct)[0] > 0.0
    assert (ms & ~ctm).sum() >= 50  # a whole row of the mask sits outside the CT's square


@pytest.mark.parametrize("codes", ["LAS", "LPS", "RPI", "oblique"])
def test_round_trip_at_the_input_spacing_is_exact(codes: str) -> None:
    rng = np.random.default_rng(1)
    shape = (36, 30, 14)
    aff = affine_for(codes, spacing=(0.8, 0.8, 2.5))
    ct = Volume(rng.integers(-1000, 1500, shape).astype(np.int16), aff)
    m = np.zeros(shape, np.uint8)
    m[7:19, 9:22, 3:9] = 1
    m[20, 25, 11] = 1
    region = np.zeros(shape, np.uint8)
    region[4:30, 5:27, 2:13] = 1
    grid = fit_grid(ct, Volume(region, aff), lung_cfg(spacing_mm=0.8, margin_mm=1.6))
    assert grid.step == (1.0, 1.0) and grid.out_shape[0] % 16 == 0 and grid.out_shape[1] % 16 == 0
    back = grid.slices_to_volume(grid.mask_to_slices(Volume(m, aff)).astype(np.float32), threshold=0.5)
    assert back.shape == ct.shape and np.array_equal(back.affine, ct.affine) and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, m)
    img = grid.slices_to_volume(grid.image_to_slices(ct))
    canon_back = reorient(img, LAS)[0].array
    canon_ct = reorient(ct, LAS)[0].array
    (i0, i1), (j0, j1), (k0, k1) = grid.box_ijk
    np.testing.assert_allclose(canon_back[i0:i1, j0:j1, k0:k1] * HU_SCALE, np.clip(canon_ct, -1024, 3071)[i0:i1, j0:j1, k0:k1], atol=0.05)
    outside = np.ones(canon_back.shape, bool)
    outside[i0:i1, j0:j1, k0:k1] = False
    assert not canon_back[outside].any()
    assert SliceGrid.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid


@pytest.mark.parametrize("codes", ["LAS", "LPS", "oblique"])
def test_image_slices_match_an_independent_sampler_and_downsampled_masks_come_back(codes: str) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(2)
    shape = (64, 56, 6)
    aff = affine_for(codes, spacing=(0.7, 0.7, 2.0))
    ct = Volume(rng.normal(-500, 300, shape).astype(np.int16), aff)
    grid = fit_grid(ct, None, lung_cfg(spacing_mm=1.3, margin_mm=1.0))
    slices = grid.image_to_slices(ct)
    # scipy's order-1 map_coordinates at the pixel centres found through world coordinates
    ci, cj = _pixel_centres_canonical(grid)
    canon = np.clip(reorient(ct, LAS)[0].array.astype(np.float64), -1024, 3071)
    for d in (0, 3):
        k = np.full(ci.shape, grid.slice_start + d, dtype=np.float64)
        ref = ndimage.map_coordinates(canon, [ci, cj, k], order=1, mode="constant", cval=-1000.0)
        ok = (ci > 0) & (ci < shape[0] - 1) & (cj > 0) & (cj < shape[1] - 1)  # both taps inside the scan
        np.testing.assert_allclose(slices[d][ok] * HU_SCALE, ref[ok], atol=0.05)
        np.testing.assert_allclose(slices[d][(ci < -1) | (cj < -1)] * HU_SCALE, -1000.0, atol=1e-3)
    m = np.zeros(shape, np.uint8)
    m[10:40, 12:35, 1:5] = 1
    back = grid.slices_to_volume(grid.mask_to_slices(Volume(m, aff)).astype(np.float32), threshold=0.5).array
    dice = 2 * (back & m).sum() / (back.sum() + m.sum())
    assert dice > 0.93
    edge = ndimage.binary_dilation(m, iterations=2) & ~ndimage.binary_erosion(m, iterations=2)
    assert not ((back != m) & ~edge).any()  # resampling only moves the boundary


# --------------------------------------------------------------------------------------------
# Seed preset: bit for bit


def test_seed_preset_reproduces_the_recipe_bit_for_bit(tmp_path) -> None:
    from lungtumor.config import SplitConfig
    from lungtumor.io.nifti import write_nifti
    from lungtumor.phantom.dataset import make_case
    from lungtumor.preprocessing.recipe import prepare_ct, prepare_mask, restore_slices
    from lungtumor.preprocessing.store import SliceStore, preprocess_task

    cfg = PreprocessConfig.from_preset("seed")
    assert cfg == PreprocessConfig(preset="seed")
    ct, label = make_case(3, size="SMALL")
    las = ct
    for vol, lab in ((las, label), tuple(reorient(v, ("L", "P", "S"))[0] for v in (las, label))):
        grid = fit_grid(vol, None, cfg)
        slices = grid.image_to_slices(vol)
        prep = prepare_ct(vol, cfg)
        assert slices.dtype == np.float32 and np.array_equal(slices, prep.slices)
        assert np.array_equal(grid.mask_to_slices(lab), prepare_mask(lab, cfg))
        probs = np.random.default_rng(0).random(slices.shape, dtype=np.float32)
        assert np.array_equal(grid.slices_to_volume(probs).array, restore_slices(probs, prep, vol.shape))
        assert np.array_equal(grid.slices_to_volume(probs, threshold=0.5).array, restore_slices(probs, prep, vol.shape, threshold=0.5))
    # the store's arrays are today's recipe, float16
    (tmp_path / "t" / "imagesTr").mkdir(parents=True)
    (tmp_path / "t" / "labelsTr").mkdir()
    write_nifti(ct, tmp_path / "t" / "imagesTr" / "lung_001.nii.gz")
    write_nifti(label, tmp_path / "t" / "labelsTr" / "lung_001.nii.gz")
    preprocess_task(tmp_path / "t", tmp_path / "s", cfg, SplitConfig(val_cases=0), progress=False)
    from lungtumor.io.nifti import read_nifti

    ct2, lab2 = read_nifti(tmp_path / "t" / "imagesTr" / "lung_001.nii.gz"), read_nifti(tmp_path / "t" / "labelsTr" / "lung_001.nii.gz")
    image, mask = SliceStore(tmp_path / "s").arrays("lung_001")
    assert np.array_equal(image, prepare_ct(ct2, cfg).slices.astype(np.float16))
    assert np.array_equal(mask, prepare_mask(lab2, cfg))
    meta = json.loads((tmp_path / "s" / "cases" / "lung_001" / "meta.json").read_text())
    assert meta["preset"] == "seed" and SliceGrid.from_dict(meta["grid"]).preset == "seed"
    assert json.loads((tmp_path / "s" / "config.json").read_text())["preprocess"]["preset"] == "seed"


def test_an_old_seed_store_config_still_matches(tmp_path) -> None:
    """A store written before the presets existed (no new keys) is the seed preset on a re-run."""
    from lungtumor.preprocessing.store import _check_config

    old = {k: v for k, v in PreprocessConfig(preset="seed").to_dict().items() if k not in ("preset", "spacing_mm", "margin_mm", "pad_multiple", "input_size_px", "context_step_mm")}
    (tmp_path / "config.json").write_text(json.dumps({"format": "lungtumor-slice-store", "version": 1, "preprocess": old}))
    assert _check_config(tmp_path, PreprocessConfig(preset="seed"))
    with pytest.raises(ConfigError, match="different config"):
        _check_config(tmp_path, lung_cfg())


# --------------------------------------------------------------------------------------------
# Lung-aware: slices by lung extent, labels kept, 2.5D context in mm


def test_slices_follow_the_lung_extent_in_mm_not_a_count() -> None:
    # The same anatomy (lungs from z = 100 to 250 mm, a label at 260-270 mm outside them) on
    # 1.25 mm and 5 mm slices: the kept extent is the same in mm, and every labelled voxel is kept.
    for dz in (1.25, 5.0):
        n = int(round(300 / dz))
        z = (np.arange(n) + 0.5) * dz
        aff = affine_for("LAS", spacing=(2.0, 2.0, dz), origin=(0, 0, 0))
        region = np.zeros((40, 40, n), np.uint8)
        region[5:35, 8:30, (z >= 100) & (z < 250)] = 1
        label = np.zeros_like(region)
        label[20:24, 20:24, (z >= 260) & (z < 270)] = 1
        ct = Volume(np.full(region.shape, -800, np.int16), aff)
        grown = np.maximum(region, label)  # what include_label gives the grid
        grid = fit_grid(ct, Volume(grown, aff), lung_cfg(margin_mm=5.0))
        kept = z[grid.slice_start : grid.slice_stop]
        assert kept[0] == pytest.approx(100 - 5, abs=dz) and kept[-1] == pytest.approx(270 + 5, abs=dz)
        assert grid.coverage(Volume(label, aff)) == (int(label.sum()), int(label.sum()))
        seed = fit_grid(ct, None, PreprocessConfig(preset="seed", skip_inferior_slices=30))
        assert seed.slice_start == 30  # a count: 37.5 mm or 150 mm depending on the slices


def test_context_offsets_are_millimetres_and_interpolated() -> None:
    ct = Volume(np.zeros((8, 8, 20), np.int16), affine_for("LAS", spacing=(1.0, 1.0, 5.0)))
    grid = fit_grid(ct, None, lung_cfg(context_step_mm=2.5))
    np.testing.assert_allclose(grid.context_offsets(2), [-1.0, -0.5, 0.0, 0.5, 1.0])
    thin = fit_grid(Volume(np.zeros((8, 8, 20), np.int16), affine_for("LAS", spacing=(1.0, 1.0, 0.625))), None, lung_cfg(context_step_mm=2.5))
    np.testing.assert_allclose(thin.context_offsets(1), [-4.0, 0.0, 4.0])
    assert fit_grid(ct, None, PreprocessConfig(preset="seed", skip_inferior_slices=0)).context_offsets(1).tolist() == [-1, 0, 1]
    slices = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    out = context_stack(slices, np.array([0, 2, 4]), np.array([-0.5, 0.0, 0.5]))
    np.testing.assert_allclose(out[:, :, 0, 0], [[0.0, 0.0, 0.5], [1.5, 2.0, 2.5], [3.5, 4.0, 4.0]])
    ints = context_stack(slices, np.array([0, 4]), np.array([-1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(ints[:, :, 0, 0], [[0, 0, 1], [3, 4, 4]])


def test_real_lung1_002_keeps_every_tumour_voxel_with_the_lung_preset(real_data) -> None:
    """Issue 7: the seed preset drops 11,467 of LUNG1-002's 128,499 GTV voxels (8.9 %); the lung preset keeps all."""
    from lungtumor.io.nifti import read_nifti
    from lungtumor.preprocessing.lungs import find_lung_region, include_label

    ct = read_nifti(real_data / "LUNG1-002" / "ct.nii.gz")
    gtv = read_nifti(real_data / "LUNG1-002" / "gtv1_label.nii.gz")
    inside, total = fit_grid(ct, None, PreprocessConfig(preset="seed")).coverage(gtv)
    assert (total, total - inside) == (128_499, 11_467)
    region, _ = include_label(find_lung_region(ct), gtv)
    grid = fit_grid(ct, region.mask, lung_cfg())
    assert grid.coverage(gtv) == (total, total)
    assert grid.pixel_spacing_mm == pytest.approx((1.5, 1.5))
    assert grid.mask_to_slices(gtv).sum() > 0


# --------------------------------------------------------------------------------------------
# Bad configs


@pytest.mark.parametrize(
    "kw,text",
    [
        ({"spacing_mm": 0.0}, "spacing_mm"),
        ({"spacing_mm": -1.0}, "spacing_mm"),
        ({"margin_mm": 0.0}, "margin_mm"),
        ({"margin_mm": -5.0}, "margin_mm"),
        ({"input_size_px": (100, 96)}, "cannot be taken by the network"),
        ({"pad_multiple": 12}, "power of two"),
        ({"context_step_mm": 0.0}, "context_step_mm"),
    ],
)
def test_bad_lung_configs_are_one_line_errors(kw, text) -> None:
    with pytest.raises(ConfigError, match=text) as info:
        lung_cfg(**kw)
    assert "\n" not in str(info.value) and ("use e.g." in str(info.value))


def test_other_config_errors() -> None:
    for make, text in [
        (lambda: PreprocessConfig(preset="lungs"), "unknown"),
        (lambda: PreprocessConfig(preset="seed", spacing_mm=1.0), "lung preset only"),
        (lambda: PreprocessConfig.from_preset("nope"), "unknown"),
        (lambda: PreprocessConfig.from_dict({**lung_cfg().to_dict(), "bogus": 1}), "unknown"),
        (lambda: preset_for(lung_cfg()).check_model_input(lung_cfg(), depth=5), "pad_multiple=32"),
        (lambda: preset_for("seed").check_model_input(PreprocessConfig(preset="seed", size=36), depth=3), "--size 40"),
    ]:
        with pytest.raises(ConfigError, match=text) as info:
            make()
        assert "\n" not in str(info.value)
    preset_for(lung_cfg()).check_model_input(lung_cfg(), depth=4)
    assert PreprocessConfig.from_dict(lung_cfg(input_size_px=(256, 192)).to_dict()) == lung_cfg(input_size_px=(256, 192))
    ct = Volume(np.zeros((8, 8, 8), np.int16), affine_for("LAS"))
    with pytest.raises(GeometryError, match="lung region"):
        fit_grid(ct, Volume(np.zeros((8, 8, 9), np.uint8), affine_for("LAS")), lung_cfg())
    grid = fit_grid(ct, None, lung_cfg())
    with pytest.raises(GeometryError, match="fit the grid"):
        grid.image_to_slices(Volume(np.zeros((8, 8, 8), np.int16), affine_for("LAS", origin=(0, 0, 0))))


def test_cli_preprocess_preset_errors_are_one_line(tmp_path, capsys) -> None:
    from lungtumor.cli import main

    for args in (["--preset", "lung", "--size", "128"], ["--preset", "lung", "--spacing-mm", "0"], ["--preset", "seed", "--spacing-mm", "1.5"], ["--size", "64"]):
        rc = main(["preprocess", str(tmp_path / "task"), str(tmp_path / "store"), *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and "Traceback" not in err and err
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------------------------
# Inference through the grid


class BrightNet(torch.nn.Module):
    """Stub model: 'tumour' wherever the centre channel is brighter than -300 HU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        return 1000.0 * (x[:, c : c + 1] - (-300.0 / HU_SCALE))


class RightHalfNet(torch.nn.Module):
    """Stub model that only sees bright voxels in the first half of H (the patient's right in
    canonical ('L','A','S') slices): an asymmetric detector that tells the TTA axis apart."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        h = x.shape[-2]
        side = (torch.arange(h) < h // 2).to(x.dtype).view(1, 1, h, 1)
        return torch.where(side > 0, 1000.0 * (x[:, c : c + 1] - (-300.0 / HU_SCALE)), torch.full_like(x[:, c : c + 1], -1000.0))


def _model(net: torch.nn.Module, cfg: PreprocessConfig, context: int = 0):
    from lungtumor.model.checkpoint import LoadedModel

    return LoadedModel(net=net, preprocess=cfg, context=context, info={"threshold": 0.5})


@pytest.mark.parametrize("codes", ["LAS", "LPS"])
def test_segment_with_the_lung_preset_keeps_the_input_grid_and_the_lung_region(codes: str) -> None:
    from lungtumor.inference.predictor import segment

    shape = (48, 40, 30)
    canon = np.full(shape, -800, np.int16)
    region = np.zeros(shape, np.uint8)
    region[10:30, 8:28, 8:22] = 1
    canon[14:18, 12:16, 10:14] = 100  # A: inside the lungs
    canon[34:36, 12:16, 12:14] = 100  # B: in the grid's margin, not touching the lungs
    canon[26:33, 20:24, 15:18] = 100  # D: straddles the region's edge
    canon[2:5, 2:5, 0:2] = 100  # C: beyond the crop (below the kept slices)
    canon[20:21, 20:21, 18:19] = 100  # E: one voxel inside the lungs
    aff = affine_for("LAS", spacing=(1.0, 1.0, 2.0))
    ct_las = Volume(canon, aff)
    ct, _ = reorient(ct_las, tuple(codes))
    reg, _ = reorient(Volume(region, aff), tuple(codes))
    cfg = lung_cfg(spacing_mm=1.0, margin_mm=8.0)
    kept_expected = np.zeros(shape, np.uint8)
    kept_expected[14:18, 12:16, 10:14] = 1
    kept_expected[26:33, 20:24, 15:18] = 1
    kept_expected[20, 20, 18] = 1
    for post, expected in ((True, kept_expected), (False, None)):
        mask, prob = segment(ct, _model(BrightNet(), cfg), region=reg, postprocess=post, return_probabilities=True, precision="fp32")
        assert mask.shape == ct.shape and np.array_equal(mask.affine, ct.affine) and mask.array.dtype == np.uint8
        assert prob.shape == ct.shape and np.array_equal(prob.affine, ct.affine)
        got = reorient(mask, LAS)[0].array
        if expected is not None:
            np.testing.assert_array_equal(got, expected)
        else:
            assert got[34:36, 12:16, 12:14].all() and not got[2:5, 2:5, 0:2].any()  # B kept raw, C beyond the crop
    small = segment(ct, _model(BrightNet(), cfg), region=reg, min_lesion_ml=0.01, precision="fp32")
    assert reorient(small, LAS)[0].array[20, 20, 18] == 0 and reorient(small, LAS)[0].array[14:18, 12:16, 10:14].all()


@pytest.mark.parametrize("preset", ["seed", "lung"])
@pytest.mark.parametrize("codes", ["LAS", "LPS", "RAS"])
def test_tta_flips_the_patients_left_right(codes: str, preset: str) -> None:
    """A marker on the patient's left comes back on the left: only the left-right mirrored pass of
    the right-half detector can see it, and its answer is put back where the marker is."""
    from lungtumor.inference.predictor import segment

    shape = (32, 32, 36)
    aff = affine_for(codes, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    ct = np.full(shape, -800, np.int16)
    centre = aff @ np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, 32, 1.0])
    target = centre[:3] + np.array([-16.0, 6.0, 0.0])  # 16 mm towards the patient's left (-x in RAS+), 6 mm anterior
    ijk = np.round(np.linalg.inv(aff) @ np.append(target, 1.0))[:3].astype(int)
    ct[ijk[0] - 1 : ijk[0] + 2, ijk[1] - 1 : ijk[1] + 2, ijk[2] - 1 : ijk[2] + 2] = 200
    vol = Volume(ct, aff)
    cfg = PreprocessConfig(preset="seed", size=32) if preset == "seed" else lung_cfg(spacing_mm=2.0)
    region = None if preset == "seed" else Volume(np.ones(shape, np.uint8), aff)
    plain = segment(vol, _model(RightHalfNet(), cfg), region=region, threshold=0.4, precision="fp32")
    assert plain.array.sum() == 0  # the detector alone never sees the patient's left
    mask = segment(vol, _model(RightHalfNet(), cfg), region=region, threshold=0.4, tta="flip", precision="fp32")
    idx = np.argwhere(mask.array)
    assert len(idx) > 0
    world = (aff @ np.c_[idx, np.ones(len(idx))].T)[:3].mean(axis=1)
    np.testing.assert_allclose(world, target, atol=2.5)  # on the left, where the marker is


def test_context_model_sees_neighbours_by_mm_in_segment() -> None:
    from lungtumor.inference.predictor import segment

    seen: list[torch.Tensor] = []

    class Spy(BrightNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return super().forward(x)

    shape = (16, 16, 12)
    ramp = np.broadcast_to((np.arange(12) * 100 - 1000).astype(np.int16), shape).copy()
    vol = Volume(ramp, affine_for("LAS", spacing=(1.0, 1.0, 5.0)))
    segment(vol, _model(Spy(), lung_cfg(spacing_mm=1.0, context_step_mm=2.5), context=1), region=Volume(np.ones(shape, np.uint8), vol.affine), precision="fp32", batch_size=64)
    x = torch.cat(seen)  # (D, 3, H, W): HU ramps 100 HU per 5 mm slice, so +-2.5 mm is +-50 HU
    hu = x[:, :, 8, 8] * HU_SCALE
    np.testing.assert_allclose((hu[3:-3, 2] - hu[3:-3, 1]).numpy(), 50.0, atol=0.1)
    np.testing.assert_allclose((hu[3:-3, 1] - hu[3:-3, 0]).numpy(), 50.0, atol=0.1)


# --------------------------------------------------------------------------------------------
# Training reads stores whose cases differ in slice size


def test_lung_store_with_cases_of_different_extents_trains_in_padded_batches(tmp_path, monkeypatch) -> None:
    from lungtumor.config import SplitConfig
    from lungtumor.io.nifti import write_nifti
    from lungtumor.preprocessing import store as store_module
    from lungtumor.preprocessing.store import SliceStore, preprocess_task
    from lungtumor.training.data import DataConfig, SliceDataModule, SliceDataset

    task = tmp_path / "task"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    cases = {"lung_000": ((40, 36, 20), 2.5, (4, 36, 3, 30, 2, 18)), "lung_001": ((56, 44, 24), 1.25, (10, 30, 6, 40, 5, 20))}
    for cid, (shape, dz, _) in cases.items():
        aff = affine_for("LAS", spacing=(1.0, 1.0, dz))
        ct = np.full(shape, -800, np.int16)
        lab = np.zeros(shape, np.uint8)
        lab[15:19, 15:19, 8:12] = 1
        ct[lab > 0] = 50
        write_nifti(Volume(ct, aff), task / "imagesTr" / f"{cid}.nii.gz")
        write_nifti(Volume(lab, aff), task / "labelsTr" / f"{cid}.nii.gz")
    outside = {}

    def fake_region(ct, label, cfg):  # a lung box per case; labels outside it are kept (grown)
        i0, i1, j0, j1, k0, k1 = cases[ct.meta["path"].split("/")[-1].split(".")[0]][2]
        r = np.zeros(ct.shape, np.uint8)
        r[i0:i1, j0:j1, k0:k1] = 1
        outside[ct.shape] = int(((label.array > 0) & (r == 0)).sum())
        return Volume(np.maximum(r, label.array), ct.affine), {"found": True, "label_voxels_outside": outside[ct.shape]}

    monkeypatch.setattr(store_module, "lung_region_for", fake_region)
    cfg = lung_cfg(spacing_mm=1.0, margin_mm=2.0, context_step_mm=2.5)
    preprocess_task(task, tmp_path / "store", cfg, SplitConfig(val_cases=1), progress=False)
    store = SliceStore(tmp_path / "store")
    shapes = {c: store.arrays(c)[0].shape[1:] for c in cases}
    assert shapes["lung_000"] != shapes["lung_001"]
    for c in cases:
        meta = store.meta(c)
        assert meta["tumour_voxels_covered"] == meta["tumour_voxels_original"] == 64 and sum(meta["tumour_voxels"]) == 64
    np.testing.assert_allclose(store.context_offsets("lung_000", 1), [-1, 0, 1])
    np.testing.assert_allclose(store.context_offsets("lung_001", 1), [-2, 0, 2])
    ds = SliceDataset(store, list(cases), context=1)
    dm = SliceDataModule(tmp_path / "store", DataConfig(context=1, batch_size=64, num_workers=0))
    loader = dm._loader(ds, shuffle=False)
    ct, mask, index = next(iter(loader))
    h = max(s[0] for s in shapes.values())
    w = max(s[1] for s in shapes.values())
    assert ct.shape == (len(ds), 3, h, w) and mask.shape == (len(ds), 1, h, w) and index.dtype == torch.int64
    n0 = store.n_slices("lung_000")
    a0 = shapes["lung_000"]
    np.testing.assert_allclose(ct[:n0, :, a0[0] :, :].numpy(), -1000.0 / HU_SCALE, rtol=1e-6)  # padded with air
    assert mask[:, 0].sum() == 128 and mask[:n0, :, a0[0] :].sum() == 0
    a1 = shapes["lung_001"]
    np.testing.assert_array_equal(ct[n0 + 5, 1, : a1[0], : a1[1]].numpy(), np.asarray(store.arrays("lung_001")[0][5], dtype=np.float32))
    # the 2.5 mm neighbours of a 1.25 mm case are two slices away
    np.testing.assert_array_equal(ct[n0 + 5, 2, : a1[0], : a1[1]].numpy(), np.asarray(store.arrays("lung_001")[0][7], dtype=np.float32))


def test_fixed_input_size_and_a_box_that_does_not_fit(caplog) -> None:
    ct = Volume(np.zeros((60, 50, 8), np.int16), affine_for("LAS", spacing=(1.0, 1.0, 2.0)))
    region = np.zeros(ct.shape, np.uint8)
    region[20:40, 20:30, 2:6] = 1
    grid = fit_grid(ct, Volume(region, ct.affine), lung_cfg(spacing_mm=1.0, margin_mm=1.0, input_size_px=(64, 48)))
    assert grid.out_shape == (64, 48)
    with caplog.at_level("WARNING"):
        big = fit_grid(ct, None, lung_cfg(spacing_mm=1.0, margin_mm=1.0, input_size_px=(32, 32)))
    assert big.out_shape == (64, 64) and "input_size_px" in caplog.text  # grown, never cropping lung


def test_labels_outside_the_lung_region_are_reported_and_kept(caplog) -> None:
    from lungtumor.phantom.dataset import make_case
    from lungtumor.preprocessing.store import lung_region_for

    ct, label = make_case(3, size="SMALL")
    lab = label.array.copy()
    lab[:3, :3, :4] = 1  # a labelled corner outside the body
    with caplog.at_level("WARNING"):
        region, info = lung_region_for(ct, label.with_array(lab), lung_cfg())
    assert info["found"] and info["label_voxels_outside"] == 36 and "36 labelled voxels" in caplog.text
    grid = fit_grid(ct, region, lung_cfg())
    assert grid.coverage(label.with_array(lab)) == (int(lab.sum()), int(lab.sum()))
    caplog.clear()
    with caplog.at_level("WARNING"):
        none, info = lung_region_for(ct.with_array(np.full(ct.shape, 40, np.int16)), None, lung_cfg())
    assert none is None and not info["found"] and "no lungs found" in caplog.text
    assert lung_region_for(ct, label, PreprocessConfig(preset="seed")) == (None, {})


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_postprocess_matches_labelling_the_whole_mask(path: str, order: str, monkeypatch) -> None:
    from scipy import ndimage

    from lungtumor.lesions import components as seg
    from lungtumor.lesions.components import postprocess_mask

    if path == "dense":
        monkeypatch.setattr(seg, "SPARSE_LESION_VOXELS", 0)
    else:  # these masks fill a third of their box: the graph path only when told to take it
        monkeypatch.setattr(seg, "SPARSE_MAX_FILL", 1.0)
    rng = np.random.default_rng(5)
    full = np.ones((3, 3, 3), bool)
    for trial in range(6):
        mask = np.asarray((ndimage.uniform_filter(rng.random((30, 28, 20)), 3) > 0.55).astype(np.uint8), order=order)
        region = np.zeros(mask.shape, np.uint8, order="F" if order == "C" else "C")
        region[5 + trial : 20, 4:18, 3:15] = 1
        labels, n = ndimage.label(mask, structure=full)
        keep = np.zeros(n + 1, bool)
        keep[np.unique(labels[(region > 0) & (labels > 0)])] = True
        expected = keep[labels].astype(np.uint8)
        got = postprocess_mask(mask, region, voxel_ml=0.001)
        np.testing.assert_array_equal(got, expected)
        assert 0 < got.sum() < mask.sum()
        sizes = np.bincount(labels.ravel())
        small = postprocess_mask(mask, region, voxel_ml=0.001, min_lesion_ml=0.02)
        np.testing.assert_array_equal(small, (keep & (sizes * 0.001 >= 0.02))[labels].astype(np.uint8))


def test_postprocess_takes_the_voxel_graph_for_a_few_lesions_and_the_box_for_a_filled_one(monkeypatch) -> None:
    from lungtumor.lesions import components as seg

    calls: list[int] = []
    real = seg._sparse_components
    monkeypatch.setattr(seg, "_sparse_components", lambda lin, shape: calls.append(lin.size) or real(lin, shape))
    few = np.zeros((60, 120, 120), np.uint8)
    few[5:8, 5:8, 5:8] = 1
    few[50:53, 100:104, 100:103] = 1  # two small lesions far apart: 0.05 % of their box
    assert seg.postprocess_mask(few, None, 0.001).sum() == 27 + 36 and calls == [63]
    filled = np.zeros((60, 120, 120), np.uint8)
    filled[::2] = 1  # half of the box: labelled as a box, no graph
    assert seg.postprocess_mask(filled, None, 0.001).sum() == filled.sum() and calls == [63]


@pytest.mark.parametrize("clip_hu", [None, (-1000.0, 500.0)])
def test_slicing_a_float32_ct_at_the_slice_size_leaves_the_callers_array_alone(clip_hu) -> None:
    # The seed recipe's tensor is a view of a float32 array that needs no resize: scaling or clipping
    # it in place once divided the caller's CT by hu_scale (a second segment() call saw no air).
    arr = np.random.default_rng(0).normal(-800, 300, (32, 32, 6)).astype(np.float32)
    ct = Volume(arr.copy(), affine_for("LAS"))
    cfg = PreprocessConfig(preset="seed", size=32, skip_inferior_slices=0, clip_hu=clip_hu)
    fit_grid(ct, None, cfg).image_to_slices(ct)
    assert np.array_equal(ct.array, arr)
