"""The prefetched read of predict's start-up (io/prefetch.py): the same Volume, handed out once; a changed
or unreadable file is read again the normal way, so its error is the usual one."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lungtumor.errors import InputError
from lungtumor.io import prefetch
from lungtumor.io.nifti import read_nifti, write_nifti
from lungtumor.io.readers import read_volume
from lungtumor.io.volume import Volume


@pytest.fixture
def ct_file(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 400, size=(12, 10, 6)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    write_nifti(Volume(arr, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


def test_prefetched_read_is_the_same_volume_and_taken_once(ct_file):
    assert prefetch.start(ct_file)
    ahead = prefetch.take(ct_file)
    direct = read_nifti(ct_file)
    assert ahead is not None
    np.testing.assert_array_equal(ahead.array, direct.array)
    np.testing.assert_array_equal(ahead.affine, direct.affine)
    assert ahead.meta == direct.meta
    assert prefetch.take(ct_file) is None  # once

    # read_volume takes it: the object the thread made, not a second read.
    assert prefetch.start(ct_file)
    prefetch._pending["thread"].join()
    made = prefetch._pending["volume"]
    assert read_volume(ct_file) is made
    assert prefetch.take(ct_file) is None


def test_another_file_or_a_changed_file_is_read_again(ct_file, tmp_path):
    other = tmp_path / "other.nii.gz"
    write_nifti(Volume(np.zeros((4, 4, 2), np.int16), np.eye(4)), other)
    assert prefetch.start(ct_file)
    assert prefetch.take(other) is None  # not the file that was started
    prefetch._pending["thread"].join()
    write_nifti(Volume(np.ones((12, 10, 6), np.int16), np.diag([0.8, 0.8, 2.5, 1.0])), ct_file)
    os.utime(ct_file, ns=(1, 1))  # a different modification time even on a coarse clock
    assert prefetch.take(ct_file) is None
    assert read_volume(ct_file).array.max() == 1  # the new content


def test_a_failed_prefetch_gives_the_usual_error(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    assert prefetch.start(bad)
    prefetch._pending["thread"].join()
    assert prefetch._pending["volume"] is None
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_volume(bad)


@pytest.mark.parametrize("name", ["folder", "missing.nii.gz", "ct.mha"])
def test_nothing_started_for_anything_but_an_existing_nifti_file(tmp_path, name):
    (tmp_path / "folder").mkdir()
    (tmp_path / "ct.mha").write_bytes(b"x")
    assert not prefetch.start(tmp_path / name)


def test_starting_a_read_imports_nothing_heavy():
    code = "import sys; from lungtumor.io import prefetch; print(sorted(m for m in ('numpy', 'nibabel', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_then_runs_after_the_read_and_is_given_once_for_that_volume(ct_file):
    seen = []
    assert prefetch.start(ct_file, then=lambda v: seen.append(v) or "region")
    vol = read_volume(ct_file)
    assert seen == [vol]
    assert prefetch.after(read_nifti(ct_file)) is None  # another Volume object: not its result
    assert prefetch.after(vol) == ("region",)
    assert prefetch.after(vol) is None  # once


def test_a_failing_then_leaves_nothing_for_the_caller(ct_file):
    def boom(volume):
        raise RuntimeError("no")

    assert prefetch.start(ct_file, then=boom)
    vol = read_volume(ct_file)
    assert vol is not None and prefetch.after(vol) is None
