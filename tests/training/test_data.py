"""Slice dataset, 2.5D channel assembly and the tumour oversampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.store import make_store
from lungtumor.errors import ConfigError
from lungtumor.preprocessing.store import SliceStore
from lungtumor.training.data import (
    DataConfig,
    SliceDataModule,
    SliceDataset,
    TumourOversampler,
    make_datamodule,
    oversampling_weights,
)


def test_dataset_items_and_context_at_case_edges(tmp_path) -> None:
    store = SliceStore(make_store(tmp_path))
    ds = SliceDataset(store, store.splits["train"], context=2)
    assert len(ds) == 3 * 10
    ct, mask, idx = ds[0]
    assert ct.shape == (5, 32, 32) and ct.dtype == torch.float32
    assert mask.shape == (1, 32, 32) and idx == 0
    image, _ = store.arrays(store.splits["train"][0])
    # slice 0 of the first case: channels are slices [0, 0, 0, 1, 2] (edges repeated)
    np.testing.assert_array_equal(ct.numpy(), image[[0, 0, 0, 1, 2]].astype(np.float32))
    # last slice of the first case never reaches into the next case
    ct, _, _ = ds[9]
    np.testing.assert_array_equal(ct.numpy(), image[[7, 8, 9, 9, 9]].astype(np.float32))
    ct, _, _ = SliceDataset(store, store.splits["train"], context=0)[4]
    assert ct.shape == (1, 32, 32)
    with pytest.raises(ConfigError):
        SliceDataset(store, store.splits["train"], context=-1)


def test_seed_weights_give_about_half_tumour_slices() -> None:
    tumour = np.array([0] * 900 + [5] * 100)
    w = oversampling_weights(tumour)
    assert w[tumour > 0][0] == pytest.approx(9.0) and w[0] == 1.0
    s = TumourOversampler(w, num_samples=20000, seed=1)
    frac = np.mean(tumour[list(iter(s))] > 0)
    assert 0.47 < frac < 0.53
    s30 = TumourOversampler(oversampling_weights(tumour, 0.3), num_samples=20000, seed=1)
    assert 0.27 < np.mean(tumour[list(iter(s30))] > 0) < 0.33
    with pytest.raises(ConfigError):
        oversampling_weights(tumour, 1.5)


def test_sampler_is_reproducible_per_epoch_and_shards_ranks(monkeypatch) -> None:
    w = np.ones(100)
    a, b = TumourOversampler(w, seed=3), TumourOversampler(w, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    full = list(TumourOversampler(w, num_samples=10, seed=0))
    shards = []
    for rank in range(2):
        monkeypatch.setattr(TumourOversampler, "_rank_world", staticmethod(lambda r=rank: (r, 2)))
        s = TumourOversampler(w, num_samples=10, seed=0)
        assert len(s) == 5
        shards.append(list(s))
    assert sorted(shards[0] + shards[1]) == sorted(full)


def test_datamodule_batches(tmp_path) -> None:
    dm = make_datamodule(make_store(tmp_path), DataConfig(batch_size=4, num_workers=0))
    ct, mask, idx = next(iter(dm.train_dataloader()))
    assert ct.shape == (4, 1, 32, 32) and mask.shape == (4, 1, 32, 32) and idx.shape == (4,)
    assert len(dm.val_set) == 10


def test_lung_weighting_draws_tumour_free_slices_by_their_lung(tmp_path) -> None:
    from types import SimpleNamespace

    from lungtumor.training.data import MIN_NEGATIVE_WEIGHT, lung_negative_weights

    # Four slices: all lung, half lung, pure air (outside the body), lung with tumour.
    hu = np.full((4, 8, 8), -850.0)
    hu[1, :, 4:] = 40.0
    hu[2] = -1000.0
    hu[3, 2:4, 2:4] = 40.0
    store = SimpleNamespace(preprocess=SimpleNamespace(hu_scale=3071.0), arrays=lambda case: (hu / 3071.0, None))
    fake = SimpleNamespace(store=store, cases=["a"], tumour_voxels=lambda: np.array([0, 0, 0, 4]))
    w = lung_negative_weights(fake)
    assert w[:3] == pytest.approx([64 / 32, 32 / 32, MIN_NEGATIVE_WEIGHT])  # mean lung of the tumour-free slices: 32 px

    store_dir = make_store(tmp_path, n=3, size=32)
    uniform = SliceDataModule(store_dir, DataConfig(num_workers=0))
    lung = SliceDataModule(store_dir, DataConfig(num_workers=0, negative_weighting="lung"))
    negative = uniform.train_set.tumour_voxels() == 0
    u, v = uniform.sampler.weights.numpy(), lung.sampler.weights.numpy()
    assert np.array_equal(v[~negative], u[~negative])  # tumour slices as before
    assert np.allclose(v[negative], u[negative] * lung_negative_weights(uniform.train_set)[negative])
    with pytest.raises(ConfigError, match="--negative-weighting 'hila'"):
        SliceDataModule(store_dir, DataConfig(num_workers=0, negative_weighting="hila"))
