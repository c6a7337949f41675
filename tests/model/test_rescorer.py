"""The re-scorer's patch geometry (against a brute-force check), its config and its checkpoint block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungtumor.errors import CheckpointError, ConfigError
from lungtumor.model.rescorer import (
    RESCORER_KEY,
    Rescorer,
    RescorerConfig,
    cut_patches,
    normalise_hu,
    patch_offsets_mm,
    rescorer_block,
    rescorer_from_block,
    score_patches,
)

SMALL = RescorerConfig(patch_shape=(6, 10, 10), patch_spacing_mm=(2.0, 1.0, 1.0), widths=(2, 4, 4))


def _trilinear(volume: np.ndarray, p: np.ndarray, fill: float) -> float:
    """Brute-force trilinear value at continuous voxel position ``p`` with ``fill`` outside the volume."""
    base = np.floor(p).astype(int)
    frac = p - base
    total = 0.0
    for corner in np.ndindex(2, 2, 2):
        idx = base + np.array(corner)
        w = np.prod(np.where(np.array(corner) == 1, frac, 1 - frac))
        inside = np.all(idx >= 0) and np.all(idx < volume.shape)
        total += w * (volume[tuple(idx)] if inside else fill)
    return float(total)


def test_point_at_known_mm_lands_in_the_patch_centre_anisotropic() -> None:
    spacing = (2.5, 0.7, 0.9)  # slices, rows, columns: anisotropic
    vol = np.full((20, 40, 40), -800.0, np.float32)
    centre_mm = np.array([21.0, 13.3, 17.1])  # a point in mm from voxel (0, 0, 0)'s centre
    # A blob of constant density made of the voxels within 2.6 mm of that point.
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(vol.shape, spacing)], indexing="ij"), -1)
    vol[np.linalg.norm(grid - centre_mm, axis=-1) <= 2.6] = 100.0
    cfg = RescorerConfig(patch_shape=(9, 21, 21), patch_spacing_mm=(1.0, 0.5, 0.5), widths=(2, 2, 2))
    patch = cut_patches(vol, spacing, (centre_mm / np.array(spacing))[None], cfg)[0]
    weight = np.clip(patch + 800.0, 0, None)
    com = np.array([np.sum(weight * ix) / weight.sum() for ix in np.indices(patch.shape)])
    expected = (np.array(cfg.patch_shape) - 1) / 2.0
    assert np.allclose(com, expected, atol=0.35), (com, expected)
    # Its physical size: the blob spans about 5.2 mm, i.e. about 10 patch voxels of 0.5 mm in-plane.
    assert 8 <= int(np.sum(patch[4, 10] > -350)) <= 12


def test_patch_matches_brute_force_trilinear_with_air_outside() -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 100, (7, 9, 8)).astype(np.float32)
    spacing = (2.0, 0.8, 1.3)
    centres = np.array([[3.2, 4.1, 3.7], [0.1, 0.0, 7.9], [6.5, -1.0, 2.0]])  # inside, at a corner, half outside
    patches = cut_patches(vol, spacing, centres, SMALL, scale=2.0, fill_hu=-1000.0)
    offsets = patch_offsets_mm(SMALL)
    for n, c in enumerate(centres):
        for a, b, d in [(0, 0, 0), (5, 9, 9), (2, 3, 7), (3, 5, 4)]:
            p = c + np.array([offsets[0][a], offsets[1][b], offsets[2][d]]) / np.array(spacing)
            assert patches[n, a, b, d] == pytest.approx(_trilinear(vol * 2.0, p, -1000.0), abs=1e-3)


def test_patch_entirely_outside_is_air_and_memory_maps_are_read_in_part(tmp_path) -> None:
    vol = np.zeros((10, 10, 10), np.float16)
    np.save(tmp_path / "v.npy", vol)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    patches = cut_patches(mm, (1.0, 1.0, 1.0), np.array([[100.0, 5, 5], [5.0, 5, 5]]), SMALL)
    assert np.all(patches[0] == -1000.0)
    assert np.all(patches[1][2:4, 4:6, 4:6] == 0.0)


def test_normalise_maps_the_window_to_minus_one_one() -> None:
    x = normalise_hu(np.array([[[[-2000.0, -1000.0], [400.0, 3000.0]]]]), RescorerConfig())
    assert x.shape == (1, 1, 1, 2, 2)
    assert x.flatten().tolist() == pytest.approx([-1.0, -1.0, 1.0, 1.0])


def test_config_checks_and_round_trip() -> None:
    cfg = RescorerConfig()
    assert cfg.extent_mm == (30.0, 30.0, 30.0)
    assert RescorerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="rows and columns"):
        RescorerConfig(patch_shape=(12, 24, 20))
    with pytest.raises(ConfigError, match="unknown keys"):
        RescorerConfig.from_dict({"patch": [1, 2, 3]})


def test_checkpoint_block_round_trip_weights_only(tmp_path) -> None:
    torch.manual_seed(0)
    net = Rescorer(SMALL)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
    torch.save({RESCORER_KEY: rescorer_block(net, summary={"steps": 3})}, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)
    again = rescorer_from_block(loaded[RESCORER_KEY])
    assert again.config == SMALL
    patches = np.random.default_rng(1).normal(-500, 300, (3, *SMALL.patch_shape)).astype(np.float32)
    assert np.array_equal(score_patches(net, patches), score_patches(again, patches))


def test_the_operating_point_travels_in_the_block(tmp_path) -> None:
    net = Rescorer(SMALL)
    assert net.min_lesion_score is None and "min_lesion_score" not in rescorer_block(net)  # none: keep every lesion
    net.min_lesion_score = 0.5
    torch.save({RESCORER_KEY: rescorer_block(net)}, tmp_path / "c.ckpt")
    block = torch.load(tmp_path / "c.ckpt", weights_only=True)[RESCORER_KEY]
    assert block["min_lesion_score"] == 0.5 and rescorer_from_block(block).min_lesion_score == 0.5
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(CheckpointError, match="min_lesion_score"):
            rescorer_from_block({**block, "min_lesion_score": bad}, "x.ckpt")


def test_malformed_block_is_one_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="malformed"):
        rescorer_from_block({"config": SMALL.to_dict()}, "x.ckpt")
    block = rescorer_block(Rescorer(SMALL))
    block["config"] = RescorerConfig(widths=(4, 4, 4)).to_dict()
    with pytest.raises(CheckpointError, match="does not load"):
        rescorer_from_block(block, "x.ckpt")


def test_lesion_centre_is_the_centroid_or_the_lesions_nearest_voxel() -> None:
    from lungtumor.model.rescorer import lesion_centres

    labels = np.zeros((5, 20, 20), np.int32)
    labels[1:4, 2:5, 2:5] = 1  # a cube: its centroid
    labels[2, 2:18, 10] = 2  # a C shape: two arms and the bar joining them; the centroid is in the gap
    labels[2, 2, 10:18] = 2
    labels[2, 17, 10:18] = 2
    c = lesion_centres(labels, 2)
    assert c[0].tolist() == [2.0, 3.0, 3.0]
    assert labels[tuple(np.round(c[1]).astype(int))] == 2
    centroid = np.argwhere(labels == 2).mean(0)
    assert labels[tuple(np.round(centroid).astype(int))] == 0  # the plain centroid would miss it
