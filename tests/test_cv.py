"""Cross-validation: every case validated exactly once per seed, resumable, failures listed."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from helpers.store import make_store
from lungtumor.cli import main
from lungtumor.cv import cross_validate
from lungtumor.errors import ConfigError
from lungtumor.model.checkpoint import read_checkpoint
from lungtumor.training.options import TrainConfig

FAST = dict(width=4, batch_size=4, num_workers=0, progress=False, image_every_n_steps=0, log_every_n_steps=1, epochs=1, samples_per_epoch=4)


@pytest.mark.slow
def test_cross_validation_covers_every_case_once_and_resumes(tmp_path) -> None:
    store = make_store(tmp_path, n=4, val_cases=1)
    out = tmp_path / "cv"
    base = TrainConfig(store=str(store), out=str(out), **FAST)
    summary = cross_validate(store, out, base, folds=2, seeds=1)
    assert summary["complete"] and not summary["failed"]
    rows = list(csv.DictReader((out / "cv_cases.csv").open()))
    assert sorted(r["case"] for r in rows) == [f"lung_{i:03d}" for i in range(4)]  # each case once
    vals = [set(read_checkpoint(out / "seed-0" / f"fold-{k}" / "run" / "last.ckpt")["lungtumor"]["split"]["val"]) for k in (0, 1)]
    assert not vals[0] & vals[1]
    fold_means = [f["dice_mean"] for f in summary["per_fold"]]
    agg = summary["per_seed"]["0"]["dice_over_folds"]
    defined = [m for m in fold_means if m is not None]
    assert agg["n"] == len(defined) and agg["mean"] == pytest.approx(sum(defined) / len(defined))
    # the post-processing is chosen on every fold's predictions of its own cases
    post = summary["postprocessing"]
    assert post["cases"] == 4 and set(post["dice_by_min_lesion_ml"]) >= {0.0} and "rule" in post
    # ... and the minimum lesion score after it, with the scores' reliability table over the folds
    assert "min_lesion_score" in post and post["min_lesion_score_choice"]["cases"] == 4 and "rule" in post["min_lesion_score_choice"]
    calib = post["lesion_calibration"]
    assert calib["candidates"] == post["min_lesion_score_choice"]["candidates"] and len(calib["bins"]) == 10
    from lungtumor.cv import format_report

    assert "minimum lesion score chosen" in format_report(summary) and "ECE" in format_report(summary)
    # A second run reuses the finished folds: nothing is trained again.
    stamp = (out / "seed-0" / "fold-0" / "run" / "last.ckpt").stat().st_mtime_ns
    again = cross_validate(store, out, base, folds=2, seeds=1)
    assert (out / "seed-0" / "fold-0" / "run" / "last.ckpt").stat().st_mtime_ns == stamp
    assert again["per_fold"] == summary["per_fold"]
    assert json.loads((out / "cv_summary.json").read_text())["complete"]


def _store_and_a_broken_fold_1(tmp_path):
    """A store and a cv folder whose fold 1 cannot start training (its run holds a corrupt last.ckpt)."""
    store = make_store(tmp_path, n=4, val_cases=1)
    out = tmp_path / "cv"
    (out / "seed-0" / "fold-1" / "run").mkdir(parents=True)
    (out / "seed-0" / "fold-1" / "run" / "last.ckpt").write_text("garbage")
    return store, out


@pytest.mark.slow
def test_a_failed_fold_is_listed_and_the_others_report(tmp_path, capsys) -> None:
    store, out = _store_and_a_broken_fold_1(tmp_path)  # fold 0 still reports
    args = ["cv", str(store), "--out", str(out), "--folds", "2", "--width", "4", "--batch-size", "4", "--num-workers", "0",
            "--no-progress", "--epochs", "1", "--samples-per-epoch", "4"]
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 2 and "1 fold(s) failed" in captured.err and captured.err.strip().count("\n") == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    assert [f["fold"] for f in summary["failed"]] == [1] and "last.ckpt" in summary["failed"][0]["error"]
    assert [f["fold"] for f in summary["per_fold"]] == [0] and not summary["complete"]
    assert "FAILED seed 0 fold 1" in captured.out


def test_cv_option_errors(tmp_path, capsys) -> None:
    assert main(["cv", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["cv", str(tmp_path), "--out", str(tmp_path / "o"), "--only-folds", "7"]) == 2
    assert "--only-folds" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_parallel_folds_run_in_their_own_processes_and_match_the_sequential_run(tmp_path, monkeypatch) -> None:
    import lungtumor.cv as cv

    store = make_store(tmp_path, n=4, val_cases=1)
    base = TrainConfig(store=str(store), out=str(tmp_path), **FAST)
    monkeypatch.setattr(cv.os, "cpu_count", lambda: 2)  # one thread per fold process, as in-process here
    par = cross_validate(store, tmp_path / "par", base, folds=2, seeds=1, parallel=2)
    seq = cross_validate(store, tmp_path / "seq", base, folds=2, seeds=1, parallel=1)
    assert par["complete"] and [f["fold"] for f in par["per_fold"]] == [0, 1]
    for k in (0, 1):  # each fold ran in a child process (its log), the sequential run in this one
        assert (tmp_path / "par" / "seed-0" / f"fold-{k}" / cv.WORKER_LOG).exists()
        assert not (tmp_path / "seq" / "seed-0" / f"fold-{k}" / cv.WORKER_LOG).exists()
        done = [json.loads((tmp_path / d / "seed-0" / f"fold-{k}" / "done.json").read_text()) for d in ("par", "seq")]
        assert done[0]["val_cases"] == done[1]["val_cases"] and json.dumps(done[0]["rows"]) == json.dumps(done[1]["rows"])
    # Same split, seed and thread count: the same models and scores as one process.
    assert [f["dice_mean"] for f in par["per_fold"]] == pytest.approx([f["dice_mean"] for f in seq["per_fold"]], abs=1e-6)
    a = read_checkpoint(tmp_path / "par" / "seed-0" / "fold-1" / "run" / "last.ckpt")["state_dict"]
    b = read_checkpoint(tmp_path / "seq" / "seed-0" / "fold-1" / "run" / "last.ckpt")["state_dict"]
    assert all(float((a[k].float() - b[k].float()).abs().max()) < 1e-5 for k in a)
    # A fold whose process fails (its resume checkpoint is corrupt) is listed with its last error
    # line and its log; the finished fold still reports.
    shutil.copytree(tmp_path / "par", tmp_path / "broken")
    (tmp_path / "broken" / "seed-0" / "fold-1" / "done.json").unlink()
    (tmp_path / "broken" / "seed-0" / "fold-1" / "run" / "last.ckpt").write_text("garbage")
    broken = cross_validate(store, tmp_path / "broken", base, folds=2, seeds=1, parallel=2)
    assert [f["fold"] for f in broken["per_fold"]] == [0] and [f["fold"] for f in broken["failed"]] == [1]
    assert "last.ckpt" in broken["failed"][0]["error"] and cv.WORKER_LOG in broken["failed"][0]["error"]


def test_parallel_option_errors(tmp_path) -> None:
    store = make_store(tmp_path, n=4, val_cases=1)
    with pytest.raises(ConfigError, match="--parallel 0"):
        cross_validate(store, tmp_path / "a", TrainConfig(store=str(store), out=str(tmp_path), **FAST), folds=2, parallel=0)
    with pytest.raises(ConfigError, match="one fold per device"):
        cross_validate(store, tmp_path / "b", TrainConfig(store=str(store), out=str(tmp_path), devices="2", **FAST), folds=2, parallel=2)


def test_predict_on_a_cv_folder_takes_the_volume_its_folds_chose(tmp_path) -> None:
    from lungtumor.cvfolder import cv_min_lesion_ml

    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "cv_summary.json").write_text(json.dumps({"postprocessing": {"min_lesion_ml": 0.2}}))
    assert cv_min_lesion_ml(tmp_path / "cv") == 0.2
    assert cv_min_lesion_ml(tmp_path / "cv" / "cv_summary.json") is None  # a file: not a cv folder
    (tmp_path / "cv" / "cv_summary.json").write_text(json.dumps({"postprocessing": {"min_lesion_ml": None}}))
    assert cv_min_lesion_ml(tmp_path / "cv") is None
    (tmp_path / "cv" / "cv_summary.json").write_text("{not json")
    assert cv_min_lesion_ml(tmp_path / "cv") is None


def test_an_ensemble_of_a_cv_folder_takes_only_finished_folds(tmp_path, caplog) -> None:
    from lungtumor.cvfolder import DONE_FILE, ensemble_checkpoints, finished_fold_checkpoints, is_cv_folder
    from lungtumor.errors import CheckpointError

    cv = tmp_path / "cv"
    for fold in (0, 1, 2):
        (cv / "seed-0" / f"fold-{fold}" / "run").mkdir(parents=True)
        (cv / "seed-0" / f"fold-{fold}" / "run" / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(CheckpointError, match="no finished fold"):  # a cv folder killed before any fold finished
        finished_fold_checkpoints(cv)
    for fold in (0, 2):
        (cv / "seed-0" / f"fold-{fold}" / DONE_FILE).write_text("{}")
    with caplog.at_level("WARNING"):
        found = finished_fold_checkpoints(cv)
    assert found == [cv / "seed-0" / f"fold-{k}" / "run" / "last.ckpt" for k in (0, 2)]
    assert "fold-1" in caplog.text and "unfinished" in caplog.text
    assert is_cv_folder(cv) and ensemble_checkpoints(str(cv)) == found
    run = tmp_path / "run"  # a train run folder or a checkpoint file pass through unchanged
    run.mkdir()
    assert not is_cv_folder(run) and ensemble_checkpoints(run) == run and ensemble_checkpoints("a.ckpt") == "a.ckpt"


def test_report_gives_the_per_case_spread_and_pooled_dice(tmp_path: Path) -> None:
    import numpy as np

    from lungtumor.cv import format_report, write_report

    dices = [0.9, 0.8, 0.5, 0.1]
    records = [
        {"seed": 0, "fold": k, "dice_mean": d, "rows": [{"case": f"c{k}", "dice": d, "pred_volume_ml": 10.0, "ref_volume_ml": 10.0,
                                                          "overlap_volume_ml": 10.0 * d}]}
        for k, d in enumerate(dices)
    ]
    summary = write_report(tmp_path, records, [], folds=4, seeds=1)
    spread = summary["dice_per_case"]
    assert spread["median"] == pytest.approx(np.median(dices)) and spread["q10"] == pytest.approx(np.percentile(dices, 10))
    assert summary["dice_pooled"] == pytest.approx(2 * sum(10 * d for d in dices) / 80)
    text = format_report(summary)
    assert "10th percentile" in text and "Dice pooled:" in text


def test_cv_builds_the_phantoms_once_for_all_its_folds(tmp_path, monkeypatch) -> None:
    import lungtumor.cv as cv
    from lungtumor.errors import LungTumorError

    store = make_store(tmp_path, n=4, val_cases=1)
    seen: list[str | None] = []

    def fold_stub(base, store, fold_dir, fold, folds, seed, tta):  # type: ignore[no-untyped-def]
        seen.append(base.phantom_dir)
        raise LungTumorError("stopped here")

    monkeypatch.setattr(cv, "run_fold", fold_stub)
    base = TrainConfig(store=str(store), out=str(tmp_path), phantoms=1, phantom_size="SMALL", **FAST)
    summary = cross_validate(store, tmp_path / "cv", base, folds=2)
    assert seen == [str(tmp_path / "cv" / "phantoms")] * 2 and len(summary["failed"]) == 2
    assert len(list((tmp_path / "cv" / "phantoms").glob("store-small-1-*/store.json"))) == 1
    # A --phantom-dir of the user's is built here too, once, before any fold (parallel folds would race for it).
    seen.clear()
    cross_validate(store, tmp_path / "cv2", TrainConfig(**{**base.to_dict(), "phantom_dir": str(tmp_path / "mine")}), folds=2)
    assert seen == [str(tmp_path / "mine")] * 2 and len(list((tmp_path / "mine").glob("store-small-1-*/store.json"))) == 1


def _fold_folders(out: Path) -> list[dict]:
    """Two finished folds' predictions, references and probability maps: a found lesion and a small false one each."""
    import numpy as np

    from lungtumor.io.nifti import write_nifti
    from lungtumor.io.volume import Volume

    records = []
    for fold in (0, 1):
        d = out / "seed-0" / f"fold-{fold}"
        label = np.zeros((24, 24, 12), dtype=np.uint8)
        label[4:12, 4:12, 3:9] = 1
        pred = label.copy()
        pred[15:21, 15:21, 4:9] = 1  # a false positive of 1.4 ml: larger than any minimum volume cv tries
        prob = pred * np.float32(0.9)
        prob[15:21, 15:21, 4:9] = 0.6
        name = f"case_{fold}.nii.gz"
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        write_nifti(Volume(label, affine), d / "references" / name)
        write_nifti(Volume(pred, affine), d / "predictions" / name)
        write_nifti(Volume(prob, affine), d / "predictions" / "probabilities" / f"case_{fold}_prob.nii.gz")
        records.append({"seed": 0, "fold": fold})
    return records


def test_folds_with_rescorers_choose_no_lesion_score_and_cv_trains_them(tmp_path, monkeypatch) -> None:
    import lungtumor.cv as cv
    from lungtumor.errors import LungTumorError

    records = _fold_folders(tmp_path / "cv")
    plain = cv._choose_postprocessing(tmp_path / "cv", records)
    assert plain["min_lesion_score"] is not None and plain["min_lesion_score_choice"]["false_positive_lesions"] == 2
    # A score chosen on prob_max would be applied to the re-scorer's scores: none is chosen, and the report says why.
    rescored = cv._choose_postprocessing(tmp_path / "cv", records, rescored=True)
    assert rescored["min_lesion_score"] is None and "min_lesion_score_choice" not in rescored
    assert rescored["min_lesion_ml"] == plain["min_lesion_ml"] and "re-scorers" in rescored["min_lesion_score_error"]
    summary = {"postprocessing": rescored, "failed": [], "per_fold": [], "per_seed": {}, "dice_over_seeds": {"n": 0, "mean": None, "sd": None}}
    assert "minimum lesion score not chosen: the folds carry re-scorers" in cv.format_report(summary)
    # cv trains the folds with their re-scorers (no longer refused) and says so to the chooser.
    seen = []

    def fold_stub(base, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(base.rescorer_steps)
        raise LungTumorError("stopped here")

    monkeypatch.setattr(cv, "run_fold", fold_stub)
    monkeypatch.setattr(cv, "_choose_postprocessing", lambda out, recs, rescored=False: seen.append(("rescored", rescored)))
    store = make_store(tmp_path, n=4, val_cases=1)
    cross_validate(store, tmp_path / "cv2", TrainConfig(store=str(store), out=str(tmp_path), rescorer_steps=5, **FAST), folds=2)
    assert seen == [5, 5, ("rescored", True)]
