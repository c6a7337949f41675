"""Phantom scans beside the real ones (``train --phantoms N``): built once, joined as training cases only."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.store import make_store
from lungtumor.config import PreprocessConfig
from lungtumor.errors import ConfigError
from lungtumor.model.checkpoint import read_checkpoint
from lungtumor.preprocessing.store import SliceStore
from lungtumor.training.data import DataConfig, make_datamodule
from lungtumor.training.phantoms import PHANTOM_PREFIX, join_phantoms, phantom_store
from lungtumor.training.trainer import TrainConfig, train

FAST = dict(width=4, batch_size=4, num_workers=0, progress=False, image_every_n_steps=0, log_every_n_steps=1)


def test_phantom_cases_are_read_from_their_own_store_and_join_training_only(tmp_path) -> None:
    store = make_store(tmp_path, n=3)
    pre = SliceStore(store).preprocess
    ph = phantom_store(tmp_path / "ph", 2, pre, size="SMALL")
    assert ph.parent == tmp_path / "ph" and not (ph.parent / "dataset").exists()  # the NIfTI files are gone
    assert phantom_store(tmp_path / "ph", 2, pre, size="SMALL") == ph  # built once
    other = phantom_store(tmp_path / "ph", 2, PreprocessConfig(preset="seed", size=48), size="SMALL")
    assert other != ph and SliceStore(ph).preprocess == pre  # one store per preprocessing in a shared folder
    dm = make_datamodule(store, DataConfig(batch_size=2, num_workers=0))
    dm.join_phantoms(ph)
    real = SliceStore(store)
    extra = SliceStore(ph)
    names = [PHANTOM_PREFIX + c for c in sorted(extra.manifest["cases"])]
    assert dm.splits["train"] == [*real.splits["train"], *names] and dm.splits["val"] == real.splits["val"]
    assert len(dm.train_set) == sum(real.n_slices(c) for c in real.splits["train"]) + sum(extra.n_slices(c) for c in extra.manifest["cases"])
    # A phantom slice comes from the phantom store's own arrays, a real one from the store's.
    last = len(dm.train_set) - 1
    ct, mask, _ = dm.train_set[last]
    image, labels = extra.arrays(sorted(extra.manifest["cases"])[-1])
    np.testing.assert_array_equal(ct[0].numpy(), np.asarray(image[-1], np.float32))
    np.testing.assert_array_equal(mask[0].numpy(), np.asarray(labels[-1], np.float32))
    ct0, _, _ = dm.train_set[0]
    np.testing.assert_array_equal(ct0[0].numpy(), np.asarray(real.arrays(real.splits["train"][0])[0][0], np.float32))


def test_joining_refuses_another_preprocessing_and_a_name_clash(tmp_path) -> None:
    store = SliceStore(make_store(tmp_path / "a", n=2))
    other = SliceStore(make_store(tmp_path / "b", n=2, size=48))
    with pytest.raises(ConfigError, match=r"preprocessed otherwise than .*size"):
        store.joined(other, "x-")
    same = SliceStore(make_store(tmp_path / "c", n=2))
    with pytest.raises(ConfigError, match="already holds a case named lung_000"):
        store.joined(same, "")
    joined, train = join_phantoms(store, same.root, ["lung_000"])
    assert train == ["lung_000", f"{PHANTOM_PREFIX}lung_000", f"{PHANTOM_PREFIX}lung_001"] and joined.case_dir(f"{PHANTOM_PREFIX}lung_001") == same.root / "cases" / "lung_001"
    assert "phantom-lung_000" not in store.manifest["cases"]  # the store itself is left as it was


def test_bad_phantom_options() -> None:
    with pytest.raises(ConfigError, match="--phantoms -1"):
        TrainConfig(store="s", out="o", phantoms=-1)
    with pytest.raises(ConfigError, match="--phantom-size 'HUGE'"):
        TrainConfig(store="s", out="o", phantom_size="HUGE")
    with pytest.raises(ConfigError, match="--phantoms 0"):
        phantom_store("o", 0, PreprocessConfig())


@pytest.mark.slow
def test_a_run_with_phantoms_records_them_as_training_cases_and_resumes_with_them(tmp_path) -> None:
    store = make_store(tmp_path, n=3)
    run = tmp_path / "run"
    opts = dict(store=str(store), out=str(run), epochs=1, samples_per_epoch=8, phantoms=2, phantom_size="SMALL", limit_val_batches=1, **FAST)
    train(TrainConfig(**opts))
    split = read_checkpoint(run / "last.ckpt")["lungtumor"]["split"]
    (ph,) = (run / "phantoms").glob("store-small-2-*")
    assert [c for c in split["train"] if c.startswith(PHANTOM_PREFIX)] == [PHANTOM_PREFIX + c for c in sorted(SliceStore(ph).manifest["cases"])]
    assert len(SliceStore(ph).manifest["cases"]) == 2
    assert not any(c.startswith(PHANTOM_PREFIX) for c in split["val"])
    built = sorted(p.stat().st_mtime_ns for p in (run / "phantoms").rglob("*.npy"))
    with pytest.raises(ConfigError, match="--phantoms 2 -> 3"):
        train(TrainConfig(**{**opts, "epochs": 2, "phantoms": 3}), resume=True)
    assert [p.name for p in (run / "phantoms").glob("store-*")] == [ph.name]  # refused before building another
    summary = train(TrainConfig(**{**opts, "epochs": 2}), resume=True)
    assert summary["epochs"] == 2
    assert sorted(p.stat().st_mtime_ns for p in (run / "phantoms").rglob("*.npy")) == built  # reused, not rebuilt
