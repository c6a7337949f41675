"""Shared helpers of the benchmarks: machine description and timing."""

from __future__ import annotations

import ast
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def machine() -> str:
    """One line describing this machine (CPU model, cores, torch threads)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, torch {torch.__version__} ({torch.get_num_threads()} threads)"


@contextmanager
def timer(out: dict, key: str) -> Iterator[None]:
    """Adds the elapsed seconds of the block to ``out[key]``."""
    t0 = time.perf_counter()
    yield
    out[key] = out.get(key, 0.0) + time.perf_counter() - t0


def du(path: str | os.PathLike[str]) -> int:
    """Bytes of all files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def parse_set(items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` overrides (``--set``): VALUE as a Python literal where it is one, else the string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE, e.g. lr=0.002")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
