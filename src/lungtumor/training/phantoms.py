"""Synthetic scans beside the real ones: ``train --phantoms N`` adds N phantom chest CTs to the training cases.

With few real scans the model has few tumours to learn from, and none of the kind it is tested on
(two real training scans in the leave-one-scan-out benchmark: a nodule against two masses). The
phantoms (:mod:`lungtumor.phantom`: FULL-size chest CTs with lungs, vessels, airways and round
tumours of 3-60 mm) add tumours of every size in lung and against the pleura and mediastinum. Measured
leave-one-scan-out on the three shared real scans at the CPU recipe's budget (BENCHMARKS.md, "Nodule
benchmark" (f)): seven phantoms in training against none took the held-out nodule scan from Dice 0.00
to 0.75 with the last checkpoint.

The phantoms are generated once (:data:`PHANTOM_SEED`, so every run gets the same scans) into
``RUN/phantoms`` (or ``--phantom-dir``: ``cv`` builds them once for all its folds), preprocessed exactly
as the run's store (its :class:`~lungtumor.config.PreprocessConfig`; one store per size, count and
preprocessing, so a shared folder serves several stores),
and joined to it as training cases named ``phantom-<id>`` (:meth:`~lungtumor.preprocessing.store.SliceStore.joined`):
never validation cases, so the validation Dice and the best checkpoint stay the real cases' own. The
generated NIfTI files are deleted once the store holds them; a resumed run, or a second run with the
same ``--out``, reuses the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.errors import ConfigError, InputError
from lungtumor.preprocessing.store import SliceStore, preprocess_task
from lungtumor.runstate import exclusive_folder_lock
from lungtumor.training.options import PHANTOM_SIZES

log = logging.getLogger(__name__)

#: Prefix of the phantom cases' ids in the training split (and in the checkpoint's split record).
PHANTOM_PREFIX = "phantom-"
#: Seed of the phantom dataset: every run with ``--phantoms N`` trains on the same N scans.
PHANTOM_SEED = 7


def _complete(store: Path, n: int, preprocess: PreprocessConfig) -> bool:
    """True when ``store`` is a finished store of ``n`` cases built with ``preprocess``."""
    if not (store / "store.json").exists():
        return False
    try:
        s = SliceStore(store)
    except InputError:
        return False
    return len(s.manifest["cases"]) == n and s.preprocess.to_dict() == preprocess.to_dict()


def phantom_store(root: str | Path, n: int, preprocess: PreprocessConfig, *, size: str = "FULL", progress: bool = False) -> Path:
    """``root/store-<size>-<n>-<preprocessing hash>``: ``n`` phantom scans preprocessed with ``preprocess``, built
    unless already there (``root``: ``RUN/phantoms`` or ``--phantom-dir``).

    Raises:
        ConfigError: ``n`` < 1, an unknown ``size``, or another ``train`` is building the same folder now.
    """
    from lungtumor.phantom.dataset import write_phantom_dataset

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--phantoms {n}: must be a whole number >= 1 here (0 = off)")
    if size not in PHANTOM_SIZES:
        raise ConfigError(f"--phantom-size {size!r}: expected one of {', '.join(PHANTOM_SIZES)}")
    root = Path(root)
    key = hashlib.sha256(json.dumps(preprocess.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    store = root / f"store-{size.lower()}-{n}-{key}"
    if _complete(store, n, preprocess):
        return store
    with exclusive_folder_lock(root, command="lungtumor train", what="phantom folder"):
        if _complete(store, n, preprocess):  # another rank or run built it meanwhile
            return store
        if store.exists():  # an interrupted build: rebuilt from scratch (its sources are gone)
            shutil.rmtree(store)
        data = root / "dataset"
        log.info("phantoms: writing %d %s phantom scans and preprocessing them as the store (once per run folder)", n, size)
        write_phantom_dataset(data, cases=n, test_cases=0, size=size, seed=PHANTOM_SEED, progress=progress)
        preprocess_task(data, store, preprocess, SplitConfig(val_cases=0), progress=progress, layout="msd")
        shutil.rmtree(data)
    return store


def join_phantoms(store: SliceStore, phantoms: Path, train: list[str]) -> tuple[SliceStore, list[str]]:
    """``store`` with the phantom store's cases joined as ``phantom-<id>``, and ``train`` with those ids added."""
    extra = SliceStore(phantoms)
    joined = store.joined(extra, PHANTOM_PREFIX)
    return joined, [*train, *(PHANTOM_PREFIX + c for c in sorted(extra.manifest["cases"]))]
