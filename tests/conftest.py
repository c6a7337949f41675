"""Shared fixtures: tiny volumes with several orientations, the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep the suite's thread use predictable on small CI machines. Under pytest-xdist (`make test`
# runs one worker per core) every worker, and every process it starts, uses one thread: two
# workers with two threads each on two cores oversubscribe them, which slows oneDNN several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

from helpers import REAL_DATA


@pytest.fixture
def real_data() -> Path:
    """The shared real CT folder, or skip."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA} (a fresh clone has no ../shared)")
    return REAL_DATA
