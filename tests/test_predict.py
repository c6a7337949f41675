"""predict: ensembles of checkpoints, the lesion report beside the mask, and --skip-bad over folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import affine_for
from lungtumor.cli import main
from lungtumor.errors import ConfigError
from lungtumor.inference.predictor import load_ensemble, segment
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.volume import Volume
from lungtumor.model.checkpoint import NET_PREFIX, checkpoint_metadata, load_model
from lungtumor.model.unet import ModelConfig, UNet

SHAPE = (32, 32, 40)
SEED_PRE = {"size": 32, "skip_inferior_slices": 30}


def _checkpoint(path: Path, seed: int, preprocess: dict | None = None) -> Path:
    torch.manual_seed(seed)
    net = UNet(ModelConfig(width=4))
    meta = checkpoint_metadata(ModelConfig(width=4).to_dict(), preprocess or SEED_PRE, 0, threshold=0.5)
    torch.save({"lungtumor": meta, "state_dict": {NET_PREFIX + k: v for k, v in net.state_dict().items()}}, path)
    return path


def _ct(tmp_path: Path, name: str = "ct.nii.gz") -> Path:
    rng = np.random.default_rng(0)
    ct = rng.normal(-700, 50, SHAPE).astype(np.int16)
    ct[10:18, 12:20, 33:38] = 40
    return write_nifti(Volume(ct, affine_for("LAS")), tmp_path / "in" / name)


def test_an_ensemble_averages_its_members_probabilities(tmp_path) -> None:
    a, b = _checkpoint(tmp_path / "a.ckpt", 1), _checkpoint(tmp_path / "b.ckpt", 2)
    ct = read_nifti(_ct(tmp_path))
    _, pa = segment(ct, load_model(a), return_probabilities=True, precision="fp32")
    _, pb = segment(ct, load_model(b), return_probabilities=True, precision="fp32")
    mask, pab = segment(ct, [a, b], return_probabilities=True, precision="fp32")
    assert not np.allclose(pa.array, pb.array)  # two different members
    np.testing.assert_allclose(pab.array, (pa.array + pb.array) / 2, atol=1e-6)
    assert mask.shape == ct.shape and np.array_equal(mask.affine, ct.affine)
    # a folder of runs (e.g. a cv folder) is an ensemble of its last.ckpt files
    for k, src in enumerate((a, b)):
        (tmp_path / "cv" / f"fold-{k}" / "run").mkdir(parents=True)
        (tmp_path / "cv" / f"fold-{k}" / "run" / "last.ckpt").write_bytes(src.read_bytes())
    assert len(load_ensemble(tmp_path / "cv")) == 2


def test_an_ensemble_refuses_members_of_different_preprocessing(tmp_path) -> None:
    a = _checkpoint(tmp_path / "a.ckpt", 1)
    b = _checkpoint(tmp_path / "b.ckpt", 2, {"size": 64, "skip_inferior_slices": 30})
    with pytest.raises(ConfigError, match="b.ckpt.*preprocessing differs"):
        load_ensemble([a, b])
    rc = main(["predict", f"{a},{b}", str(_ct(tmp_path)), str(tmp_path / "out.nii.gz")])
    assert rc == 2 and not (tmp_path / "out.nii.gz").exists()


def test_report_is_written_beside_the_mask(tmp_path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "a.ckpt", 1)
    out = tmp_path / "pred" / "case.nii.gz"
    assert main(["predict", str(ckpt), str(_ct(tmp_path)), str(out), "--report", "--threshold", "0.45"]) == 0
    report = tmp_path / "pred" / "case_report"
    assert (report / "report.html").exists() and (report / "lesions.json").exists() and out.exists()
    assert "report.html" in capsys.readouterr().out


def test_skip_bad_goes_on_and_still_exits_non_zero(tmp_path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "a.ckpt", 1)
    _ct(tmp_path, "a.nii.gz")
    (tmp_path / "in" / "b.nii.gz").write_bytes(b"not a nifti")
    _ct(tmp_path, "c.nii.gz")
    out = tmp_path / "pred"
    assert main(["predict", str(ckpt), str(tmp_path / "in"), str(out)]) == 2  # without --skip-bad: stops at b
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(tmp_path / "in"), str(out), "--skip-bad"]) == 2
    captured = capsys.readouterr()
    assert (out / "a.nii.gz").exists() and (out / "c.nii.gz").exists() and not (out / "b.nii.gz").exists()
    assert "b.nii.gz: skipped" in captured.out and "1 of 3 inputs failed" in captured.err


def test_a_scan_that_is_not_hu_is_warned_about(tmp_path, caplog) -> None:
    from lungtumor.inference.predictor import hu_range_warnings

    ct = read_nifti(_ct(tmp_path))
    assert hu_range_warnings(ct) == []
    scaled = Volume(ct.array.astype(np.float32) * 1000, ct.affine, {"path": "x1000.nii.gz"})
    assert "x1000.nii.gz" in hu_range_warnings(scaled)[0]
    no_air = Volume(np.full((8, 8, 8), 40, np.int16), ct.affine)
    assert "no air" in hu_range_warnings(no_air)[0]


@pytest.mark.slow
def test_prediction_is_sharded_across_launcher_processes(tmp_path) -> None:
    """Two CPU processes started by torch's launcher (torchrun): each case predicted once, every output complete.

    No process group is needed (ranks share nothing but the folder), so none is initialised; under
    one that is (e.g. gloo or NCCL set up by the caller), its rank and world size are used.
    """
    import subprocess
    import sys

    ckpt = _checkpoint(tmp_path / "a.ckpt", 1)
    for name in ("a", "b", "c", "d", "e"):
        _ct(tmp_path, f"{name}.nii.gz")
    out = tmp_path / "pred"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0", "-m", "lungtumor.cli",
         "predict", str(ckpt), str(tmp_path / "in"), str(out)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if " -> " in ln]
    predicted = sorted(Path(ln.split(" -> ")[0]).name for ln in lines)
    assert predicted == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz", "e.nii.gz"]  # each exactly once over both ranks
    single = tmp_path / "single"
    assert main(["predict", str(ckpt), str(tmp_path / "in"), str(single)]) == 0
    for name in ("a", "b", "c", "d", "e"):
        np.testing.assert_array_equal(read_nifti(out / f"{name}.nii.gz").array, read_nifti(single / f"{name}.nii.gz").array)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_shard_of_this_process_reads_the_launcher_environment(monkeypatch) -> None:
    from lungtumor.predict import shard_of_this_process

    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert shard_of_this_process() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert shard_of_this_process() == (2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert shard_of_this_process() == (1, 2)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_a_threshold_outside_0_and_1_exclusive_is_refused(value) -> None:
    from lungtumor.config import check_threshold

    with pytest.raises(ConfigError, match="--threshold .*strictly between 0 and 1"):
        check_threshold(value)


@pytest.mark.parametrize("value", [1e-6, 0.5, 1 - 1e-6, np.float32(0.35), np.float64(0.9)])
def test_a_threshold_strictly_between_0_and_1_is_taken(value) -> None:
    from lungtumor.config import check_threshold

    assert check_threshold(value) == float(value) and type(check_threshold(value)) is float


@pytest.mark.parametrize("value", [0, -1, 2.0, 1.5, True, "4", None])
def test_a_batch_size_that_is_not_a_whole_number_from_1_is_refused(value) -> None:
    from lungtumor.config import check_batch_size

    with pytest.raises(ConfigError, match="--batch-size .*at least 1"):
        check_batch_size(value)


@pytest.mark.parametrize("value", [1, 64, np.int64(3)])
def test_a_batch_size_from_1_is_taken(value) -> None:
    from lungtumor.config import check_batch_size

    assert check_batch_size(value) == int(value) and type(check_batch_size(value)) is int


def test_segment_and_predict_path_check_threshold_and_batch_size_at_the_boundaries(tmp_path) -> None:
    from lungtumor.predict import predict_path

    ckpt = _checkpoint(tmp_path / "a.ckpt", 1)
    ct_path = _ct(tmp_path)
    ct = read_nifti(ct_path)
    model = load_model(ckpt)
    for threshold in (0.0, 1.0):
        with pytest.raises(ConfigError, match="--threshold"):
            segment(ct, model, threshold=threshold, precision="fp32")
        with pytest.raises(ConfigError, match="--threshold"):
            predict_path(ckpt, ct_path, tmp_path / "t.nii.gz", threshold=threshold, progress=False)
    for batch_size in (0, -1):
        with pytest.raises(ConfigError, match="--batch-size"):
            segment(ct, model, batch_size=batch_size, precision="fp32")
        with pytest.raises(ConfigError, match="--batch-size"):
            predict_path(ckpt, ct_path, tmp_path / "b.nii.gz", batch_size=batch_size, progress=False)
    assert not (tmp_path / "t.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()
    # the smallest batch and thresholds just inside the range are taken
    low = segment(ct, model, threshold=1e-6, batch_size=1, precision="fp32")
    high = segment(ct, model, threshold=1 - 1e-6, batch_size=1, precision="fp32")
    assert low.shape == high.shape == ct.shape and low.array.sum() >= high.array.sum()
