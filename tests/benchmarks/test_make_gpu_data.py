"""benchmarks/make_gpu_data.py: the crop of a scan keeps every voxel where it was in the patient."""

from __future__ import annotations

import numpy as np

import make_gpu_data as mg


def test_crop_box_grows_by_the_margin_in_mm_and_clips() -> None:
    box = mg.crop_box((100, 100, 40), ((20, 60), (0, 90), (10, 30)), (0.7, 0.7, 2.5), 12.0)
    m_xy, m_z = int(np.ceil(12 / 0.7)), int(np.ceil(12 / 2.5))
    assert box == (slice(20 - m_xy, 60 + m_xy), slice(0, 100), slice(10 - m_z, 30 + m_z))


def test_cropped_affine_keeps_voxels_in_place() -> None:
    affine = np.array([[-0.7, 0, 0, 120.0], [0, -0.7, 0, 80.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    box = (slice(11, 50), slice(7, 40), slice(3, 9))
    new = mg.cropped_affine(affine, box)
    ijk = np.array([5, 6, 2, 1.0])  # a voxel of the crop
    full = np.array([5 + 11, 6 + 7, 2 + 3, 1.0])  # the same voxel in the whole scan
    assert np.allclose(new @ ijk, affine @ full)
    assert np.allclose(new[:3, :3], affine[:3, :3])
