"""Overlays: radiological orientation whatever the file's orientation, GIF/PNG outputs, errors,
and a real-data check (skipped without ../shared/data/real)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REAL_DATA
from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.nifti import read_nifti
from lungtumor.io.volume import Volume
from lungtumor.reporting.figures import (
    MAX_FRAME_PX,
    MAX_GIF_FRAMES,
    MONTAGE_COLS,
    MONTAGE_ROWS,
    TUMOUR_MARGIN_SLICES,
    _display_geometry,
    axial_display_slices,
    visualize,
)

REAL = REAL_DATA

# Grid sizes along the patient's left-right, anterior-posterior and inferior-superior axes,
# all different so that a wrong transpose shows up in the shape.
N_LR, N_AP, N_SI = 24, 18, 10
SPACING_LR, SPACING_AP, SPACING_SI = 0.8, 0.8, 2.5

# Each orientation as (array axis -> (world axis, sign)) in nibabel's RAS+ world
# (+x = patient's Right, +y = Anterior, +z = Superior). An axis code names the direction the
# array index increases towards, e.g. 'L' = towards the patient's left = -x.
ORIENTATIONS = {
    "LAS": [(0, -1), (1, +1), (2, +1)],  # MSD Task06
    "RAS": [(0, +1), (1, +1), (2, +1)],
    "LPS": [(0, -1), (1, -1), (2, +1)],  # real NSCLC files, DICOM-like
    "LPI": [(0, -1), (1, -1), (2, -1)],  # slices stored superior to inferior
    "SLP": [(2, +1), (0, -1), (1, -1)],  # axes permuted: array axis 0 is axial
}
WORLD_SIZE = {0: N_LR, 1: N_AP, 2: N_SI}
WORLD_SPACING = {0: SPACING_LR, 1: SPACING_AP, 2: SPACING_SI}


def _affine(axes: list[tuple[int, int]]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for array_axis, (world_axis, sign) in enumerate(axes):
        affine[world_axis, array_axis] = sign * WORLD_SPACING[world_axis]
    affine[:3, 3] = (-7.0, 12.5, -40.0)
    return affine


def _marker_volume(code: str, inside: float = 1.0, outside: float = 0.0) -> Volume:
    """A volume in orientation ``code`` with a marker at the patient's right-anterior-superior.

    The marker is placed from world coordinates alone (not with lungtumor's reorient), so the
    test does not trust the code it checks.
    """
    axes = ORIENTATIONS[code]
    shape = tuple(WORLD_SIZE[w] for w, _ in axes)
    affine = _affine(axes)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = world.mean(axis=0)
    # Right = +x, anterior = +y, superior = +z relative to the volume's centre.
    right = world[:, 0] > centre[0] + 2.0
    anterior = world[:, 1] > centre[1] + 2.0
    superior = world[:, 2] > centre[2]
    values = np.where(right & anterior & superior, inside, outside).reshape(shape)
    return Volume(values.astype(np.float32), affine)


@pytest.mark.parametrize("code", list(ORIENTATIONS))
def test_marker_on_image_left_and_top(code: str) -> None:
    vol = _marker_volume(code)
    assert "".join(vol.axcodes) == code
    stack = axial_display_slices(vol)
    assert stack.shape == (N_SI, N_AP, N_LR)  # (K inferior->superior, rows, cols)
    k, row, col = np.argwhere(stack > 0).mean(axis=0)
    assert col < N_LR / 2, "patient's right must be on the image's left (radiological)"
    assert row < N_AP / 2, "anterior must be at the top"
    assert k > N_SI / 2, "display slices must run inferior -> superior"


@pytest.mark.parametrize("code", ["LAS", "LPI", "SLP"])
def test_slice_labels_are_file_indices_and_z(code: str) -> None:
    vol = _marker_volume(code)
    geometry = _display_geometry(vol)
    assert np.all(np.diff(geometry.z_mm) == pytest.approx(SPACING_SI))  # inferior -> superior
    axial_axis = [w for w, _ in ORIENTATIONS[code]].index(2)
    assert geometry.file_axis == "ijk"[axial_axis]
    # Display slice d must be the file's slice geometry.file_index[d] along that axis.
    stack = axial_display_slices(vol)
    for d in (0, N_SI - 1):
        file_slice = np.take(vol.array, int(geometry.file_index[d]), axis=axial_axis)
        assert stack[d].sum() == file_slice.sum()
        voxel = np.zeros(4)
        voxel[axial_axis] = geometry.file_index[d]
        voxel[3] = 1.0
        assert (vol.affine @ voxel)[2] == pytest.approx(geometry.z_mm[d], abs=1e-6)
    if code == "LPI":
        assert list(geometry.file_index) == list(range(N_SI - 1, -1, -1))


def _gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    return frames


@pytest.mark.parametrize("code", ["LAS", "LPS", "SLP"])
def test_rendered_frame_is_radiological(code: str, tmp_path: Path) -> None:
    # Bright CT marker (bone) in the right-anterior quarter of the upper slices, air elsewhere.
    ct = _marker_volume(code, inside=1000.0, outside=-1000.0)
    out = visualize(ct, None, tmp_path / "ct.gif", mode="all")
    frames = _gif_frames(out)
    assert len(frames) == N_SI
    top = frames[-1].astype(float).mean(axis=2)  # most superior slice
    h, w = top.shape
    # Sample the quadrant centres, away from the side labels and the caption.
    assert top[h // 4, w // 4] > 200, "marker must be drawn at the image's top-left"
    assert top[3 * h // 4, 3 * w // 4] < 100
    assert top[h // 4, 3 * w // 4] < 100
    assert top[3 * h // 4, w // 4] < 100


def _case(shape_code: str = "LAS") -> tuple[Volume, Volume, Volume]:
    """CT, prediction and reference with a tumour in display slices 3-5 (of 10)."""
    ct = _marker_volume(shape_code, inside=40.0, outside=-800.0)
    stack_shape = axial_display_slices(ct).shape
    assert stack_shape[0] == N_SI
    # Paint a block into the file slices that display slices 3-5 come from (the prediction
    # misses slice 5); basic indexing gives views, so the assignments land in the arrays.
    ref = np.zeros(ct.shape, dtype=np.uint8)
    pred = np.zeros(ct.shape, dtype=np.uint8)
    geometry = _display_geometry(ct)
    axial_axis = "ijk".index(geometry.file_axis)
    for d in (3, 4, 5):
        index = [slice(None)] * 3
        index[axial_axis] = int(geometry.file_index[d])
        ref[tuple(index)][2:8, 3:9] = 1
        if d != 5:
            pred[tuple(index)][3:9, 3:9] = 1
    assert list(np.flatnonzero(axial_display_slices(ct.with_array(ref)).any(axis=(1, 2)))) == [3, 4, 5]
    return ct, ct.with_array(pred), ct.with_array(ref)


def test_gif_tumour_range_every_and_size(tmp_path: Path) -> None:
    ct, pred, ref = _case()
    out = visualize(ct, pred, tmp_path / "sub" / "case.gif", reference=ref)
    frames = _gif_frames(out)
    lo, hi = max(3 - TUMOUR_MARGIN_SLICES, 0), min(5 + TUMOUR_MARGIN_SLICES, N_SI - 1)
    assert len(frames) == hi - lo + 1
    assert max(frames[0].shape[:2]) <= MAX_FRAME_PX
    every_2 = visualize(ct, pred, tmp_path / "e.gif", reference=ref, every=2)
    assert len(_gif_frames(every_2)) == len(range(lo, hi + 1, 2))
    assert len(_gif_frames(visualize(ct, pred, tmp_path / "a.gif", reference=ref, mode="all"))) == N_SI
    # Only the reference: its range alone; nothing to outline: the whole scan.
    assert len(_gif_frames(visualize(ct, None, tmp_path / "r.gif", reference=ref))) == hi - lo + 1
    assert len(_gif_frames(visualize(ct, ct.with_array(np.zeros(ct.shape, np.uint8)), tmp_path / "n.gif"))) == N_SI
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["case.gif"]  # no temp files left
    # Outline colours are drawn: some red (prediction) and some yellow (reference) pixels.
    middle = frames[len(frames) // 2].astype(int)
    red = (middle[..., 0] > 180) & (middle[..., 1] < 80) & (middle[..., 2] < 80)
    yellow = (middle[..., 0] > 180) & (middle[..., 1] > 180) & (middle[..., 2] < 80)
    assert red.sum() > 20 and yellow.sum() > 20


def test_gif_frames_capped(tmp_path: Path) -> None:
    n_slices = 2 * MAX_GIF_FRAMES + 7
    ct = Volume(np.full((8, 8, n_slices), -500, dtype=np.int16), np.diag([-1.0, 1.0, 1.0, 1.0]))
    frames = _gif_frames(visualize(ct, None, tmp_path / "long.gif", mode="all"))
    assert len(frames) <= MAX_GIF_FRAMES


def test_png_montage(tmp_path: Path) -> None:
    ct, pred, ref = _case("LPS")
    out = visualize(ct, pred, tmp_path / "m.png", reference=ref)
    # Tiles keep the physical aspect of a slice: N_LR columns x N_AP rows of equal spacing.
    tile_aspect = (N_LR * SPACING_LR) / (N_AP * SPACING_AP)
    with Image.open(out) as im:
        width, height = im.size
    # Three tumour slices -> one row of three tiles.
    assert width / height == pytest.approx(MONTAGE_COLS * tile_aspect, rel=0.02)
    # No tumour at all: evenly spaced slices, a full grid.
    out = visualize(ct, None, tmp_path / "plain.png")
    with Image.open(out) as im:
        width, height = im.size
    assert width / height == pytest.approx(MONTAGE_COLS * tile_aspect / MONTAGE_ROWS, rel=0.02)


def test_errors(tmp_path: Path) -> None:
    ct, pred, ref = _case()
    with pytest.raises(InputError, match=".gif"):
        visualize(ct, pred, tmp_path / "x.jpg")
    with pytest.raises(ConfigError):
        visualize(ct, pred, tmp_path / "x.gif", mode="tumor-ish")
    with pytest.raises(ConfigError):
        visualize(ct, pred, tmp_path / "x.gif", every=0)
    shifted = pred.affine.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(GeometryError, match="reference"):
        visualize(ct, pred, tmp_path / "x.gif", reference=Volume(ref.array, shifted))
    with pytest.raises(GeometryError, match="prediction"):
        visualize(ct, Volume(np.zeros((3, 3, 3), np.uint8), np.eye(4)), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_real_case_orientation_and_outputs(tmp_path: Path) -> None:
    case = REAL / "LUNG1-002"
    if not (case / "ct.nii.gz").exists():
        pytest.skip(f"real data not found at {case} (a fresh clone has no ../shared)")
    ct = read_nifti(case / "ct.nii.gz")
    label = read_nifti(case / "gtv1_label.nii.gz")
    stack = axial_display_slices(label)
    _, _row, col = np.argwhere(stack > 0).mean(axis=0)
    # LUNG1-002's GTV is in the right lung (world x > 0 in RAS+), so on the image's left.
    centre_world = label.affine @ np.r_[np.argwhere(label.array > 0).mean(axis=0), 1.0]
    assert centre_world[0] > 0
    assert col < stack.shape[2] / 2
    png = visualize(ct, label, tmp_path / "lung1-002.png", reference=label)
    gif = visualize(ct, label, tmp_path / "lung1-002.gif", reference=label, every=2)
    assert png.stat().st_size > 0
    frames = _gif_frames(gif)
    assert 1 < len(frames) <= MAX_GIF_FRAMES and max(frames[0].shape[:2]) <= MAX_FRAME_PX
