"""The command line: every subcommand on tiny data, one-line errors, and a tiny demo end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungtumor.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_phantom_preprocess_and_errors(tmp_path, capsys) -> None:
    rc, out, _ = _run(capsys, "phantom", str(tmp_path / "task"), "--cases", "3", "--test-cases", "1")
    assert rc == 0 and "3 training + 1 test" in out
    ds = json.loads((tmp_path / "task" / "dataset.json").read_text())
    assert ds["numTraining"] == 3 and ds["numTest"] == 1
    rc, out, _ = _run(capsys, "preprocess", str(tmp_path / "task"), str(tmp_path / "store"), "--preset", "seed", "--size", "64", "--val-cases", "1")
    assert rc == 0 and "3 cases (2 train, 1 val)" in out
    # a different config on the same store: one line, exit 2
    rc, _, err = _run(capsys, "preprocess", str(tmp_path / "task"), str(tmp_path / "store"), "--preset", "seed", "--size", "32")
    assert rc == 2 and err.count("\n") == 1 and "different config" in err
    rc, _, err = _run(capsys, "preprocess", str(tmp_path / "missing"), str(tmp_path / "s2"))
    assert rc == 2 and "missing" in err and "Traceback" not in err


def test_train_errors_are_one_line(tmp_path, capsys) -> None:
    rc, _, err = _run(capsys, "train", str(tmp_path / "nostore"), "--out", str(tmp_path / "run"))
    assert rc == 2 and "not a finished slice store" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, "train", "--resume", str(tmp_path / "norun"))
    assert rc == 2 and "config.yaml" in err
    bad = tmp_path / "c.yaml"
    bad.write_text("epochz: 3\n")
    rc, _, err = _run(capsys, "train", str(tmp_path / "nostore"), "--out", str(tmp_path / "r"), "--config", str(bad))
    assert rc == 2 and "unknown training option" in err


def test_evaluate_and_visualize_errors(tmp_path, capsys) -> None:
    from helpers import affine_for
    from lungtumor.io.nifti import write_nifti
    from lungtumor.io.volume import Volume

    m = np.zeros((8, 8, 8), np.uint8)
    m[2:5, 2:5, 2:5] = 1
    write_nifti(Volume(m, affine_for("LAS")), tmp_path / "pred" / "a.nii.gz")
    write_nifti(Volume(m, affine_for("LPS")), tmp_path / "ref" / "a.nii.gz")
    rc, _, err = _run(capsys, "evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"))
    assert rc == 2 and err.strip().count("\n") == 0 and "a.nii.gz" in err
    assert not (tmp_path / "pred" / "evaluation" / "metrics.csv").exists()
    rc, _, err = _run(capsys, "visualize", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "not found" in err


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, capsys) -> None:
    from lungtumor.demo import DemoConfig, run_demo

    cfg = DemoConfig(workdir=str(tmp_path / "demo"), cases=3, test_cases=1, val_cases=1, heldout_cases=1, size=64, width=4, epochs=1, train_minutes=1.0, samples_per_epoch=16, batch_size=8)
    result = run_demo(cfg)
    out = capsys.readouterr().out
    work = tmp_path / "demo"
    summary = json.loads((work / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == 1 and "dice_mean" in summary
    assert (work / "evaluation" / "metrics.csv").exists()
    assert list((work / "figures").glob("*.gif")) and list((work / "figures").glob("*.png"))
    assert list((work / "predictions" / "test").glob("*.nii.gz"))
    for stage in ("phantom", "preprocess", "train", "predict", "evaluate", "figures"):
        assert stage in out
    # every prediction sits on its input's grid
    from lungtumor.io.nifti import read_nifti

    for folder, data in (("val", "data"), ("heldout", "heldout")):
        preds = list((work / "predictions" / folder).glob("*.nii.gz"))
        assert preds
        for pred in preds:
            ct = read_nifti(work / data / "imagesTr" / pred.name)
            mask = read_nifti(pred)
            assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine, atol=1e-5)
    # each generated dataset says what it holds, so that a re-run reuses only the data asked for
    from lungtumor.demo import DEMO_DATA_STAMP, _phantom_matches

    assert _phantom_matches(work / "data", 3, 1, 0) and _phantom_matches(work / "heldout", 1, 0, 1)
    assert not _phantom_matches(work / "data", 4, 1, 0) and (work / "data" / DEMO_DATA_STAMP).exists()
    # the minimum lesion volume was chosen on the validation cases and recorded
    choice = json.loads((work / "evaluation" / "postprocessing.json").read_text())
    assert choice["cases"] == 1 and result["postprocessing"]["min_lesion_ml"] == choice["min_lesion_ml"]
    # ... and the minimum lesion score after it, from the validation probabilities
    assert result["postprocessing"]["min_lesion_score"] == choice["min_lesion_score"]
    assert choice["min_lesion_score_choice"]["cases"] == 1 and list((work / "predictions" / "val" / "probabilities").glob("*.nii.gz"))
    assert result["checkpoint"]


def test_bad_trainer_and_device_options_are_one_line_errors(tmp_path, capsys) -> None:
    from helpers.store import make_store

    store = make_store(tmp_path)
    rc, _, err = _run(capsys, "train", str(store), "--out", str(tmp_path / "r"), "--precision", "17-bogus", "--width", "4", "--no-progress")
    assert rc == 2 and "invalid trainer option" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "config.yaml").exists()
    import torch

    if not torch.cuda.is_available():
        from helpers import stub_checkpoint

        stub_checkpoint(tmp_path / "m.ckpt", size=32)
        ct = next((tmp_path / "task" / "imagesTr").glob("*.nii.gz"))
        rc, _, err = _run(capsys, "predict", str(tmp_path / "m.ckpt"), str(ct), str(tmp_path / "o.nii.gz"), "--device", "cuda")
        assert rc == 2 and "CUDA is not available" in err and not (tmp_path / "o.nii.gz").exists()


def test_file_system_errors_are_one_line(tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc, _, err = _run(capsys, "phantom", str(blocker / "out"), "--cases", "1", "--test-cases", "0")
    assert rc == 2 and "a_file" in err and "Traceback" not in err and err.strip().count("\n") == 0


def test_predict_of_one_file_finds_the_lungs_ahead_and_writes_what_the_api_writes(tmp_path, capsys) -> None:
    """The command line reads the CT and finds its lungs while torch is imported (io/prefetch.py); the
    mask is the API's, which does neither ahead."""
    import torch

    from lungtumor.config import PreprocessConfig
    from lungtumor.io import prefetch
    from lungtumor.io.nifti import read_nifti
    from lungtumor.model.checkpoint import checkpoint_metadata
    from lungtumor.model.unet import ModelConfig, UNet
    from lungtumor.phantom.dataset import write_phantom_dataset
    from lungtumor.predict import predict_path

    task = write_phantom_dataset(tmp_path / "task", cases=1, test_cases=0, size="SMALL", seed=3)
    ct = next((task / "imagesTr").glob("*.nii.gz"))
    torch.manual_seed(0)
    cfg = ModelConfig(width=2, depth=2)
    net = UNet(cfg)
    with torch.no_grad():
        net.head.bias.fill_(2.0)  # every voxel over 0.5: the mask is what the lung region keeps
    ckpt = tmp_path / "lung.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "lungtumor": checkpoint_metadata(cfg.__dict__, PreprocessConfig(preset="lung").to_dict(), 0, threshold=0.5)}, ckpt)
    used = []
    original = prefetch.after

    def spy(volume):
        got = original(volume)
        used.append(got is not None)
        return got

    prefetch.after = spy
    try:
        rc, _, err = _run(capsys, "predict", str(ckpt), str(ct), str(tmp_path / "cli.nii.gz"), "--device", "cpu")
    finally:
        prefetch.after = original
    assert rc == 0, err
    assert used == [True]  # the region found ahead was used
    predict_path(ckpt, ct, tmp_path / "api.nii.gz", device="cpu", progress=False)
    np.testing.assert_array_equal(read_nifti(tmp_path / "cli.nii.gz").array, read_nifti(tmp_path / "api.nii.gz").array)
