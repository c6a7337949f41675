"""lungtumor followup: registration frames, lesion matching, RECIST 1.1 branches, bad input, CLI."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from pydicom.dataset import Dataset

from helpers.followup import make_pair, motion, real_data_dir
from lungtumor.cli import main
from lungtumor.errors import ConfigError, GeometryError
from lungtumor.followup import followup, scan_date
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.lesions.longitudinal import MERGED, SPLIT, LesionGroup, match_lesions, volume_doubling_time_days
from lungtumor.lesions.recist import MeasuredLesion, measure_lesions
from lungtumor.lesions.response import assess_response, choose_targets
from lungtumor.phantom.dataset import make_case
from lungtumor.preprocessing.registration import (
    FLIP_LPS_RAS,
    map_points,
    register_followup,
    resample_onto,
    sitk_affine_transform,
    to_sitk,
)

DATES = "2024-01-10,2024-04-09"  # 90 days


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def pair():
    ct, label = make_case(0, "SMALL", 3)
    centre = map_points(ct.affine, np.array(ct.shape) / 2.0)[0]
    # 7 + 3 degrees of rotation, 41 mm of translation, 3 mm slices instead of 4.3, R-P-S instead of L-A-S.
    return make_pair(ct, label, motion(7.0, 3.0, (35.0, -12.0, 20.0), centre=centre), (2.5, 2.5, 3.0))


@pytest.fixture(scope="module")
def alignment(pair):
    return register_followup(pair.ct_b, pair.ct_f)


def _run(pair, alignment, tmp_path, mask_f, **kw):
    return followup(
        pair.ct_b, pair.painted_ct(mask_f), tmp_path / "out", baseline_mask=pair.mask_b, followup_mask=mask_f, alignment=alignment, **kw
    )


# --------------------------------------------------------------------------------------------
# Frames and registration


@pytest.mark.parametrize("codes", ["LAS", "LPS", "RPI"])
def test_to_sitk_puts_every_voxel_where_the_affine_says(codes):
    spacing = np.array([0.8, 0.9, 2.5])
    affine = np.diag([*(spacing * [1 if c in "RAS" else -1 for c in codes]), 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    image = to_sitk(Volume(np.zeros((4, 5, 6), np.int16), affine))
    for ijk in [(0, 0, 0), (3, 1, 5), (2, 4, 0)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(ijk))
        assert np.allclose(lps, (FLIP_LPS_RAS @ affine @ [*ijk, 1])[:3])


def test_ras_transform_becomes_the_same_lps_transform():
    m = motion(5.0, -4.0, (30.0, 7.0, -12.0), centre=np.array([3.0, 4.0, 5.0]))
    p = np.array([12.0, -40.0, 66.0])
    lps = np.asarray(sitk_affine_transform(m).TransformPoint(tuple((FLIP_LPS_RAS[:3, :3] @ p).tolist())))
    assert np.allclose(FLIP_LPS_RAS[:3, :3] @ lps, map_points(m, p)[0])


def test_resample_onto_moves_a_marker_by_the_known_translation():
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    array = np.zeros((20, 20, 20), np.uint8)
    array[5, 6, 7] = 1
    vol = Volume(array, affine)
    shift = np.eye(4)
    shift[:3, 3] = [4.0, 6.0, 9.0]  # target point p shows source point p - shift: the marker moves by +shift
    moved = resample_onto(vol, vol.shape, affine, np.linalg.inv(shift), label=True)
    (ijk,) = np.argwhere(moved.array)
    assert np.allclose(map_points(affine, ijk)[0], map_points(affine, [5, 6, 7])[0] + shift[:3, 3])


def test_registration_recovers_the_known_motion(pair, alignment):
    assert alignment.ok, alignment.statement
    centroids = np.array([les.centroid_ras_mm for les in measure_lesions(pair.mask_b, pair.ct_b).lesions])
    truth = map_points(pair.baseline_to_followup, centroids)
    error = np.linalg.norm(map_points(alignment.baseline_to_followup_ras, centroids) - truth, axis=1)
    assert error.max() < 2.0, error
    assert alignment.lung_dice > 0.9 > alignment.lung_dice_before
    record = alignment.to_dict()
    assert 8.0 < record["rotation_deg"] < 8.5  # 7 about z then 3 about x compose to 7.6
    assert np.allclose(np.array(record["followup_to_baseline_ras"]) @ np.array(record["baseline_to_followup_ras"]), np.eye(4), atol=1e-6)


# --------------------------------------------------------------------------------------------
# RECIST branches end to end (masks given; the alignment computed once)


def test_mixed_followup_matches_measures_and_is_pd_by_new_lesion(pair, alignment, tmp_path):
    mask_f = pair.followup_mask({1: 0.7}, remove=(3,), new_radius_mm=9.0)
    doc = _run(pair, alignment, tmp_path, mask_f, dates=DATES, report=True)
    assert doc["response"] == "PD"
    assert doc["counts"] == {"matched": 2, "merged": 0, "split": 0, "merged and split": 0, "gone": 1, "new": 1}
    own_b = measure_lesions(pair.mask_b, pair.ct_b).lesions
    own_f = {les.id: les for les in measure_lesions(mask_f, pair.ct_f).lesions}
    by_status = {tuple(p["baseline_ids"]): p for p in doc["pairs"] if p["baseline_ids"]}
    assert by_status[(3,)]["status"] == "gone"
    voxel = max(pair.ct_b.spacing_mm[0], pair.ct_f.spacing_mm[0])
    for bid, factor in ((1, 0.7), (2, 1.0)):
        row = by_status[(bid,)]
        (fid,) = row["followup_ids"]
        # each scan's own measurement, exactly; and the known scaling within a voxel
        assert row["baseline_long_axis_mm"] == own_b[bid - 1].longest_diameter_mm
        assert row["followup_long_axis_mm"] == own_f[fid].longest_diameter_mm
        assert row["followup_short_axis_mm"] == own_f[fid].short_axis_mm
        assert abs(row["followup_long_axis_mm"] - factor * row["baseline_long_axis_mm"]) <= voxel
        assert row["volume_doubling_time_days"] == pytest.approx(90 * math.log(2) / math.log(row["followup_volume_ml"] / row["baseline_volume_ml"]))
        b_rec = doc["lesions"]["baseline"][bid - 1]
        f_rec = doc["lesions"]["followup"][fid - 1]
        assert b_rec["tracking_uid"] == f_rec["tracking_uid"] and b_rec["tracking_id"] == f"lesion {bid}"
    (new,) = [p for p in doc["pairs"] if p["status"] == "new"]
    assert abs(new["followup_long_axis_mm"] - 18.0) <= voxel
    rules = {r["rule"]: r["fired"] for r in doc["recist"]["rules"]}
    assert rules["PD (new lesion)"] and not rules["PD (growth)"]
    assert doc["recist"]["sums"]["baseline_mm"] == pytest.approx(own_b[0].longest_diameter_mm + own_b[1].longest_diameter_mm)
    assert doc["followup_to_baseline_ids"][str(new["followup_ids"][0])] == []
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["followup.csv", "followup.html", "followup.json"]
    assert json.loads((out / "followup.json").read_text())["response"] == "PD"
    csv_lines = (out / "followup.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(doc["pairs"]) and csv_lines[0].startswith("status,")
    html = (out / "followup.html").read_text()
    assert 'id="category">PD<' in html and "not a clinical read" in html and html.count("<img") == 6  # 2 matched pairs x 2, 1 gone, 1 new


@pytest.mark.parametrize(
    ("scales", "remove", "expected"),
    [({}, (1, 2, 3), "CR"), ({1: 0.6, 2: 0.6, 3: 0.6}, (), "PR"), ({1: 0.95, 2: 1.0, 3: 1.0}, (), "SD"), ({1: 1.35, 2: 1.35, 3: 1.0}, (), "PD")],
)
def test_recist_branches(pair, alignment, tmp_path, scales, remove, expected):
    mask_f = pair.followup_mask(scales, remove=remove)
    doc = _run(pair, alignment, tmp_path, mask_f)
    assert doc["response"] == expected, doc["recist"]["steps"]
    assert [t["baseline_id"] for t in doc["recist"]["targets"]] == [1, 2]  # lungs = one organ: 2 targets
    assert [n["baseline_id"] for n in doc["recist"]["non_targets"]] == [3]
    if expected == "CR":
        assert doc["recist"]["sums"]["followup_mm"] == 0 and "the follow-up mask has no lesion at all" in doc["statements"]
    if expected == "PD":
        assert {r["rule"]: r["fired"] for r in doc["recist"]["rules"]}["PD (growth)"]


# --------------------------------------------------------------------------------------------
# Matching and response, pure


def _blob(shape, centres, radii):
    idx = np.indices(shape).transpose(1, 2, 3, 0)
    out = np.zeros(shape, np.uint8)
    for c, r in zip(centres, radii):
        out |= (np.linalg.norm((idx - c) / [1, 1, 1], axis=-1) <= r).astype(np.uint8)
    return out


def test_merge_and_split_are_named_and_counted_by_recist():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    two = Volume(_blob((60, 40, 20), [(20, 20, 10), (38, 20, 10)], [7, 6]), affine)
    one = Volume(_blob((60, 40, 20), [(20, 20, 10), (29, 20, 10), (38, 20, 10)], [7, 6, 6]), affine)
    rep_two, rep_one = measure_lesions(two), measure_lesions(one)
    merged = match_lesions(rep_two, rep_one, np.eye(4))
    assert [(g.status, g.baseline_ids, g.followup_ids) for g in merged.groups] == [(MERGED, (1, 2), (1,))]
    result = assess_response(rep_two.lesions, rep_one.lesions, merged.groups)
    rows = {t["baseline_id"]: t["followup_long_axis_mm"] for t in result["targets"]}
    assert rows == {1: rep_one.lesions[0].longest_diameter_mm, 2: 0.0}
    split = match_lesions(rep_one, rep_two, np.eye(4))
    assert [(g.status, g.baseline_ids, g.followup_ids) for g in split.groups] == [(SPLIT, (1,), (1, 2))]
    result = assess_response(rep_one.lesions, rep_two.lesions, split.groups)
    assert result["targets"][0]["followup_long_axis_mm"] == pytest.approx(sum(les.longest_diameter_mm for les in rep_two.lesions))
    assert result["new_lesions"] == []  # one lesion becoming two is not a new lesion


def test_centroid_fallback_pairs_within_tolerance_only():
    affine = np.eye(4)
    a = measure_lesions(Volume(_blob((60, 40, 20), [(15, 20, 10)], [6]), affine))
    b = measure_lesions(Volume(_blob((60, 40, 20), [(23, 20, 10)], [6]), affine))
    assert match_lesions(a, b, np.eye(4), use_overlap=False).groups[0].method == "centroid distance"
    statuses = [g.status for g in match_lesions(a, b, np.eye(4), use_overlap=False, tolerance_mm=5.0).groups]
    assert statuses == ["gone", "new"]


def _lesion(i, long_mm, measurable=True, side="right"):
    z = (0.0, 0.0, 0.0)
    return MeasuredLesion(i, 10, 1.0, long_mm, long_mm / 2, 0, 1.0, measurable, "", (z, z), (z, z), (z, z), (z, z), z, side, None, (0, 0, 0), (0, 0, 0))


def test_target_rules_and_user_targets():
    lesions = [_lesion(1, 40), _lesion(2, 30, side="left"), _lesion(3, 20), _lesion(4, 8, measurable=False)]
    assert choose_targets(lesions)[0] == [1, 2]
    assert choose_targets(lesions, lungs_as_one_organ=False)[0] == [1, 2, 3]  # two per lung
    assert choose_targets(lesions, [3, 1])[0] == [1, 3]
    for bad, words in (([4], "not measurable"), ([9], "no lesion"), ([1, 1], "repeats"), ([1, 2, 3], "per organ")):
        with pytest.raises(ConfigError, match=words):
            choose_targets(lesions, bad)


def test_not_evaluable_without_a_measurable_baseline_lesion():
    result = assess_response([_lesion(1, 8, measurable=False)], [], [LesionGroup("gone", (1,), (), None, None, None)])
    assert result["category"] == "not evaluable" and "not evaluable" in result["steps"][-1]


def test_volume_doubling_time():
    assert volume_doubling_time_days(1.0, 2.0, 100) == pytest.approx(100.0)
    assert volume_doubling_time_days(2.0, 1.0, 100) == pytest.approx(-100.0)
    assert volume_doubling_time_days(1.0, 1.0, 100) is None and volume_doubling_time_days(1.0, 2.0, None) is None


def test_scan_date_from_dicom_headers():
    header = Dataset()
    header.SeriesDate = "20240305"
    vol = Volume(np.zeros((2, 2, 2)), np.eye(4), {"dicom_headers": (header,)})
    assert scan_date(vol) == (dt.date(2024, 3, 5), "SeriesDate")
    assert scan_date(Volume(np.zeros((2, 2, 2)), np.eye(4))) == (None, None)


# --------------------------------------------------------------------------------------------
# Bad input


def test_different_patients_warn(pair, alignment, tmp_path):
    mask_f = pair.followup_mask()
    ct_b = Volume(pair.ct_b.array, pair.ct_b.affine, {"patient_id": "A"})
    ct_f = Volume(pair.ct_f.array, pair.ct_f.affine, {"patient_id": "B"})
    doc = followup(ct_b, ct_f, tmp_path / "o", baseline_mask=pair.mask_b, followup_mask=mask_f, alignment=alignment)
    assert any("different patients" in w for w in doc["warnings"])


def test_scan_without_lungs_falls_back_to_centroids_flagged(pair, tmp_path):
    no_lungs = pair.ct_f.with_array(np.full(pair.ct_f.shape, 40, np.int16))
    doc = followup(pair.ct_b, no_lungs, tmp_path / "o", baseline_mask=pair.mask_b, followup_mask=pair.followup_mask())
    assert doc["registration"]["ok"] is False and doc["matching"]["fallback"] is True
    assert "no lungs found in the follow-up scan" in doc["registration"]["statement"]
    assert any("no lungs found" in w for w in doc["warnings"])


def test_mask_on_another_grid_is_a_one_line_error_and_nothing_is_written(pair, tmp_path):
    path = write_nifti(pair.followup_mask(), tmp_path / "wrong.nii.gz")
    with pytest.raises(GeometryError, match="wrong.nii.gz.*pass the baseline mask made for this baseline CT"):
        followup(pair.ct_b, pair.ct_f, tmp_path / "o", baseline_mask=str(path), followup_mask=pair.followup_mask())
    assert not (tmp_path / "o").exists()


def test_identical_inputs_are_refused(pair, tmp_path):
    with pytest.raises(ConfigError, match="same scan"):
        followup(pair.ct_b, pair.ct_b, tmp_path / "o", baseline_mask=pair.mask_b, followup_mask=pair.mask_b)


def test_baseline_without_measurable_lesion_is_not_evaluable(pair, alignment, tmp_path):
    tiny = np.zeros(pair.mask_b.shape, np.uint8)
    tiny[60:62, 60:62, 40] = 1
    doc = followup(
        pair.ct_b, pair.ct_f, tmp_path / "o", baseline_mask=pair.mask_b.with_array(tiny), followup_mask=pair.followup_mask(), alignment=alignment
    )
    assert doc["response"] == "not evaluable"
    assert any("no measurable lesion" in s for s in doc["statements"])


def test_output_folder_with_other_files_and_bad_dates_are_refused(pair, alignment, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="notes.txt"):
        followup(pair.ct_b, pair.ct_f, tmp_path / "o", baseline_mask=pair.mask_b, followup_mask=pair.followup_mask(), alignment=alignment)
    assert (tmp_path / "o" / "notes.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="not after the baseline date"):
        followup(pair.ct_b, pair.ct_f, tmp_path / "p", baseline_mask=pair.mask_b, followup_mask=pair.followup_mask(), alignment=alignment, dates="2024-05-01,2024-01-01")
    with pytest.raises(ConfigError, match="--checkpoint"):
        followup(pair.ct_b, pair.ct_f, tmp_path / "p", baseline_mask=pair.mask_b)
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------------------------
# CLI


def _cli_files(pair, tmp_path, mask_f):
    files = {}
    for name, vol in (("b_ct", pair.ct_b), ("b_mask", pair.mask_b), ("f_ct", pair.painted_ct(mask_f)), ("f_mask", mask_f)):
        files[name] = str(write_nifti(vol, tmp_path / f"{name}.nii.gz"))
    return files


def test_cli_errors_are_one_line_before_any_work(pair, tmp_path, capsys):
    files = _cli_files(pair, tmp_path, pair.followup_mask())
    args = ["followup", files["b_ct"], files["f_ct"], "--out", str(tmp_path / "x"), "--followup-mask", files["f_mask"]]
    assert main([*args, "--baseline-mask", files["b_mask"], "--targets", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--targets" in err
    assert main([*args, "--baseline-mask", files["f_mask"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "f_mask.nii.gz" in err and "is not on the grid of" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_followup(pair, tmp_path, capsys):
    mask_f = pair.followup_mask({1: 0.6, 2: 0.6, 3: 0.6})
    files = _cli_files(pair, tmp_path, mask_f)
    out = tmp_path / "out"
    args = ["followup", files["b_ct"], files["f_ct"], "--out", str(out), "--baseline-mask", files["b_mask"], "--followup-mask", files["f_mask"]]
    assert main([*args, "--dates", DATES, "--targets", "1"]) == 0
    printed = capsys.readouterr().out
    assert "response: PR" in printed and "not a clinical read" in printed
    doc = json.loads((out / "followup.json").read_text())
    assert doc["response"] == "PR" and doc["recist"]["targets_chosen_by"] == "user" and doc["dates"]["interval_days"] == 90


# --------------------------------------------------------------------------------------------
# Real scan (shared data), moved, resampled, its tumour eroded by a known depth


@pytest.mark.slow
def test_real_scan_moved_and_tumour_eroded(tmp_path):
    real = real_data_dir()
    if real is None or not (real / "LUNG1-002" / "ct.nii.gz").is_file():
        pytest.skip("shared real data (../shared/data/real/LUNG1-002) not present")
    from scipy import ndimage

    from lungtumor.io.nifti import read_nifti

    ct = read_nifti(real / "LUNG1-002" / "ct.nii.gz")
    label = read_nifti(real / "LUNG1-002" / "gtv1_label.nii.gz")
    # Every third pixel in-plane: 2.93 mm, 171 x 171 x 111 (keeps the test a few seconds).
    step = np.diag([3.0, 3.0, 1.0, 1.0])
    ct = Volume(np.ascontiguousarray(ct.array[::3, ::3]), ct.affine @ step, {"path": "LUNG1-002 ct"})
    label = Volume(np.ascontiguousarray(label.array[::3, ::3]), label.affine @ step, {"path": "LUNG1-002 label"})
    centre = map_points(ct.affine, np.array(ct.shape) / 2.0)[0]
    pair = make_pair(ct, label, motion(-6.0, 2.0, (-31.0, 18.0, 12.0), centre=centre), (2.5, 2.5, 2.5))
    depth_mm = 4.0
    inside = ndimage.distance_transform_edt(label.array != 0, sampling=label.spacing_mm)
    eroded = pair.mask_b.with_array((inside > depth_mm).astype(np.uint8))
    pair_eroded = type(pair)(ct, eroded, pair.ct_f, pair.baseline_to_followup, pair.new_centre_b)
    mask_f = pair_eroded.followup_mask()
    doc = followup(ct, pair.ct_f, tmp_path / "o", baseline_mask=label, followup_mask=mask_f, dates=DATES)
    reg = doc["registration"]
    assert reg["ok"], reg["statement"]
    tumour = np.array(measure_lesions(label, ct).lesions[0].centroid_ras_mm)
    error = np.linalg.norm(map_points(np.array(reg["baseline_to_followup_ras"]), tumour) - map_points(pair.baseline_to_followup, tumour))
    assert error < 2.0
    (row,) = [p for p in doc["pairs"] if p["baseline_ids"] == [1]]
    assert row["status"] == "matched"
    assert abs((row["baseline_long_axis_mm"] - row["followup_long_axis_mm"]) - 2 * depth_mm) <= 2 * 2.93
    assert doc["response"] == "SD"


def test_dicom_inputs_get_one_measurement_report_per_visit_linked_by_tracking_uid(pair, alignment, tmp_path):
    """DICOM series in: each visit gets a TID 1500 SR (read back with highdicom and pydicom); a lesion
    matched 1:1 carries the same tracking UID at both visits, and each long axis points at a slice of its series."""
    import highdicom as hd
    import pydicom

    from helpers.dicom import write_ct_series
    from lungtumor.io.nifti import write_nifti
    from lungtumor.io.readers import read_volume

    mask_f = pair.followup_mask(scales={1: 0.8})
    folders = {}
    for visit, ct, mask in (("baseline", pair.ct_b, pair.mask_b), ("followup", pair.painted_ct(mask_f), mask_f)):
        folder = tmp_path / visit
        folder.mkdir()
        write_ct_series(folder, ct.array, ct.affine, study_uid=pydicom.uid.generate_uid())
        read = read_volume(folder)
        # The reader's grid (its own axis order): carry the mask over by world position.
        assert read.shape == ct.shape or sorted(read.shape) == sorted(ct.shape)
        from lungtumor.preprocessing.registration import resample_onto

        on_read = resample_onto(mask, read.shape, read.affine, np.eye(4), label=True)
        write_nifti(on_read, tmp_path / f"{visit}_mask.nii.gz", dtype=np.uint8)
        folders[visit] = folder
    doc = followup(
        folders["baseline"], folders["followup"], tmp_path / "out",
        baseline_mask=tmp_path / "baseline_mask.nii.gz", followup_mask=tmp_path / "followup_mask.nii.gz", alignment=alignment,
    )
    out = tmp_path / "out"
    reports = {}
    for visit, name in (("baseline", "baseline_sr.dcm"), ("followup", "followup_sr.dcm")):
        ds = pydicom.dcmread(out / name)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        hd.sr.srread(out / name)  # highdicom reads it back as an SR it understands

        def items(dataset):
            for item in dataset.get("ContentSequence", []):
                yield item
                yield from items(item)

        content = list(items(ds))
        slice_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folders[visit].iterdir()}
        refs = [ref.ReferencedSOPInstanceUID for item in content if item.ValueType == "IMAGE" for ref in item.ReferencedSOPSequence]
        assert refs and set(refs) <= slice_uids  # every axis lies on a slice of this visit's series
        uids = {str(item.UID) for item in content if item.ValueType == "UIDREF"}
        reports[visit] = uids
    matched = [p for p in doc["pairs"] if p["status"] == "matched"]
    assert matched
    for p in matched:
        assert p["tracking_uid"] in reports["baseline"] and p["tracking_uid"] in reports["followup"]


def test_checkpoint_predicts_both_masks_as_segment_does(pair, alignment, tmp_path):
    """Without masks, --checkpoint predicts each visit's mask through `segment` (predict's code path),
    on each CT's own grid, and writes them beside the report."""
    import torch

    from lungtumor.config import PreprocessConfig
    from lungtumor.inference.predictor import segment
    from lungtumor.io.nifti import read_nifti
    from lungtumor.model.checkpoint import LoadedModel

    class Bright(torch.nn.Module):  # 'tumour' wherever the centre channel is above 0 HU
        def forward(self, x):
            return 1000.0 * x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]  # slices are HU / scale: > 0 above 0 HU

    model = LoadedModel(net=Bright(), preprocess=PreprocessConfig(preset="seed", size=64), context=0, info={"threshold": 0.5})
    ct_f = pair.painted_ct(pair.followup_mask(scales={1: 0.8}))
    doc = followup(pair.ct_b, ct_f, tmp_path / "out", checkpoint=model, alignment=alignment)
    for name, ct in (("baseline_mask.nii.gz", pair.ct_b), ("followup_mask.nii.gz", ct_f)):
        written = read_nifti(tmp_path / "out" / name)
        assert written.shape == ct.shape and np.allclose(written.affine, ct.affine)
        assert np.array_equal(written.array, segment(ct, model).array)
    assert doc["inputs"]["model"] is not None
