"""Preprocessing recipe and slice store: contents, manifest, split, atomicity, bad input."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from helpers import affine_for
from lungtumor.config import HU_SCALE, PreprocessConfig, SplitConfig
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume, reorient
from lungtumor.preprocessing.recipe import prepare_ct, restore_slices
from lungtumor.preprocessing.store import SliceStore, preprocess_task, split_cases

CFG = PreprocessConfig(preset="seed", size=32)


def _task(root, n=4, shape=(40, 40, 45), codes="LAS", seed=0):
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        ct = rng.integers(-1000, 400, shape).astype(np.int16)
        m = np.zeros(shape, np.uint8)
        if i % 2 == 0:
            m[10:20, 12:22, 33:40] = 1
        aff = affine_for(codes)
        write_nifti(Volume(ct, aff), root / "imagesTr" / f"lung_{i:03d}.nii.gz")
        write_nifti(Volume(m, aff), root / "labelsTr" / f"lung_{i:03d}.nii.gz")
    (root / "imagesTr" / "._lung_000.nii.gz").write_bytes(b"resource fork")
    return root


def test_store_contents_match_the_recipe(tmp_path) -> None:
    task = _task(tmp_path / "task")
    summary = preprocess_task(task, tmp_path / "store", CFG, SplitConfig(val_cases=1), progress=False)
    store = SliceStore(tmp_path / "store")
    assert store.preprocess == CFG
    assert summary["splits"] == {"train": ["lung_000", "lung_001", "lung_002"], "val": ["lung_003"]}
    for cid in ["lung_000", "lung_001", "lung_002", "lung_003"]:
        image, mask = store.arrays(cid)
        assert image.shape == (45 - 30, 32, 32) and image.dtype == np.float16
        assert mask.shape == image.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        # manifest counts equal the masks
        np.testing.assert_array_equal(store.tumour_voxels(cid), mask.reshape(mask.shape[0], -1).sum(1))
        meta = json.loads((tmp_path / "store" / "cases" / cid / "meta.json").read_text())
        assert meta["original_shape"] == [40, 40, 45]
    # values are HU / 3071 of the resized slices: compare one slice against a direct computation
    ct = nib.load(str(task / "imagesTr" / "lung_001.nii.gz")).get_fdata()
    import torch
    import torch.nn.functional as F

    ref = F.interpolate(torch.tensor(ct[:, :, 30] / HU_SCALE)[None, None].float(), size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(store.arrays("lung_001")[0][0].astype(np.float32), ref.numpy(), atol=2e-3)
    rows = (tmp_path / "store" / "manifest.csv").read_text().splitlines()
    assert rows[0] == "case,slice,original_index,tumour_voxels,split" and len(rows) == 1 + 4 * 15


def test_inferior_slices_are_dropped_in_any_orientation(tmp_path) -> None:
    arr = np.zeros((8, 8, 40), np.int16)
    arr[:, :, :30] = -1000  # the 30 most inferior slices (k small in LAS)
    arr[:, :, 30:] = 500
    las = Volume(arr, affine_for("LAS"))
    for codes in ["LAS", "RPI", "ASL"]:
        canon_target = affine_for(codes)
        # Build the same anatomy on another grid by reorienting the LAS volume.
        vol, _ = reorient(las, tuple(__import__("nibabel").aff2axcodes(canon_target)))
        prep = prepare_ct(vol, PreprocessConfig(preset="seed", size=8))
        assert prep.slices.shape == (10, 8, 8)
        np.testing.assert_allclose(prep.slices, 500 / HU_SCALE, rtol=1e-6)


@pytest.mark.parametrize("codes", ["LAS", "LPS", "oblique"])
def test_restore_is_the_inverse_grid(codes: str) -> None:
    arr = np.random.default_rng(0).integers(-1000, 1000, (16, 12, 36)).astype(np.int16)
    vol = Volume(arr, affine_for(codes))
    cfg = PreprocessConfig(preset="seed", size=8)
    prep = prepare_ct(vol, cfg)
    probs = np.ones_like(prep.slices)
    out = restore_slices(probs, prep, vol.shape, threshold=0.5)
    assert out.shape == vol.shape and out.dtype == np.uint8
    canon, _ = reorient(Volume(out, vol.affine), ("L", "A", "S"))
    assert canon.array[:, :, :30].sum() == 0 and canon.array[:, :, 30:].all()


def test_rerun_skips_done_cases_and_refuses_other_config(tmp_path) -> None:
    task = _task(tmp_path / "task", n=3)
    store = tmp_path / "store"
    preprocess_task(task, store, CFG, progress=False)
    stamp = (store / "cases" / "lung_000" / "image.npy").stat().st_mtime_ns
    preprocess_task(task, store, CFG, progress=False)
    assert (store / "cases" / "lung_000" / "image.npy").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different config"):
        preprocess_task(task, store, PreprocessConfig(preset="seed", size=16), progress=False)


def test_parallel_workers_give_the_same_store(tmp_path) -> None:
    task = _task(tmp_path / "task", n=3)
    preprocess_task(task, tmp_path / "s1", CFG, progress=False, workers=1)
    preprocess_task(task, tmp_path / "s2", CFG, progress=False, workers=2)
    for cid in ["lung_000", "lung_001", "lung_002"]:
        a = np.load(tmp_path / "s1" / "cases" / cid / "image.npy")
        b = np.load(tmp_path / "s2" / "cases" / cid / "image.npy")
        np.testing.assert_array_equal(a, b)


def test_split_is_patient_level_and_seeded() -> None:
    ids = [f"lung_{i:03d}" for i in range(20)]
    seen = []
    for fold in range(5):
        s = split_cases(ids, SplitConfig(folds=5, fold=fold, seed=3))
        assert not set(s["train"]) & set(s["val"])
        assert sorted(s["train"] + s["val"]) == ids
        seen += s["val"]
    assert sorted(seen) == ids  # every case validates exactly once over the folds
    assert split_cases(ids, SplitConfig(seed=3)) == split_cases(list(reversed(ids)), SplitConfig(seed=3))
    assert split_cases(ids, SplitConfig(val_cases=6))["val"] == ids[-6:]
    with pytest.raises(ConfigError):
        split_cases(ids, SplitConfig(fold=7))


def _bad(task, name, kind):
    img = task / "imagesTr" / name
    lbl = task / "labelsTr" / name
    if kind == "corrupt":
        img.write_bytes(b"garbage")
    elif kind == "shape":
        write_nifti(Volume(np.zeros((40, 40, 44), np.uint8), affine_for("LAS")), lbl)
    elif kind == "affine":
        write_nifti(Volume(np.zeros((40, 40, 45), np.uint8), affine_for("LAS", origin=(0, 0, 0))), lbl)
    elif kind == "labels":
        m = np.zeros((40, 40, 45), np.uint8)
        m[0, 0, 40] = 2
        write_nifti(Volume(m, affine_for("LAS")), lbl)
    elif kind == "missing":
        lbl.unlink()
    elif kind == "nan":
        a = np.zeros((40, 40, 45), np.float32)
        a[3, 3, 40] = np.nan
        write_nifti(Volume(a, affine_for("LAS")), img)
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), affine_for("LAS")), str(img))


@pytest.mark.parametrize(
    "kind,exc,text",
    [
        ("corrupt", InputError, "not a readable NIfTI"),
        ("shape", GeometryError, "shape"),
        ("affine", GeometryError, "affine"),
        ("labels", InputError, "not binary"),
        ("missing", InputError, "no label file"),
        ("nan", InputError, "NaN"),
        ("4d", GeometryError, "3D"),
    ],
)
def test_bad_input_stops_with_a_named_error_and_writes_nothing_half(tmp_path, kind, exc, text) -> None:
    task = _task(tmp_path / "task", n=3)
    _bad(task, "lung_001.nii.gz", kind)
    store = tmp_path / "store"
    with pytest.raises(exc, match=text) as info:
        preprocess_task(task, store, CFG, progress=False)
    assert "lung_001" in str(info.value)
    assert not (store / "cases" / "lung_001").exists()
    assert not list((store / "cases").glob(".tmp-*"))
    assert not (store / "store.json").exists()
    # the flag skips it with a warning instead
    summary = preprocess_task(task, store, CFG, progress=False, skip_bad=True)
    assert "lung_001" in summary["skipped"]
    assert sorted(summary["splits"]["train"] + summary["splits"]["val"]) == ["lung_000", "lung_002"]


def test_not_a_task_folder(tmp_path) -> None:
    with pytest.raises(InputError, match="imagesTr"):
        preprocess_task(tmp_path, tmp_path / "store", CFG, progress=False)
    with pytest.raises(InputError, match="not found"):
        preprocess_task(tmp_path / "nope", tmp_path / "store", CFG, progress=False)


def test_cli_lung_preset_store_records_the_grid_and_keeps_every_label(tmp_path, capsys) -> None:
    from lungtumor.cli import main
    from lungtumor.phantom.dataset import make_case
    from lungtumor.preprocessing.grid import SliceGrid

    task = tmp_path / "task"
    for seed in (1, 2):
        ct, label = make_case(seed, size="SMALL")
        write_nifti(ct, task / "imagesTr" / f"lung_{seed:03d}.nii.gz")
        write_nifti(label, task / "labelsTr" / f"lung_{seed:03d}.nii.gz")
    rc = main(["preprocess", str(task), str(tmp_path / "store"), "--preset", "lung", "--spacing-mm", "3", "--margin-mm", "4", "--val-cases", "1"])
    assert rc in (0, None), capsys.readouterr().err
    config = json.loads((tmp_path / "store" / "config.json").read_text())["preprocess"]
    assert config["preset"] == "lung" and config["spacing_mm"] == 3.0 and config["margin_mm"] == 4.0
    store = SliceStore(tmp_path / "store")
    for cid in ("lung_001", "lung_002"):
        meta = store.meta(cid)
        grid = SliceGrid.from_dict(meta["grid"])
        assert grid.pixel_spacing_mm == pytest.approx((3.0, 3.0)) and meta["lung_region"]["found"]
        assert meta["tumour_voxels_covered"] == meta["tumour_voxels_original"]
        assert store.arrays(cid)[0].shape == grid.slice_shape and grid.out_shape[0] % 16 == 0


# --------------------------------------------------------------------------------------------
# Run state that cannot be corrupted


def test_failed_first_run_leaves_no_config_and_the_fixed_rerun_works(tmp_path) -> None:
    from helpers.store import make_task
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.preprocessing.store import preprocess_task

    task = make_task(tmp_path / "task", n=2)
    with pytest.raises(InputError):  # 40 slices, and the seed recipe would drop 50
        preprocess_task(task, tmp_path / "store", PreprocessConfig(preset="seed", size=32, skip_inferior_slices=50), SplitConfig(val_cases=1), progress=False)
    assert not (tmp_path / "store" / "config.json").exists()
    s = preprocess_task(task, tmp_path / "store", PreprocessConfig(preset="seed", size=32), SplitConfig(val_cases=1), progress=False)
    assert len(s["splits"]["train"]) == 1


def test_a_store_refuses_a_case_from_another_source_and_a_changed_split(tmp_path) -> None:
    import shutil

    from helpers.store import make_task
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.preprocessing.store import preprocess_task

    a = make_task(tmp_path / "a", n=2, seed=0)
    b = make_task(tmp_path / "b", n=2, seed=1)
    store = tmp_path / "store"
    cfg, split = PreprocessConfig(preset="seed", size=32), SplitConfig(val_cases=1)
    preprocess_task(a, store, cfg, split, progress=False)
    with pytest.raises(ConfigError, match="lung_000.*use a new STORE_DIR"):
        preprocess_task(b, store, cfg, split, progress=False)
    with pytest.raises(ConfigError, match="train STORE --fold"):
        preprocess_task(a, store, cfg, SplitConfig(folds=2, fold=1), progress=False)
    # The same file rewritten in place (same name and size, a new time): said as such, not as another file.
    first = sorted((a / "imagesTr").glob("*.nii.gz"))[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    with pytest.raises(ConfigError, match=r"lung_000's image .* was modified after it was preprocessed \(.* UTC, now .* UTC\)"):
        preprocess_task(a, store, cfg, split, progress=False)
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    # A truncated cached array is detected and the case rebuilt, identical to before.
    image = store / "cases" / "lung_001" / "image.npy"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    preprocess_task(a, store, cfg, split, progress=False)
    assert image.read_bytes() == good
    shutil.rmtree(store / "cases" / "lung_000")


def test_corrupt_store_files_are_one_line_errors(tmp_path) -> None:
    from helpers.store import make_store
    from lungtumor.preprocessing.store import SliceStore

    store = make_store(tmp_path)
    for name in ("manifest.json", "store.json"):
        original = (store / name).read_text()
        (store / name).write_text(original[: len(original) // 2])
        with pytest.raises(InputError, match=name) as info:
            SliceStore(store)
        assert "\n" not in str(info.value)
        (store / name).write_text(original)
    (store / "cases" / "lung_000" / "meta.json").write_text("{")
    with pytest.raises(InputError, match="meta.json"):
        SliceStore(store).meta("lung_000")
    image = store / "cases" / "lung_001" / "image.npy"
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(InputError, match="lung_001"):
        SliceStore(store).arrays("lung_001")


def test_the_reader_keeps_a_bounded_number_of_cases_open(tmp_path) -> None:
    """600 tiny cases read in turn: open memory maps (and file descriptors) stay bounded."""
    import json
    import os

    from lungtumor.config import PreprocessConfig
    from lungtumor.preprocessing.store import MAX_OPEN_CASES, STORE_FORMAT, SliceStore

    n = 600
    cases = {}
    for i in range(n):
        d = tmp_path / "cases" / f"c{i:03d}"
        d.mkdir(parents=True)
        np.save(d / "image.npy", np.full((2, 4, 4), i, np.float16))
        np.save(d / "mask.npy", np.zeros((2, 4, 4), np.uint8))
        cases[f"c{i:03d}"] = {"n_slices": 2, "kept_start": 0, "tumour_voxels": [0, 0], "split": "train"}
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": cases}))
    (tmp_path / "store.json").write_text(json.dumps({"format": STORE_FORMAT, "preprocess": PreprocessConfig(preset="seed").to_dict(), "splits": {"train": list(cases), "val": []}}))
    store = SliceStore(tmp_path)
    fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for cid in cases:
        image, _ = store.arrays(cid)
        assert float(image[0, 0, 0]) == float(np.float16(int(cid[1:])))
    assert len(store._maps) == MAX_OPEN_CASES
    if fds_before is not None:
        assert len(os.listdir("/proc/self/fd")) - fds_before <= 2 * MAX_OPEN_CASES + 8
