"""GPU check: one prepared run that measures lungtumor on a GPU machine within a fixed time cap.

Stages (each with its own time budget; results are written after every stage, so a run cut
short by its budget or by the outer ``timeout`` of ``benchmarks/gpu_check.sh`` still leaves
everything measured so far):

1. ``environment``: GPU, driver, CUDA, cuDNN, torch and package versions, bf16 support.
2. ``peak``: the device's own bf16 ceiling, measured now: a large bf16 matmul and 3x3
   convolutions (channels-last, bf16) at the shapes of the seed U-Net's levels.
3. ``store``: a small slice store from phantom cases (``lungtumor.phantom`` +
   ``preprocess_task``), the seed recipe at the model's slice size.
4. ``train``: training throughput of the seed U-Net (width 64, 256x256, batch 32 or what fits),
   bf16 autocast, channels-last, the seed's augmentation on the device
   (``lungtumor.training.augment.augment_batch``), Adam, BCE: on batches already on the device,
   without augmentation, with ``cudnn.benchmark``, and fed by the project's DataLoader. Reported
   in slices/s and as achieved TFLOP/s (``flops_per_slice``, forward + backward = 3x forward)
   against the measured peaks.
5. ``data_path``: slices/s the project's DataLoader delivers from the store (default and more
   workers; alone and with transfer + augmentation on the device) against what the model consumes.
6. ``predict``: whole-CT prediction of a FULL phantom scan (512x512, 100-300 slices) with a
   freshly initialised seed U-Net loaded through the checkpoint path
   (``lungtumor.model.checkpoint.load_model``), ``lungtumor.inference.predictor.segment``, cold and
   warm, and the forward pass alone.
4b. ``train_levers`` (issue 17 section 2): the training step of stage 4 with each speed lever of
   ``lungtumor train`` side by side, on the same batches: baseline (bilinear, eager, Adam, batch
   B), transposed upsampling, ``torch.compile`` (``--compile on``), fused Adam, batch 4B with the
   learning rate scaled linearly (``--lr-scale-batch B``), and all of them combined; slices/s,
   TFLOP/s and the fraction of the measured bf16 matmul peak each, and the speed-up over the
   baseline. The compiled variants run last (their first steps compile) and only on CUDA.
4c. ``train_lightning`` (issue 17's target: >= 45 % of the bf16 peak with the project's own
   loop): ``SegmentationModule`` + the store's DataModule + a Lightning Trainer (bf16-mixed,
   augmentation on the device) with all levers combined, then with none; slices/s between the
   first timed batch and the last (a callback), TFLOP/s and the fraction of the peak.
6b. ``cohort`` (issue 17 section 3): ``predict_path`` on a folder of FULL phantom scans with a
   lung-preset U-Net (the default width), with 0 and N ``--workers``, against reading the same
   files alone (``benchmarks/bench_cohort.py``): scans per minute and each scan's time split.
7. ``ddp``: a few steps of ``lungtumor train --strategy ddp --devices 2`` where two GPUs are
   visible, else recorded as skipped.

Peak GPU memory (``torch.cuda.max_memory_allocated``) is recorded per stage.

Optional, with ``--real-ct DIR`` (``DIR`` from ``benchmarks/make_gpu_data.py``: ``pairs/`` with the real
scans cut to their lungs + 12 mm, ``crops/`` with nodule crops): ``real_ct``, the leave-one-scan-out
benchmark of ``benchmarks/bench_nodules.py`` with ``configs/real_ct.yaml`` at its GPU budget (64,000
slices at width 64 per fold) with the crops and the recipe's 7 phantom scans in training (built once), under ``REAL_CT_BUDGET_S``; its results (per
held-out scan, per-case Dice mean / median / 10th percentile, pooled Dice, size-band sensitivity, FP
per scan, lesion FROC / CPM) go into the same JSON under ``stages.real_ct``. A fold is not started
when the time left is shorter than the last fold took. ``--tiny --real-ct synthetic`` runs the stage on
tiny synthetic scans and crops (the test suite).

``--tiny`` is a CPU mode (width 4, 32x32, a couple of steps, SMALL phantoms, seconds) that the
test suite runs so that this script cannot rot; GPU-only numbers are then None with a reason.

Run: ``bash benchmarks/gpu_check.sh`` (sets up the environment, hard cap) or
``python benchmarks/gpu_check.py [--tiny] [--out DIR] [--only peak,train] [--deadline-s S]``.
Results: ``gpu_check.json`` and ``gpu_check.txt`` in ``--out`` (default ``$OUT`` if set, else
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = "lungtumor-gpu-check/1"
JSON_NAME = "gpu_check.json"
TEXT_NAME = "gpu_check.txt"
GIB = 2**30
TERA = 1e12
GIGA = 1e9
#: Stages in the order they run.
STAGES = ("environment", "peak", "store", "train", "train_levers", "train_lightning", "data_path", "predict", "cohort", "ddp")
#: Seconds each stage may take at most (GPU mode); the whole run is also held to ``--deadline-s``.
STAGE_BUDGET_S = {"environment": 30, "peak": 45, "store": 60, "train": 100, "data_path": 50, "predict": 90, "ddp": 150}
#: The optional real-CT stage (``--real-ct DIR``): runs after the others, with its own budget added to the deadline.
OPTIONAL_STAGES = ("real_ct",)
REAL_CT_BUDGET_S = 290
STAGE_BUDGET_S["real_ct"] = REAL_CT_BUDGET_S
#: Issue 17's stages (levers: two compiles of the seed U-Net; cohort: FULL phantoms, two folder runs).
STAGE_BUDGET_S.update({"train_levers": 200, "train_lightning": 150, "cohort": 120})
#: Seconds kept back from the deadline when a stage's budget is cut to what is left.
DEADLINE_RESERVE_S = 3.0
#: Default driver deadline in GPU mode (the shell wrapper passes what its hard cap leaves).
DEFAULT_DEADLINE_S = 450.0
#: Stages no shorter than this are started at all when the deadline is near.
MIN_STAGE_S = 5.0
#: Seconds between device synchronisations inside a timed loop.
SYNC_INTERVAL_S = 0.05
#: torch threads in the tiny CPU mode.
TINY_THREADS = 1
#: The DataLoader workers ``lungtumor train`` uses by default (TrainConfig.num_workers).
DEFAULT_TRAIN_WORKERS = 2

#: The flat results, in the order of the text summary: name -> what it is.
SUMMARY_FIELDS: dict[str, str] = {
    "device": "device measured (cuda or cpu)",
    "gpu_name": "GPU model",
    "gpu_count": "CUDA GPUs visible",
    "precision": "training/inference precision",
    "peak_matmul_tflops": "bf16 matmul peak, TFLOP/s (measured)",
    "peak_conv3x3_tflops": "bf16 3x3 conv peak over the U-Net's level shapes, TFLOP/s (measured)",
    "model_gflop_per_slice_forward": "seed U-Net forward GFLOP per slice",
    "model_gflop_per_slice_train": "forward + backward (3x forward) GFLOP per slice",
    "train_batch": "training batch (slices)",
    "train_slices_per_s": "training, batches on the device, augmentation on the device (slices/s)",
    "train_tflops": "training achieved TFLOP/s",
    "train_fraction_of_matmul_peak": "training TFLOP/s / bf16 matmul peak",
    "train_fraction_of_conv_peak": "training TFLOP/s / bf16 conv3x3 peak",
    "train_no_augment_slices_per_s": "training without augmentation (slices/s)",
    "train_cudnn_benchmark_slices_per_s": "training with torch.backends.cudnn.benchmark = True (slices/s)",
    "train_loader_fed_slices_per_s": "training fed by the DataLoader (default workers), end to end (slices/s)",
    "data_path_slices_per_s": "DataLoader alone, default workers (slices/s)",
    "data_path_many_workers_slices_per_s": "DataLoader alone, more workers (slices/s)",
    "data_path_to_device_slices_per_s": "DataLoader + transfer + augmentation on the device (slices/s)",
    "data_path_headroom": "DataLoader slices/s / training slices/s (>1: the model never waits)",
    "predict_ct_shape": "CT predicted (voxels)",
    "predict_slices_through_model": "slices through the model",
    "predict_first_call_s": "segment(), first call (cold), seconds",
    "predict_s": "segment(), warm, seconds",
    "predict_slices_per_s": "segment(), warm, slices/s",
    "predict_forward_s": "forward pass alone (predict_slices), seconds",
    "peak_gpu_memory_gib": "max torch.cuda.max_memory_allocated over the stages (GiB)",
    "train_peak_gpu_memory_gib": "peak GPU memory of the training stage (GiB)",
    "ddp_status": "2-GPU DDP step: ok, skipped or failed",
    "ddp_global_step": "optimizer steps the DDP run made",
    "ddp_wall_s": "wall seconds of the DDP run (process start to exit)",
}


#: Issue 17's summary fields (stages train_levers and cohort).
LEVER_NAMES = ("baseline", "transpose", "compile", "fused_adam", "batch_lr_scaled", "combined")
#: Lever variants that torch.compile the U-Net: CUDA only (on a CPU one compile of the tiny U-Net took 262 s under load).
COMPILED_LEVERS = ("compile", "combined")
#: The large batch of the levers, as a multiple of the training batch (32 -> 128 on a GPU).
LEVER_BATCH_FACTOR = 4
SUMMARY_FIELDS.update({f"levers_{name}_slices_per_s": f"training step, lever {name} (slices/s; stage train_levers)" for name in LEVER_NAMES})
SUMMARY_FIELDS.update({
    "levers_baseline_tflops": "training step, baseline, achieved TFLOP/s",
    "levers_combined_tflops": "training step, all levers combined, achieved TFLOP/s",
    "levers_baseline_fraction_of_matmul_peak": "baseline TFLOP/s / bf16 matmul peak",
    "levers_combined_fraction_of_matmul_peak": "all levers combined TFLOP/s / bf16 matmul peak (target >= 0.45)",
    "lightning_combined_slices_per_s": "the project's Lightning loop, all levers combined (slices/s)",
    "lightning_combined_tflops": "the project's Lightning loop, all levers combined, TFLOP/s",
    "lightning_combined_fraction_of_matmul_peak": "the Lightning loop, all levers, TFLOP/s / bf16 matmul peak (issue 17 target >= 0.45)",
    "lightning_baseline_slices_per_s": "the project's Lightning loop, no lever (slices/s)",
    "cohort_scans": "scans in the cohort folder",
    "cohort_read_alone_scans_per_min": "reading the folder's files alone (scans/min)",
    "cohort_workers_0_scans_per_min": "predict on the folder, --workers 0 (scans/min)",
    "cohort_workers_n_scans_per_min": "predict on the folder, --workers N (scans/min)",
    "cohort_pipelined_vs_read_alone": "wall of predict --workers N / reading alone (target <= 2)",
    "cohort_same_outputs": "outputs with and without workers identical",
})


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode.

    Attributes:
        width: U-Net base width.
        size: slice size in pixels (square).
        batch: training batch (halved on out-of-memory).
        matmul_n: square matmul size of the peak measurement.
        measure_s: seconds each throughput measurement runs for (after warm-up).
        warmup: untimed iterations before each measurement.
        warmup_s: and at least this many seconds of them (a GPU's clocks ramp up from idle).
        max_steps: most timed iterations per measurement (None = until ``measure_s``).
        cases: phantom cases of the store (the last one is validation).
        predict_phantom: phantom size of the whole-CT prediction.
        predict_batch: slices per forward pass in prediction.
        workers: DataLoader workers (default, many).
        ddp_batches: training batches of the DDP run.
    """

    width: int
    size: int
    batch: int
    matmul_n: int
    measure_s: float
    warmup: int
    warmup_s: float
    max_steps: int | None
    cases: int
    predict_phantom: str
    predict_batch: int
    workers: tuple[int, int]
    ddp_batches: int


GPU_SIZES = Sizes(
    width=64, size=256, batch=32, matmul_n=8192, measure_s=6.0, warmup=3, warmup_s=0.5, max_steps=None, cases=6,
    predict_phantom="FULL", predict_batch=32, workers=(DEFAULT_TRAIN_WORKERS, 8), ddp_batches=6,
)
TINY_SIZES = Sizes(
    width=4, size=32, batch=4, matmul_n=256, measure_s=0.2, warmup=1, warmup_s=0.0, max_steps=2, cases=2,
    predict_phantom="SMALL", predict_batch=8, workers=(0, 1), ddp_batches=2,
)


class StageTimeout(BaseException):
    """A stage ran past its budget (raised from SIGALRM). A BaseException: no ``except Exception`` swallows it."""


class Terminated(BaseException):
    """The process got SIGTERM (the outer ``timeout``): save what there is and stop."""


#: Set by the SIGTERM handler. ``timeout`` signals the whole process group, so a DataLoader
#: worker may die first and its RuntimeError reach a stage before Terminated does.
_TERMINATING = {"set": False}


class Skip(Exception):
    """A stage that does not apply here; the message is the reason."""


# ------------------------------------------------------------------------------------------------
# Report


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


class Report:
    """The results of one run, saved as JSON and a short text summary after every change."""

    def __init__(self, out: Path, mode: str, sizes: Sizes, argv: list[str]) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "mode": mode,
            "status": "running",
            "started": _now(),
            "finished": None,
            "argv": argv,
            "sizes": dataclasses.asdict(sizes),
            "stages": {},
            "summary": {},
            "summary_missing": {},
        }

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data["stages"]

    def save(self) -> None:
        self.data["summary"], self.data["summary_missing"] = summarise(self.stages, self.data["mode"])
        self.out.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.out / JSON_NAME, json.dumps(self.data, indent=2, default=str) + "\n")
        _write_atomic(self.out / TEXT_NAME, text_summary(self.data))


#: Summary fields read straight from a stage's record: field -> (stage, key).
DIRECT_FIELDS: dict[str, tuple[str, str]] = {
    "device": ("environment", "device"),
    "gpu_name": ("environment", "gpu_name"),
    "gpu_count": ("environment", "gpu_count"),
    "precision": ("environment", "precision"),
    "peak_matmul_tflops": ("peak", "matmul_tflops"),
    "peak_conv3x3_tflops": ("peak", "conv3x3_tflops"),
    "model_gflop_per_slice_forward": ("train", "gflop_per_slice_forward"),
    "model_gflop_per_slice_train": ("train", "gflop_per_slice_train"),
    "train_batch": ("train", "batch"),
    "train_slices_per_s": ("train", "slices_per_s"),
    "train_tflops": ("train", "tflops"),
    "train_no_augment_slices_per_s": ("train", "no_augment_slices_per_s"),
    "train_cudnn_benchmark_slices_per_s": ("train", "cudnn_benchmark_slices_per_s"),
    "train_loader_fed_slices_per_s": ("train", "loader_fed_slices_per_s"),
    "data_path_slices_per_s": ("data_path", "loader_slices_per_s"),
    "data_path_many_workers_slices_per_s": ("data_path", "loader_many_workers_slices_per_s"),
    "data_path_to_device_slices_per_s": ("data_path", "to_device_augmented_slices_per_s"),
    "predict_ct_shape": ("predict", "ct_shape"),
    "predict_slices_through_model": ("predict", "slices_through_model"),
    "predict_first_call_s": ("predict", "first_call_s"),
    "predict_s": ("predict", "warm_s"),
    "predict_slices_per_s": ("predict", "warm_slices_per_s"),
    "predict_forward_s": ("predict", "forward_s"),
    "train_peak_gpu_memory_gib": ("train", "peak_memory_gib"),
    "ddp_status": ("ddp", "status"),
    "ddp_global_step": ("ddp", "global_step"),
    "ddp_wall_s": ("ddp", "wall_s"),
}
DIRECT_FIELDS.update({f"levers_{name}_slices_per_s": ("train_levers", f"{name}_slices_per_s") for name in LEVER_NAMES})
DIRECT_FIELDS.update({
    "levers_baseline_tflops": ("train_levers", "baseline_tflops"),
    "levers_combined_tflops": ("train_levers", "combined_tflops"),
    "lightning_combined_slices_per_s": ("train_lightning", "combined_slices_per_s"),
    "lightning_combined_tflops": ("train_lightning", "combined_tflops"),
    "lightning_baseline_slices_per_s": ("train_lightning", "baseline_slices_per_s"),
    "cohort_scans": ("cohort", "scans"),
    "cohort_read_alone_scans_per_min": ("cohort", "read_alone_scans_per_min"),
    "cohort_workers_0_scans_per_min": ("cohort", "workers_0_scans_per_min"),
    "cohort_workers_n_scans_per_min": ("cohort", "workers_n_scans_per_min"),
    "cohort_pipelined_vs_read_alone": ("cohort", "pipelined_vs_read_alone"),
    "cohort_same_outputs": ("cohort", "same_outputs"),
})
#: Summary fields computed from two others: field -> (numerator field, denominator field).
RATIO_FIELDS: dict[str, tuple[str, str]] = {
    "train_fraction_of_matmul_peak": ("train_tflops", "peak_matmul_tflops"),
    "train_fraction_of_conv_peak": ("train_tflops", "peak_conv3x3_tflops"),
    "data_path_headroom": ("data_path_slices_per_s", "train_slices_per_s"),
    "levers_baseline_fraction_of_matmul_peak": ("levers_baseline_tflops", "peak_matmul_tflops"),
    "levers_combined_fraction_of_matmul_peak": ("levers_combined_tflops", "peak_matmul_tflops"),
    "lightning_combined_fraction_of_matmul_peak": ("lightning_combined_tflops", "peak_matmul_tflops"),
}


def _stage_reason(stages: dict[str, dict[str, Any]], stage: str, key: str) -> str:
    """Why ``stages[stage][key]`` is missing: the stage's own note, its status, or that it did not run."""
    rec = stages.get(stage)
    if rec is None:
        return f"stage {stage} did not run"
    if rec.get(f"{key}_reason"):
        return str(rec[f"{key}_reason"])
    if rec.get("status") == "ok":
        return f"not measured in stage {stage}"
    return f"stage {stage} {rec.get('status')}: {rec.get('reason', '')}".strip()


def summarise(stages: dict[str, dict[str, Any]], mode: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The flat summary (every key of :data:`SUMMARY_FIELDS`) and, for each None value, why."""
    on_cpu = stages.get("environment", {}).get("device") == "cpu"
    gpu_only = f"no CUDA device ({mode} mode on the CPU): GPU-only"
    summary: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for field, (stage, key) in DIRECT_FIELDS.items():
        summary[field] = stages.get(stage, {}).get(key)
        if summary[field] is None:
            missing[field] = gpu_only if on_cpu and key in ("gpu_name", "peak_memory_gib") else _stage_reason(stages, stage, key)
    for field, (num, den) in RATIO_FIELDS.items():
        a, b = summary[num], summary[den]
        summary[field] = float(a) / float(b) if a is not None and b else None
        if summary[field] is None:
            missing[field] = f"{num if a is None else den} is missing: {missing.get(num if a is None else den, 'zero')}"
    memories = [rec["peak_memory_gib"] for rec in stages.values() if rec.get("peak_memory_gib") is not None]
    summary["peak_gpu_memory_gib"] = max(memories) if memories else None
    if summary["peak_gpu_memory_gib"] is None:
        missing["peak_gpu_memory_gib"] = gpu_only if on_cpu else "no stage recorded GPU memory"
    ordered = {field: summary[field] for field in SUMMARY_FIELDS}
    return ordered, {field: missing[field] for field in SUMMARY_FIELDS if field in missing}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_summary(data: dict[str, Any]) -> str:
    """A short human-readable summary of ``data``: the table, then why anything is missing."""
    lines = [f"lungtumor GPU check ({data['mode']} mode), {data['status']}, started {data['started']}"]
    env = data["stages"].get("environment", {})
    if env.get("machine"):
        lines.append(f"machine: {env['machine']}" + (f"; GPU: {env['gpu_name']}" if env.get("gpu_name") else ""))
    lines.append("stages: " + ", ".join(f"{k} {v.get('status')} ({v.get('seconds', 0):.1f} s)" for k, v in data["stages"].items()))
    for key, what in SUMMARY_FIELDS.items():
        lines.append(f"  {key:38s} {_fmt(data['summary'].get(key)):>30s}   {what}")
    for key, why in data["summary_missing"].items():
        lines.append(f"  - {key}: {why}")
    for name, rec in data["stages"].items():
        if rec.get("status") not in ("ok", "running", "skipped"):
            lines.append(f"{name}: {rec.get('status')}: {rec.get('reason', '')}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Timing helpers


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`StageTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def fire(signum: int, frame: Any) -> None:
        raise StageTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Context:
    """What the stages share: device, sizes, work folder, the store, the time limits."""

    def __init__(self, sizes: Sizes, tiny: bool, work: Path, deadline: float) -> None:
        self.sizes = sizes
        self.tiny = tiny
        self.work = work
        self.deadline = deadline
        if tiny:
            self.cuda = False  # the tiny mode is the CPU mode, whatever the machine has
        else:
            import torch

            self.cuda = torch.cuda.is_available()
        self.device_type = "cuda" if self.cuda else "cpu"
        self.bf16 = False
        self.store: Path | None = None
        #: The training batch that fitted (stage train); later stages use it.
        self.batch: int | None = None
        self.stage_end = deadline
        #: The measured bf16 matmul peak (stage peak), for the fractions of the lever stage.
        self.peak_matmul_tflops: float | None = None

    @property
    def device(self) -> Any:
        import torch

        return torch.device(self.device_type)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def seconds_left(self) -> float:
        return min(self.stage_end, self.deadline) - time.monotonic()


def measure(ctx: Context, fn: Callable[[int], Any], *, warmup: int | None = None, seconds: float | None = None,
            max_iters: int | None = None, share: float = 1.0) -> tuple[int, float]:
    """Run ``fn(i)`` ``warmup`` times (and ``sizes.warmup_s`` seconds) untimed, then for ``seconds``.

    The timed loop also stops at ``max_iters`` and before the stage's budget runs out (using at
    most ``share`` of what is left of it). Returns ``(iterations, seconds)``.
    """
    s = ctx.sizes
    warmup = s.warmup if warmup is None else warmup
    seconds = s.measure_s if seconds is None else seconds
    max_iters = s.max_steps if max_iters is None else max_iters
    for i in range(warmup):
        fn(i)
    ctx.sync()
    t_warm = time.perf_counter()
    while time.perf_counter() - t_warm < s.warmup_s:
        fn(warmup)
        warmup += 1
        ctx.sync()
    limit = min(seconds, max(0.0, ctx.seconds_left() - DEADLINE_RESERVE_S) * share)
    n, chunk, t0 = 0, 1, time.perf_counter()
    while True:
        # Synchronise only every `chunk` iterations (about SYNC_INTERVAL_S apart), so that short
        # kernels queue back to back as in real work instead of paying a round trip each.
        for _ in range(chunk):
            fn(warmup + n)
            n += 1
            if max_iters is not None and n >= max_iters:
                break
        ctx.sync()
        elapsed = time.perf_counter() - t0
        if (max_iters is not None and n >= max_iters) or elapsed >= limit:
            return n, elapsed
        chunk = max(1, min(int(SYNC_INTERVAL_S * n / elapsed), int((limit - elapsed) * n / elapsed) + 1)) if elapsed > 0 else 1


# ------------------------------------------------------------------------------------------------
# Stages


def stage_environment(ctx: Context, rec: dict[str, Any]) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from common import machine

    if ctx.tiny:
        # Tiny problems gain nothing from threads, and on a shared machine spinning OpenMP
        # threads cost 10-20x (measured: 0.45 s vs 0.02 s per width-4 step under load).
        torch.set_num_threads(TINY_THREADS)
    rec["machine"] = machine()
    rec["python"] = platform.python_version()
    rec["torch"] = torch.__version__
    rec["torch_cuda"] = torch.version.cuda
    rec["device"] = ctx.device_type
    rec["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rec["gpu_name"] = None
    versions: dict[str, str | None] = {}
    from importlib import metadata

    for dist in ("lungtumor", "lightning", "numpy", "scipy", "nibabel", "isal"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    rec["packages"] = versions
    try:
        import lungtumor

        rec["lungtumor_path"] = str(Path(lungtumor.__file__).resolve().parent)
    except ImportError as exc:
        rec["lungtumor_path"] = None
        raise RuntimeError(f"lungtumor does not import ({exc}); install it with `pip install -e .`") from exc
    from lungtumor.model.device import bf16_native

    ctx.bf16 = bf16_native(ctx.device_type)
    rec["bf16_native"] = ctx.bf16
    rec["precision"] = "bf16 autocast + channels-last" if ctx.bf16 else "float32 + channels-last"
    rec["cudnn_benchmark_default"] = bool(torch.backends.cudnn.benchmark)
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        rec["gpu_name"] = props.name
        rec["gpu_memory_gib"] = props.total_memory / GIB
        rec["gpu_capability"] = f"{props.major}.{props.minor}"
        rec["gpu_multiprocessors"] = props.multi_processor_count
        rec["cudnn"] = torch.backends.cudnn.version()
        rec["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if shutil.which("nvidia-smi"):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                q = "name,driver_version,memory.total,clocks.max.sm,power.limit"
                smi = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
                rec["nvidia_smi"] = smi.stdout.strip().splitlines()
    rec["torch_threads"] = torch.get_num_threads()
    rec["cpu_count"] = os.cpu_count()


def conv_shapes(sizes: Sizes) -> list[tuple[int, int, int]]:
    """(batch, channels, pixels) of the seed U-Net's 3x3 convolutions, one per level (c -> c)."""
    from lungtumor.model.unet import ModelConfig

    widths = ModelConfig(width=sizes.width).level_widths()
    return [(sizes.batch, c, sizes.size // 2**level) for level, c in enumerate(widths)]


def stage_peak(ctx: Context, rec: dict[str, Any]) -> None:
    import torch
    from torch.nn import functional as F

    dev = ctx.device
    dtype = torch.bfloat16 if ctx.bf16 else torch.float32
    rec["dtype"] = str(dtype).replace("torch.", "")
    n = ctx.sizes.matmul_n
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    iters, secs = measure(ctx, lambda _, a=a, b=b: a @ b, seconds=ctx.sizes.measure_s / 3, share=0.3)
    rec["matmul_n"] = n
    rec["matmul_tflops"] = ctx.peak_matmul_tflops = 2 * n**3 * iters / secs / TERA
    del a, b
    # cuDNN's default heuristic and, where there is cuDNN, its autotuner (benchmark=True): the peak
    # is the best of them, the default is what `lungtumor train` gets (it leaves benchmark off).
    modes = (False, True) if ctx.cuda else (False,)
    convs = []
    shapes = [(shape, bench) for shape in conv_shapes(ctx.sizes) for bench in modes]
    before = torch.backends.cudnn.benchmark
    try:
        for k, ((batch, c, px), bench) in enumerate(shapes):
            torch.backends.cudnn.benchmark = bench
            x = torch.randn(batch, c, px, px, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(c, c, 3, 3, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
            flop = 2 * batch * px * px * c * c * 9
            iters, secs = measure(ctx, lambda _, x=x, w=w: F.conv2d(x, w, padding=1), seconds=ctx.sizes.measure_s / 3,
                                  share=1.0 / (len(shapes) - k + 1))
            convs.append({"batch": batch, "channels": c, "pixels": px, "cudnn_benchmark": bench, "tflops": flop * iters / secs / TERA})
            rec["conv3x3"] = convs
            rec["conv3x3_tflops"] = max(cv["tflops"] for cv in convs)
            del x, w
    finally:
        torch.backends.cudnn.benchmark = before


def stage_store(ctx: Context, rec: dict[str, Any]) -> None:
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.phantom.dataset import write_phantom_dataset
    from lungtumor.preprocessing.store import preprocess_task

    t0 = time.perf_counter()
    task = write_phantom_dataset(ctx.work / "task", cases=ctx.sizes.cases, test_cases=0, size="SMALL", seed=0)
    rec["phantom_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    workers = 1 if ctx.tiny else min(ctx.sizes.cases, max(1, (os.cpu_count() or 1) // 2))
    summary = preprocess_task(task, ctx.work / "store", PreprocessConfig(preset="seed", size=ctx.sizes.size), SplitConfig(val_cases=1),
                              workers=workers, progress=False)
    rec["preprocess_s"] = time.perf_counter() - t0
    rec["cases"] = ctx.sizes.cases
    rec["phantom_size"] = "SMALL"
    rec["slice_size"] = ctx.sizes.size
    rec["slices"] = summary["slices"]
    ctx.store = ctx.work / "store"


def _device_pool(ctx: Context, n: int) -> tuple[Any, Any, str]:
    """``n`` (CT, mask) slices on the device: from the store where it was built, else synthetic."""
    import numpy as np
    import torch

    size = ctx.sizes.size
    if ctx.store is not None:
        from lungtumor.preprocessing.store import SliceStore

        store = SliceStore(ctx.store)
        cts, masks = [], []
        for case in store.splits["train"]:
            image, mask = store.arrays(case)
            cts.append(np.asarray(image, dtype=np.float32))
            masks.append(np.asarray(mask, dtype=np.float32))
        ct = np.concatenate(cts)
        mask = np.concatenate(masks)
        idx = np.linspace(0, ct.shape[0] - 1, n).round().astype(np.int64)  # spread over the cases
        return (torch.from_numpy(ct[idx][:, None]).to(ctx.device), torch.from_numpy(mask[idx][:, None]).to(ctx.device), "store")
    from lungtumor.config import HU_AIR, HU_SCALE

    gen = torch.Generator().manual_seed(0)
    ct = (HU_AIR + torch.rand(n, 1, size, size, generator=gen) * 2 * abs(HU_AIR)) / HU_SCALE  # air .. bone-like
    mask = (torch.rand(n, 1, size, size, generator=gen) > 0.95).float()
    return ct.to(ctx.device), mask.to(ctx.device), "synthetic (no store)"


class Trainer:
    """The seed's training step, as ``lungtumor train`` runs it: bf16 autocast, channels-last, augmentation on the device."""

    def __init__(self, ctx: Context, width: int) -> None:
        import torch

        from lungtumor.model.unet import ModelConfig, UNet
        from lungtumor.training.augment import AugmentConfig
        from lungtumor.training.losses import make_loss

        torch.manual_seed(0)
        self.ctx = ctx
        self.net = UNet(ModelConfig(width=width)).to(ctx.device).to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4)
        self.loss_fn = make_loss("bce")
        self.augment_cfg = AugmentConfig()
        self.gen = torch.Generator(device=ctx.device).manual_seed(0)

    def step(self, ct: Any, mask: Any, augment: bool = True) -> None:
        import torch

        from lungtumor.training.augment import augment_batch

        if augment:
            ct, mask = augment_batch(ct, mask, self.augment_cfg, generator=self.gen)
        ct = ct.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.ctx.bf16):
            loss = self.loss_fn(self.net(ct), mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _datamodule(ctx: Context, batch: int, workers: int) -> Any:
    from lungtumor.training.data import DataConfig, make_datamodule

    if ctx.store is None:
        raise Skip("no slice store (stage store did not finish)")
    return make_datamodule(ctx.store, DataConfig(batch_size=batch, num_workers=workers))


def _pool_steps(trainer: Trainer, ct: Any, mask: Any, batch: int) -> Callable[..., None]:
    """Step ``i`` trains on half ``i % 2`` of a pool of ``2 * batch`` slices on the device."""

    def run(i: int, augment: bool = True) -> None:
        lo = (i % 2) * batch
        trainer.step(ct[lo : lo + batch], mask[lo : lo + batch], augment=augment)

    return run


def stage_train(ctx: Context, rec: dict[str, Any]) -> None:
    import torch

    from lungtumor.model.unet import ModelConfig, flops_per_slice

    s = ctx.sizes
    cfg = ModelConfig(width=s.width)
    gflop = flops_per_slice(cfg, s.size, s.size) / GIGA
    rec.update(model=cfg.to_dict(), size=s.size, gflop_per_slice_forward=gflop, gflop_per_slice_train=3 * gflop,
               loss="bce", optimizer="Adam(lr=1e-4)", augmentation="AugmentConfig() (the seed's) on the device")
    batch = s.batch
    while True:
        try:
            trainer = Trainer(ctx, s.width)
            ct, mask, source = _device_pool(ctx, 2 * batch)
            rec["input"] = source
            run = _pool_steps(trainer, ct, mask, batch)
            iters, secs = measure(ctx, run, share=0.3)
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            rec.setdefault("out_of_memory_at_batch", []).append(batch)
            trainer = ct = mask = run = None
            torch.cuda.empty_cache()
            batch //= 2
    rec["batch"] = ctx.batch = batch
    rec["slices_per_s"] = iters * batch / secs
    rec["tflops"] = rec["slices_per_s"] * 3 * gflop * GIGA / TERA
    rec["timed_steps"] = iters

    iters, secs = measure(ctx, lambda i: run(i, augment=False), share=0.3)
    rec["no_augment_slices_per_s"] = iters * batch / secs

    # Augmentation alone (what it costs inside a step).
    from lungtumor.training.augment import augment_batch

    iters, secs = measure(ctx, lambda i: augment_batch(ct[:batch], mask[:batch], trainer.augment_cfg, generator=trainer.gen), share=0.2)
    rec["augment_alone_slices_per_s"] = iters * batch / secs

    if ctx.cuda:
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            iters, secs = measure(ctx, run, warmup=max(s.warmup, 5), share=0.3)
            rec["cudnn_benchmark_slices_per_s"] = iters * batch / secs
        finally:
            torch.backends.cudnn.benchmark = before
    else:
        rec["cudnn_benchmark_slices_per_s"] = None
        rec["cudnn_benchmark_slices_per_s_reason"] = "cuDNN is CUDA-only"

    # End to end: the project's DataLoader (default workers) -> device -> augmentation -> step.
    dm = _datamodule(ctx, batch, s.workers[0])
    it = _endless(dm.train_dataloader())

    def fed(_: int) -> None:
        ct_b, mask_b, _index = next(it)
        trainer.step(ct_b.to(ctx.device, non_blocking=True), mask_b.to(ctx.device, non_blocking=True))

    iters, secs = measure(ctx, fed, share=0.8)
    rec["loader_fed_slices_per_s"] = iters * batch / secs
    rec["loader_fed_workers"] = s.workers[0]


class LeverTrainer(Trainer):
    """Stage 4's training step with ``lungtumor train``'s speed levers: the U-Net's upsampling, its
    compile (:func:`lungtumor.training.module.compile_net`) and the optimiser
    (:func:`lungtumor.training.module.make_optimizer`), as the LightningModule applies them."""

    def __init__(self, ctx: Context, width: int, *, upsample: str, compile_net: bool, fused: bool, lr: float) -> None:
        import torch

        from lungtumor.model.unet import ModelConfig, UNet
        from lungtumor.training import module
        from lungtumor.training.augment import AugmentConfig
        from lungtumor.training.losses import make_loss

        torch.manual_seed(0)
        self.ctx = ctx
        self.net = UNet(ModelConfig(width=width, upsample=upsample)).to(ctx.device).to(memory_format=torch.channels_last)
        if compile_net:
            module.compile_net(self.net)
        self.opt = module.make_optimizer(self.net.parameters(), lr, fused=fused)
        self.loss_fn = make_loss("bce")
        self.augment_cfg = AugmentConfig()
        self.gen = torch.Generator(device=ctx.device).manual_seed(0)


def lever_variants(batch: int) -> list[dict[str, Any]]:
    """The lever variants of stage train_levers, eager ones first (a compile may run out the budget)."""
    large = LEVER_BATCH_FACTOR * batch
    base = {"upsample": "bilinear", "compile": False, "fused": False, "batch": batch, "lr": 1e-4}
    variants = {
        "baseline": base,
        "transpose": {**base, "upsample": "transpose"},
        "fused_adam": {**base, "fused": True},
        # --batch-size 4B --lr-scale-batch B: the learning rate grows with the batch (linear rule).
        "batch_lr_scaled": {**base, "batch": large, "lr": 1e-4 * large / batch},
        "compile": {**base, "compile": True},
        "combined": {"upsample": "transpose", "compile": True, "fused": True, "batch": large, "lr": 1e-4 * large / batch},
    }
    return [{"name": name, **variants[name]} for name in ("baseline", "transpose", "fused_adam", "batch_lr_scaled", "compile", "combined")]


def stage_train_levers(ctx: Context, rec: dict[str, Any]) -> None:
    import torch

    from lungtumor.model.unet import ModelConfig, flops_per_slice

    s = ctx.sizes
    batch = ctx.batch or s.batch
    variants = lever_variants(batch)
    rec["variants"] = variants
    rec["train_command_of_combined"] = (
        f"lungtumor train STORE --out RUN --upsample transpose --compile on --fused-adam on "
        f"--batch-size {LEVER_BATCH_FACTOR * batch} --lr-scale-batch {batch} --lr 1e-4"
    )
    pool_ct, pool_mask, source = _device_pool(ctx, 2 * LEVER_BATCH_FACTOR * batch)
    rec["input"] = source
    peak = ctx.peak_matmul_tflops
    seed_gflop = flops_per_slice(ModelConfig(width=s.width), s.size, s.size) / GIGA
    for k, v in enumerate(variants):
        name = v["name"]
        if v["compile"] and not ctx.cuda:
            why = "torch.compile is measured on CUDA only (a CPU compile of even the tiny U-Net takes minutes)"
            rec.update({f"{name}_slices_per_s": None, f"{name}_slices_per_s_reason": why, f"{name}_tflops_reason": why})
            continue
        try:
            trainer = LeverTrainer(ctx, s.width, upsample=v["upsample"], compile_net=v["compile"], fused=v["fused"], lr=v["lr"])
            run = _pool_steps(trainer, pool_ct, pool_mask, v["batch"])
            t0 = time.perf_counter()
            run(0)  # the first step (a compile's cost)
            ctx.sync()
            rec[f"{name}_first_step_s"] = time.perf_counter() - t0
            iters, secs = measure(ctx, run, share=1.0 / (len(variants) - k + 1))
        except torch.cuda.OutOfMemoryError as exc:
            why = f"out of memory at batch {v['batch']}: {str(exc).splitlines()[0][:200]}"
            rec.update({f"{name}_slices_per_s": None, f"{name}_slices_per_s_reason": why, f"{name}_tflops_reason": why})
            trainer = run = None
            torch.cuda.empty_cache()
            continue
        gflop = flops_per_slice(ModelConfig(width=s.width, upsample=v["upsample"]), s.size, s.size) / GIGA
        rec[f"{name}_slices_per_s"] = iters * v["batch"] / secs
        rec[f"{name}_tflops"] = rec[f"{name}_slices_per_s"] * 3 * gflop * GIGA / TERA
        rec[f"{name}_fraction_of_matmul_peak"] = rec[f"{name}_tflops"] / peak if peak else None
        # Counted with the seed network's FLOPs (transposed convolutions add 7.6 %): the same work per slice.
        rec[f"{name}_seed_equivalent_tflops"] = rec[f"{name}_slices_per_s"] * 3 * seed_gflop * GIGA / TERA
        base = rec.get("baseline_slices_per_s")
        rec[f"{name}_speedup"] = rec[f"{name}_slices_per_s"] / base if base else None
        trainer = run = None
        if ctx.cuda:
            torch.cuda.empty_cache()


def lightning_throughput(ctx: Context, lever: dict[str, Any], workers: int, seconds: float) -> tuple[int, float, float]:
    """Train with the project's loop (``SegmentationModule``, the store's DataModule, a Lightning
    Trainer, augmentation on the device) under ``lever``; returns (timed batches, seconds, first
    batches' seconds). Timing starts at the batch after warm-up and ends at the end of training."""
    import lightning as L

    from lungtumor.model.unet import ModelConfig
    from lungtumor.training.data import DataConfig, make_datamodule
    from lungtumor.training.module import SegmentationModule

    if ctx.store is None:
        raise Skip("no slice store (stage store did not finish)")
    s = ctx.sizes
    warmup = s.warmup + 1
    max_batches = warmup + (s.max_steps or 10**6)

    class Throughput(L.Callback):
        def __init__(self) -> None:
            self.t_start = time.perf_counter()
            self.t0: float | None = None
            self.t1: float | None = None
            self.batches = 0
            self.warm_s = 0.0

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup:
                ctx.sync()
                self.t0 = time.perf_counter()
                self.warm_s = self.t0 - self.t_start

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.t0 is None:
                return
            self.batches = batch_idx - warmup + 1
            if time.perf_counter() - self.t0 >= seconds or ctx.seconds_left() < 2 * DEADLINE_RESERVE_S + 5:
                trainer.should_stop = True

        def on_train_end(self, trainer: Any, module: Any) -> None:
            ctx.sync()
            self.t1 = time.perf_counter()

    batch = lever["batch"]
    dm = make_datamodule(ctx.store, DataConfig(batch_size=batch, num_workers=workers, samples_per_epoch=batch * max(max_batches, 10_000)))
    module = SegmentationModule(
        model=ModelConfig(width=s.width, upsample=lever["upsample"]).to_dict(), preprocess=dm.store.preprocess.to_dict(), lr=lever["lr"],
        image_every_n_steps=0, compile="on" if lever["compile"] else "off", fused_adam="on" if lever["fused"] else "off",
    )
    cb = Throughput()
    trainer = L.Trainer(
        accelerator="gpu" if ctx.cuda else "cpu", devices=1, precision="bf16-mixed" if ctx.bf16 else "32-true", max_epochs=1,
        limit_train_batches=max_batches, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[cb], use_distributed_sampler=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    if cb.t0 is None or cb.t1 is None or not cb.batches:
        raise RuntimeError("no batch was timed (training ended during the warm-up)")
    return cb.batches, cb.t1 - cb.t0, cb.warm_s


def stage_train_lightning(ctx: Context, rec: dict[str, Any]) -> None:
    import warnings

    from lungtumor.model.unet import ModelConfig, flops_per_slice

    s = ctx.sizes
    batch = ctx.batch or s.batch
    variants = {v["name"]: v for v in lever_variants(batch)}
    workers = s.workers[1]  # the many-worker loader: at 1,000+ slices/s the default 2 workers would be what the model waits for
    rec.update(loop="SegmentationModule + make_datamodule + lightning.Trainer (bf16-mixed where native), augmentation on the device",
               loader_workers=workers)
    peak = ctx.peak_matmul_tflops
    for name in ("combined", "baseline"):
        lever = dict(variants[name])
        if lever["compile"] and not ctx.cuda:
            lever["compile"] = False  # the tiny CPU mode: every lever but the compile
            rec[f"{name}_note"] = "without torch.compile (CUDA only)"
        rec[f"{name}_lever"] = lever
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice on workers and logging, not results
            batches, secs, warm_s = lightning_throughput(ctx, lever, workers, s.measure_s)
        gflop = flops_per_slice(ModelConfig(width=s.width, upsample=lever["upsample"]), s.size, s.size) / GIGA
        rec[f"{name}_batches_timed"] = batches
        rec[f"{name}_warmup_s"] = warm_s
        rec[f"{name}_slices_per_s"] = batches * lever["batch"] / secs
        rec[f"{name}_tflops"] = rec[f"{name}_slices_per_s"] * 3 * gflop * GIGA / TERA
        rec[f"{name}_fraction_of_matmul_peak"] = rec[f"{name}_tflops"] / peak if peak else None
        seed_tflops = rec[f"{name}_slices_per_s"] * 3 * flops_per_slice(ModelConfig(width=s.width), s.size, s.size)  / TERA
        rec[f"{name}_seed_equivalent_fraction_of_matmul_peak"] = seed_tflops / peak if peak else None


def stage_cohort(ctx: Context, rec: dict[str, Any]) -> None:
    sys.path.insert(0, str(HERE))
    import bench_cohort

    s = ctx.sizes
    n_scans, workers = (2, 1) if ctx.tiny else (4, max(1, min(4, (os.cpu_count() or 2) // 2)))
    size = "SMALL" if ctx.tiny else "FULL"
    t0 = time.perf_counter()
    paths = bench_cohort.write_scans(ctx.work / "cohort" / "in", n_scans, size)
    rec["phantom_s"] = time.perf_counter() - t0
    ckpt = bench_cohort.stub_lung_checkpoint(ctx.work / "cohort" / "lung.ckpt", s.width, empty=True)
    rec.update(phantom_size=size, width=s.width, preset="lung", note="random weights, empty masks: the report has no lesions")
    rows = bench_cohort.measure(ckpt, paths, ctx.work / "cohort", workers, report=True, device=ctx.device_type)
    rec.update(
        scans=rows["scans"], workers=workers, read_alone_s=rows["read_alone_s"], read_alone_scans_per_min=rows["read_alone_scans_per_min"],
        workers_0_scans_per_min=rows["workers_0"]["scans_per_min"], workers_n_scans_per_min=rows[f"workers_{workers}"]["scans_per_min"],
        pipelined_vs_read_alone=rows["pipelined_vs_read_alone"], same_outputs=rows["same_outputs"],
        per_scan_workers_0=rows["workers_0"]["per_scan"], per_scan_workers_n=rows[f"workers_{workers}"]["per_scan"],
    )


def stage_data_path(ctx: Context, rec: dict[str, Any]) -> None:
    import torch

    from lungtumor.training.augment import AugmentConfig, augment_batch

    s = ctx.sizes
    batch = ctx.batch or s.batch
    rec["batch"] = batch
    for key, workers, share in (("loader", s.workers[0], 0.3), ("loader_many_workers", s.workers[1], 0.45)):
        dm = _datamodule(ctx, batch, workers)
        t0 = time.perf_counter()
        it = _endless(dm.train_dataloader())
        next(it)
        rec[f"{key}_first_batch_s"] = time.perf_counter() - t0
        iters, secs = measure(ctx, lambda _, it=it: next(it), warmup=1, seconds=max(s.measure_s, 0.3), share=share)
        rec[f"{key}_slices_per_s"] = iters * batch / secs
        rec[f"{key}_workers"] = workers
        del it, dm
    dm = _datamodule(ctx, batch, s.workers[0])
    it = _endless(dm.train_dataloader())
    gen = torch.Generator(device=ctx.device).manual_seed(1)

    def to_device(_: int) -> None:
        ct, mask, _index = next(it)
        augment_batch(ct.to(ctx.device, non_blocking=True), mask.to(ctx.device, non_blocking=True), AugmentConfig(), generator=gen)

    iters, secs = measure(ctx, to_device, warmup=2, seconds=max(s.measure_s, 0.3), share=0.9)
    rec["to_device_augmented_slices_per_s"] = iters * batch / secs
    rec["store_slices"] = len(dm.train_set)
    rec["cpu_count"] = os.cpu_count()


def write_seed_checkpoint(path: Path, width: int, size: int) -> None:
    """A checkpoint of a freshly initialised seed U-Net, in the format ``lungtumor train`` writes."""
    import torch

    from lungtumor.config import PreprocessConfig
    from lungtumor.model.checkpoint import NET_PREFIX, checkpoint_metadata
    from lungtumor.model.unet import ModelConfig, UNet

    torch.manual_seed(0)
    cfg = ModelConfig(width=width)
    net = UNet(cfg)
    state = {NET_PREFIX + k: v for k, v in net.state_dict().items()}
    meta = checkpoint_metadata(cfg.to_dict(), PreprocessConfig(preset="seed", size=size).to_dict(), 0, loss="bce", threshold=0.5)
    torch.save({"state_dict": state, "lungtumor": meta, "epoch": 0, "global_step": 0}, path)


def stage_predict(ctx: Context, rec: dict[str, Any]) -> None:
    from lungtumor.inference.predictor import predict_slices, segment
    from lungtumor.model.checkpoint import load_model
    from lungtumor.phantom.dataset import make_case
    from lungtumor.preprocessing.grid import fit_grid

    s = ctx.sizes
    t0 = time.perf_counter()
    ct, _ = make_case(0, s.predict_phantom)
    rec["phantom_s"] = time.perf_counter() - t0
    rec["phantom_size"] = s.predict_phantom
    rec["ct_shape"] = list(ct.shape)
    path = ctx.work / "seed_unet.ckpt"
    write_seed_checkpoint(path, s.width, s.size)
    model = load_model(path, device=ctx.device)
    rec["model_source"] = "checkpoint (load_model)"
    rec["batch_size"] = s.predict_batch
    for key in ("first_call_s", "warm_s"):
        t0 = time.perf_counter()
        mask = segment(ct, model, device=ctx.device, batch_size=s.predict_batch)
        ctx.sync()
        rec[key] = time.perf_counter() - t0
    rec["mask_shape"] = list(mask.shape)
    rec["mask_affine_matches"] = bool((mask.affine == ct.affine).all())
    grid = fit_grid(ct, None, model.preprocess)
    slices = grid.image_to_slices(ct)
    rec["slices_through_model"] = int(slices.shape[0])
    rec["warm_slices_per_s"] = slices.shape[0] / rec["warm_s"]
    t0 = time.perf_counter()
    predict_slices(model, slices, device=ctx.device, batch_size=s.predict_batch)
    ctx.sync()
    rec["forward_s"] = time.perf_counter() - t0
    rec["forward_share_of_segment"] = rec["forward_s"] / rec["warm_s"]


def ddp_command(python: str, store: Path, run_dir: Path, sizes: Sizes, batch: int) -> list[str]:
    """The ``lungtumor train`` command line of the DDP stage (two GPUs, a few steps)."""
    return [
        python, "-m", "lungtumor.cli", "train", str(store), "--out", str(run_dir),
        "--accelerator", "gpu", "--devices", "2", "--strategy", "ddp",
        "--epochs", "1", "--limit-train-batches", str(sizes.ddp_batches), "--limit-val-batches", "2",
        "--batch-size", str(batch), "--width", str(sizes.width), "--num-workers", str(DEFAULT_TRAIN_WORKERS),
        "--image-every-n-steps", "0", "--no-progress",
    ]


def _last_json(text: str) -> dict[str, Any] | None:
    """The last JSON object printed in ``text`` (``lungtumor train`` prints its summary)."""
    decoder = json.JSONDecoder()
    found = None
    for m in re.finditer(r"^\{", text, flags=re.MULTILINE):
        with contextlib.suppress(ValueError):
            obj, _ = decoder.raw_decode(text[m.start() :])
            if isinstance(obj, dict):
                found = obj
    return found


def stage_ddp(ctx: Context, rec: dict[str, Any]) -> None:
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    batch = ctx.batch or ctx.sizes.batch
    rec["command"] = " ".join(ddp_command("python", Path("STORE"), Path("RUN"), ctx.sizes, batch))
    if ctx.tiny or visible < 2:
        raise Skip(f"needs 2 CUDA GPUs, {visible} visible" + (" (tiny CPU mode)" if ctx.tiny else ""))
    if ctx.store is None:
        raise RuntimeError("no slice store (stage store did not finish)")
    cmd = ddp_command(sys.executable, ctx.store, ctx.work / "ddp_run", ctx.sizes, batch)
    rec["command"] = " ".join(cmd)
    budget = max(MIN_STAGE_S, ctx.seconds_left() - 2 * DEADLINE_RESERVE_S)
    t0 = time.perf_counter()
    # Own process group: rank 0 starts rank 1; on a timeout both are ended together.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=budget)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        rec["wall_s"] = time.perf_counter() - t0
        raise
    rec["wall_s"] = time.perf_counter() - t0
    rec["returncode"] = proc.returncode
    rec["stderr_tail"] = err[-2000:]
    summary = _last_json(out)
    if summary:
        rec["global_step"] = summary.get("global_step")
        rec["fit_s"] = summary.get("seconds")
        rec["precision"] = summary.get("precision")
        rec["fit_note"] = "fit_s covers DDP set-up, the training batches, one validation pass and checkpointing"
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1] if err.strip() else ""
        raise RuntimeError(f"lungtumor train exited with {proc.returncode}: {tail[:300]}")


# ------------------------------------------------------------------------------------------------
# Optional stage: the real-CT recipe measured leave-one-scan-out (--real-ct DIR)

#: ``--real-ct`` value that makes tiny synthetic scans and crops instead of reading a folder.
REAL_CT_SYNTHETIC = "synthetic"
#: Seconds of the stage kept for the evaluation of all folds after the last one.
REAL_CT_RESERVE_S = 15.0


def real_ct_inputs(ctx: Context, source: str) -> tuple[Path, Path | None]:
    """(pairs folder, crops folder or None) of ``--real-ct``: a ``make_gpu_data.py`` folder, or tiny synthetic data."""
    import bench_nodules

    if source == REAL_CT_SYNTHETIC:
        if not ctx.tiny:
            raise Skip("--real-ct synthetic is for the tiny CPU mode; give make_gpu_data.py's folder on a GPU")
        data = ctx.work / "real_ct_data"
        return bench_nodules.write_tiny_scans(data / "pairs"), bench_nodules.write_tiny_crops(data / "crops", n=4)
    root = Path(source)
    pairs = root / "pairs"
    if not pairs.is_dir() or not any(pairs.glob("*_ct.nii.gz")):
        raise Skip(f"{root}: no pairs/<case>_ct.nii.gz; make it with `python benchmarks/make_gpu_data.py --out {root}`")
    crops = root / "crops"
    return pairs, crops if crops.is_dir() and any(crops.glob("*_ct.nii.gz")) else None


def stage_real_ct(ctx: Context, rec: dict[str, Any]) -> None:
    """Leave-one-scan-out with ``configs/real_ct.yaml`` at its GPU budget (tiny: width 4, a few steps, one fold)."""
    import bench_nodules

    source = getattr(ctx, "real_ct", None)
    if not source:
        raise Skip("no --real-ct DIR given")
    pairs, crops = real_ct_inputs(ctx, source)
    rec["recipe"] = str(bench_nodules.GPU_RECIPE.relative_to(ROOT))
    rec["lesion_dir"] = str(crops) if crops is not None else None
    if crops is None:
        rec["lesion_dir_note"] = "no crops/ in the folder: trained without --lesion-dir"
    overrides: dict[str, Any] = {"accelerator": "cpu"} if not ctx.cuda else {}
    held_outs = None
    if ctx.tiny:
        overrides.update(bench_nodules.TINY_OVERRIDES)
        held_outs = bench_nodules.real_cases(pairs)[:1]
    opts = bench_nodules.recipe_options(bench_nodules.GPU_RECIPE, overrides)
    rec["budget"] = {"width": opts.get("width"), "batch": opts.get("batch_size"),
                     "slices_per_fold": int(opts.get("epochs", 0)) * int(opts.get("samples_per_epoch") or 0)}

    def save(partial: dict[str, Any]) -> None:
        rec["folds"] = list(partial["folds"])

    report = bench_nodules.run_loso(
        ctx.work / "real_ct", bench_nodules.GPU_RECIPE, overrides, pairs_dir=pairs, crops_dir=crops, held_outs=held_outs,
        phantom_size="SMALL" if ctx.tiny else "FULL", deadline=ctx.stage_end - REAL_CT_RESERVE_S, on_fold=save,
    )
    rec.update({k: v for k, v in report.items() if k not in ("recipe", "overrides")})
    if not rec.get("folds"):
        raise Skip(report.get("stopped", "no fold finished"))


STAGE_FUNCTIONS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "environment": stage_environment,
    "peak": stage_peak,
    "store": stage_store,
    "train": stage_train,
    "train_levers": stage_train_levers,
    "train_lightning": stage_train_lightning,
    "data_path": stage_data_path,
    "predict": stage_predict,
    "cohort": stage_cohort,
    "ddp": stage_ddp,
    "real_ct": stage_real_ct,
}


def _torch_if(needed: bool) -> Any:
    """torch when ``needed`` (CUDA bookkeeping), else None: the bookkeeping itself imports nothing heavy."""
    if not needed:
        return None
    import torch

    return torch


def run_stage(report: Report, ctx: Context, name: str) -> None:
    """Run one stage under its budget; record ok / skipped / failed / timeout with its numbers so far."""
    torch = _torch_if(ctx.cuda)
    rec: dict[str, Any] = {"status": "running"}
    report.stages[name] = rec
    left = ctx.deadline - time.monotonic() - DEADLINE_RESERVE_S
    budget = min(STAGE_BUDGET_S[name], left)
    rec["budget_s"] = round(budget, 1)
    if not ctx.tiny and not ctx.cuda and name != "environment":
        # Full sizes on a CPU would take hours: the GPU mode measures nothing without a GPU.
        rec.update(status="skipped", reason="no CUDA device visible (use --tiny for the CPU mode)", seconds=0.0)
        report.save()
        return
    if budget < MIN_STAGE_S and not ctx.tiny:
        rec.update(status="skipped", reason=f"only {left:.0f} s left of the run's deadline", seconds=0.0)
        report.save()
        return
    report.save()
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    ctx.stage_end = time.monotonic() + budget
    t0 = time.perf_counter()
    try:
        with alarm(budget):
            STAGE_FUNCTIONS[name](ctx, rec)
        rec["status"] = "ok"
    except Skip as exc:
        rec.update(status="skipped", reason=str(exc))
    except StageTimeout as exc:
        rec.update(status="timeout", reason=str(exc))
    except Terminated:
        rec.update(status="interrupted", reason="the run was terminated (outer time cap)")
        raise
    except Exception as exc:
        if _TERMINATING["set"]:
            rec.update(status="interrupted", reason=f"the run was terminated (outer time cap); then {_one_line(exc)}")
            raise Terminated() from exc
        rec.update(status="failed", reason=_one_line(exc), traceback=traceback.format_exc()[-3000:])
    finally:
        rec["seconds"] = time.perf_counter() - t0
        rec["peak_memory_gib"] = torch.cuda.max_memory_allocated() / GIB if ctx.cuda else None
        if ctx.cuda:
            rec["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
            torch.cuda.empty_cache()
        report.save()


def default_out() -> Path:
    """``$OUT`` when set (the GPU machine's results folder), else ``benchmarks/results``."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU mode: tiny sizes, a width-4 model, 32x32, a couple of steps")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else benchmarks/results)")
    ap.add_argument("--only", default=None, help=f"comma-separated stages to run (of {','.join(STAGES)}; store is added where needed)")
    ap.add_argument("--deadline-s", type=float, default=None, help=f"seconds the whole run may take (default {DEFAULT_DEADLINE_S:.0f}; tiny: none)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (store, checkpoint, DDP run)")
    ap.add_argument("--real-ct", default=None, metavar="DIR",
                    help=f"also run the real-CT stage on make_gpu_data.py's folder (adds {REAL_CT_BUDGET_S} s; tiny mode: '{REAL_CT_SYNTHETIC}')")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    sizes = TINY_SIZES if a.tiny else GPU_SIZES
    stages = list(STAGES)
    if a.real_ct:
        stages.append("real_ct")
    if a.only:
        wanted = {x.strip() for x in a.only.split(",") if x.strip()}
        unknown = sorted(wanted - set(STAGES) - set(OPTIONAL_STAGES))
        if unknown:
            print(f"gpu_check: unknown stages {unknown}; choose from {', '.join(STAGES + OPTIONAL_STAGES)}", file=sys.stderr)
            return 2
        if "real_ct" in wanted and not a.real_ct:
            print("gpu_check: the real_ct stage needs --real-ct DIR (benchmarks/make_gpu_data.py's folder)", file=sys.stderr)
            return 2
        if wanted & {"train", "data_path", "ddp", "train_lightning"}:
            wanted.add("store")
        wanted.add("environment")
        stages = [st for st in stages if st in wanted]
    deadline_s = a.deadline_s if a.deadline_s is not None else (3600.0 if a.tiny else DEFAULT_DEADLINE_S + (REAL_CT_BUDGET_S if a.real_ct else 0))
    deadline = time.monotonic() + deadline_s
    out = a.out if a.out is not None else default_out()
    report = Report(out, "tiny" if a.tiny else "gpu", sizes, sys.argv[:1] + (argv if argv is not None else sys.argv[1:]))
    report.data["deadline_s"] = deadline_s

    def terminate(signum: int, frame: Any) -> None:
        _TERMINATING["set"] = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the final save short
        raise Terminated()

    _TERMINATING["set"] = False

    previous_term = signal.signal(signal.SIGTERM, terminate)
    work = Path(tempfile.mkdtemp(prefix="lungtumor_gpu_check_"))
    report.data["work"] = str(work)
    rc = 0
    try:
        ctx = Context(sizes, a.tiny, work, deadline)
        ctx.real_ct = a.real_ct  # type: ignore[attr-defined]  # the optional stage's input
        if not a.tiny and not ctx.cuda:
            report.data["no_gpu"] = "no CUDA device is visible; run with --tiny for the CPU mode"
        for name in stages:
            run_stage(report, ctx, name)
        report.data["status"] = "complete" if all(r.get("status") in ("ok", "skipped") for r in report.stages.values()) else "partial"
        if not a.tiny and not ctx.cuda:
            report.data["status"] = "no-gpu"
            rc = 1
    except Terminated:
        report.data["status"] = "interrupted"
        rc = 124
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        report.data["finished"] = _now()
        report.save()
        if not a.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(text_summary(report.data), end="")
    print(f"results: {out / JSON_NAME}, {out / TEXT_NAME}")
    if report.data.get("no_gpu"):
        print(f"gpu_check: {report.data['no_gpu']}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
