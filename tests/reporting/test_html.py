"""The self-contained HTML report: it parses, its images decode, its table is lesions.json,
its images are radiological, and a headless Chromium renders it (where installed)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from nibabel import orientations as nio

from helpers import affine_for
from lungtumor.cli import main
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.lesions.export import LESIONS_JSON
from lungtumor.reporting.html import LESION_COLOUR, REPORT_HTML, TABLE_DIGITS, write_lesions_folder, write_report

CHROMIUM = Path("/usr/bin/chromium")
#: Seconds a headless Chromium gets to render the report.
CHROMIUM_TIMEOUT_S = 60


class _Report(HTMLParser):
    """Collects images, table cells (by lesion and key) and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.cells: dict[tuple[int, str], str] = {}
        self.text: list[str] = []
        self._row: int | None = None
        self._key: str | None = None
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        elif tag == "tr" and "data-lesion" in a:
            self._row = int(a["data-lesion"])
        elif tag == "td" and self._row is not None and "data-key" in a:
            self._key = a["data-key"]
            self.cells[(self._row, self._key)] = ""
        if tag not in ("img", "meta", "br"):
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._key = None
        elif tag == "tr":
            self._row = None
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._key is not None:
            self.cells[(self._row, self._key)] += data
        if "style" not in self._stack and "title" not in self._stack:
            self.text.append(data)


def _parse(path: Path) -> _Report:
    parser = _Report()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _decode(img: dict[str, str]) -> np.ndarray:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    data = base64.b64decode(img["src"][len(prefix) :], validate=True)
    with Image.open(io.BytesIO(data)) as check:
        check.verify()
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Volume, Path]:
    from lungtumor.phantom.dataset import make_case

    ct, label = make_case(5, "SMALL", n_tumours=2)
    folder = tmp_path_factory.mktemp("phantom")
    ct = Volume(ct.array, ct.affine, {"path": str(write_nifti(ct, folder / "ct.nii.gz"))})
    label = Volume(label.array, label.affine, {"path": str(write_nifti(label, folder / "mask.nii.gz"))})
    return ct, label, folder


def test_report_parses_images_decode_table_equals_json(phantom: tuple[Volume, Volume, Path], tmp_path: Path) -> None:
    ct, mask, _ = phantom
    prob = Volume(mask.array.astype(np.float32) * 0.8, ct.affine)
    facts = {"checkpoint": "runs/a/best.ckpt", "preprocessing": {"size": 256, "skip_inferior_slices": 30}, "threshold": 0.5}
    report, files = write_lesions_folder(ct, mask, tmp_path, probabilities=prob, model_facts=facts, html_report=True)
    assert (tmp_path / REPORT_HTML) in files
    parsed = _parse(tmp_path / REPORT_HTML)
    doc = json.loads((tmp_path / LESIONS_JSON).read_text())
    lesions = doc["lesions"]
    assert len(lesions) == len(report.lesions) >= 1
    # Two overview images plus one key slice per lesion, every one a real PNG with content.
    assert len(parsed.images) == 2 + len(lesions)
    for img in parsed.images:
        pixels = _decode(img)
        assert pixels.shape[0] > 50 and pixels.shape[1] > 50 and pixels.std() > 5
    # Every number in the table is the lesions.json number, rounded as the table says.
    for lesion in lesions:
        row = lesion["id"]
        assert parsed.cells[(row, "id")] == str(row)
        for key, digits in TABLE_DIGITS.items():
            value = lesion[key]
            assert parsed.cells[(row, key)] == ("-" if value is None else f"{value:.{digits}f}"), key
        assert parsed.cells[(row, "slice_index")] == str(lesion["slice_index"])
        assert parsed.cells[(row, "measurable")] == ("yes" if lesion["measurable"] else "no")
        assert parsed.cells[(row, "side")] == (lesion["side"] or "-")
        assert parsed.cells[(row, "centroid_ras_mm")] == ", ".join(f"{v:.1f}" for v in lesion["centroid_ras_mm"])
    text = " ".join(parsed.text)
    size = " x ".join(str(n) for n in ct.shape)
    for expected in ("runs/a/best.ckpt", "threshold", "0.5", "LAS", "RAS+", size, "ct.nii.gz"):
        assert expected in text
    html_text = (tmp_path / REPORT_HTML).read_text()
    assert "http://" not in html_text and "https://" not in html_text  # nothing to fetch: opens offline


def test_scan_without_lesions_says_so(phantom: tuple[Volume, Volume, Path], tmp_path: Path) -> None:
    ct, mask, _ = phantom
    empty = Volume(np.zeros(mask.shape, dtype=np.uint8), mask.affine)
    path = write_report(ct, empty, tmp_path)
    parsed = _parse(path)
    assert "No lesions" in " ".join(parsed.text)
    assert len(parsed.images) == 2  # the overview only
    assert not parsed.cells


def _contour_centre(pixels: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of the lesion-outline pixels, as fractions of the image size."""
    red = np.array([int(LESION_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    near = np.abs(pixels.astype(int) - red).sum(axis=-1) < 60
    rows, cols = np.nonzero(near)
    assert rows.size > 10
    return rows.mean() / pixels.shape[0], cols.mean() / pixels.shape[1]


@pytest.mark.parametrize("codes", ["LAS", "RAS", "LPS", "SAL", "PIR"])
def test_images_are_radiological(codes: str, tmp_path: Path) -> None:
    # One lesion on the patient's LEFT and ANTERIOR, written on three orientations of one grid.
    shape = (48, 48, 10)
    ras = affine_for("RAS", spacing=(1.0, 1.0, 3.0), origin=(-23.5, -23.5, 0.0))
    ct = np.full(shape, -1000, dtype=np.int16)
    ct[4:44, 4:44, :] = 40  # soft tissue around
    ct[8:40, 8:40, :] = -850  # the lungs
    mask = np.zeros(shape, dtype=np.uint8)
    mask[8:16, 30:38, 4:7] = 1  # x < 0 (RAS): patient's left; y > 0: anterior
    ct[mask != 0] = 30
    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(codes)))
    aff = ras @ nio.inv_ornt_aff(ornt, shape)
    ct_v = Volume(nio.apply_orientation(ct, ornt), aff)
    mask_v = Volume(nio.apply_orientation(mask, ornt), aff)
    parsed = _parse(write_report(ct_v, mask_v, tmp_path))
    images = {img["alt"]: _decode(img) for img in parsed.images}
    row, col = _contour_centre(images["overview axial"])
    assert col > 0.55  # the patient's left on the image's right
    assert row < 0.45  # anterior at the top
    row, col = _contour_centre(images["overview coronal"])
    assert col > 0.55
    assert parsed.cells[(1, "side")] == "left"


def test_cli_report_flag(phantom: tuple[Volume, Volume, Path], tmp_path: Path) -> None:
    _, _, folder = phantom
    out = tmp_path / "les"
    assert main(["lesions", str(folder / "mask.nii.gz"), str(folder / "ct.nii.gz"), "--out", str(out), "--report", "--threshold", "0.4"]) == 0
    assert (out / REPORT_HTML).is_file()
    assert json.loads((out / LESIONS_JSON).read_text())["threshold"] == 0.4
    assert "0.4" in " ".join(_parse(out / REPORT_HTML).text)


@pytest.mark.slow
def test_headless_chromium_screenshot_is_not_blank(phantom: tuple[Volume, Volume, Path], tmp_path: Path) -> None:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} not installed (CI installs Debian's chromium; apt-get install chromium to run this here)")
    from PIL import Image

    ct, mask, _ = phantom
    report = write_report(ct, mask, tmp_path / "r")
    shot = tmp_path / "shot.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        report.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    # Not blank: dark image pixels (the CT figures) and the white page both occupy real area.
    grey = pixels.mean(axis=-1)
    assert (grey < 60).mean() > 0.02 and (grey > 240).mean() > 0.2
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200


def test_oblique_and_single_slice_scans_render(tmp_path: Path) -> None:
    shape = (40, 36, 6)
    ct = np.full(shape, -800, dtype=np.int16)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[10:18, 12:20, 2:4] = 1
    parsed = _parse(write_report(Volume(ct, affine_for("oblique")), Volume(mask, affine_for("oblique")), tmp_path / "oblique"))
    assert len(parsed.images) == 3
    one = (slice(None), slice(None), slice(2, 3))
    flat = _parse(write_report(Volume(ct[one], affine_for("LAS")), Volume(mask[one], affine_for("LAS")), tmp_path / "flat"))
    assert len(flat.images) == 3
    for img in flat.images:
        _decode(img)
