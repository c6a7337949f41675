"""The re-scorer's training: it learns spheres (nodules) against cylinders (vessels), it cannot learn a
crop's edge, it is reproducible, and it travels inside the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import affine_for
from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.errors import CheckpointError, ConfigError, InputError
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.model.checkpoint import load_model, read_checkpoint
from lungtumor.model.rescorer import RescorerConfig, score_patches
from lungtumor.training.rescorer import (
    PatchPool,
    PatchSource,
    RescorerSampler,
    RescorerTrainConfig,
    add_rescorer,
    fit_rescorer,
    train_rescorer,
)

#: A small patch (20 mm) and narrow net: the tests run in seconds on one thread.
TINY = RescorerConfig(patch_shape=(8, 16, 16), patch_spacing_mm=(2.5, 1.25, 1.25), widths=(4, 8, 8))
SPACING = (2.5, 1.25, 1.25)  # (slice, row, column) mm


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def nodules_and_vessels(rng: np.random.Generator, shape=(24, 56, 56), n_spheres=4, n_vessels=5):
    """A lung-like volume (HU, (D, H, W) at SPACING) with labelled spheres (radius 3-5 mm) and unlabelled
    straight vessels (radius 1.2-2 mm) in random 3D directions; the sphere centres and points on vessels
    at least 8 mm from every sphere."""
    sp = np.array(SPACING)
    pos = np.stack(np.indices(shape), -1) * sp  # mm
    vol = rng.normal(-850, 25, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    extent = np.array(shape) * sp
    spheres = []
    for _ in range(n_spheres):
        c = rng.uniform(0.2, 0.8, 3) * extent
        r = rng.uniform(3.0, 5.0)
        inside = np.linalg.norm(pos - c, axis=-1) <= r
        vol[inside] = rng.normal(30, 20, int(inside.sum()))
        label[inside] = 1
        spheres.append(c / sp)
    vessel_points = []
    for _ in range(n_vessels):
        p0 = rng.uniform(0.2, 0.8, 3) * extent
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        r = rng.uniform(1.2, 2.0)
        rel = pos - p0
        dist = np.linalg.norm(rel - (rel @ d)[..., None] * d, axis=-1)
        inside = (dist <= r) & (label == 0)
        vol[inside] = rng.normal(30, 20, int(inside.sum()))
        for t in np.linspace(-25, 25, 11):
            q = p0 + t * d
            if np.all(q > 0) and np.all(q < extent) and all(np.linalg.norm(q - s * sp) > 8 for s in spheres):
                vessel_points.append(q / sp)
    return vol, label, np.array(spheres), np.array(vessel_points).reshape(-1, 3)


def _pools(n_volumes: int, seed: int):
    rng = np.random.default_rng(seed)
    sources, pos, neg, held = [], PatchPool(), PatchPool(), []
    for i in range(n_volumes):
        vol, _, spheres, vessels = nodules_and_vessels(rng)
        sources.append(PatchSource(f"case{i}", vol, SPACING, 1.0, -1000.0, False))
        pos.add(i, spheres)
        neg.add(i, vessels)
        held.append((vol, spheres, vessels))
    return sources, pos, neg, held


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def test_learns_spheres_against_cylinders_clearly_better_than_chance() -> None:
    sources, pos, neg, _ = _pools(4, seed=0)
    cfg = RescorerTrainConfig(steps=150, batch=16, seed=0, lr=3e-3, model=TINY)
    sampler = RescorerSampler(sources, {"store_pos": pos, "crop_pos": PatchPool(), "store_neg": neg, "store_fp": PatchPool(), "crop_neg": PatchPool()}, [], cfg)
    net, losses = fit_rescorer(sampler, cfg)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    # Unseen volumes: the spheres' centres against points on the vessels.
    from lungtumor.model.rescorer import cut_patches

    _, _, _, held = _pools(3, seed=99)
    p_scores = np.concatenate([score_patches(net, cut_patches(v, SPACING, s, TINY)) for v, s, _ in held])
    n_scores = np.concatenate([score_patches(net, cut_patches(v, SPACING, c, TINY)) for v, _, c in held])
    auc = _auc(p_scores, n_scores)
    acc = 0.5 * (np.mean(p_scores > 0.5) + np.mean(n_scores <= 0.5))
    assert auc > 0.85, (auc, acc)
    assert acc > 0.7, (auc, acc)


def _noise_world(seed: int):
    """Volumes and crops of the same structureless tissue-like noise: nothing but a crop's edge tells a
    crop (the only positives) from a scan point. The crops are 10 mm thick, the patch 20 mm: every crop
    patch runs off its crop."""
    rng = np.random.default_rng(seed)
    sources, store_neg, crop_pos, boxes = [], PatchPool(), PatchPool(), []
    for i in range(3):
        sources.append(PatchSource(f"case{i}", rng.normal(-300, 100, (24, 40, 40)).astype(np.float32), SPACING, 1.0, -1000.0, False))
        store_neg.add(i, rng.uniform([4, 8, 8], [20, 32, 32], (30, 3)))
    for j in range(12):
        shape = np.array([4, 16 + j % 3, 16])
        src = len(sources)
        sources.append(PatchSource(f"crop{j}", rng.normal(-300, 100, tuple(shape)).astype(np.float32), SPACING, 1.0, -850.0, True))
        centre = (shape - 1) / 2.0
        crop_pos.add(src, centre)
        boxes.append(((-centre - 0.5) * np.array(SPACING), (shape - 0.5 - centre) * np.array(SPACING)))
    return sources, {"store_pos": PatchPool(), "crop_pos": crop_pos, "store_neg": store_neg, "store_fp": PatchPool(), "crop_neg": PatchPool()}, boxes


def _accuracy(sampler: RescorerSampler, net, seed: int) -> float:
    patches, labels = sampler.draw(200, np.random.default_rng(seed), augment=False)
    return float(np.mean((score_patches(net, patches) > 0.5) == (labels > 0.5)))


def test_the_crop_edge_alone_cannot_be_learnt() -> None:
    cfg = RescorerTrainConfig(steps=60, batch=16, seed=0, lr=3e-3, model=TINY)
    sources, pools, boxes = _noise_world(1)
    new_sources, new_pools, new_boxes = _noise_world(2)  # unseen crops and scans (no memorised noise)
    # The control: crops as the only positives, scan points as the plain negatives. The edge is learnt.
    naive = RescorerSampler(sources, pools, [], cfg)
    assert naive.edged_share == 0.0
    net, _ = fit_rescorer(naive, cfg)
    assert _accuracy(RescorerSampler(new_sources, new_pools, [], cfg), net, 5) > 0.9
    # The sampler as trained: the negatives get crop edges as often as the positives. Chance.
    fair = RescorerSampler(sources, pools, boxes, cfg)
    assert fair.edged_share == 1.0
    net, _ = fit_rescorer(fair, cfg)
    assert _accuracy(RescorerSampler(new_sources, new_pools, new_boxes, cfg), net, 5) < 0.65


def test_training_is_reproducible_and_leaves_the_torch_generator_alone() -> None:
    sources, pos, neg, _ = _pools(1, seed=3)
    cfg = RescorerTrainConfig(steps=3, batch=4, seed=7, model=TINY)
    pools = {"store_pos": pos, "crop_pos": PatchPool(), "store_neg": neg, "store_fp": PatchPool(), "crop_neg": PatchPool()}
    state = torch.get_rng_state()
    a, _ = fit_rescorer(RescorerSampler(sources, pools, [], cfg), cfg)
    assert torch.equal(state, torch.get_rng_state())
    b, _ = fit_rescorer(RescorerSampler(sources, pools, [], cfg), cfg)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="batch"):
        RescorerTrainConfig(batch=1)
    with pytest.raises(ConfigError, match="steps"):
        RescorerTrainConfig(steps=-1)
    with pytest.raises(ConfigError, match="edged_share"):
        RescorerTrainConfig(edged_share=2.0)


# ---- end to end on a store -------------------------------------------------------------------


def write_nodule_task(root: Path, n: int = 3, seed: int = 0) -> Path:
    """An MSD-layout task of :func:`nodules_and_vessels` volumes (written (H, W, D) = (i, j, k))."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    aff = affine_for("LAS", spacing=(SPACING[1], SPACING[2], SPACING[0]))
    for i in range(n):
        vol, label, _, _ = nodules_and_vessels(rng, shape=(16, 32, 32), n_spheres=2, n_vessels=3)
        write_nifti(Volume(np.round(vol.transpose(1, 2, 0)).astype(np.int16), aff), root / "imagesTr" / f"lung_{i:03d}.nii.gz")
        write_nifti(Volume(label.transpose(1, 2, 0), aff), root / "labelsTr" / f"lung_{i:03d}.nii.gz")
    return root


def make_nodule_store(root: Path) -> Path:
    from lungtumor.preprocessing.store import preprocess_task

    task = write_nodule_task(root / "task")
    preprocess_task(task, root / "store", PreprocessConfig(preset="seed", size=32, skip_inferior_slices=0), SplitConfig(val_cases=1), progress=False)
    return root / "store"


def stub_unet_checkpoint(path: Path) -> Path:
    from lungtumor.model.checkpoint import checkpoint_metadata
    from lungtumor.model.unet import ModelConfig, UNet

    cfg = ModelConfig(width=2, depth=2)
    torch.manual_seed(0)
    net = UNet(cfg)
    meta = checkpoint_metadata(cfg.__dict__, PreprocessConfig(preset="seed", size=32, skip_inferior_slices=0).to_dict(), 0, threshold=0.5)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "lungtumor": meta}, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from helpers.crops import write_crop

    root = tmp_path_factory.mktemp("rescorer")
    store = make_nodule_store(root)
    for crop_id in ("LIDC-IDRI-0001_R_1", "LIDC-IDRI-0002_R_1", "LIDC-IDRI-0002_R_2"):
        write_crop(root / "crops", crop_id)
    return {"root": root, "store": store, "ckpt": stub_unet_checkpoint(root / "unet.ckpt"), "crops": root / "crops"}


def test_train_rescorer_on_a_store_with_crops_and_write_it_into_the_checkpoint(world) -> None:
    net, summary = train_rescorer(world["ckpt"], world["store"], lesion_dir=world["crops"], crop_exclude="LIDC-IDRI-0002", steps=4, batch=4, model=TINY)
    assert summary["crops"] == 1  # the excluded patient's two crops are left out
    assert summary["store_pos"] >= 2 and summary["store_neg"] > 0
    assert set(summary["fp_per_case"]) == set(summary["cases"])
    out = add_rescorer(world["ckpt"], world["root"] / "with.ckpt", net, summary)
    ckpt = read_checkpoint(out)
    assert ckpt["rescorer"]["config"] == TINY.to_dict()
    assert ckpt["rescorer"]["summary"]["crops"] == 1
    loaded = load_model(out)  # weights_only=True
    assert loaded.rescorer is not None and loaded.rescorer.config == TINY
    assert load_model(world["ckpt"]).rescorer is None


def test_bad_inputs_name_the_file(world, tmp_path) -> None:
    with pytest.raises(InputError, match="not a finished slice store"):
        train_rescorer(world["ckpt"], tmp_path / "nostore", steps=1, model=TINY)
    with pytest.raises(CheckpointError, match="not found"):
        train_rescorer(tmp_path / "none.ckpt", world["store"], steps=1, model=TINY)
    with pytest.raises(ConfigError, match="steps"):
        train_rescorer(world["ckpt"], world["store"], steps=0, model=TINY)
    with pytest.raises(InputError, match="lesion folder not found"):
        train_rescorer(world["ckpt"], world["store"], lesion_dir=tmp_path / "nocrops", steps=1, model=TINY)


def test_train_with_rescorer_steps_writes_it_into_both_checkpoints(world, tmp_path) -> None:
    from lungtumor.training.options import TrainConfig
    from lungtumor.training.trainer import train

    cfg = TrainConfig(
        store=str(world["store"]), out=str(tmp_path / "run"), epochs=1, samples_per_epoch=4, width=4, batch_size=4, num_workers=0,
        progress=False, image_every_n_steps=0, rescorer_steps=2, lesion_dir=str(world["crops"]),
    )
    summary = train(cfg)
    assert summary["rescorer"]["steps"] == 2 and summary["rescorer"]["crops"] == 3
    for name in ("best.ckpt", "last.ckpt"):
        loaded = load_model(tmp_path / "run" / name)
        assert loaded.rescorer is not None and loaded.info["rescorer"]["summary"]["steps"] == 2


def test_the_command_adds_a_rescorer_to_a_new_checkpoint(world, tmp_path, capsys) -> None:
    from lungtumor.cli import main

    before = world["ckpt"].read_bytes()
    out = tmp_path / "with.ckpt"
    assert main(["train-rescorer", str(world["ckpt"]), str(world["store"]), "--out", str(out), "--steps", "2", "--batch", "4", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(out)
    assert world["ckpt"].read_bytes() == before
    assert load_model(out).rescorer is not None
    # predict with it: the lesion table names the re-scorer's score.
    from lungtumor.lesions.score import RESCORER_SCORE_TEXT

    scan = world["root"] / "task" / "imagesTr" / "lung_000.nii.gz"
    pred = tmp_path / "pred" / "lung_000.nii.gz"
    assert main(["predict", str(out), str(scan), str(pred), "--report", "--min-lesion-score", "0.5"]) == 0
    doc = json.loads((tmp_path / "pred" / "lung_000_report" / "lesions.json").read_text())
    assert doc["conventions"]["score"] == RESCORER_SCORE_TEXT


class _ThresholdNet(torch.nn.Module):
    """Stub U-Net: probability 1 wherever the centre channel is brighter than -300 HU (spheres and vessels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lungtumor.config import HU_SCALE

        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return 1000.0 * (centre - (-300.0) / HU_SCALE)


def test_mining_finds_the_unets_false_positives_and_dense_points_far_from_labels(world) -> None:
    from scipy import ndimage

    from lungtumor.model.checkpoint import LoadedModel
    from lungtumor.preprocessing.store import SliceStore
    from lungtumor.training.rescorer import collect_pools

    store = SliceStore(world["store"])
    loaded = LoadedModel(net=_ThresholdNet(), preprocess=store.preprocess, context=0, info={"threshold": 0.5})
    cfg = RescorerTrainConfig(model=TINY, random_negatives_per_case=50)
    cases = store.splits["train"]
    sources, pools, boxes, counts = collect_pools(loaded, store, cfg, cases=cases, lesion_dir=world["crops"], crop_exclude=["LIDC-IDRI-0002"], rng=np.random.default_rng(0))
    assert counts["crops"] == 1 and len(boxes) == 1 and len(pools["crop_pos"]) == 1
    assert sum(counts["fp_per_case"].values()) >= len(cases)  # every case has vessels: the stub marks them
    for kind in ("store_fp", "store_neg"):
        for src, centre in zip(pools[kind].sources, pools[kind].centres):
            _, mask = store.arrays(sources[src].name)
            dist = ndimage.distance_transform_edt(np.asarray(mask) == 0, sampling=sources[src].spacing_mm)
            d = dist[tuple(np.clip(np.round(centre).astype(int), 0, np.array(mask.shape) - 1))]
            assert d > (cfg.negative_distance_mm - 1e-6 if kind == "store_neg" else 0.0), (kind, d)
    for src, centre in zip(pools["store_pos"].sources, pools["store_pos"].centres):
        _, mask = store.arrays(sources[src].name)
        assert mask[tuple(np.round(centre).astype(int))] == 1  # a sphere's centroid lies inside it
    crop = sources[pools["crop_pos"].sources[0]]
    assert crop.crop and crop.fill_hu == cfg.crop_fill_hu
    assert abs(crop.spacing_mm[1] - sources[0].spacing_mm[1]) < 0.05  # resampled to the store's pixel
