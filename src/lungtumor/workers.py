"""Worker processes next to torch: one way to start them, for every pool of the package.

``fork`` after torch has started threads can deadlock, and ``spawn`` re-imports torch in every
worker (seconds each). A fork server that has imported torch and the caller's module once forks
ready workers from a single-threaded process (measured in :mod:`lungtumor.preprocessing.store`).
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any


def pool_context(preload: str) -> Any:
    """A fork server preloaded with torch and the module ``preload`` (its workers start in
    milliseconds), else spawn; never a plain fork of a process whose torch has started threads."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", preload])
        return ctx
    return mp.get_context("spawn")


def single_threaded() -> None:
    """Worker initialiser: parallelism is over cases or scans, so one torch thread per worker
    leaves the cores to the other workers (and to the model) instead of oversubscribing them."""
    import torch

    torch.set_num_threads(1)
