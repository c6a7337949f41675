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


# -- a cohort: --workers, --skip-existing, a run stopped half-way ------------------------------------------


def _lung_checkpoint(path: Path) -> Path:
    """A lung-preset checkpoint (the lung finder runs in the CPU stage), tiny random U-Net."""
    from lungtumor.config import PreprocessConfig

    torch.manual_seed(3)
    cfg = ModelConfig(width=2, depth=2)
    net = UNet(cfg)
    with torch.no_grad():
        net.head.bias.fill_(0.3)  # some voxels above 0.5, some below: a mask that is neither empty nor full
    pre = PreprocessConfig.from_preset("lung", spacing_mm=4.0)
    meta = checkpoint_metadata(cfg.to_dict(), pre.to_dict(), 0, threshold=0.5)
    torch.save({"lungtumor": meta, "state_dict": {NET_PREFIX + k: v for k, v in net.state_dict().items()}}, path)
    return path


def _phantom_folder(folder: Path, seeds=(1, 2, 3)) -> list[str]:
    from lungtumor.phantom.dataset import make_case

    names = []
    for seed in seeds:
        ct, _ = make_case(seed, size="SMALL")
        names.append(f"case{seed}.nii.gz")
        write_nifti(ct, folder / names[-1])
    return names


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): read_nifti(p).array for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """Three tiny synthetic scans and a seed-preset stub checkpoint (fast: no lung finder)."""
    root = tmp_path_factory.mktemp("cohort")
    names = []
    for k in range(3):
        rng = np.random.default_rng(k)
        ct = rng.normal(-700, 50, SHAPE).astype(np.int16)
        ct[10 + k : 18 + k, 12:20, 33:38] = 40
        names.append(f"case{k}.nii.gz")
        write_nifti(Volume(ct, affine_for("LAS")), root / "in" / names[-1])
    return _checkpoint(root / "a.ckpt", 1), root / "in", names


def test_workers_give_the_same_outputs_as_one_process(tmp_path) -> None:
    """Lung preset (the lung finder, the grid and the slices run in the workers) on three SMALL phantoms."""
    from lungtumor.predict import predict_path

    ckpt, inputs = _lung_checkpoint(tmp_path / "lung.ckpt"), tmp_path / "in"
    names = _phantom_folder(inputs)
    serial = predict_path(ckpt, inputs, tmp_path / "serial", probabilities=True, progress=False)
    piped = predict_path(ckpt, inputs, tmp_path / "piped", probabilities=True, progress=False, workers=2)
    assert [Path(r["input"]).name for r in piped] == names  # in input order
    a, b = _outputs(tmp_path / "serial"), _outputs(tmp_path / "piped")
    assert sorted(a) == sorted(b) == sorted(names + [f"probabilities/{n}" for n in names])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(a[n].any() for n in names) and not all(a[n].all() for n in names)  # masks neither all empty nor all full
    for r in serial + piped:  # every stage timed
        assert set(r["timings"]) == {"read", "lungs", "grid", "model", "back", "write", "report"}
        assert r["timings"]["lungs"] > 0 and r["seconds"] == pytest.approx(sum(r["timings"].values()))


def test_skip_existing_skips_exactly_the_finished_inputs(cohort, tmp_path) -> None:
    from lungtumor.predict import predict_path

    ckpt, inputs, names = cohort
    out = tmp_path / "pred"
    predict_path(ckpt, inputs / names[0], out / names[0], progress=False, report=True)  # one input done, with its report
    predict_path(ckpt, inputs / names[1], out / names[1], progress=False)  # one done without its report: not finished
    before = {n: (out / n).stat().st_mtime_ns for n in names[:2]}
    results = predict_path(ckpt, inputs, out, progress=False, report=True, skip_existing=True)
    assert [bool(r.get("skipped")) for r in results] == [True, False, False]
    assert (out / names[0]).stat().st_mtime_ns == before[names[0]]  # untouched
    assert all((out / f"{n[:-7]}_report" / "report.html").exists() for n in names)
    again = predict_path(ckpt, inputs, out, progress=False, report=True, skip_existing=True, workers=2)
    assert all(r.get("skipped") for r in again)


def test_a_run_stopped_by_a_failing_writer_leaves_whole_outputs_and_a_rerun_completes(cohort, tmp_path, monkeypatch) -> None:
    """The disk fills up at the second output (in this process: with --workers the writers run in
    worker processes, see the SIGKILL test below); the rerun with --skip-existing uses workers."""
    import lungtumor.predict as predict_mod

    ckpt, inputs, names = cohort
    out = tmp_path / "pred"
    real_write, calls = predict_mod.write_nifti, []

    def write_then_fail(volume, path, dtype=None):
        if len(calls) == 1:  # the second output: the disk fills up
            raise OSError(28, "No space left on device", str(path))
        calls.append(path)
        return real_write(volume, path, dtype=dtype)

    monkeypatch.setattr(predict_mod, "write_nifti", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        predict_mod.predict_path(ckpt, inputs, out, progress=False)
    monkeypatch.setattr(predict_mod, "write_nifti", real_write)
    left = sorted(p.name for p in out.iterdir())
    assert left == [names[0]]  # the first output, whole; nothing else (no temporary files)
    assert read_nifti(out / names[0]).shape == read_nifti(inputs / names[0]).shape
    results = predict_mod.predict_path(ckpt, inputs, out, progress=False, workers=2, skip_existing=True)
    assert [bool(r.get("skipped")) for r in results] == [True, False, False]
    complete = predict_mod.predict_path(ckpt, inputs, tmp_path / "complete", progress=False)
    for name in names:
        np.testing.assert_array_equal(read_nifti(out / name).array, read_nifti(tmp_path / "complete" / name).array)
    assert len(complete) == 3


def test_an_error_in_a_worker_is_the_same_one_line_error(cohort, tmp_path, capsys) -> None:
    ckpt, inputs, names = cohort
    bad = tmp_path / "in"
    bad.mkdir()
    for n in names[:2]:
        (bad / n).symlink_to(inputs / n)
    (bad / "broken.nii.gz").write_bytes(b"not a nifti")
    assert main(["predict", str(ckpt), str(bad), str(tmp_path / "serial"), "--skip-bad"]) == 2
    serial = capsys.readouterr()
    assert main(["predict", str(ckpt), str(bad), str(tmp_path / "piped"), "--skip-bad", "--workers", "2"]) == 2
    piped = capsys.readouterr()
    line = [ln for ln in serial.out.splitlines() if "broken" in ln]
    assert line and line == [ln for ln in piped.out.splitlines() if "broken" in ln]
    assert sorted(p.name for p in (tmp_path / "piped").iterdir()) == sorted(names[:2])
    assert main(["predict", str(ckpt), str(bad), str(tmp_path / "stop"), "--workers", "2"]) == 2  # without --skip-bad: stops
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.nii.gz" in err[0] and "Traceback" not in err[0]


def test_workers_must_be_a_whole_number_from_0(tmp_path) -> None:
    from lungtumor.predict import predict_path

    ckpt = _checkpoint(tmp_path / "a.ckpt", 1)
    with pytest.raises(ConfigError, match="--workers -1"):
        predict_path(ckpt, _ct(tmp_path), tmp_path / "o.nii.gz", workers=-1)


@pytest.mark.slow
def test_a_killed_run_leaves_only_whole_outputs_and_a_rerun_completes(cohort, tmp_path) -> None:
    """SIGKILL of `lungtumor predict --workers 2` (its whole process group: main, workers, fork server)
    as soon as its first output appears: every output under its final name reads back whole, and
    `--skip-existing` completes the folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    ckpt, inputs, names = cohort
    out = tmp_path / "pred"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lungtumor.cli", "predict", str(ckpt), str(inputs), str(out), "--workers", "2", "--probabilities"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not (out / names[0]).exists():
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    visible = [p for p in out.rglob("*.nii.gz") if not p.name.startswith(".")]
    for p in visible:  # whole files only under the final names
        assert read_nifti(p).shape == SHAPE
    assert main(["predict", str(ckpt), str(inputs), str(out), "--probabilities", "--skip-existing", "--workers", "2"]) == 0
    reference = tmp_path / "reference"
    assert main(["predict", str(ckpt), str(inputs), str(reference), "--probabilities"]) == 0
    for name in names:
        for sub in ("", "probabilities/"):
            np.testing.assert_array_equal(read_nifti(out / sub / name).array, read_nifti(reference / sub / name).array)


def test_a_workers_warnings_are_logged_by_the_main_process(cohort, tmp_path, caplog) -> None:
    ckpt, inputs, names = cohort
    folder = tmp_path / "in"
    write_nifti(Volume(np.full(SHAPE, 40, np.int16), affine_for("LAS")), folder / "no_air.nii.gz")
    (folder / names[0]).symlink_to(inputs / names[0])
    with caplog.at_level("WARNING", logger="lungtumor"):
        from lungtumor.predict import predict_path

        predict_path(ckpt, folder, tmp_path / "out", progress=False, workers=2)
    assert any("no_air.nii.gz" in r.getMessage() and "no voxel below" in r.getMessage() for r in caplog.records)
