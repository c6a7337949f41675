"""The fast (coarse-to-fine) CPU path: same mask as the full path where the candidates cover the
tumour, the input's exact grid, the mode's defaults and fallbacks, the box geometry."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from helpers import affine_for
from lungtumor.config import HU_SCALE, PreprocessConfig
from lungtumor.errors import ConfigError
from lungtumor.inference import fast, segment
from lungtumor.io.volume import Volume, to_canonical
from lungtumor.model.checkpoint import LoadedModel
from lungtumor.preprocessing.grid import fit_grid

THRESHOLD_HU = -300.0


class ThresholdNet(torch.nn.Module):
    """Pointwise stub: 'tumour' wherever the centre channel is brighter than -300 HU (so a crop's
    output equals the whole slice's there: fast and full must agree exactly)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return 1000.0 * (centre - THRESHOLD_HU / HU_SCALE)


def lung_stub(context: int = 1) -> LoadedModel:
    return LoadedModel(net=ThresholdNet(), preprocess=PreprocessConfig.from_preset("lung"), context=context, info={"threshold": 0.5})


def chest(codes: str, shape=(96, 80, 40), spacing=(0.8, 0.9, 2.5), blobs=((30, 30, 12, 5.0), (70, 55, 28, 7.0))) -> tuple[Volume, Volume]:
    """Lung-like background (-800 HU) with bright spheres (radius in mm) and a region mask of ones."""
    rng = np.random.default_rng(0)
    arr = rng.normal(-800, 15, shape).astype(np.int16)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    for ci, cj, ck, r in blobs:
        d2 = ((ii - ci) * spacing[0]) ** 2 + ((jj - cj) * spacing[1]) ** 2 + ((kk - ck) * spacing[2]) ** 2
        arr[d2 <= r * r] = 40
    affine = affine_for(codes, spacing=spacing)
    region = np.zeros(shape, np.uint8)
    region[4:-4, 4:-4, 2:-2] = 1
    return Volume(arr, affine), Volume(region, affine)


@pytest.mark.parametrize("codes", ["LAS", "LPS", "oblique"])
def test_fast_equals_full_where_candidates_cover_the_tumour_and_keeps_the_grid(codes: str) -> None:
    ct, region = chest(codes)
    model = lung_stub()
    full = segment(ct, model, region=region, mode="full", tta="flip", precision="fp32", device="cpu")
    quick, prob = segment(ct, model, region=region, mode="fast", tta="flip", precision="fp32", device="cpu", return_probabilities=True)
    assert quick.shape == ct.shape and np.array_equal(quick.affine, ct.affine) and quick.array.dtype == np.uint8
    assert prob.shape == ct.shape and np.array_equal(prob.affine, ct.affine)
    assert full.array.sum() > 0
    np.testing.assert_array_equal(quick.array, full.array)


def test_fast_runs_less_than_the_full_path() -> None:
    ct, region = chest("LAS", shape=(160, 160, 60))
    runs = {}
    for mode in ("full", "fast"):
        model = lung_stub()
        segment(ct, model, region=region, mode=mode, tta="flip", precision="fp32", device="cpu")
        runs[mode] = sum(int(np.prod(s[:1] + s[2:])) for s in model.net.calls)  # model pixels, channels aside
    assert runs["fast"] < 0.6 * runs["full"]


def test_no_candidate_means_an_empty_mask_and_no_fine_pass() -> None:
    ct, region = chest("LAS", blobs=())
    model = lung_stub()
    mask = segment(ct, model, region=region, mode="fast", tta="flip", device="cpu")
    assert mask.array.sum() == 0 and mask.shape == ct.shape
    coarse_hw = {s[2:] for s in model.net.calls}
    assert len(coarse_hw) == 1  # the coarse pass alone ran


def test_auto_is_fast_on_cpu_full_on_cuda_and_bad_modes_fail() -> None:
    assert fast.resolve_mode("auto", "cpu") == "fast"
    assert fast.resolve_mode("auto", "cuda") == "full"
    assert fast.resolve_mode("full", "cpu") == "full"
    with pytest.raises(ConfigError, match="--mode"):
        fast.resolve_mode("quick", "cpu")
    ct, region = chest("LAS")
    with pytest.raises(ConfigError, match="--mode"):
        segment(ct, lung_stub(), region=region, mode="quick")


def test_seed_preset_checkpoints_fall_back_to_the_full_path(caplog: pytest.LogCaptureFixture) -> None:
    ct, _ = chest("LAS", shape=(16, 16, 36), blobs=((8, 8, 33, 3.0),))
    model = LoadedModel(net=ThresholdNet(), preprocess=PreprocessConfig(preset="seed", size=16), context=0, info={"threshold": 0.5})
    with caplog.at_level(logging.INFO, logger="lungtumor.inference.predictor"):
        quick = segment(ct, model, mode="fast", device="cpu")
    assert "running the full path" in caplog.text
    np.testing.assert_array_equal(quick.array, segment(ct, model, mode="full", device="cpu").array)


def _grids(codes: str = "LAS"):
    ct, region = chest(codes)
    cfg = PreprocessConfig.from_preset("lung")
    canon = to_canonical(ct, cfg.axcodes)
    return fit_grid(canon, region, cfg), fit_grid(canon, region, fast.coarse_config(cfg))


def test_a_coarse_candidate_maps_onto_the_same_place_on_the_fine_grid() -> None:
    fine, coarse = _grids()
    assert coarse.slice_start == fine.slice_start and coarse.slice_stop == fine.slice_stop
    assert coarse.pixel_spacing_mm[0] == pytest.approx(2 * fine.pixel_spacing_mm[0])
    centres = fast.coarse_centres(coarse.n_slices, coarse.spacing_mm[2])
    cand = np.zeros((centres.size, *coarse.out_shape), bool)
    cand[3, 10, 7] = True
    (box,) = fast.candidate_boxes(cand, centres, coarse, fine, margin_mm=0.0)
    # The coarse pixel's centre, in canonical voxels, lies inside the fine box.
    ci = coarse.origin_index[0] + 10 * coarse.step[0]
    cj = coarse.origin_index[1] + 7 * coarse.step[1]
    fh, fw = (ci - fine.origin_index[0]) / fine.step[0], (cj - fine.origin_index[1]) / fine.step[1]
    assert box[2] <= fh < box[3] and box[4] <= fw < box[5] and box[0] <= centres[3] < box[1]
    assert box[3] - box[2] <= 4 and box[5] - box[4] <= 4  # one coarse pixel is about 2x2 fine ones
    (wide,) = fast.candidate_boxes(cand, centres, coarse, fine, margin_mm=6.0)
    assert wide[2] == max(0, box[2] - 4) and wide[3] == min(fine.out_shape[0], box[3] + 4)


def test_coarse_slices_reach_every_slice_within_half_a_step() -> None:
    for n, mm in ((40, 2.5), (300, 1.0), (7, 0.7), (1, 1.0)):
        centres = fast.coarse_centres(n, mm)
        step = max(1, round(fast.COARSE_SLICE_MM / mm))
        gaps = np.abs(np.arange(n)[:, None] - centres[None, :]).min(axis=1)
        assert gaps.max() <= step - 1


def test_plan_crops_merges_neighbours_and_keeps_distant_candidates_apart() -> None:
    shape = (50, 208, 128)
    near = [(5, 15, 40, 50, 40, 50), (5, 15, 52, 60, 44, 52)]
    far = [(5, 15, 10, 20, 10, 20), (30, 40, 180, 190, 100, 110)]
    assert len(fast.plan_crops(near, shape, (16, 16), 8)) == 1
    crops = fast.plan_crops(far, shape, (16, 16), 8)
    assert len(crops) == 2
    for kept, run in crops:
        assert run[2] <= kept[2] and kept[3] <= run[3] and (run[3] - run[2]) % 8 == 0 and (run[5] - run[4]) % 8 == 0
        assert 0 <= run[2] and run[3] <= shape[1] and 0 <= run[4] and run[5] <= shape[2]
