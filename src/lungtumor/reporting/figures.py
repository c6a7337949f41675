"""CT + mask overlays: an axial GIF animation or a PNG montage, in radiological convention.

Radiological convention, whatever the file's orientation: each displayed axial slice is seen
from the patient's feet, so the patient's right is on the image's left, anterior is at the top
and posterior (the spine) at the bottom. Derivation, in nibabel's convention (RAS+: +x towards
the patient's Right, +y Anterior, +z Superior; an axis code names the direction an array axis
increases towards):

1. :func:`lungtumor.io.volume.reorient` the volume to :data:`DISPLAY_AXCODES` ``('L', 'P', 'S')``
   (permute/flip only, no resampling): array index i grows towards the patient's left, j
   towards posterior, k towards superior. So ``i = 0`` is the patient's far right, ``j = 0``
   the most anterior row and ``k = 0`` the most inferior slice.
2. Transpose to ``(k, j, i)``: display slice k has rows j (anterior at the top, row 0) and
   columns i (patient's right at the image's left, column 0).

The real NSCLC files are already ('L', 'P', 'S'), so they are only transposed; MSD Task06
files ('L', 'A', 'S') get their j axis flipped. :func:`axial_display_slices` is that stack and
is what every frame shows; the tests check it with a marker on the patient's right-anterior
side written with LAS, RAS and LPS affines.

Frames show the CT in the lung window (:data:`lungtumor.config.LUNG_WINDOW_HU`), the
prediction's outline in red and the reference's in yellow, ``R``/``L`` (and ``A``/``P``)
side labels, and the slice's index in the file and its z position in mm.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import atomic_output
from lungtumor.config import LUNG_WINDOW_HU
from lungtumor.errors import ConfigError, InputError
from lungtumor.io.readers import check_ct
from lungtumor.io.volume import Volume, reorient, require_same_grid
from lungtumor.lesions.components import require_binary

#: Orientation every volume is brought to before display (see the module docstring).
DISPLAY_AXCODES = ("L", "P", "S")
#: Slices shown beyond the tumour-bearing range on each side in the GIF.
TUMOUR_MARGIN_SLICES = 3
#: At most this many GIF frames; longer ranges are subsampled evenly.
MAX_GIF_FRAMES = 120
#: Longest side of a GIF frame, pixels: the CT's own size clamped to this range (small crops
#: are enlarged so the labels stay readable).
MIN_FRAME_PX, MAX_FRAME_PX = 256, 512
#: Longest side of a montage tile, pixels (a 3x3 montage is then about 1200 px square).
MONTAGE_TILE_PX = 400
#: Montage layout: at most this many rows x columns of slices.
MONTAGE_ROWS, MONTAGE_COLS = 3, 3
#: Outline colours and width.
PRED_COLOUR = "red"
REF_COLOUR = "yellow"
CONTOUR_LINEWIDTH = 1.2
#: The reference outline is drawn first and wider, so it stays visible where the prediction
#: outline lies exactly on it.
REF_LINEWIDTH = 2.4
#: Colours in the GIF palette (GIF's maximum).
_GIF_COLOURS = 256
#: Gap between montage tiles, as a fraction of a tile.
_MONTAGE_GAP = 0.015
#: Rendering resolution (pixels per inch) for the matplotlib figures.
_DPI = 100
#: Font size of the frame annotations at a 512-pixel frame (scaled with the frame).
_FONT_PT_AT_MAX = 11.0
_MIN_FONT_PT = 7.0
_LEGEND_FONT_SCALE = 0.8
MODES = ("tumour", "all")
GIF_SUFFIX, PNG_SUFFIX = ".gif", ".png"


# --------------------------------------------------------------------------------------------
# Display orientation


def axial_display_slices(volume: Volume) -> np.ndarray:
    """The volume as radiological axial slices, shape (K, rows, cols).

    ``[k]`` runs from the most inferior slice (k = 0) to the most superior; in each slice,
    rows run anterior (row 0, top) to posterior and columns run from the patient's right
    (column 0, image left) to the patient's left. A view where possible (no copy).

    Args:
        volume: any 3D volume (CT or mask) with a valid affine.

    Returns:
        The display-oriented stack.
    """
    reoriented, _ = reorient(volume, DISPLAY_AXCODES)
    # reoriented.array is (i: R->L, j: A->P, k: I->S); display wants (k, rows=j, cols=i).
    return np.transpose(reoriented.array, (2, 1, 0))


@dataclass(frozen=True)
class _DisplayGeometry:
    """Where each display slice is, for labels and pixel aspect."""

    row_spacing_mm: float
    col_spacing_mm: float
    z_mm: np.ndarray  # (K,) world z (superior +) of each display slice's centre
    file_index: np.ndarray  # (K,) index of each display slice along the file's axial axis
    file_axis: str  # name of that file axis: "i", "j" or "k"


def _display_geometry(volume: Volume) -> _DisplayGeometry:
    reoriented, ornt = reorient(volume, DISPLAY_AXCODES)
    n_i, n_j, n_k = reoriented.shape
    spacing = reoriented.spacing_mm
    k = np.arange(n_k)
    centres = np.stack([np.full(n_k, (n_i - 1) / 2), np.full(n_k, (n_j - 1) / 2), k, np.ones(n_k)])  # (4, K)
    z_mm = (reoriented.affine @ centres)[2]
    # ornt[src_axis] = (dst_axis, flip): find the file axis that became display axis k.
    src_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    flipped = ornt[src_axis, 1] < 0
    file_index = (n_k - 1 - k) if flipped else k
    return _DisplayGeometry(
        row_spacing_mm=spacing[1],
        col_spacing_mm=spacing[0],
        z_mm=z_mm,
        file_index=file_index,
        file_axis="ijk"[src_axis],
    )


# --------------------------------------------------------------------------------------------
# Checks and slice selection


def _check_inputs(ct: Volume, masks: dict[str, Volume | None], out_path: Path, mode: str, every: int, fps: int) -> None:
    if out_path.suffix.lower() not in (GIF_SUFFIX, PNG_SUFFIX):
        raise InputError(f"{out_path}: output must end in {GIF_SUFFIX} (animation) or {PNG_SUFFIX} (montage)")
    if mode not in MODES:
        raise ConfigError(f"visualisation mode must be one of {MODES}, got {mode!r}")
    if every < 1 or fps < 1:
        raise ConfigError(f"every and fps must be positive integers, got every={every}, fps={fps}")
    check_ct(ct)  # voxels, and not a 0/1 label in the CT's place
    for role, mask in masks.items():
        if mask is not None:
            require_binary(mask, role, fix="threshold a probability map first (predict writes the mask)")
            require_same_grid(mask, ct, role, "CT", fix="pass the mask predicted for (or drawn on) this CT")


def _tumour_area_per_slice(stacks: list[np.ndarray], n_slices: int) -> np.ndarray:
    """(K,) voxels of the union of the masks in each display slice."""
    area = np.zeros(n_slices, dtype=np.int64)
    if stacks:
        union = np.zeros(stacks[0].shape, dtype=bool)
        for stack in stacks:
            union |= stack != 0
        area = union.sum(axis=(1, 2))
    return area


def _gif_slices(area: np.ndarray, mode: str, every: int) -> np.ndarray:
    """Display slice indices for the animation: tumour range (+ margin) or all, subsampled."""
    n = area.size
    present = np.flatnonzero(area)
    if mode == "all" or present.size == 0:
        lo, hi = 0, n - 1
    else:
        lo = max(int(present[0]) - TUMOUR_MARGIN_SLICES, 0)
        hi = min(int(present[-1]) + TUMOUR_MARGIN_SLICES, n - 1)
    step = max(every, math.ceil((hi - lo + 1) / MAX_GIF_FRAMES))
    return np.arange(lo, hi + 1, step)


def _montage_slices(area: np.ndarray) -> np.ndarray:
    """Up to rows x cols display slices with the most tumour, in inferior-to-superior order;
    evenly spaced through the scan when there is no tumour."""
    n_tiles = MONTAGE_ROWS * MONTAGE_COLS
    present = np.flatnonzero(area)
    if present.size == 0:
        return np.unique(np.linspace(0, area.size - 1, min(n_tiles, area.size)).round().astype(int))
    # Stable sort on -area: ties keep the lower (more inferior) slice, reproducibly.
    order = np.argsort(-area, kind="stable")[: min(n_tiles, present.size)]
    return np.sort(order)


# --------------------------------------------------------------------------------------------
# Drawing


def _window(slice_hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] in the lung window."""
    centre, width = LUNG_WINDOW_HU
    low = centre - width / 2.0
    return np.clip((np.asarray(slice_hu, dtype=np.float32) - low) / width, 0.0, 1.0)


def _frame_size_px(rows: int, cols: int, geometry: _DisplayGeometry) -> tuple[int, int]:
    """(width, height) in pixels: physical aspect, longest side in [MIN_FRAME_PX, MAX_FRAME_PX]."""
    width_mm, height_mm = cols * geometry.col_spacing_mm, rows * geometry.row_spacing_mm
    longest_px = min(MAX_FRAME_PX, max(MIN_FRAME_PX, rows, cols))
    scale = longest_px / max(width_mm, height_mm)
    return max(int(round(width_mm * scale)), 1), max(int(round(height_mm * scale)), 1)


def _draw(
    ax: Any,  # matplotlib Axes (matplotlib is imported lazily)
    ct_slice: np.ndarray,
    pred_slice: np.ndarray | None,
    ref_slice: np.ndarray | None,
    caption: str,
    font_pt: float,
) -> None:
    """One annotated axial slice on ``ax`` (axes filling its area, no ticks)."""
    from matplotlib.lines import Line2D

    ax.clear()
    ax.set_axis_off()
    rows, cols = ct_slice.shape
    ax.imshow(_window(ct_slice), cmap="gray", vmin=0.0, vmax=1.0, aspect="auto", interpolation="antialiased")
    handles = []
    outlines = (
        (ref_slice, REF_COLOUR, REF_LINEWIDTH, "reference"),
        (pred_slice, PRED_COLOUR, CONTOUR_LINEWIDTH, "prediction"),
    )
    for mask_slice, colour, linewidth, name in outlines:
        if mask_slice is None:
            continue
        handles.append(Line2D([], [], color=colour, linewidth=2, label=name))
        if np.any(mask_slice) and rows > 1 and cols > 1:
            ax.contour((mask_slice != 0).astype(np.float32), levels=[0.5], colors=[colour], linewidths=linewidth)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)  # row 0 (anterior) at the top
    box = {"facecolor": "black", "alpha": 0.5, "pad": 2, "edgecolor": "none"}
    text = {"color": "white", "fontsize": font_pt, "fontweight": "bold", "transform": ax.transAxes, "bbox": box}
    # Radiological: the patient's right is on the image's left.
    ax.text(0.015, 0.5, "R", ha="left", va="center", **text)
    ax.text(0.985, 0.5, "L", ha="right", va="center", **text)
    ax.text(0.5, 0.985, "A", ha="center", va="top", **text)
    ax.text(0.5, 0.015, "P", ha="center", va="bottom", **text)
    ax.text(0.015, 0.985, caption, ha="left", va="top", **{**text, "fontweight": "normal"})
    if handles:
        legend = ax.legend(
            handles=handles, loc="lower right", fontsize=font_pt * _LEGEND_FONT_SCALE, framealpha=0.5, facecolor="black"
        )
        for label in legend.get_texts():
            label.set_color("white")


def _font_pt(width_px: int, height_px: int) -> float:
    """Annotation font size scaled with the frame, never below readable."""
    return max(_MIN_FONT_PT, _FONT_PT_AT_MAX * max(width_px, height_px) / MAX_FRAME_PX)


def _slice_or_none(stack: np.ndarray | None, d: int) -> np.ndarray | None:
    return None if stack is None else stack[d]


def _caption(geometry: _DisplayGeometry, d: int) -> str:
    return f"{geometry.file_axis}={int(geometry.file_index[d])}  z={geometry.z_mm[d]:+.1f} mm"


def _new_figure(width_px: int, height_px: int, n_rows: int = 1, n_cols: int = 1) -> tuple[Any, list[Any]]:
    """A pyplot-free Agg figure of the given pixel size with a grid of gap-free axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px * n_cols / _DPI, height_px * n_rows / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    gap = _MONTAGE_GAP if n_rows * n_cols > 1 else 0.0
    w, h = 1.0 / n_cols, 1.0 / n_rows
    axes = [
        fig.add_axes((c * w + gap * w / 2, 1.0 - (r + 1) * h + gap * h / 2, w * (1 - gap), h * (1 - gap)))
        for r in range(n_rows)
        for c in range(n_cols)
    ]
    return fig, axes


def _write_gif(
    ct: np.ndarray,
    pred: np.ndarray | None,
    ref: np.ndarray | None,
    slices: np.ndarray,
    geometry: _DisplayGeometry,
    out_path: Path,
    fps: int,
) -> None:
    from PIL import Image

    width_px, height_px = _frame_size_px(ct.shape[1], ct.shape[2], geometry)
    fig, (ax,) = _new_figure(width_px, height_px)
    font_pt = _font_pt(width_px, height_px)
    frames = []
    for d in slices:
        _draw(ax, ct[d], _slice_or_none(pred, d), _slice_or_none(ref, d), _caption(geometry, d), font_pt)
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
    # One palette for every frame, from the middle frame (grey ramp + both outline colours, which
    # the legend guarantees), without dithering: no palette flicker between frames, and about
    # 40 % smaller than a per-frame adaptive palette on real CT.
    palette = frames[len(frames) // 2].quantize(colors=_GIF_COLOURS, method=Image.Quantize.MEDIANCUT)
    frames = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    with atomic_output(out_path) as tmp:
        duration_ms = int(round(1000 / fps))
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)


def _write_montage(
    ct: np.ndarray,
    pred: np.ndarray | None,
    ref: np.ndarray | None,
    slices: np.ndarray,
    geometry: _DisplayGeometry,
    out_path: Path,
) -> None:
    n = len(slices)
    n_cols = min(MONTAGE_COLS, n)
    n_rows = math.ceil(n / n_cols)
    width_px, height_px = _frame_size_px(ct.shape[1], ct.shape[2], geometry)
    tile_scale = min(1.0, MONTAGE_TILE_PX / max(width_px, height_px))
    width_px, height_px = max(int(width_px * tile_scale), 1), max(int(height_px * tile_scale), 1)
    fig, axes = _new_figure(width_px, height_px, n_rows, n_cols)
    font_pt = _font_pt(width_px, height_px)
    for ax in axes:
        ax.set_axis_off()
    for ax, d in zip(axes, slices):
        _draw(ax, ct[d], _slice_or_none(pred, d), _slice_or_none(ref, d), _caption(geometry, d), font_pt)
    with atomic_output(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, facecolor="black")


# --------------------------------------------------------------------------------------------
# Public entry point


def visualize(
    ct: Volume,
    mask: Volume | None,
    out_path: str | os.PathLike[str],
    reference: Volume | None = None,
    mode: str = "tumour",
    every: int = 1,
    fps: int = 8,
) -> Path:
    """Render CT with prediction/reference outlines to a GIF animation or a PNG montage.

    The output type follows the suffix: ``.gif`` animates axial slices (inferior to superior)
    through the tumour-bearing range of the union of ``mask`` and ``reference`` plus
    :data:`TUMOUR_MARGIN_SLICES` on each side (the whole scan for ``mode="all"`` or when
    there is no tumour), every ``every``-th slice, at most :data:`MAX_GIF_FRAMES` frames of at
    most :data:`MAX_FRAME_PX` pixels. ``.png`` is a montage of up to 3x3 axial slices with the
    most tumour (union), inferior to superior, or evenly spaced slices when there is none.
    Every frame is in radiological convention (see the module docstring) with side labels and
    the slice's file index and z in mm. Written atomically.

    Args:
        ct: CT in HU.
        mask: predicted mask on the CT's grid (red outline), or None.
        out_path: ``.gif`` or ``.png`` file to write.
        reference: reference mask on the CT's grid (yellow outline), or None.
        mode: ``"tumour"`` (GIF through the tumour only) or ``"all"`` (GIF through the scan).
        every: show every n-th slice in the GIF.
        fps: GIF frames per second.

    Returns:
        The written path.

    Raises:
        InputError: unknown output suffix.
        ConfigError: unknown mode, ``every`` or ``fps`` < 1.
        GeometryError: a mask is not on the CT's grid.
    """
    path = Path(out_path)
    _check_inputs(ct, {"prediction": mask, "reference": reference}, path, mode, every, fps)
    geometry = _display_geometry(ct)
    ct_stack = axial_display_slices(ct)
    pred_stack = None if mask is None else axial_display_slices(mask)
    ref_stack = None if reference is None else axial_display_slices(reference)
    stacks = [s for s in (pred_stack, ref_stack) if s is not None]
    area = _tumour_area_per_slice(stacks, ct_stack.shape[0])
    if path.suffix.lower() == GIF_SUFFIX:
        _write_gif(ct_stack, pred_stack, ref_stack, _gif_slices(area, mode, every), geometry, path, fps)
    else:
        _write_montage(ct_stack, pred_stack, ref_stack, _montage_slices(area), geometry, path)
    return path


def froc_png(froc: dict[str, Any]) -> bytes:
    """The FROC curve as PNG bytes (pyplot-free Agg figure): sensitivity vs false positives per scan."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fp = np.asarray(froc["false_positives_per_scan"], dtype=np.float64)
    sens = np.asarray(froc["sensitivity"], dtype=np.float64)
    rates = np.asarray(froc["fp_rates"])
    floor = rates[0] / 2  # 0 FP/scan drawn at the left edge of the log axis
    ok = np.isfinite(fp) & np.isfinite(sens)
    right = max(rates[-1] * 2, float(fp[ok].max()) * 1.2 if ok.any() else 0.0)
    if ok.any():
        # The curve the reported points are read from: the best sensitivity with at most x FP/scan.
        xs = np.unique(np.concatenate([[0.0], fp[ok]]))
        envelope = [max([0.0, *sens[ok][fp[ok] <= x]]) for x in xs]
        ax.step(np.append(np.maximum(xs, floor), right), [*envelope, envelope[-1]], where="post", color="tab:blue", label="best at <= x FP/scan")
        ax.plot(np.maximum(fp[ok], floor), sens[ok], marker="o", linestyle="none", color="tab:blue", alpha=0.5, label="thresholds")
    ax.plot(rates, froc["sensitivity_at_fp_rates"], marker="s", linestyle="none", color="tab:red", label="reported points")
    ax.set_xscale("log", base=2)
    ax.set_xlim(floor, right)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positives per scan (0 drawn at the left edge)")
    ax.set_ylabel("lesion sensitivity")
    cpm = froc.get("cpm")
    cpm_text = f", CPM {cpm:.3f}" if isinstance(cpm, float) and not math.isnan(cpm) else ""
    ax.set_title(f"FROC: {froc['lesions_ref']} lesions, {froc['cases']} scans{cpm_text}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
