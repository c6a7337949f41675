"""RTSTRUCT: ROI contours rasterised onto a CT series grid (even-odd holes; two fill rules)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lungtumor.errors import ConfigError, GeometryError, InputError
from lungtumor.io.dicom import LPS_TO_RAS, RTSTRUCT_MODALITY, RTSTRUCT_SOP_CLASS_UID
from lungtumor.io.volume import Volume

#: Contour type that encloses an area (the only one that is filled).
CLOSED_PLANAR = "CLOSED_PLANAR"
#: A contour may lie this fraction of a slice away from the nearest CT slice centre.
CONTOUR_SLICE_TOLERANCE = 0.25
#: Pixel-centre rule: a voxel is in the ROI when its centre is inside the contour (even-odd).
FILL_CENTRE = "centre"
#: Pillow's ``ImageDraw.polygon`` at voxel coordinates, edge pixels included: the convention the
#: shared NSCLC reference labels were made with (reproduces them exactly). It is biased: about
#: one extra voxel on the low-i and low-j sides, i.e. a half-voxel shift plus a half-voxel growth.
FILL_PILLOW = "pillow"
FILL_RULES = (FILL_CENTRE, FILL_PILLOW)


# --------------------------------------------------------------------------------------------
# RTSTRUCT


def fill_polygons_even_odd(polygons_ij: Sequence[np.ndarray], shape_ij: tuple[int, int]) -> np.ndarray:
    """Fill polygons on a 2D pixel grid with the even-odd rule (holes, XOR of overlaps).

    A pixel centre ``(i, j)`` (integer voxel coordinates) is inside when a ray from it towards
    -i crosses the polygon edges an odd number of times; edges are half-open in j and a centre
    exactly on an edge counts as inside on the low-i side and outside on the high-i side, so two
    polygons sharing an edge never both claim a pixel. Written here instead of matplotlib's
    ``Path.contains_points`` because that rule on the boundary is defined (tests can be exact)
    and all polygons of a slice are filled in one vectorised pass.

    Args:
        polygons_ij: each (N, 2) vertices in voxel coordinates (i, j); closing edge implied.
        shape_ij: (I, J) grid size.

    Returns:
        bool array (I, J).
    """
    n_i, n_j = shape_ij
    toggles = np.zeros((n_i + 1, n_j), dtype=np.int32)
    for poly in polygons_ij:
        poly = np.asarray(poly, dtype=np.float64)
        if poly.ndim != 2 or poly.shape[0] < 3:
            continue  # fewer than 3 vertices enclose no area
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        # Rows j with min(y) <= j < max(y): horizontal edges give none, a vertex is counted once.
        j_start = np.clip(np.ceil(np.minimum(y0, y1)), 0, n_j).astype(np.int64)
        j_stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, n_j).astype(np.int64)
        counts = np.maximum(j_stop - j_start, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(counts)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = j_start[edge] + offsets
        t = (rows - y0[edge]) / (y1[edge] - y0[edge])
        x = x0[edge] + t * (x1[edge] - x0[edge])
        first_inside = np.clip(np.ceil(x), 0, n_i).astype(np.int64)  # pixels i >= x are toggled
        np.add.at(toggles, (first_inside, rows), 1)
    return (np.cumsum(toggles[:n_i], axis=0) & 1).astype(bool)


def fill_polygons_pillow(polygons_ij: Sequence[np.ndarray], shape_ij: tuple[int, int]) -> np.ndarray:
    """Fill polygons as Pillow's ``ImageDraw.polygon`` does (edges included), XOR-ing them.

    Pillow treats pixel ``(x, y)`` as the square ``[x, x+1) x [y, y+1)`` and draws the outline,
    so the result covers more than :func:`fill_polygons_even_odd` on the low-i and low-j sides.
    Kept because the shared reference labels were rasterised this way.

    Args:
        polygons_ij: each (N, 2) vertices in voxel coordinates (i, j).
        shape_ij: (I, J) grid size.

    Returns:
        bool array (I, J).
    """
    from PIL import Image, ImageDraw  # lazy: only this rule needs Pillow

    n_i, n_j = shape_ij
    out = np.zeros((n_i, n_j), dtype=bool)
    for poly in polygons_ij:
        poly = np.asarray(poly, dtype=np.float64)
        if poly.ndim != 2 or poly.shape[0] < 3:
            continue
        image = Image.new("L", (n_i, n_j), 0)  # Pillow's x = i (width), y = j (height)
        ImageDraw.Draw(image).polygon([(float(x), float(y)) for x, y in poly[:, :2]], fill=1, outline=1)
        out ^= np.asarray(image, dtype=bool).T
    return out


def _read_rtstruct(path: Path) -> Dataset:
    if not path.exists():
        raise InputError(f"{path}: RTSTRUCT file not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected the RTSTRUCT .dcm file")
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise InputError(f"{path}: not a DICOM file; pass the RTSTRUCT (structure set) .dcm file") from exc
    except Exception as exc:
        raise InputError(f"{path}: corrupt DICOM file ({type(exc).__name__}: {exc}); re-export the RTSTRUCT") from exc
    modality = str(ds.get("Modality", "") or "")
    if (modality != RTSTRUCT_MODALITY and str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS_UID) or (
        "StructureSetROISequence" not in ds
    ):
        raise InputError(
            f"{path}: is a {modality or 'DICOM'} object, expected an RTSTRUCT with a StructureSetROISequence; "
            "pass the structure-set file (usually the one small non-image .dcm next to the CT slices)"
        )
    return ds


def roi_names(rtstruct_path: str | os.PathLike[str]) -> list[str]:
    """Names of the ROIs in an RTSTRUCT file, in file order."""
    ds = _read_rtstruct(Path(rtstruct_path))
    return [str(r.get("ROIName", "")) for r in ds.StructureSetROISequence]


def rasterize_rtstruct(
    rtstruct_path: str | os.PathLike[str], ct: Volume, roi_name: str, *, rule: str = FILL_PILLOW
) -> Volume:
    """Rasterise one RTSTRUCT ROI onto the CT grid.

    Every CLOSED_PLANAR contour (LPS mm points) is mapped to the CT's voxel coordinates with the
    inverse of its affine, assigned to the nearest slice k and filled in the (i, j) plane with
    the even-odd rule; contours on the same slice are XOR-ed, so inner contours make holes.

    Args:
        rtstruct_path: the RTSTRUCT .dcm file.
        ct: the CT Volume the structure set was drawn on (any orientation; its affine is used).
        roi_name: ROIName to rasterise (exact match, surrounding spaces ignored).
        rule: ``"pillow"`` (default: Pillow's polygon fill, edges included; the convention the
            shared NSCLC reference labels were made with, reproduced voxel for voxel, but about
            half a voxel shifted towards -i/-j) or ``"centre"`` (a voxel is in when its centre
            is inside: unbiased, about 4 % smaller on a 57k-voxel GTV, Dice 0.977 against the
            pillow-filled reference).

    Returns:
        uint8 {0, 1} Volume with the CT's shape and affine.

    Raises:
        ConfigError: unknown ``rule``.
        InputError: not an RTSTRUCT, unknown ROI (the message lists the names), ROI without
            closed contours.
        GeometryError: another frame of reference, or a contour off the CT's slices.
    """
    if rule not in FILL_RULES:
        raise ConfigError(f"unknown fill rule {rule!r}; expected one of {', '.join(FILL_RULES)}")
    fill = fill_polygons_even_odd if rule == FILL_CENTRE else fill_polygons_pillow
    path = Path(rtstruct_path)
    ds = _read_rtstruct(path)
    rois = list(ds.StructureSetROISequence)
    names = [str(r.get("ROIName", "")) for r in rois]
    matches = [r for r, name in zip(rois, names) if name.strip() == roi_name.strip()]
    if not matches:
        raise InputError(f"{path}: no ROI named '{roi_name}'; available: " + ", ".join(f"'{n}'" for n in names))
    if len(matches) > 1:
        raise InputError(f"{path}: {len(matches)} ROIs are named '{roi_name}'; rename them so the name is unique")
    roi = matches[0]
    if roi.get("ROINumber") in (None, ""):
        raise InputError(f"{path}: ROI '{roi_name}' has no ROINumber, so its contours cannot be found; re-export the RTSTRUCT")
    roi_number = int(roi.ROINumber)

    ct_frame = str(ct.meta.get("frame_of_reference_uid", "") or "")
    roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
    if ct_frame and roi_frame and ct_frame != roi_frame:
        raise GeometryError(
            f"{path}: ROI '{roi_name}' is in frame of reference {roi_frame}, the CT in {ct_frame}; "
            "pass the CT series this structure set was drawn on"
        )

    contour_items = [
        c for c in ds.get("ROIContourSequence", []) if int(c.get("ReferencedROINumber", -1)) == roi_number
    ]
    contours = [c for item in contour_items for c in item.get("ContourSequence", [])]
    closed = [c for c in contours if str(c.get("ContourGeometricType", "")).upper() == CLOSED_PLANAR]
    if not closed:
        types = sorted({str(c.get("ContourGeometricType", "")) for c in contours})
        raise InputError(
            f"{path}: ROI '{roi_name}' has no CLOSED_PLANAR contours (found {len(contours)} contours"
            + (f" of type {', '.join(types)}" if types else "")
            + "); choose a structure drawn as closed contours"
        )

    n_i, n_j, n_k = ct.shape
    ras_to_voxel = np.linalg.inv(ct.affine) @ LPS_TO_RAS  # LPS mm -> (i, j, k)
    per_slice: dict[int, list[np.ndarray]] = {}
    for number, contour in enumerate(closed):
        try:
            points_lps = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
        except Exception as exc:
            raise InputError(f"{path}: ROI '{roi_name}' contour {number} has malformed ContourData ({exc})") from exc
        voxels = points_lps @ ras_to_voxel[:3, :3].T + ras_to_voxel[:3, 3]  # (N, 3)
        k_values = voxels[:, 2]
        k = int(np.round(k_values.mean()))
        off_grid = float(np.abs(k_values - k).max())
        if off_grid > CONTOUR_SLICE_TOLERANCE:
            raise GeometryError(
                f"{path}: ROI '{roi_name}' contour {number} lies {off_grid:.2f} slices from the nearest CT slice "
                f"(tolerance {CONTOUR_SLICE_TOLERANCE}); it is not in the plane of a slice of this CT, pass the CT "
                "series the structure set was drawn on"
            )
        if not 0 <= k < n_k:
            raise GeometryError(
                f"{path}: ROI '{roi_name}' contour {number} is at slice {k}, outside the CT's {n_k} slices; "
                "pass the CT series the structure set was drawn on"
            )
        per_slice.setdefault(k, []).append(voxels[:, :2])

    mask = np.zeros(ct.shape, dtype=np.uint8)
    for k, polygons in per_slice.items():
        mask[:, :, k] = fill(polygons, (n_i, n_j))
    meta = {
        "path": str(path),
        "roi_name": names[rois.index(roi)],
        "n_contours": len(closed),
        "fill_rule": rule,
        "ct_path": ct.meta.get("path"),
        "series_uid": ct.meta.get("series_uid"),
    }
    return Volume(mask, ct.affine.copy(), meta)
