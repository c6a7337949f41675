"""Dataset discovery: MSD, nnU-Net v2 raw and CT/label-pair layouts, label choice, the NIfTI lister."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import affine_for
from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.errors import InputError
from lungtumor.io.datasets import CaseFiles, choose_label, detect_layout, find_cases, tumour_mask
from lungtumor.io.nifti import list_niftis, write_nifti
from lungtumor.io.volume import Volume

SHAPE = (40, 40, 45)  # big enough for the seed recipe (drops 30 inferior slices)
TINY = (6, 5, 4)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(Volume(array, affine_for("LAS")), path)


def _ct(shape=TINY, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 400, shape).astype(np.int16)


def _multi_label(shape=TINY) -> np.ndarray:
    """0 background, 1 'lung' (a slab), 2 'tumour' (a box inside it)."""
    m = np.zeros(shape, np.uint8)
    m[1:-1, 1:-1, 1:-1] = 1
    m[2:4, 2:4, 2:3] = 2
    if shape == SHAPE:
        m[:] = 0
        m[5:35, 5:35, 31:44] = 1
        m[10:20, 12:22, 33:40] = 2
    return m


def _dataset_json(root: Path, **fields) -> Path:
    path = root / "dataset.json"
    path.write_text(json.dumps(fields))
    return path


def _nnunet(root: Path, cases=("lung_001", "lung_002"), *, shape=TINY, labels=None, channels=None, ending=".nii.gz") -> Path:
    labels = {"background": 0, "lung": 1, "tumor": 2} if labels is None else labels
    channels = {"0": "CT"} if channels is None else channels
    for i, cid in enumerate(cases):
        for ch in channels:
            _write(root / "imagesTr" / f"{cid}_{int(ch):04d}{ending}", _ct(shape, seed=i))
        _write(root / "labelsTr" / f"{cid}{ending}", _multi_label(shape))
    _dataset_json(root, channel_names=channels, labels=labels, numTraining=len(cases), file_ending=ending)
    return root


def _msd(root: Path, n=2, *, shape=TINY, labels=None) -> Path:
    for i in range(n):
        _write(root / "imagesTr" / f"lung_{i:03d}.nii.gz", _ct(shape, seed=i))
        m = np.zeros(shape, np.uint8)
        m[1:3, 1:3, 1:3] = 1
        _write(root / "labelsTr" / f"lung_{i:03d}.nii.gz", m)
    (root / "imagesTr" / "._lung_000.nii.gz").write_bytes(b"resource fork")
    if labels is not None:
        _dataset_json(root, name="Task", modality={"0": "CT"}, labels=labels)
    return root


def _pairs(root: Path, cases=("a", "b"), *, shape=TINY) -> Path:
    for i, cid in enumerate(cases):
        _write(root / f"{cid}_ct.nii.gz", _ct(shape, seed=i))
        m = np.zeros(shape, np.uint8)
        m[1:3, 1:3, 1:3] = 1
        _write(root / f"{cid}_label.nii.gz", m)
    return root


def _one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------
# list_niftis


def test_list_niftis_sorts_and_skips_hidden_files_and_folders(tmp_path) -> None:
    for name in ("b.nii.gz", "a.nii", "C.NII.GZ", "._a.nii.gz", ".hidden.nii", "notes.txt", "x.nii.gz.bak"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.nii.gz").mkdir()
    assert [p.name for p in list_niftis(tmp_path)] == ["C.NII.GZ", "a.nii", "b.nii.gz"]
    assert list_niftis(tmp_path / "folder.nii.gz") == []


def test_list_niftis_refuses_nii_and_nii_gz_of_one_case(tmp_path) -> None:
    (tmp_path / "lung_001.nii").write_bytes(b"")
    (tmp_path / "lung_001.nii.gz").write_bytes(b"")
    text = _one_line_error(list_niftis, tmp_path, match="lung_001.nii and lung_001.nii.gz")
    assert str(tmp_path) in text
    _one_line_error(list_niftis, tmp_path / "missing", match="folder not found")


# ------------------------------------------------------------------------------------------
# Layout detection


def test_detect_layout(tmp_path) -> None:
    assert detect_layout(_msd(tmp_path / "Task06_Lung")) == "msd"
    assert detect_layout(_msd(tmp_path / "msd_json", labels={"0": "background", "1": "cancer"})) == "msd"
    assert detect_layout(_nnunet(tmp_path / "Dataset006_Lung")) == "nnunet"
    assert detect_layout(_pairs(tmp_path / "pairs")) == "pairs"
    (tmp_path / "other").mkdir()
    _write(tmp_path / "other" / "scan.nii.gz", _ct())
    text = _one_line_error(detect_layout, tmp_path / "other", match="not a dataset folder in a known layout")
    assert "imagesTr/" in text and "dataset.json" in text and "_ct.nii.gz" in text
    # find_cases says the same for a folder in no layout, and names an unknown layout option.
    _one_line_error(find_cases, tmp_path / "other", match="not a dataset folder")
    _one_line_error(find_cases, tmp_path / "pairs", layout="decathlon", match="layout 'decathlon' is unknown")
    _one_line_error(find_cases, tmp_path / "nowhere", match="folder not found")


# ------------------------------------------------------------------------------------------
# MSD (today's behaviour)


def test_msd_layout_keeps_todays_behaviour(tmp_path) -> None:
    root = _msd(tmp_path / "task", n=3)
    (root / "labelsTr" / "lung_002.nii.gz").unlink()
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["lung_000", "lung_001", "lung_002"]
    image, label = root / "imagesTr" / "lung_000.nii.gz", root / "labelsTr" / "lung_000.nii.gz"
    assert cases[0] == CaseFiles("lung_000", image, label, 1, (), "labelsTr/lung_000.nii.gz")
    assert cases[2].label is None and cases[2].label_hint == "labelsTr/lung_002.nii.gz"
    assert find_cases(root, layout="msd") == cases
    # No labelsTr/ at all: an error for training, fine for listing images.
    import shutil

    shutil.rmtree(root / "labelsTr")
    _one_line_error(find_cases, root, match="no labelsTr/ folder")
    assert [c.label for c in find_cases(root, require_labels=False)] == [None, None, None]


def test_msd_dataset_json_labels_choose_the_tumour(tmp_path) -> None:
    # MSD Task03 (liver) style: values -> names; "cancer" is the tumour, liver becomes background.
    root = _msd(tmp_path / "task", labels={"0": "background", "1": "liver", "2": "cancer"})
    (case, *_) = find_cases(root)
    assert (case.label_value, case.other_label_values) == (2, (1,))
    assert find_cases(root, label="liver")[0].label_value == 1
    assert find_cases(root, label="CANCER")[0].label_value == 2


# ------------------------------------------------------------------------------------------
# nnU-Net v2 raw


def test_nnunet_layout_lists_channel_0_and_labels(tmp_path) -> None:
    root = _nnunet(tmp_path / "Dataset006_Lung", cases=("lung_002", "lung_001", "lung_010"))
    (root / "labelsTr" / "lung_010.nii.gz").unlink()
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["lung_001", "lung_002", "lung_010"]
    assert cases[0].image == root / "imagesTr" / "lung_001_0000.nii.gz"
    assert cases[0].label == root / "labelsTr" / "lung_001.nii.gz"
    assert (cases[0].label_value, cases[0].other_label_values) == (2, (1,))  # "tumor" chosen by name
    assert cases[2].label is None and cases[2].label_hint == "labelsTr/lung_010.nii.gz"
    assert find_cases(root, layout="nnunet") == cases
    # By name or by value (an int or the CLI's string), case-insensitive names.
    assert find_cases(root, label="Lung")[0].label_value == 1
    assert find_cases(root, label=1)[0].label_value == 1
    assert find_cases(root, label="2")[0].label_value == 2


def test_nnunet_v1_folder_is_detected_by_its_file_names(tmp_path) -> None:
    # nnU-Net v1: MSD keys in dataset.json, but <case>_0000 images and <case> labels.
    root = tmp_path / "Task006_Lung"
    for cid in ("lung_001", "lung_002"):
        _write(root / "imagesTr" / f"{cid}_0000.nii.gz", _ct())
        _write(root / "labelsTr" / f"{cid}.nii.gz", _multi_label())
    _dataset_json(root, modality={"0": "CT"}, labels={"0": "background", "1": "lung", "2": "cancer"})
    assert detect_layout(root) == "nnunet"
    assert [(c.case_id, c.label_value) for c in find_cases(root)] == [("lung_001", 2), ("lung_002", 2)]
    # An MSD folder whose case names end in 4 digits stays MSD (its labels have the same names).
    msd = tmp_path / "msd"
    _write(msd / "imagesTr" / "case_0001.nii.gz", _ct())
    _write(msd / "labelsTr" / "case_0001.nii.gz", _ct())
    assert detect_layout(msd) == "msd"


def test_nnunet_plain_nii_file_ending(tmp_path) -> None:
    root = _nnunet(tmp_path / "Dataset007_X", ending=".nii")
    assert [c.label.name for c in find_cases(root)] == ["lung_001.nii", "lung_002.nii"]


def test_nnunet_multichannel_takes_ct_channel_0_or_refuses(tmp_path) -> None:
    root = _nnunet(tmp_path / "Dataset008_PETCT", channels={"0": "CT", "1": "PET"})
    cases = find_cases(root)
    assert [c.image.name for c in cases] == ["lung_001_0000.nii.gz", "lung_002_0000.nii.gz"]
    other = _nnunet(tmp_path / "Dataset009_PETCT", channels={"0": "PET", "1": "CT"})
    text = _one_line_error(find_cases, other, match="channel 0 is 'PET', not CT")
    assert "dataset.json" in text


@pytest.mark.parametrize(
    ("labels", "label", "match"),
    [
        ({"background": 0, "left lung": 1, "right lung": 2}, None, "none names a tumour; choose one with --label"),
        ({"background": 0, "tumor": 1, "tumor core": 2}, None, "2 name a tumour"),
        ({"background": 0, "lung": 1, "tumor": 2}, "cancer", "'cancer' is not one of the declared labels"),
        ({"background": 0, "lung": 1, "tumor": 2}, 7, "--label 7 is not a foreground label value"),
        ({"background": 0, "lung": 1, "tumor": 2}, 0, "--label 0 is not a foreground label value"),
        ({"background": 0, "lung": 1, "tumor": 2}, "background", "is background"),
        ({"background": 0, "edema": 1, "enhancing": 2, "whole tumor": [1, 2]}, "whole tumor", "region"),
    ],
)
def test_nnunet_ambiguous_or_unknown_labels_are_refused(tmp_path, labels, label, match) -> None:
    root = _nnunet(tmp_path / "Dataset010_Bad", labels=labels)
    text = _one_line_error(find_cases, root, label=label, match=match)
    assert str(root / "dataset.json") in text


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("no_json", "no dataset.json; an nnU-Net v2 raw dataset needs one"),
        ("mha", "file_ending '.mha' is not NIfTI"),
        ("bad_name", "not an nnU-Net image name; expected <case>_0000.nii.gz"),
        ("no_channel_0", "has no channel 0 file lung_003_0000.nii.gz"),
        ("wrong_ending", "file ending differs from dataset.json's file_ending"),
        ("no_labels_key", "no 'labels'"),
        ("broken_json", "unreadable dataset.json"),
    ],
)
def test_nnunet_bad_input_is_one_line_naming_the_file(tmp_path, damage, match) -> None:
    root = _nnunet(tmp_path / "Dataset011_Bad")
    js = root / "dataset.json"
    data = json.loads(js.read_text())
    if damage == "no_json":
        js.unlink()
        layout = "nnunet"
    else:
        layout = "auto"
    if damage == "mha":
        js.write_text(json.dumps({**data, "file_ending": ".mha"}))
    elif damage == "bad_name":
        _write(root / "imagesTr" / "lung_003.nii.gz", _ct())
    elif damage == "no_channel_0":
        _write(root / "imagesTr" / "lung_003_0001.nii.gz", _ct())
    elif damage == "wrong_ending":
        _write(root / "imagesTr" / "lung_003_0000.nii", _ct())
    elif damage == "no_labels_key":
        js.write_text(json.dumps({k: v for k, v in data.items() if k != "labels"}))
    elif damage == "broken_json":
        js.write_text("{not json")
    text = _one_line_error(find_cases, root, layout=layout, match=match)
    assert str(root) in text


# ------------------------------------------------------------------------------------------
# CT/label pairs


def test_pairs_layout(tmp_path) -> None:
    root = _pairs(tmp_path / "pairs", cases=("b", "a", "LIDC-0001_R_1"))
    _write(root / "c_CT.nii.gz", _ct())  # no label: listed, reported when loaded
    _write(root / "c_lung.nii.gz", _ct())  # neither _ct nor _label: ignored
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["LIDC-0001_R_1", "a", "b", "c"]
    assert cases[1] == CaseFiles("a", root / "a_ct.nii.gz", root / "a_label.nii.gz", 1, (), "a_label.nii.gz")
    assert cases[3].label is None and cases[3].label_hint == "c_label.nii.gz"
    assert find_cases(root, layout="pairs") == cases
    # A value without declared labels: that value is tumour, any other value background.
    assert (find_cases(root, label=3)[0].label_value, find_cases(root, label=3)[0].other_label_values) == (3, None)
    _one_line_error(find_cases, root, label="tumour", match="is a name but the dataset declares no labels")
    _write(root / "orphan_label.nii.gz", _ct())
    _one_line_error(find_cases, root, match="orphan_label.nii.gz: label without a CT")


def test_pairs_layout_without_labels(tmp_path) -> None:
    root = tmp_path / "cts"
    _write(root / "x_ct.nii.gz", _ct())
    _one_line_error(find_cases, root, match="no <case>_label.nii.gz files")
    assert [c.label for c in find_cases(root, require_labels=False)] == [None]


def test_real_lidc_crops_folder_is_a_pairs_dataset(real_data) -> None:
    crops = real_data / "lidc_nodule_crops"
    if not crops.is_dir():
        pytest.skip(f"{crops} not present")
    cases = find_cases(crops)
    n_ct = len(list(crops.glob("*_ct.nii.gz")))
    assert len(cases) == n_ct > 900
    assert all(c.label is not None and c.label.name == f"{c.case_id}_label.nii.gz" for c in cases)
    assert cases[0].case_id == "LIDC-IDRI-0001_R_1"


# ------------------------------------------------------------------------------------------
# Label value -> binary mask, through preprocessing


def test_tumour_mask_binarises_the_chosen_value() -> None:
    label = _multi_label()
    case = CaseFiles("c", Path("c.nii.gz"), Path("c_label.nii.gz"), 2, (1,))
    np.testing.assert_array_equal(tumour_mask(label, case), (label == 2).astype(np.uint8))
    lung = CaseFiles("c", Path("c"), Path("l"), 1, (2,))
    np.testing.assert_array_equal(tumour_mask(label, lung), (label == 1).astype(np.uint8))
    assert tumour_mask(label, case).dtype == np.uint8
    # A value the dataset does not declare.
    bad = label.copy()
    bad[0, 0, 0] = 5
    _one_line_error(tumour_mask, bad, case, match=r"c_label.nii.gz: label values \{5\} are not among")
    # Without declared labels the default is binary, as before; with a user's value, others are background.
    _one_line_error(tumour_mask, label, CaseFiles("c", Path("c"), Path("c_label.nii.gz")), match="not binary")
    np.testing.assert_array_equal(tumour_mask(bad, CaseFiles("c", Path("c"), Path("l"), 5, None)), (bad == 5).astype(np.uint8))
    # Float labels (some tools write them) compare exactly.
    np.testing.assert_array_equal(tumour_mask(label.astype(np.float32), case), (label == 2).astype(np.uint8))


def test_choose_label_forms() -> None:
    assert choose_label(None, None, "x") == (1, ())
    assert choose_label({"background": 0, "cancer": 1}, None, "x") == (1, ())
    assert choose_label({"background": 0, "lung": 1}, None, "x") == (1, ())  # the only foreground label
    assert choose_label({"background": 0, "Lung": 1, "GTV-1": 3, "heart": 4}, None, "x") == (3, (1, 4))
    _one_line_error(choose_label, {"background": 0}, None, "x.json", match="x.json: 0 foreground labels")


def test_nnunet_label_value_reaches_the_store(tmp_path) -> None:
    # The store's mask is label == 2 (tumor) read back independently with nibabel, not the lung.
    from lungtumor.preprocessing.store import SliceStore, load_case, preprocess_task

    root = _nnunet(tmp_path / "Dataset012_Lung", cases=("lung_001",), shape=SHAPE)
    (case,) = find_cases(root)
    _ct, mask = load_case(case)
    expected = np.asarray(nib.load(str(root / "labelsTr" / "lung_001.nii.gz")).dataobj) == 2
    np.testing.assert_array_equal(mask.array, expected.astype(np.uint8))
    assert mask.array.sum() == 10 * 10 * 7
    summary = preprocess_task(root, tmp_path / "store", PreprocessConfig(preset="seed", size=32), SplitConfig(val_cases=0), progress=False)
    assert summary["splits"]["train"] == ["lung_001"]
    meta = json.loads((tmp_path / "store" / "cases" / "lung_001" / "meta.json").read_text())
    assert meta["tumour_voxels_original"] == 10 * 10 * 7
    _, stored = SliceStore(tmp_path / "store").arrays("lung_001")
    assert set(np.unique(stored)) <= {0, 1} and stored.any()
    # The lung label instead: more voxels.
    cfg, split = PreprocessConfig(preset="seed", size=32), SplitConfig(val_cases=0)
    preprocess_task(root, tmp_path / "store_lung", cfg, split, progress=False, label="lung")
    meta_lung = json.loads((tmp_path / "store_lung" / "cases" / "lung_001" / "meta.json").read_text())
    assert meta_lung["tumour_voxels_original"] == int(np.count_nonzero(_multi_label(SHAPE) == 1))


def test_cli_preprocess_layout_and_label(tmp_path, capsys) -> None:
    from lungtumor.cli import main

    labels = {"background": 0, "left": 1, "right": 2}
    root = _nnunet(tmp_path / "Dataset013_Lung", cases=("lung_001",), shape=SHAPE, labels=labels)
    args = ["preprocess", str(root), str(tmp_path / "store"), "--preset", "seed", "--size", "32", "--val-cases", "0", "--layout", "nnunet"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "none names a tumour; choose one with --label" in err and "dataset.json" in err
    assert not (tmp_path / "store" / "store.json").exists()
    code = main([*args, "--label", "2"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "store" / "cases" / "lung_001" / "meta.json").read_text())
    assert meta["tumour_voxels_original"] == 10 * 10 * 7
    # The wrong layout forced on a folder says what it expected.
    assert main(["preprocess", str(root), str(tmp_path / "s2"), "--layout", "pairs"]) == 2
    assert "no <case>_ct.nii.gz files" in capsys.readouterr().err
