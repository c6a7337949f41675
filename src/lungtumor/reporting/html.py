"""One self-contained HTML report of a scan's lesions (opens offline: images are inline PNG).

The report holds the scan's facts (size, spacing, orientation, source), the model's facts
(checkpoint, preprocessing preset, threshold) when given, the lesion table (the numbers of
``lesions.json``, rounded for reading), an overview (a coronal and an axial average-intensity
projection with every lesion outlined and numbered) and, for each lesion, its key axial slice
in the lung window (:data:`lungtumor.config.LUNG_WINDOW_HU`) with its outline and both RECIST
diameters drawn. A scan without lesions says so in words.

Every image is in the radiological convention of :mod:`lungtumor.reporting.figures` (its
display orientation is reused here): viewed from the patient's feet (axial) or front
(coronal), so the patient's right is on the image's left; anterior is at the top of axial
images, superior at the top of coronal ones. Figures are drawn with a pyplot-free Agg
``matplotlib.figure.Figure``; nothing process-wide is changed.

Entry points: :func:`write_report` (CT + mask -> ``report.html``) and
:func:`write_lesions_folder` (the ``lungtumor lesions`` command: lesions.csv, lesions.json,
instances.nii.gz and optionally report.html, validated and rendered before anything is written).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import write_text_atomic
from lungtumor.config import LUNG_WINDOW_HU
from lungtumor.errors import InputError
from lungtumor.io.volume import Volume, orientation_transform, require_same_grid
from lungtumor.lesions.components import CONNECTIVITY
from lungtumor.lesions.export import INSTANCES_NIFTI, LESIONS_CSV, LESIONS_JSON, write_lesion_outputs
from lungtumor.lesions.frame import WORLD_FRAME_TEXT
from lungtumor.lesions.recist import (
    DIAMETER_CONVENTION,
    RECIST_MIN_DIAMETER_MM,
    RECIST_THICK_SLICE_MM,
    RECIST_THICKNESS_FACTOR,
    LesionReport,
    MeasuredLesion,
    measure_lesions,
)
from lungtumor.lesions.score import LESION_SCORE_TEXT
from lungtumor.reporting.figures import DISPLAY_AXCODES, axial_display_slices

REPORT_HTML = "report.html"
#: Key-slice figures for at most this many lesions (the largest); the table lists all.
MAX_LESION_FIGURES = 24
#: Key-slice field of view: the lesion plus this margin on each side, at least the minimum.
KEY_SLICE_MARGIN_MM = 20.0
KEY_SLICE_MIN_FOV_MM = 50.0
#: Longest side of a key-slice image and of an overview image, pixels.
KEY_SLICE_PX = 420
OVERVIEW_PX = 560
#: Drawing colours (outline of the lesion, other lesions, long and short axis).
LESION_COLOUR = "#ff3b30"
OTHER_LESION_COLOUR = "#ff9f0a"
LONG_AXIS_COLOUR = "#00e5ff"
SHORT_AXIS_COLOUR = "#ffe600"
LINE_WIDTH = 1.6
#: Length of the scale bar drawn on key slices, mm.
SCALE_BAR_MM = 10.0
#: Overview projections are windowed between these percentiles of the projected image.
PROJECTION_PERCENTILES = (1.0, 99.5)
_DPI = 100
_FONT_PT = 10.0
#: Digits shown in the lesion table per lesions.json key (the test compares them).
TABLE_DIGITS = {
    "volume_ml": 2,
    "longest_diameter_mm": 1,
    "short_axis_mm": 1,
    "hu_mean": 0,
    "hu_max": 0,
    "prob_mean": 3,
    "prob_max": 3,
    "score": 3,
}
_CENTROID_DIGITS = 1


# --------------------------------------------------------------------------------------------
# Display coordinates


class _Display:
    """Maps file voxel indices to radiological display coordinates (slice, row, col)."""

    def __init__(self, volume: Volume) -> None:
        self.ornt = orientation_transform(volume.affine, DISPLAY_AXCODES)
        self.shape = volume.shape
        spacing = volume.spacing_mm
        dst_spacing = [0.0, 0.0, 0.0]
        for src, (dst, _) in enumerate(self.ornt):
            dst_spacing[int(dst)] = spacing[src]
        # Display axes: 0 = columns (patient's right -> left), 1 = rows (anterior -> posterior),
        # 2 = slices (inferior -> superior).
        self.col_mm, self.row_mm, self.slice_mm = dst_spacing

    def point(self, ijk: np.ndarray | tuple[float, ...]) -> tuple[float, float, float]:
        """(slice, row, col) of a continuous file index."""
        out = [0.0, 0.0, 0.0]
        for src, (dst, flip) in enumerate(self.ornt):
            value = float(ijk[src])
            out[int(dst)] = (self.shape[src] - 1 - value) if flip < 0 else value
        return out[2], out[1], out[0]


def _window(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] in the lung window."""
    centre, width = LUNG_WINDOW_HU
    return np.clip((np.asarray(hu, dtype=np.float32) - (centre - width / 2.0)) / width, 0.0, 1.0)


def _stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, PROJECTION_PERCENTILES)
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Figures


def _figure(width_px: int, height_px: int) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    return fig, ax


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="black")
    return buffer.getvalue()


def _size_px(height_mm: float, width_mm: float, longest_px: int) -> tuple[int, int]:
    scale = longest_px / max(height_mm, width_mm)
    return max(int(round(width_mm * scale)), 16), max(int(round(height_mm * scale)), 16)


def _side_labels(ax: Any, top: str, bottom: str) -> None:
    box = {"facecolor": "black", "alpha": 0.55, "pad": 2, "edgecolor": "none"}
    style = {"color": "white", "fontsize": _FONT_PT, "fontweight": "bold", "transform": ax.transAxes, "bbox": box}
    # Radiological: the patient's right is on the image's left.
    ax.text(0.012, 0.5, "R", ha="left", va="center", **style)
    ax.text(0.988, 0.5, "L", ha="right", va="center", **style)
    ax.text(0.5, 0.988, top, ha="center", va="top", **style)
    ax.text(0.5, 0.012, bottom, ha="center", va="bottom", **style)


def _caption(ax: Any, text: str) -> None:
    box = {"facecolor": "black", "alpha": 0.55, "pad": 2, "edgecolor": "none"}
    ax.text(0.012, 0.988, text, ha="left", va="top", color="white", fontsize=_FONT_PT * 0.9, transform=ax.transAxes, bbox=box)


def _outline(ax: Any, mask: np.ndarray, cols: np.ndarray, rows: np.ndarray, colour: str, width: float) -> None:
    if mask.any() and mask.shape[0] > 1 and mask.shape[1] > 1:
        ax.contour(cols, rows, mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)


def _key_slice_png(ct_stack: np.ndarray, inst_stack: np.ndarray, display: _Display, lesion: MeasuredLesion) -> bytes:
    """The lesion's key axial slice, cropped around it, with its outline and both diameters."""
    long_pts = [display.point(p) for p in lesion.long_axis_ijk]
    short_pts = [display.point(p) for p in lesion.short_axis_ijk]
    d = int(round(long_pts[0][0]))
    corners = [display.point(c) for c in _box_corners(lesion.bbox_ijk_min, lesion.bbox_ijk_max)]
    r_lo, r_hi = min(c[1] for c in corners), max(c[1] for c in corners)
    c_lo, c_hi = min(c[2] for c in corners), max(c[2] for c in corners)
    half_h = max(KEY_SLICE_MIN_FOV_MM / 2, (r_hi - r_lo + 1) * display.row_mm / 2 + KEY_SLICE_MARGIN_MM)
    half_w = max(KEY_SLICE_MIN_FOV_MM / 2, (c_hi - c_lo + 1) * display.col_mm / 2 + KEY_SLICE_MARGIN_MM)
    half = max(half_h, half_w)  # square field of view in mm
    n_rows, n_cols = ct_stack.shape[1], ct_stack.shape[2]
    rc, cc = (r_lo + r_hi) / 2, (c_lo + c_hi) / 2
    r0, r1 = max(int(np.floor(rc - half / display.row_mm)), 0), min(int(np.ceil(rc + half / display.row_mm)) + 1, n_rows)
    c0, c1 = max(int(np.floor(cc - half / display.col_mm)), 0), min(int(np.ceil(cc + half / display.col_mm)) + 1, n_cols)
    image = _window(ct_stack[d, r0:r1, c0:c1])
    labels = np.asarray(inst_stack[d, r0:r1, c0:c1])
    width_px, height_px = _size_px((r1 - r0) * display.row_mm, (c1 - c0) * display.col_mm, KEY_SLICE_PX)
    fig, ax = _figure(width_px, height_px)
    extent = (c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5)
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, extent=extent, aspect="auto", interpolation="nearest")
    rows, cols = np.arange(r0, r1), np.arange(c0, c1)
    others = (labels != 0) & (labels != lesion.id)
    _outline(ax, others, cols, rows, OTHER_LESION_COLOUR, LINE_WIDTH * 0.8)
    _outline(ax, labels == lesion.id, cols, rows, LESION_COLOUR, LINE_WIDTH)
    for pts, colour in ((long_pts, LONG_AXIS_COLOUR), (short_pts, SHORT_AXIS_COLOUR)):
        ax.plot([p[2] for p in pts], [p[1] for p in pts], color=colour, linewidth=LINE_WIDTH, marker="+", markersize=9)
    ax.set_xlim(c0 - 0.5, c1 - 0.5)
    ax.set_ylim(r1 - 0.5, r0 - 0.5)  # anterior (row 0) at the top
    _side_labels(ax, "A", "P")
    _caption(ax, f"#{lesion.id}")
    bar_px = SCALE_BAR_MM / display.col_mm
    x0, y0 = c1 - 0.05 * (c1 - c0) - bar_px, r1 - 0.06 * (r1 - r0)
    ax.plot([x0, x0 + bar_px], [y0, y0], color="black", linewidth=5, solid_capstyle="butt")  # visible on bone too
    ax.plot([x0, x0 + bar_px], [y0, y0], color="white", linewidth=3, solid_capstyle="butt")
    box = {"facecolor": "black", "alpha": 0.55, "pad": 1, "edgecolor": "none"}
    ax.text(x0 + bar_px / 2, y0 - 0.015 * (r1 - r0), f"{SCALE_BAR_MM:g} mm", color="white", ha="center", va="bottom", fontsize=_FONT_PT * 0.8, bbox=box)
    return _png(fig)


def _box_corners(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> list[tuple[float, float, float]]:
    return [(a, b, c) for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]


def _overview_pngs(
    ct_stack: np.ndarray, inst_stack: np.ndarray, display: _Display, lesions: list[MeasuredLesion]
) -> dict[str, tuple[bytes, str]]:
    """Coronal and axial average-intensity projections with every lesion outlined and numbered."""
    n_slices = ct_stack.shape[0]
    present = np.flatnonzero(inst_stack.any(axis=(1, 2))) if lesions else np.empty(0, dtype=int)
    if present.size:
        lo, hi = int(present[0]), int(present[-1]) + 1
    else:
        lo, hi = n_slices // 3, max(n_slices // 3 + 1, 2 * n_slices // 3)
    labelled = lesions[:MAX_LESION_FIGURES]
    slab = "the slices that hold lesions" if present.size else "the middle third of the scan"
    axial_caption = f"axial average projection over {hi - lo} slices ({slab})"
    out = {}
    # Coronal: average over rows (anterior-posterior); superior at the top.
    coronal = _stretch(ct_stack.mean(axis=1, dtype=np.float32))[::-1]  # (slices, cols)
    coronal_mask = inst_stack.any(axis=1)[::-1]
    # Axial: average over the slab holding the lesions (the middle third without lesions).
    axial = _stretch(ct_stack[lo:hi].mean(axis=0, dtype=np.float32))  # (rows, cols)
    axial_mask = inst_stack[lo:hi].any(axis=0)
    views = (
        ("coronal", coronal, coronal_mask, display.slice_mm, ("S", "I"), f"coronal average projection, {n_slices} slices"),
        ("axial", axial, axial_mask, display.row_mm, ("A", "P"), axial_caption),
    )
    for name, image, mask, row_mm, (top, bottom), caption in views:
        width_px, height_px = _size_px(image.shape[0] * row_mm, image.shape[1] * display.col_mm, OVERVIEW_PX)
        fig, ax = _figure(width_px, height_px)
        n_r, n_c = image.shape
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, extent=(-0.5, n_c - 0.5, n_r - 0.5, -0.5), aspect="auto", interpolation="antialiased")
        _outline(ax, mask, np.arange(n_c), np.arange(n_r), LESION_COLOUR, LINE_WIDTH)
        for lesion in labelled:
            s, r, c = display.point(np.array([(a + b) / 2 for a, b in zip(lesion.bbox_ijk_min, lesion.bbox_ijk_max)]))
            y = (n_slices - 1 - s) if name == "coronal" else r
            ax.text(c, y, f" {lesion.id}", color=LONG_AXIS_COLOUR, fontsize=_FONT_PT, fontweight="bold", ha="left", va="center")
        ax.set_xlim(-0.5, n_c - 0.5)
        ax.set_ylim(n_r - 0.5, -0.5)
        _side_labels(ax, top, bottom)
        out[name] = (_png(fig), caption)
    return out


# --------------------------------------------------------------------------------------------
# HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#111;background:#fff;max-width:1200px}
h1{font-size:1.5em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.4em 0 .5em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0} td.t,th.t{text-align:left} table.facts td{text-align:left}
.none{font-size:1.1em;font-weight:bold;padding:.6em;background:#eef7ee;border:1px solid #9c9}
figure{display:inline-block;margin:6px;vertical-align:top} figcaption{font-size:.85em;max-width:440px}
img{display:block;border:1px solid #444} .note{font-size:.8em;color:#444}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    return f"{float(value):.{digits}f}"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _facts_table(rows: list[tuple[str, Any]], table_id: str) -> str:
    body = "".join(f'<tr><th class="t">{_esc(k)}</th><td>{_esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="facts" id="{table_id}">{body}</table>'


def _scan_rows(ct: Volume, report: LesionReport) -> list[tuple[str, Any]]:
    scan = report.scan
    spacing = ", ".join(f"{s:.3f}" for s in ct.spacing_mm)
    sources = scan.get("sources", {})
    return [
        ("source", ct.meta.get("path") or "(in memory)"),
        ("mask", sources.get("mask") or "(in memory)"),
        ("size (voxels, i x j x k)", " x ".join(str(n) for n in ct.shape)),
        ("spacing (mm, i, j, k)", spacing),
        ("orientation (nibabel axis codes)", "".join(ct.axcodes)),
        ("axial slice axis", f"{report.frame.slice_axis_name} (tilt {report.frame.tilt_deg:.1f} degrees)"),
        ("slice thickness (mm, between planes)", f"{report.frame.thickness_mm:.3f}"),
        ("coordinates", WORLD_FRAME_TEXT),
    ]


def _model_rows(model_facts: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not model_facts:
        return []
    rows = []
    for key, value in model_facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        rows.append((key, value))
    return rows


def _lesion_table(lesions: list[MeasuredLesion]) -> str:
    head = (
        '<tr><th>id</th><th class="t">side</th><th>volume (ml)</th><th>longest axial (mm)</th><th>short axis (mm)</th>'
        '<th class="t">measurable</th><th class="t">size band</th><th>slice</th>'
        "<th>centroid x, y, z (RAS mm)</th><th>HU mean</th><th>HU max</th><th>prob. mean</th><th>prob. max</th><th>score</th></tr>"
    )
    rows = []
    for lesion in lesions:
        d = lesion.to_dict()
        cells = [f'<td data-key="id">{lesion.id}</td>', f'<td class="t" data-key="side">{_esc(lesion.side or "-")}</td>']
        for key in ("volume_ml", "longest_diameter_mm", "short_axis_mm"):
            cells.append(f'<td data-key="{key}">{_fmt(d[key], TABLE_DIGITS[key])}</td>')
        cells.append(f'<td class="t" data-key="measurable">{"yes" if lesion.measurable else "no"}</td>')
        cells.append(f'<td class="t" data-key="size_band">{_esc(lesion.size_band)}</td>')
        cells.append(f'<td data-key="slice_index">{lesion.slice_index}</td>')
        centroid = ", ".join(_fmt(v, _CENTROID_DIGITS) for v in lesion.centroid_ras_mm)
        cells.append(f'<td data-key="centroid_ras_mm">{centroid}</td>')
        for key in ("hu_mean", "hu_max", "prob_mean", "prob_max", "score"):
            cells.append(f'<td data-key="{key}">{_fmt(d[key], TABLE_DIGITS[key])}</td>')
        rows.append(f'<tr data-lesion="{lesion.id}">' + "".join(cells) + "</tr>")
    return f'<table id="lesion-table">{head}{"".join(rows)}</table>'


def report_html(ct: Volume, report: LesionReport, model_facts: dict[str, Any] | None = None) -> str:
    """The report as one HTML string (see the module docstring).

    Args:
        ct: the CT (HU) the lesions were measured on.
        report: from :func:`lungtumor.lesions.recist.measure_lesions` on that CT's grid.
        model_facts: checkpoint, preprocessing preset, threshold, ... (shown as given).

    Returns:
        The document, images embedded as base64 PNG.
    """
    from lungtumor import __version__

    require_same_grid(report.instances, ct, "lesion instances", "CT")
    display = _Display(ct)
    ct_stack = axial_display_slices(ct)
    inst_stack = axial_display_slices(report.instances)
    lesions = report.lesions
    overview = _overview_pngs(ct_stack, inst_stack, display, lesions)
    title = f"Lesion report: {Path(str(ct.meta.get('path') or 'scan')).name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">lungtumor {_esc(__version__)}, generated {_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}. '
        "Research software, not a medical device.</p>",
        '<h2 id="scan">Scan</h2>',
        _facts_table(_scan_rows(ct, report), "scan-facts"),
        '<h2 id="model">Model</h2>',
        _facts_table(_model_rows(model_facts), "model-facts") if model_facts else '<p id="model-facts">Not given (the mask was not made by a known model run).</p>',
        f'<h2 id="lesions">Lesions ({len(lesions)})</h2>',
    ]
    if lesions:
        measurable = sum(lesion.measurable for lesion in lesions)
        parts.append(f"<p>{len(lesions)} lesion(s), {measurable} measurable by RECIST 1.1; total volume {sum(les.volume_ml for les in lesions):.2f} ml.</p>")
        parts.append(_lesion_table(lesions))
    else:
        parts.append('<p class="none" id="no-lesions">No lesions: the mask is empty.</p>')
    parts.append('<h2 id="overview">Overview</h2>')
    for name, (data, caption) in overview.items():
        text = f"{caption[0].upper()}{caption[1:]}; lesions outlined in red and numbered."
        parts.append(f'<figure id="overview-{name}">{_img(data, f"overview {name}")}<figcaption>{_esc(text)}</figcaption></figure>')
    if lesions:
        parts.append('<h2 id="key-slices">Key slices</h2>')
        shown = lesions[:MAX_LESION_FIGURES]
        if len(lesions) > len(shown):
            parts.append(f"<p>Key slices of the {len(shown)} largest of {len(lesions)} lesions.</p>")
        for lesion in shown:
            png = _key_slice_png(ct_stack, inst_stack, display, lesion)
            caption = (
                f"Lesion {lesion.id} ({lesion.side or 'side unknown'}): longest axial diameter {lesion.longest_diameter_mm:.1f} mm "
                f"(cyan), short axis {lesion.short_axis_mm:.1f} mm (yellow), slice {report.frame.slice_axis_name}={lesion.slice_index}; "
                f"lung window {LUNG_WINDOW_HU[0]:g}/{LUNG_WINDOW_HU[1]:g} HU."
            )
            parts.append(f'<figure id="lesion-{lesion.id}">{_img(png, f"lesion {lesion.id} key slice")}<figcaption>{_esc(caption)}</figcaption></figure>')
    parts.append('<h2 id="conventions">Conventions</h2><ul class="note">')
    for item in (
        f"Lesions are {CONNECTIVITY}-connected components of the mask, numbered by decreasing volume.",
        f"Diameters: {DIAMETER_CONVENTION}.",
        f"Score (with probabilities): {(model_facts or {}).get('score_definition') or LESION_SCORE_TEXT}.",
        f"Measurable (RECIST 1.1): longest diameter >= {RECIST_MIN_DIAMETER_MM:g} mm, and >= {RECIST_THICKNESS_FACTOR:g} x the slice "
        f"thickness where slices are thicker than {RECIST_THICK_SLICE_MM:g} mm.",
        "Images: radiological convention (the patient's right on the image's left).",
        f"Coordinates: {WORLD_FRAME_TEXT}.",
    ):
        parts.append(f"<li>{_esc(item)}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    ct: Volume,
    mask: Volume,
    out_dir: str | os.PathLike[str],
    *,
    probabilities: Volume | None = None,
    model_facts: dict[str, Any] | None = None,
    lungs: Volume | None = None,
    report: LesionReport | None = None,
) -> Path:
    """Measure the mask's lesions and write ``out_dir/report.html`` (atomically).

    Args:
        ct: the CT in HU.
        mask: binary tumour mask on the CT's grid (0/1).
        out_dir: folder for ``report.html`` (created if missing).
        probabilities: optional probability map on the grid (mean/max per lesion).
        model_facts: optional facts shown in the report's model section, e.g.
            ``{"checkpoint": "run/best.ckpt", "preprocessing": {...}, "threshold": 0.5}``.
        lungs: optional lung region mask on the grid (the lesion's side).
        report: lesions already measured on this CT and mask (skips measuring again).

    Returns:
        The path of ``report.html``.

    Raises:
        InputError: the mask is not binary, probabilities outside [0, 1], ``out_dir`` is a file.
        GeometryError: a volume is not on the CT's grid, or its slices are not axial.
    """
    if report is None:
        require_same_grid(mask, ct, "mask", "CT")
        report = measure_lesions(mask, ct, probabilities=probabilities, lungs=lungs)
    text = report_html(ct, report, model_facts)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; pass a folder for report.html")
    return write_text_atomic(out / REPORT_HTML, text)


def lesions_folder_files(out_dir: str | os.PathLike[str], *, html_report: bool = False) -> list[Path]:
    """The files :func:`write_lesions_folder` writes into ``out_dir`` (for the input-as-output guard)."""
    names = [LESIONS_CSV, LESIONS_JSON, INSTANCES_NIFTI] + ([REPORT_HTML] if html_report else [])
    return [Path(out_dir) / name for name in names]


def write_lesions_folder(
    ct: Volume,
    mask: Volume,
    out_dir: str | os.PathLike[str],
    *,
    probabilities: Volume | None = None,
    lungs: Volume | None = None,
    model_facts: dict[str, Any] | None = None,
    html_report: bool = False,
    lesion_scores: Volume | None = None,
) -> tuple[LesionReport, list[Path]]:
    """What ``lungtumor lesions`` writes: lesions.csv, lesions.json, instances.nii.gz (+ report.html).

    ``lesion_scores``: per-lesion scores as a map (a re-scorer's, :func:`~lungtumor.lesions.score.score_map`)
    instead of the score from ``probabilities``; ``model_facts["score_definition"]`` then says what they are.

    Every input is checked and every output rendered in memory before the first file is
    written, and each file is written atomically: a bad input leaves ``out_dir`` untouched.

    Returns:
        The measurements and the written paths.
    """
    require_same_grid(mask, ct, "mask", "CT")
    report = measure_lesions(mask, ct, probabilities=probabilities, lungs=lungs, lesion_scores=lesion_scores)
    extra = {REPORT_HTML: report_html(ct, report, model_facts).encode("utf-8")} if html_report else None
    return report, write_lesion_outputs(report, out_dir, model_facts=model_facts, extra_files=extra)
