"""The prepared GPU check (benchmarks/gpu_check.py + gpu_check.sh) in its tiny CPU mode, so it cannot rot.

No timings are asserted: only that every result field is there (a number, or None with a reason
for what a CPU cannot measure), that derived numbers agree with the ones they come from, that a
stage cut short keeps what it measured, and that the wrapper's set-up never reinstalls torch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import gpu_check
from lungtumor.config import SEED_SKIP_INFERIOR_SLICES

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCH / "gpu_check.py"
WRAPPER = BENCH / "gpu_check.sh"
#: What a CPU cannot measure: None in the tiny mode, each with a reason.
GPU_ONLY = ("gpu_name", "peak_gpu_memory_gib", "train_peak_gpu_memory_gib", "train_cudnn_benchmark_slices_per_s", "ddp_global_step", "ddp_wall_s")
#: Issue 17's levers that compile the U-Net: CUDA only.
GPU_ONLY += ("levers_compile_slices_per_s", "levers_combined_slices_per_s", "levers_combined_tflops", "levers_combined_fraction_of_matmul_peak")
#: Summary fields that are not plain positive numbers.
NON_NUMERIC = ("device", "precision", "predict_ct_shape", "ddp_status", "gpu_count")


def _env_without_out() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One default tiny run (every stage), shared by the tests that read its JSON (it costs seconds)."""
    out = tmp_path_factory.mktemp("tiny") / "tmp"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True, text=True, timeout=300, env=_env_without_out()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {**json.loads((out / gpu_check.JSON_NAME).read_text()), "_text": (out / gpu_check.TEXT_NAME).read_text()}


@pytest.mark.slow  # the shared tiny run: about 10 s on an idle 2-core machine (imports, 3 phantoms, levers, cohort); CI runs it
def test_tiny_mode_writes_every_field(tiny_run: dict) -> None:
    data = tiny_run
    assert data["schema"] == gpu_check.SCHEMA and data["mode"] == "tiny" and data["status"] == "complete"
    assert data["finished"] is not None
    stages = data["stages"]
    assert list(stages) == list(gpu_check.STAGES)
    for name, rec in stages.items():
        if name == "ddp":
            assert rec["status"] == "skipped" and "2 CUDA GPUs" in rec["reason"]
            assert "--devices 2 --strategy ddp" in rec["command"]
        else:
            assert rec["status"] == "ok", (name, rec.get("reason"), rec.get("traceback"))

    summary, missing = data["summary"], data["summary_missing"]
    assert list(summary) == list(gpu_check.SUMMARY_FIELDS)
    for key, value in summary.items():
        if value is None:
            assert missing.get(key), f"{key} is None without a reason"
        else:
            assert key not in missing
    for key in GPU_ONLY:
        assert summary[key] is None and missing[key], key
    for key, value in summary.items():
        if key in GPU_ONLY or key in NON_NUMERIC:
            continue
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert summary["device"] == "cpu" and summary["ddp_status"] == "skipped"
    assert summary["train_batch"] == gpu_check.TINY_SIZES.batch

    # Derived numbers agree with what they are derived from.
    assert summary["model_gflop_per_slice_train"] == pytest.approx(3 * summary["model_gflop_per_slice_forward"])
    assert summary["train_tflops"] == pytest.approx(summary["train_slices_per_s"] * summary["model_gflop_per_slice_train"] / 1e3)
    assert summary["train_fraction_of_matmul_peak"] == pytest.approx(summary["train_tflops"] / summary["peak_matmul_tflops"])
    assert summary["train_fraction_of_conv_peak"] == pytest.approx(summary["train_tflops"] / summary["peak_conv3x3_tflops"])
    assert summary["data_path_headroom"] == pytest.approx(summary["data_path_slices_per_s"] / summary["train_slices_per_s"])
    assert stages["peak"]["conv3x3_tflops"] == max(c["tflops"] for c in stages["peak"]["conv3x3"])
    assert [c["channels"] for c in stages["peak"]["conv3x3"]] == [4, 8, 16, 32]  # the width-4 U-Net's levels

    # The whole-CT prediction: the input's grid back, the seed recipe's slices through the model.
    pred = stages["predict"]
    assert pred["model_source"].startswith("checkpoint")
    assert pred["mask_shape"] == pred["ct_shape"] and pred["mask_affine_matches"] is True
    assert pred["ct_shape"][:2] == [128, 128]  # a SMALL phantom in the tiny mode (FULL on a GPU)
    assert pred["slices_through_model"] == pred["ct_shape"][2] - SEED_SKIP_INFERIOR_SLICES
    assert stages["store"]["slices"]["train"] == stages["data_path"]["store_slices"]

    text = data["_text"]  # the text report beside the JSON
    assert "tiny mode" in text and all(key in text for key in gpu_check.SUMMARY_FIELDS)
    assert not Path(data["work"]).exists()  # the work folder (store, checkpoint) is removed
    check_levers_and_cohort_stages(data)


def test_ddp_command_is_a_valid_train_command(tmp_path: Path) -> None:
    from lungtumor.cli import build_parser
    from lungtumor.training.options import TrainConfig

    cmd = gpu_check.ddp_command("python", tmp_path / "store", tmp_path / "run", gpu_check.GPU_SIZES, batch=32)
    assert cmd[1:4] == ["-m", "lungtumor.cli", "train"]
    args = build_parser().parse_args(cmd[3:])
    options = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names() and v is not None}
    cfg = TrainConfig.from_dict({**options, "store": args.store, "out": args.out})
    assert (cfg.strategy, cfg.devices, cfg.accelerator, cfg.epochs) == ("ddp", "2", "gpu", 1)
    assert cfg.limit_train_batches == gpu_check.GPU_SIZES.ddp_batches and cfg.batch_size == 32 and cfg.width == 64


def test_the_train_summary_is_read_from_its_output() -> None:
    out = 'Epoch 0 ...\n{\n  "global_step": 6,\n  "seconds": 12.5\n}\nlog {not json}\n{"global_step": 6, "seconds": 12.4}\n'
    assert gpu_check._last_json(out) == {"global_step": 6, "seconds": 12.4}
    assert gpu_check._last_json("no summary\n") is None


def test_summary_says_why_a_field_is_missing() -> None:
    stages = {
        "environment": {"status": "ok", "device": "cuda", "gpu_name": "X", "gpu_count": 1, "precision": "bf16", "peak_memory_gib": 1.0},
        "peak": {"status": "ok", "matmul_tflops": 500.0, "conv3x3_tflops": 400.0, "peak_memory_gib": 2.0},
        "train": {"status": "timeout", "reason": "ran past its budget of 100 s", "gflop_per_slice_forward": 84.6, "slices_per_s": 1000.0,
                  "tflops": 254.0, "peak_memory_gib": 30.0},
    }
    summary, missing = gpu_check.summarise(stages, "gpu")
    assert summary["train_fraction_of_matmul_peak"] == pytest.approx(254.0 / 500.0)
    assert summary["peak_gpu_memory_gib"] == 30.0 and summary["train_peak_gpu_memory_gib"] == 30.0
    assert summary["train_slices_per_s"] == 1000.0  # kept from the stage that timed out
    assert "stage train timeout: ran past its budget" in missing["train_loader_fed_slices_per_s"]
    assert missing["predict_s"] == "stage predict did not run"
    assert set(missing) == {k for k, v in summary.items() if v is None}
    only_train = gpu_check.summarise({"train": {"status": "ok", "tflops": 1.0}}, "gpu")[1]
    assert only_train["train_fraction_of_conv_peak"] == "peak_conv3x3_tflops is missing: stage peak did not run"


def _fake_ctx(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(tiny=True, cuda=False, deadline=time.monotonic() + 60, stage_end=0.0, work=tmp_path)


def test_a_stage_past_its_budget_keeps_what_it_measured(tmp_path: Path, monkeypatch) -> None:
    def slow(ctx: Any, rec: dict[str, Any]) -> None:
        rec["first_number"] = 1.5
        time.sleep(10)
        rec["never"] = True

    def broken(ctx: Any, rec: dict[str, Any]) -> None:
        raise ValueError("bad\nthing")

    monkeypatch.setattr(gpu_check, "STAGE_FUNCTIONS", {"train": slow, "predict": broken})
    monkeypatch.setattr(gpu_check, "STAGE_BUDGET_S", {"train": 0.3, "predict": 5})
    report = gpu_check.Report(tmp_path, "tiny", gpu_check.TINY_SIZES, [])
    ctx = _fake_ctx(tmp_path)
    t0 = time.perf_counter()
    gpu_check.run_stage(report, ctx, "train")
    assert time.perf_counter() - t0 < 5
    gpu_check.run_stage(report, ctx, "predict")
    saved = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())["stages"]
    assert saved["train"]["status"] == "timeout" and saved["train"]["first_number"] == 1.5 and "never" not in saved["train"]
    assert saved["predict"]["status"] == "failed" and saved["predict"]["reason"] == "ValueError: bad thing"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_sigterm_saves_the_results_so_far(tmp_path: Path, monkeypatch, capsys) -> None:
    def ok(ctx: Any, rec: dict[str, Any]) -> None:
        rec["value"] = 2.0

    def terminated(ctx: Any, rec: dict[str, Any]) -> None:
        rec["partial"] = 3.0
        os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` sends at the hard cap
        time.sleep(5)

    fakes = dict.fromkeys(gpu_check.STAGES, ok)
    fakes["train"] = terminated
    monkeypatch.setattr(gpu_check, "STAGE_FUNCTIONS", fakes)
    before = signal.getsignal(signal.SIGTERM)
    rc = gpu_check.main(["--tiny", "--out", str(tmp_path)])
    assert rc == 124 and signal.getsignal(signal.SIGTERM) is before
    data = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert data["status"] == "interrupted" and data["finished"]
    assert [data["stages"][s]["status"] for s in ("environment", "peak", "store")] == ["ok", "ok", "ok"]
    assert data["stages"]["train"]["status"] == "interrupted" and data["stages"]["train"]["partial"] == 3.0
    assert "data_path" not in data["stages"]
    assert "interrupted" in capsys.readouterr().out


def test_a_worker_error_after_sigterm_counts_as_the_interrupt(tmp_path: Path, monkeypatch) -> None:
    def worker_died(ctx: Any, rec: dict[str, Any]) -> None:
        gpu_check._TERMINATING["set"] = True  # the handler ran, but a killed worker's error came first
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated")

    monkeypatch.setattr(gpu_check, "STAGE_FUNCTIONS", {"data_path": worker_died})
    monkeypatch.setitem(gpu_check._TERMINATING, "set", False)
    report = gpu_check.Report(tmp_path, "tiny", gpu_check.TINY_SIZES, [])
    with pytest.raises(gpu_check.Terminated):
        gpu_check.run_stage(report, _fake_ctx(tmp_path), "data_path")
    assert report.stages["data_path"]["status"] == "interrupted" and "killed by signal" in report.stages["data_path"]["reason"]


def test_out_defaults_to_the_env_var(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OUT", str(tmp_path / "o"))
    assert gpu_check.default_out() == tmp_path / "o"
    monkeypatch.delenv("OUT")
    assert gpu_check.default_out() == BENCH / "results"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_wrapper_parses_and_never_reinstalls_torch(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True)
    env = {**_env_without_out(), "PYTHON": sys.executable, "OUT": str(tmp_path / "res")}
    proc = subprocess.run(["bash", str(WRAPPER), "--plan", "--only", "peak"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "is installed; it is kept as it is" in proc.stdout
    assert "torch==" not in proc.stdout  # torch is there: no pip command names it
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("plan: timeout") and f"--out {tmp_path / 'res'}" in last and last.endswith("--only peak")
    assert not (tmp_path / "res").exists()  # --plan changes nothing


def test_measure_counts_every_timed_call() -> None:
    calls: list[int] = []
    sizes = gpu_check.dataclasses.replace(gpu_check.TINY_SIZES, max_steps=None, warmup=2, measure_s=0.05)
    ctx = SimpleNamespace(sizes=sizes, sync=lambda: None, seconds_left=lambda: 60.0)
    iters, secs = gpu_check.measure(ctx, calls.append)
    assert calls[:2] == [0, 1] and len(calls) == iters + 2 and calls == list(range(iters + 2))
    assert secs >= 0.05
    calls.clear()
    assert gpu_check.measure(ctx, calls.append, max_iters=3)[0] == 3 and len(calls) == 5
    calls.clear()
    ctx.sizes = gpu_check.dataclasses.replace(sizes, warmup_s=0.03)  # warm-up by time too (GPU clocks)
    iters, _ = gpu_check.measure(ctx, calls.append, max_iters=3)
    assert iters == 3 and len(calls) > 5 and calls == list(range(len(calls)))


@pytest.mark.slow  # about 20 s on an idle 2-core machine: one tiny leave-one-scan-out fold (Lightning, SMALL phantoms)
def test_tiny_real_ct_stage_writes_its_results_into_the_same_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--only", "real_ct", "--real-ct", gpu_check.REAL_CT_SYNTHETIC, "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=_env_without_out(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / gpu_check.JSON_NAME).read_text())
    assert list(data["stages"]) == ["environment", "real_ct"] and data["status"] == "complete"
    rec = data["stages"]["real_ct"]
    assert rec["status"] == "ok", (rec.get("reason"), rec.get("traceback"))
    assert rec["recipe"] == "configs/real_ct.yaml" and rec["lesion_dir"]
    assert rec["budget"] == {"width": 4, "batch": 4, "slices_per_fold": 16}  # the tiny overrides of the GPU recipe
    (fold,) = rec["folds"]
    assert fold["crops_excluded"] == [fold["held_out"]] and fold["slices_seen"] > 0
    s = rec["summary"]
    assert s["cases"] == 1
    for key in ("dice_mean", "dice_median", "dice_q10", "dice_pooled", "lesion_sensitivity", "false_positive_lesions_per_scan"):
        assert isinstance(s[key], (int, float)), key
    assert s["dice_median"] == pytest.approx(fold["dice"]) and "pooled" in s["dice_pooled_label"]
    assert [b["band"] for b in s["lesion_size_bands"]] == ["<10 mm", "10-20 mm", "20-30 mm", ">30 mm"]
    assert s["lesion_froc"] is not None and 0.0 <= s["lesion_froc"]["cpm"] <= 1.0


def test_real_ct_stage_needs_its_folder(tmp_path: Path) -> None:
    assert gpu_check.main(["--tiny", "--only", "real_ct", "--out", str(tmp_path)]) == 2  # no --real-ct DIR
    ctx = SimpleNamespace(tiny=False, work=tmp_path)
    with pytest.raises(gpu_check.Skip, match="make_gpu_data.py"):
        gpu_check.real_ct_inputs(ctx, str(tmp_path / "missing"))  # type: ignore[arg-type]
    with pytest.raises(gpu_check.Skip, match="tiny"):
        gpu_check.real_ct_inputs(ctx, gpu_check.REAL_CT_SYNTHETIC)  # type: ignore[arg-type]
    (tmp_path / "d" / "pairs").mkdir(parents=True)
    (tmp_path / "d" / "pairs" / "A_ct.nii.gz").touch()
    assert gpu_check.real_ct_inputs(ctx, str(tmp_path / "d")) == (tmp_path / "d" / "pairs", None)  # type: ignore[arg-type]


def test_lever_variants_are_each_lever_alone_then_all_combined() -> None:
    variants = {v["name"]: v for v in gpu_check.lever_variants(32)}
    assert list(variants) == ["baseline", "transpose", "fused_adam", "batch_lr_scaled", "compile", "combined"]  # compiles last
    base = variants["baseline"]
    assert (base["upsample"], base["compile"], base["fused"], base["batch"], base["lr"]) == ("bilinear", False, False, 32, 1e-4)
    for name, changed in (("transpose", "upsample"), ("fused_adam", "fused"), ("compile", "compile")):
        assert [k for k in base if base[k] != variants[name][k] and k != "name"] == [changed]
    assert variants["batch_lr_scaled"]["batch"] == 128 and variants["batch_lr_scaled"]["lr"] == pytest.approx(4e-4)  # linear LR scaling
    combined = variants["combined"]
    assert (combined["upsample"], combined["compile"], combined["fused"], combined["batch"]) == ("transpose", True, True, 128)


def check_levers_and_cohort_stages(data: dict) -> None:
    """The lever and cohort stages of a tiny run (run inside the default tiny run's test: one run, one worker)."""
    levers, cohort = data["stages"]["train_levers"], data["stages"]["cohort"]
    assert levers["status"] == "ok" and cohort["status"] == "ok", (levers.get("traceback"), cohort.get("traceback"))
    for name in gpu_check.LEVER_NAMES:
        if name in gpu_check.COMPILED_LEVERS:
            assert levers[f"{name}_slices_per_s"] is None and "CUDA only" in levers[f"{name}_slices_per_s_reason"]
        else:
            assert levers[f"{name}_slices_per_s"] > 0 and levers[f"{name}_tflops"] > 0
    assert levers["baseline_speedup"] == pytest.approx(1.0)
    assert "--compile on --fused-adam on" in levers["train_command_of_combined"]
    assert cohort["scans"] == 2 and cohort["same_outputs"] is True
    for key in ("per_scan_workers_0", "per_scan_workers_n"):
        assert [set(r) >= {"read", "lungs", "grid", "model", "back", "write", "report"} for r in cohort[key]] == [True, True]
    summary = data["summary"]
    assert summary["cohort_pipelined_vs_read_alone"] == pytest.approx(cohort["pipelined_vs_read_alone"])
    assert summary["levers_transpose_slices_per_s"] == levers["transpose_slices_per_s"]
