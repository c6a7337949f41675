"""``lungtumor followup``: two CTs of one patient -> lesions paired, their changes, RECIST 1.1.

baseline CT + follow-up CT (NIfTI files or DICOM series folders, any grids and positions) and a
tumour mask for each (given, or predicted with a checkpoint by :func:`lungtumor.inference.predictor.
segment`, the ``predict`` code path) -> lung regions -> alignment of the follow-up to the baseline
(:mod:`lungtumor.preprocessing.registration`) -> lesions measured on each scan's own grid
(:func:`lungtumor.lesions.recist.measure_lesions`) -> pairs, merges, splits, new and gone
lesions (:mod:`lungtumor.lesions.longitudinal`) -> RECIST 1.1 targets, sums and category
(:mod:`lungtumor.lesions.response`) -> ``followup.json``, ``followup.csv`` and, with ``report``,
``followup.html`` in the output folder (and the predicted masks, when predicted).

Every input is read and checked, and every output rendered in memory, before the first file is
written; each file is written atomically. The output folder must be new, empty, or hold only a
previous follow-up's files (they are replaced; a previous ``followup.html`` that this run does not
write is removed, so the folder never mixes two runs).

Each lesion record holds what a DICOM SR (TID 1500) measurement report needs: a tracking UID
(the same for a lesion matched at both visits), a tracking identifier, both axes' endpoints in RAS+
mm, the axes' lengths and the volume.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import atomic_output, refuse_overwriting_inputs, write_text_atomic
from lungtumor.errors import ConfigError
from lungtumor.io.volume import Volume
from lungtumor.lesions.export import csv_cell

log = logging.getLogger(__name__)

FOLLOWUP_JSON = "followup.json"
FOLLOWUP_CSV = "followup.csv"
FOLLOWUP_HTML = "followup.html"
BASELINE_MASK = "baseline_mask.nii.gz"
FOLLOWUP_MASK = "followup_mask.nii.gz"
#: Every file a follow-up run may write; an output folder holding anything else is refused.
#: DICOM SR (TID 1500) of each visit's measurements, for a DICOM series input (the same tracking UID
#: for a lesion at both visits links them in a PACS viewer).
BASELINE_SR = "baseline_sr.dcm"
FOLLOWUP_SR = "followup_sr.dcm"
OUTPUT_FILES = (FOLLOWUP_JSON, FOLLOWUP_CSV, FOLLOWUP_HTML, BASELINE_MASK, FOLLOWUP_MASK, BASELINE_SR, FOLLOWUP_SR)
FOLLOWUP_FORMAT = "lungtumor-followup"
FOLLOWUP_FORMAT_VERSION = 1
#: DICOM date attributes tried in order for a scan's date.
DATE_ATTRIBUTES = ("StudyDate", "SeriesDate", "AcquisitionDate")
CSV_COLUMNS = (
    "status",
    "baseline_ids",
    "followup_ids",
    "target",
    "match_method",
    "overlap_ml",
    "centroid_distance_mm",
    "baseline_long_axis_mm",
    "followup_long_axis_mm",
    "long_axis_change_mm",
    "long_axis_change_percent",
    "baseline_short_axis_mm",
    "followup_short_axis_mm",
    "short_axis_change_mm",
    "short_axis_change_percent",
    "baseline_volume_ml",
    "followup_volume_ml",
    "volume_change_ml",
    "volume_change_percent",
    "volume_doubling_time_days",
    "tracking_uid",
    "tracking_id",
)


# --------------------------------------------------------------------------------------------
# Inputs


def _name(source: Any, fallback: str) -> str:
    if isinstance(source, Volume):
        return str(source.meta.get("path") or fallback)
    return str(source)


def _read_ct(source: str | os.PathLike[str] | Volume, series_uid: str | None) -> Volume:
    if isinstance(source, Volume):
        return source
    from lungtumor.io.readers import read_volume

    return read_volume(source, series_uid=series_uid)


def _read_mask(source: str | os.PathLike[str] | Volume, ct: Volume, role: str) -> Volume:
    from lungtumor.io.volume import require_same_grid

    if isinstance(source, Volume):
        mask = source
    else:
        from lungtumor.io.nifti import read_nifti

        mask = read_nifti(source)
    require_same_grid(mask, ct, f"{role} mask", f"{role} CT", fix=f"pass the {role} mask made for this {role} CT")
    return mask


def parse_dates(dates: str | tuple[Any, Any] | list[Any] | None) -> tuple[_dt.date, _dt.date] | None:
    """``"YYYY-MM-DD,YYYY-MM-DD"`` (or a pair of dates or strings) -> (baseline, follow-up); None passes through."""
    if dates is None:
        return None
    parts = [p.strip() for p in dates.split(",")] if isinstance(dates, str) else list(dates)
    if len(parts) != 2:
        raise ConfigError(f"--dates {dates!r}: give two dates, baseline then follow-up, as YYYY-MM-DD,YYYY-MM-DD")
    out = []
    for part in parts:
        if isinstance(part, _dt.date):
            out.append(part)
            continue
        try:
            out.append(_dt.date.fromisoformat(str(part)))
        except ValueError:
            raise ConfigError(f"--dates: {part!r} is not a date; write it as YYYY-MM-DD, e.g. 2024-03-01") from None
    return out[0], out[1]


def scan_date(ct: Volume) -> tuple[_dt.date | None, str | None]:
    """(date, DICOM attribute it came from) of a DICOM-read scan; (None, None) when it has none."""
    headers = ct.meta.get("dicom_headers") or ()
    for attribute in DATE_ATTRIBUTES:
        key = attribute.replace("Date", "_date").lower()
        values = [ct.meta.get(key)] + [getattr(h, attribute, None) for h in headers[:1]]
        for value in values:
            text = str(value or "").strip()
            if len(text) >= 8 and text[:8].isdigit():
                try:
                    return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])), attribute
                except ValueError:
                    continue
    return None, None


def _check_out_dir(out: Path, inputs: list[Any]) -> None:
    """Refuse a file, a folder holding other things than a follow-up's outputs, and outputs that are inputs."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; pass a new or empty folder for the follow-up outputs")
    if out.is_dir():
        foreign = sorted(
            p.name for p in out.iterdir() if p.name not in OUTPUT_FILES and not any(p.name.startswith(f".{name}.") for name in OUTPUT_FILES)
        )
        if foreign:
            shown = ", ".join(foreign[:4]) + (" ..." if len(foreign) > 4 else "")
            raise ConfigError(
                f"{out}: holds {shown}, which a follow-up run did not write; pass a new or empty folder (a previous follow-up's outputs are replaced)"
            )
    paths = [p for p in inputs if isinstance(p, (str, os.PathLike))]
    refuse_overwriting_inputs([out / name for name in OUTPUT_FILES], paths, command="lungtumor followup")
    for p in paths:
        if Path(p).resolve() == out.resolve():
            raise ConfigError(f"{out}: this output folder is the input {p}; write to another folder")


def _same_scan(a: Volume, b: Volume, a_src: Any, b_src: Any) -> bool:
    if isinstance(a_src, (str, os.PathLike)) and isinstance(b_src, (str, os.PathLike)) and Path(a_src).resolve() == Path(b_src).resolve():
        return True
    return a.shape == b.shape and np.allclose(a.affine, b.affine) and np.array_equal(a.array, b.array)


def _predict(ct: Volume, models: Any, options: dict[str, Any]) -> Volume:
    from lungtumor.inference.predictor import segment

    mask = segment(ct, models, **options)
    return mask if isinstance(mask, Volume) else mask[0]


# --------------------------------------------------------------------------------------------
# Records


def _uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _lesion_record(lesion: Any, tracking_uid: str, tracking_id: str, targets: list[int] | None) -> dict[str, Any]:
    """The per-lesion record (SR-ready: tracking UID and id, axes' endpoints in RAS+ mm, lengths, volume)."""
    return {
        "id": lesion.id,
        "tracking_uid": tracking_uid,
        "tracking_id": tracking_id,
        "target": None if targets is None else lesion.id in targets,
        "long_axis_ras_mm": [list(p) for p in lesion.long_axis_ras_mm],
        "short_axis_ras_mm": [list(p) for p in lesion.short_axis_ras_mm],
        "long_axis_mm": lesion.longest_diameter_mm,
        "short_axis_mm": lesion.short_axis_mm,
        "volume_ml": lesion.volume_ml,
        "measurable": lesion.measurable,
        "centroid_ras_mm": list(lesion.centroid_ras_mm),
        "slice_index": lesion.slice_index,
        "slice_thickness_mm": lesion.slice_thickness_mm,
        "side": lesion.side,
    }


def _measurement_report(source: Any, records: list[dict[str, Any]], visit: str) -> tuple[Any, str | None]:
    """The visit's DICOM SR (built, not written) when ``source`` is a DICOM series folder with lesions; else
    (None, a statement why none is written, or None for a NIfTI input)."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_dir():
        return None, None
    if not records:
        return None, f"{visit}: no lesion, so no DICOM SR for this visit (a TID 1500 report holds at least one measurement)"
    from lungtumor.io.sr import SRLesion, build_measurement_report

    lesions = [
        SRLesion(
            tracking_uid=r["tracking_uid"], tracking_id=r["tracking_id"],
            long_axis_ras_mm=tuple(tuple(p) for p in r["long_axis_ras_mm"]),
            short_axis_ras_mm=tuple(tuple(p) for p in r["short_axis_ras_mm"]) if r["short_axis_mm"] else None,
            long_axis_mm=float(r["long_axis_mm"]), short_axis_mm=float(r["short_axis_mm"]) if r["short_axis_mm"] else None,
            volume_ml=float(r["volume_ml"]), target=bool(r.get("target")),
        )
        for r in records
    ]
    return build_measurement_report(source, lesions, series_description=f"lungtumor RECIST follow-up ({visit})"), None


def _tracking(groups: list[Any]) -> tuple[dict[int, tuple[str, str]], dict[int, tuple[str, str]], dict[int, list[str]]]:
    """Tracking UIDs and ids: one per baseline lesion, shared by its follow-up lesion when the pair is 1:1;
    merged, split and new follow-up lesions get their own (with the baseline UIDs they derive from)."""
    from lungtumor.lesions.longitudinal import MATCHED, NEW

    base: dict[int, tuple[str, str]] = {}
    follow: dict[int, tuple[str, str]] = {}
    derived: dict[int, list[str]] = {}
    new_count = 0
    for group in groups:
        for bid in group.baseline_ids:
            base[bid] = (_uid(), f"lesion {bid}")
        if group.status == MATCHED:
            follow[group.followup_ids[0]] = base[group.baseline_ids[0]]
        elif group.status == NEW:
            new_count += 1
            follow[group.followup_ids[0]] = (_uid(), f"new lesion {new_count}")
        else:
            names = "+".join(str(b) for b in group.baseline_ids)
            for k, fid in enumerate(group.followup_ids, start=1):
                suffix = f" part {k}" if len(group.followup_ids) > 1 else ""
                follow[fid] = (_uid(), f"lesion {names} ({group.status}){suffix}")
                derived[fid] = [base[b][0] for b in group.baseline_ids]
    return base, follow, derived


def followup_csv_text(pairs: list[dict[str, Any]]) -> str:
    """followup.csv: one row per pair or group (matched, merged, split, gone, new), :data:`CSV_COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in pairs:
        writer.writerow([csv_cell(row.get(c)) for c in CSV_COLUMNS])
    return buffer.getvalue()


def _volume_facts(ct: Volume, mask_source: str, frame: Any) -> dict[str, Any]:
    return {
        "ct": ct.meta.get("path"),
        "mask": mask_source,
        "patient_id": ct.meta.get("patient_id") or None,
        "study_uid": ct.meta.get("study_uid") or None,
        "series_uid": ct.meta.get("series_uid") or None,
        "shape": list(ct.shape),
        "spacing_mm": list(ct.spacing_mm),
        "axcodes": "".join(ct.axcodes),
        "slice_thickness_mm": frame.thickness_mm,
        "affine_ras": ct.affine.tolist(),
    }


# --------------------------------------------------------------------------------------------
# The driver


def followup(
    baseline: str | os.PathLike[str] | Volume,
    followup: str | os.PathLike[str] | Volume,
    out_dir: str | os.PathLike[str],
    *,
    baseline_mask: str | os.PathLike[str] | Volume | None = None,
    followup_mask: str | os.PathLike[str] | Volume | None = None,
    checkpoint: Any = None,
    report: bool = False,
    targets: list[int] | None = None,
    dates: str | tuple[Any, Any] | None = None,
    affine: bool = False,
    match_tolerance_mm: float | None = None,
    lungs_as_one_organ: bool | None = None,
    series_uids: tuple[str | None, str | None] = (None, None),
    threshold: float | None = None,
    min_lesion_ml: float | None = None,
    device: str | None = None,
    alignment: Any = None,
) -> dict[str, Any]:
    """Compare a follow-up CT with its baseline and write the outputs (see the module docstring).

    Args:
        baseline, followup: the two CTs (NIfTI path, DICOM series folder, or a Volume).
        out_dir: output folder (new, empty, or a previous follow-up's).
        baseline_mask, followup_mask: binary tumour masks on each CT's grid (path or Volume);
            a missing one is predicted with ``checkpoint``.
        checkpoint: checkpoint(s) or a ``lungtumor cv`` / ``train`` folder to predict missing masks.
        report: also write ``followup.html``.
        targets: baseline lesion ids chosen as RECIST targets (None: by the rule).
        dates: ``"YYYY-MM-DD,YYYY-MM-DD"`` (baseline, follow-up); default: the DICOM dates.
        affine: refine the rigid alignment with an affine one.
        match_tolerance_mm: centroid tolerance of the matching (default
            :data:`lungtumor.lesions.longitudinal.DEFAULT_TOLERANCE_MM`).
        lungs_as_one_organ: RECIST organ counting (default
            :data:`lungtumor.lesions.response.LUNGS_AS_ONE_ORGAN`).
        series_uids: DICOM series of each input where its folder holds several.
        threshold, min_lesion_ml, device: prediction options (see :func:`~lungtumor.inference.predictor.segment`).
        alignment: an :class:`~lungtumor.preprocessing.registration.Alignment` of these two scans
            computed before (skips the registration; used when re-running with other targets).

    Returns:
        The ``followup.json`` document (with ``written``: the paths written).

    Raises:
        ConfigError: bad options, an output folder holding other files, outputs that are inputs,
            identical scans, dates out of order, invalid targets.
        lungtumor.errors.InputError: unreadable inputs, non-binary masks.
        lungtumor.errors.GeometryError: a mask not on its CT's grid, non-axial slices.
    """
    from lungtumor.lesions.export import json_safe
    from lungtumor.lesions.frame import WORLD_FRAME_TEXT
    from lungtumor.lesions.longitudinal import DEFAULT_TOLERANCE_MM, MATCHING_RULE, VDT_FORMULA, group_record, match_lesions
    from lungtumor.lesions.recist import measure_lesions
    from lungtumor.lesions.response import DISCLAIMER, LUNGS_AS_ONE_ORGAN, assess_response
    from lungtumor.preprocessing.lungs import find_lung_region
    from lungtumor.preprocessing.registration import register_followup

    t0 = time.perf_counter()
    tolerance = DEFAULT_TOLERANCE_MM if match_tolerance_mm is None else float(match_tolerance_mm)
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ConfigError(f"--match-tolerance-mm {match_tolerance_mm}: give a positive distance in mm, e.g. {DEFAULT_TOLERANCE_MM:g}")
    one_organ = LUNGS_AS_ONE_ORGAN if lungs_as_one_organ is None else bool(lungs_as_one_organ)
    given_dates = parse_dates(dates)
    missing_masks = [role for role, m in (("baseline", baseline_mask), ("follow-up", followup_mask)) if m is None]
    if missing_masks and checkpoint is None:
        raise ConfigError(
            f"no {' or '.join(missing_masks)} mask: pass --baseline-mask and --followup-mask, or --checkpoint to predict "
            f"the missing mask(s)"
        )
    out = Path(out_dir)
    inputs = [baseline, followup, baseline_mask, followup_mask]
    _check_out_dir(out, inputs)

    ct_b = _read_ct(baseline, series_uids[0])
    ct_f = _read_ct(followup, series_uids[1])
    if _same_scan(ct_b, ct_f, baseline, followup):
        raise ConfigError(
            f"{_name(baseline, 'baseline')} and {_name(followup, 'follow-up')} are the same scan (same voxels and geometry): "
            "a follow-up compares two visits; pass the later scan as FOLLOWUP"
        )
    warnings: list[str] = []
    statements: list[str] = []
    pid_b, pid_f = str(ct_b.meta.get("patient_id") or ""), str(ct_f.meta.get("patient_id") or "")
    if pid_b and pid_f and pid_b != pid_f:
        warnings.append(
            f"the scans belong to different patients by DICOM PatientID ({pid_b!r} vs {pid_f!r}); the comparison is only meaningful "
            "for one patient: check the inputs"
        )

    # Masks: given (checked against their CT's grid) or predicted (the predict code path).
    mask_sources = {"baseline": "given", "follow-up": "given"}
    masks: dict[str, Volume] = {}
    predicted: dict[str, Volume] = {}
    if baseline_mask is not None:
        masks["baseline"] = _read_mask(baseline_mask, ct_b, "baseline")
        mask_sources["baseline"] = _name(baseline_mask, "baseline mask (in memory)")
    if followup_mask is not None:
        masks["follow-up"] = _read_mask(followup_mask, ct_f, "follow-up")
        mask_sources["follow-up"] = _name(followup_mask, "follow-up mask (in memory)")
    model_facts: dict[str, Any] | None = None
    if missing_masks:
        from lungtumor.inference.predictor import load_ensemble

        models = load_ensemble(checkpoint, device=device)
        options = {"threshold": threshold, "device": device, "postprocess": True, "min_lesion_ml": min_lesion_ml}
        for role, ct, name in (("baseline", ct_b, BASELINE_MASK), ("follow-up", ct_f, FOLLOWUP_MASK)):
            if role in missing_masks:
                predicted[name] = _predict(ct, models, options)
                masks[role] = predicted[name]
                mask_sources[role] = f"predicted ({out / name})"
        model_facts = {
            "checkpoint": [str(c) for c in checkpoint] if isinstance(checkpoint, (list, tuple)) else str(checkpoint),
            "ensemble_members": len(models),
            "threshold": threshold if threshold is not None else models[0].info.get("threshold", 0.5),
            "min_lesion_ml": min_lesion_ml,
        }

    # The baseline's lesions and the targets first: a bad --targets is refused before any long work.
    from lungtumor.lesions.response import choose_targets

    if "baseline" in masks and one_organ:  # (per-lung counting needs the sides, known after the lungs are found)
        choose_targets(measure_lesions(masks["baseline"]).lesions, targets, lungs_as_one_organ=one_organ)

    # Dates.
    date_b, attr_b = scan_date(ct_b)
    date_f, attr_f = scan_date(ct_f)
    if given_dates is not None:
        (date_b, date_f), date_source = given_dates, "--dates"
    else:
        date_source = f"DICOM {attr_b}/{attr_f}" if date_b and date_f else None
        if not (date_b and date_f):
            date_b = date_f = None
            statements.append("no study dates (NIfTI input or DICOM without dates): the volume doubling time needs --dates")
    interval_days: int | None = None
    if date_b and date_f:
        interval_days = (date_f - date_b).days
        if interval_days <= 0:
            raise ConfigError(
                f"the follow-up date {date_f} is not after the baseline date {date_b} ({date_source}); pass the earlier scan as "
                "BASELINE (or correct --dates)"
            )

    # Lungs and alignment.
    lungs_b, lungs_f = find_lung_region(ct_b), find_lung_region(ct_f)
    for region in (lungs_b, lungs_f):
        warnings.extend(region.warnings)
    if alignment is None:
        alignment = register_followup(ct_b, ct_f, baseline_lungs=lungs_b, followup_lungs=lungs_f, affine=affine)
    statements.append(alignment.statement)

    # Lesions, each on its own scan's grid.
    report_b = measure_lesions(masks["baseline"], ct_b, lungs=lungs_b.mask if lungs_b.found else None)
    report_f = measure_lesions(masks["follow-up"], ct_f, lungs=lungs_f.mask if lungs_f.found else None)
    matching = match_lesions(
        report_b, report_f, alignment.matching_followup_to_baseline_ras, use_overlap=alignment.ok, tolerance_mm=tolerance
    )
    if not report_f.lesions:
        statements.append("the follow-up mask has no lesion at all")
    if not any(les.measurable for les in report_b.lesions):
        statements.append("the baseline has no measurable lesion (RECIST 1.1: longest axial diameter >= 10 mm): the response is not evaluable")

    recist = assess_response(report_b.lesions, report_f.lesions, matching.groups, targets=targets, lungs_as_one_organ=one_organ)
    target_ids = [t["baseline_id"] for t in recist["targets"]]
    base_track, follow_track, derived = _tracking(matching.groups)
    baseline_records = [_lesion_record(les, *base_track[les.id], target_ids) for les in report_b.lesions]
    followup_records = []
    for les in report_f.lesions:
        record = _lesion_record(les, *follow_track[les.id], None)
        record["derived_from_tracking_uids"] = derived.get(les.id, [])
        followup_records.append(record)
    pairs = []
    for group in matching.groups:
        row = group_record(group, report_b.lesions, report_f.lesions, interval_days)
        row["target"] = any(b in target_ids for b in group.baseline_ids)
        ids = group.baseline_ids or group.followup_ids
        track = base_track if group.baseline_ids else follow_track
        row["tracking_uid"] = ";".join(track[i][0] for i in ids)
        row["tracking_id"] = ";".join(track[i][1] for i in ids)
        pairs.append(row)
    statements.append(
        f"response {recist['category']} ({recist['category_name']}); {DISCLAIMER}"
    )
    doc = json_safe(
        {
            "format": FOLLOWUP_FORMAT,
            "version": FOLLOWUP_FORMAT_VERSION,
            "response": recist["category"],
            "response_name": recist["category_name"],
            "disclaimer": DISCLAIMER,
            "coordinate_system": WORLD_FRAME_TEXT,
            "statements": statements,
            "warnings": warnings,
            "inputs": {
                "baseline": _volume_facts(ct_b, mask_sources["baseline"], report_b.frame),
                "followup": _volume_facts(ct_f, mask_sources["follow-up"], report_f.frame),
                "model": model_facts,
            },
            "dates": {
                "baseline": date_b.isoformat() if date_b else None,
                "followup": date_f.isoformat() if date_f else None,
                "interval_days": interval_days,
                "source": date_source,
                "volume_doubling_time": VDT_FORMULA,
            },
            "registration": alignment.to_dict(),
            "matching": {
                "rule": MATCHING_RULE,
                "tolerance_mm": tolerance,
                "overlap_used": matching.used_overlap,
                "fallback": not alignment.ok,
                "flag": None if alignment.ok else "centroid distance only: the alignment failed or is implausible (see registration)",
            },
            "lesions": {"baseline": baseline_records, "followup": followup_records},
            "pairs": pairs,
            "followup_to_baseline_ids": {str(k): v for k, v in matching.followup_to_baseline_ids().items()},
            "counts": {
                status: sum(1 for g in matching.groups if g.status == status)
                for status in ("matched", "merged", "split", "merged and split", "gone", "new")
            },
            "recist": recist,
            "seconds": None,
        }
    )
    # DICOM inputs: one TID 1500 report per study, built (and so checked) before anything is written.
    reports_sr = {}
    for name, source, records, visit in ((BASELINE_SR, baseline, baseline_records, "baseline"), (FOLLOWUP_SR, followup, followup_records, "follow-up")):
        sr, why = _measurement_report(source, records, visit)
        if sr is not None:
            reports_sr[name] = sr
        elif why:
            doc["statements"].append(why)
    doc["dicom_sr"] = {name: name for name in reports_sr}
    html_text = None
    if report:
        from lungtumor.reporting.followup import followup_html

        html_text = followup_html(doc, ct_b, ct_f, report_b, report_f)
    doc["seconds"] = time.perf_counter() - t0
    json_text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    csv_text = followup_csv_text(doc["pairs"])

    # Everything is rendered: write (each file atomically), then drop a previous run's extra files.
    from lungtumor.io.nifti import write_nifti

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, mask in predicted.items():
        written.append(write_nifti(mask, out / name, dtype=np.uint8))
    written.append(write_text_atomic(out / FOLLOWUP_CSV, csv_text))
    for name, sr in reports_sr.items():
        with atomic_output(out / name, suffix=".dcm") as tmp:
            sr.save_as(str(tmp), enforce_file_format=True)
        written.append(out / name)
    if html_text is not None:
        with atomic_output(out / FOLLOWUP_HTML, suffix=".tmp") as tmp:
            Path(tmp).write_text(html_text, encoding="utf-8")
        written.append(out / FOLLOWUP_HTML)
    written.append(write_text_atomic(out / FOLLOWUP_JSON, json_text))
    for name in OUTPUT_FILES:
        if out / name not in written and (out / name).exists():
            (out / name).unlink()
    doc["written"] = [str(p) for p in written]
    return doc

