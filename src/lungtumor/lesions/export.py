"""The lesion report's files: lesions.csv, lesions.json and instances.nii.gz (coordinates RAS+ mm)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import write_text_atomic
from lungtumor.errors import InputError
from lungtumor.lesions.components import CONNECTIVITY
from lungtumor.lesions.frame import MAX_SLICE_TILT_DEG, WORLD_FRAME_TEXT, SliceFrame
from lungtumor.lesions.recist import (
    DIAMETER_CONVENTION,
    RECIST_MIN_DIAMETER_MM,
    RECIST_THICK_SLICE_MM,
    RECIST_THICKNESS_FACTOR,
    SIZE_BAND_NAMES,
    LesionReport,
    MeasuredLesion,
)
from lungtumor.lesions.score import LESION_SCORE_TEXT

#: Output file names of :func:`write_lesion_outputs`.
LESIONS_CSV = "lesions.csv"
LESIONS_JSON = "lesions.json"
INSTANCES_NIFTI = "instances.nii.gz"
LESIONS_FORMAT = "lungtumor-lesions"
LESIONS_FORMAT_VERSION = 1


CSV_COLUMNS = (
    "id",
    "voxels",
    "volume_ml",
    "longest_diameter_mm",
    "short_axis_mm",
    "measurable",
    "size_band",
    "slice_axis",
    "slice_index",
    "slice_thickness_mm",
    "side",
    "side_source",
    "centroid_x_ras_mm",
    "centroid_y_ras_mm",
    "centroid_z_ras_mm",
    "long_start_x_ras_mm",
    "long_start_y_ras_mm",
    "long_start_z_ras_mm",
    "long_end_x_ras_mm",
    "long_end_y_ras_mm",
    "long_end_z_ras_mm",
    "short_start_x_ras_mm",
    "short_start_y_ras_mm",
    "short_start_z_ras_mm",
    "short_end_x_ras_mm",
    "short_end_y_ras_mm",
    "short_end_z_ras_mm",
    "bbox_i_min",
    "bbox_j_min",
    "bbox_k_min",
    "bbox_i_max",
    "bbox_j_max",
    "bbox_k_max",
    "hu_mean",
    "hu_max",
    "prob_mean",
    "prob_max",
    "score",
)


def _csv_row(lesion: MeasuredLesion, frame: SliceFrame) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": lesion.id,
        "voxels": lesion.voxels,
        "volume_ml": lesion.volume_ml,
        "longest_diameter_mm": lesion.longest_diameter_mm,
        "short_axis_mm": lesion.short_axis_mm,
        "measurable": lesion.measurable,
        "size_band": lesion.size_band,
        "slice_axis": frame.slice_axis_name,
        "slice_index": lesion.slice_index,
        "slice_thickness_mm": lesion.slice_thickness_mm,
        "side": lesion.side,
        "side_source": lesion.side_source,
        "hu_mean": lesion.hu_mean,
        "hu_max": lesion.hu_max,
        "prob_mean": lesion.prob_mean,
        "prob_max": lesion.prob_max,
        "score": lesion.score,
    }
    for axis, name in enumerate("xyz"):
        row[f"centroid_{name}_ras_mm"] = lesion.centroid_ras_mm[axis]
        for kind, points in (("long", lesion.long_axis_ras_mm), ("short", lesion.short_axis_ras_mm)):
            row[f"{kind}_start_{name}_ras_mm"] = points[0][axis]
            row[f"{kind}_end_{name}_ras_mm"] = points[1][axis]
    for axis, name in enumerate("ijk"):
        row[f"bbox_{name}_min"] = lesion.bbox_ijk_min[axis]
        row[f"bbox_{name}_max"] = lesion.bbox_ijk_max[axis]
    return row


def csv_cell(value: Any) -> str:
    """One CSV cell: None and NaN empty, booleans ``true``/``false``, floats in their shortest
    round-trip form (the CSV equals the JSON), lists joined by ``;``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value)


def lesions_csv_text(report: LesionReport) -> str:
    """lesions.csv as text: one row per lesion, :data:`CSV_COLUMNS`, empty cells for unknowns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for lesion in report.lesions:
        row = _csv_row(lesion, report.frame)
        writer.writerow([csv_cell(row[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """JSON-safe copy: NaN -> null, +-inf -> "inf"/"-inf", numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def lesions_document(report: LesionReport, model_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lesions.json document: conventions, scan geometry, model facts, lesions."""
    facts = dict(model_facts or {})
    return json_safe(
        {
            "format": LESIONS_FORMAT,
            "version": LESIONS_FORMAT_VERSION,
            "coordinate_system": WORLD_FRAME_TEXT,
            "conventions": {
                "instances": f"{CONNECTIVITY}-connected components; ids by decreasing voxel count",
                "diameters": DIAMETER_CONVENTION,
                "axial_slices": "acquired voxel planes whose normal is closest to the patient's superior axis, "
                f"measured physically in that plane; at most {MAX_SLICE_TILT_DEG:g} degrees tilt",
                "measurable": f"RECIST 1.1: longest >= {RECIST_MIN_DIAMETER_MM:g} mm and >= "
                f"{RECIST_THICKNESS_FACTOR:g} x slice thickness where slices are thicker than {RECIST_THICK_SLICE_MM:g} mm",
                "size_bands_mm": list(SIZE_BAND_NAMES),
                "score": facts.get("score_definition") or LESION_SCORE_TEXT,
                "indices": "voxel indices (i, j, k) into the file's array, bbox inclusive; *_ijk endpoints are "
                "continuous (pixel centres at integers)",
            },
            "scan": report.scan,
            "model": facts or None,
            "threshold": facts.get("threshold"),
            "lesion_count": len(report.lesions),
            "lesions": [lesion.to_dict() for lesion in report.lesions],
        }
    )


def write_lesion_outputs(
    report: LesionReport,
    out_dir: str | os.PathLike[str],
    model_facts: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> list[Path]:
    """Write lesions.csv, lesions.json and instances.nii.gz (each atomically) into ``out_dir``.

    Everything is rendered in memory first, so a failure before the first write leaves nothing.

    Args:
        report: from :func:`measure_lesions`.
        out_dir: output folder (created if missing).
        model_facts: checkpoint, preprocessing, threshold, ... recorded in lesions.json.
        extra_files: more files to write into ``out_dir`` (name -> bytes), e.g. report.html.

    Returns:
        The written paths.

    Raises:
        InputError: ``out_dir`` exists and is not a folder.
    """
    from lungtumor.atomic import atomic_output
    from lungtumor.io.nifti import write_nifti

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; pass a folder for the lesion outputs")
    csv_text = lesions_csv_text(report)
    json_text = json.dumps(lesions_document(report, model_facts), indent=2, allow_nan=False) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    written = [write_nifti(report.instances, out / INSTANCES_NIFTI)]
    written.append(write_text_atomic(out / LESIONS_CSV, csv_text))
    written.append(write_text_atomic(out / LESIONS_JSON, json_text))
    for name, data in (extra_files or {}).items():
        with atomic_output(out / name, suffix=".tmp") as tmp:
            Path(tmp).write_bytes(data)
        written.append(out / name)
    return written

