"""The self-contained follow-up report (``followup.html``): two visits side by side, RECIST 1.1.

The page holds the category (with the statement that it is computed from the segmentation, not a
clinical read), the alignment's quality, the targets and the sums, every rule and step, and for
every group of lesions (matched, merged, split, gone, new) the key axial slices of both visits side
by side with both RECIST diameters drawn. Images are inline PNG in the radiological convention of
:mod:`lungtumor.reporting.html` (whose key-slice figure is reused); nothing process-wide is changed.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from lungtumor.config import LUNG_WINDOW_HU
from lungtumor.io.volume import Volume
from lungtumor.lesions.recist import LesionReport
from lungtumor.reporting.figures import axial_display_slices
from lungtumor.reporting.html import _CSS, MAX_LESION_FIGURES, _Display, _esc, _facts_table, _img, _key_slice_png

_EXTRA_CSS = """
.cat{font-size:1.6em;font-weight:bold;padding:.4em .6em;border:2px solid #333;display:inline-block}
.warn{background:#fff4e5;border:1px solid #f0a040;padding:.4em} .bad{color:#b00020;font-weight:bold}
.pair{border-top:1px solid #ddd;padding-top:.4em}
"""


class _Scan:
    """A scan's display stacks, computed once."""

    def __init__(self, ct: Volume, report: LesionReport) -> None:
        self.display = _Display(ct)
        self.ct = axial_display_slices(ct)
        self.instances = axial_display_slices(report.instances)
        self.lesions = {les.id: les for les in report.lesions}

    def figure(self, lesion_id: int, visit: str) -> str:
        lesion = self.lesions[lesion_id]
        png = _key_slice_png(self.ct, self.instances, self.display, lesion)
        caption = (
            f"{visit} lesion {lesion_id}: long axis {lesion.longest_diameter_mm:.1f} mm (cyan), short axis "
            f"{lesion.short_axis_mm:.1f} mm (yellow), {lesion.volume_ml:.2f} ml"
        )
        return f'<figure>{_img(png, f"{visit} lesion {lesion_id}")}<figcaption>{_esc(caption)}</figcaption></figure>'


def _num(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{float(value):.{digits}f}{unit}"


def _pairs_table(pairs: list[dict[str, Any]]) -> str:
    head = (
        '<tr><th class="t">status</th><th>baseline</th><th>follow-up</th><th class="t">target</th><th>long axis (mm)</th>'
        "<th>change (mm, %)</th><th>short axis (mm)</th><th>volume (ml)</th><th>volume change (%)</th><th>doubling time (days)</th>"
        '<th class="t">matched by</th></tr>'
    )
    rows = []
    for p in pairs:
        rows.append(
            f'<tr data-status="{_esc(p["status"])}"><td class="t">{_esc(p["status"])}</td>'
            f"<td>{_esc(', '.join(map(str, p['baseline_ids'])) or '-')}</td><td>{_esc(', '.join(map(str, p['followup_ids'])) or '-')}</td>"
            f'<td class="t">{"yes" if p.get("target") else ""}</td>'
            f"<td>{_num(p['baseline_long_axis_mm'])} &rarr; {_num(p['followup_long_axis_mm'])}</td>"
            f"<td>{_num(p['long_axis_change_mm'])}, {_num(p['long_axis_change_percent'], 0, ' %')}</td>"
            f"<td>{_num(p['baseline_short_axis_mm'])} &rarr; {_num(p['followup_short_axis_mm'])}</td>"
            f"<td>{_num(p['baseline_volume_ml'], 2)} &rarr; {_num(p['followup_volume_ml'], 2)}</td>"
            f"<td>{_num(p['volume_change_percent'], 0, ' %')}</td><td>{_num(p['volume_doubling_time_days'], 0)}</td>"
            f'<td class="t">{_esc(p["match_method"] or "-")}</td></tr>'
        )
    return f'<table id="pairs">{head}{"".join(rows)}</table>'


def followup_html(doc: dict[str, Any], baseline_ct: Volume, followup_ct: Volume, baseline: LesionReport, followup: LesionReport) -> str:
    """The report as one HTML string.

    Args:
        doc: the followup.json document (:func:`lungtumor.followup.followup`).
        baseline_ct, followup_ct: the two CTs.
        baseline, followup: each scan's lesions, measured on its own grid.
    """
    from lungtumor import __version__

    recist = doc["recist"]
    reg = doc["registration"]
    scan_b, scan_f = _Scan(baseline_ct, baseline), _Scan(followup_ct, followup)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Follow-up report</title>',
        f"<style>{_CSS}{_EXTRA_CSS}</style></head><body>",
        "<h1>Follow-up report (RECIST 1.1)</h1>",
        f'<p class="note">lungtumor {_esc(__version__)}, generated {_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}. '
        "Research software, not a medical device.</p>",
        f'<p><span class="cat" id="category">{_esc(doc["response"])}</span> {_esc(doc["response_name"])}</p>',
        f'<p id="disclaimer"><b>{_esc(doc["disclaimer"])}</b></p>',
    ]
    for warning in doc["warnings"]:
        parts.append(f'<p class="warn">Warning: {_esc(warning)}</p>')
    parts.append("<ul>" + "".join(f"<li>{_esc(s)}</li>" for s in doc["statements"]) + "</ul>")
    inputs = doc["inputs"]
    dates = doc["dates"]
    parts += [
        '<h2 id="inputs">Scans</h2>',
        _facts_table(
            [
                ("baseline CT", inputs["baseline"]["ct"] or "(in memory)"),
                ("baseline mask", inputs["baseline"]["mask"]),
                ("follow-up CT", inputs["followup"]["ct"] or "(in memory)"),
                ("follow-up mask", inputs["followup"]["mask"]),
                ("dates", f"{dates['baseline'] or '?'} -> {dates['followup'] or '?'} ({dates['interval_days'] if dates['interval_days'] is not None else '?'} days, {dates['source'] or 'unknown'})"),
            ],
            "scan-facts",
        ),
        '<h2 id="alignment">Alignment</h2>',
        f'<p class="{"" if reg["ok"] else "bad"}">{_esc(reg["statement"])}</p>',
        _facts_table(
            [
                ("method", reg.get("method", "-")),
                ("lung Dice after / before", f"{_num(reg['lung_dice'], 3)} / {_num(reg['lung_dice_before'], 3)} (implausible below {reg['min_lung_dice']:g})"),
                ("rotation (degrees)", _num(reg["rotation_deg"], 2)),
                ("translation (mm, RAS+)", ", ".join(f"{v:.1f}" for v in reg["translation_mm_ras"])),
                ("final metric value", _num(reg["metric_value"], 4)),
                ("used for matching", reg["used_for_matching"]),
            ],
            "alignment-facts",
        ),
        '<h2 id="recist">RECIST 1.1</h2>',
        f"<p>{_esc(recist['organ_counting'])}.</p>",
    ]
    if recist["targets"]:
        rows = "".join(
            f"<tr><td>{t['baseline_id']}</td><td>{_num(t['baseline_long_axis_mm'])}</td><td>{_num(t['followup_long_axis_mm'])}</td>"
            f'<td class="t">{_esc(t["counted_as"])}</td></tr>'
            for t in recist["targets"]
        )
        sums = recist["sums"]
        parts.append(
            '<table id="targets"><tr><th>target (baseline id)</th><th>baseline (mm)</th><th>follow-up (mm)</th><th class="t">counted as</th></tr>'
            f"{rows}<tr><th>sum</th><th>{_num(sums['baseline_mm'])}</th><th>{_num(sums['followup_mm'])}</th>"
            f'<td class="t">change {sums["change_mm"]:+.1f} mm ({sums["change_percent"]:+.1f} %)</td></tr></table>'
        )
    parts.append('<ol id="steps">' + "".join(f"<li>{_esc(s)}</li>" for s in recist["steps"]) + "</ol>")
    parts.append(
        '<table id="rules"><tr><th class="t">rule</th><th class="t">applies</th><th class="t">why</th></tr>'
        + "".join(f'<tr><td class="t">{_esc(r["rule"])}</td><td class="t">{"yes" if r["fired"] else "no"}</td><td class="t">{_esc(r["why"])}</td></tr>' for r in recist["rules"])
        + "</table>"
    )
    if recist["non_targets"]:
        parts.append("<p>Non-target lesions: " + _esc("; ".join(f"{n['baseline_id']} ({n['followup_status']})" for n in recist["non_targets"])) + ".</p>")
    if recist["new_lesions"]:
        parts.append(
            "<p>New lesions: "
            + _esc("; ".join(f"{n['followup_id']} ({n['longest_diameter_mm']:.1f} mm, {'measurable' if n['measurable'] else 'not measurable'})" for n in recist["new_lesions"]))
            + ".</p>"
        )
    parts.append(f'<h2 id="lesions">Lesions ({len(doc["pairs"])} groups)</h2>')
    parts.append(_pairs_table(doc["pairs"]))
    parts.append('<h2 id="key-slices">Key slices, baseline | follow-up</h2>')
    shown = 0
    for index, pair in enumerate(doc["pairs"]):
        if shown >= MAX_LESION_FIGURES:
            parts.append(f"<p>Key slices of the first {MAX_LESION_FIGURES} groups only; the table lists all.</p>")
            break
        shown += 1
        figures = [scan_b.figure(i, "baseline") for i in pair["baseline_ids"]]
        if not pair["baseline_ids"]:
            figures.append('<figure><p class="none">not at baseline (new)</p></figure>')
        figures += [scan_f.figure(j, "follow-up") for j in pair["followup_ids"]]
        if not pair["followup_ids"]:
            figures.append('<figure><p class="none">gone at follow-up</p></figure>')
        title = f"{pair['status']}: baseline {pair['baseline_ids'] or '-'} / follow-up {pair['followup_ids'] or '-'}"
        parts.append(f'<div class="pair" id="pair-{index}"><h3>{_esc(title)}</h3>{"".join(figures)}</div>')
    parts.append(
        f'<p class="note">Lung window {LUNG_WINDOW_HU[0]:g}/{LUNG_WINDOW_HU[1]:g} HU; radiological convention (the patient\'s right on '
        f"the image's left); each lesion measured on its own scan's grid. Coordinates: {_esc(doc['coordinate_system'])}.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
