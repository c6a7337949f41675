"""The input-as-output guard (`refuse_overwriting_inputs`) and the list-option parser, on tiny files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lungtumor.atomic import refuse_overwriting_inputs
from lungtumor.config import parse_list
from lungtumor.errors import ConfigError


def _files(tmp_path: Path) -> tuple[Path, Path]:
    ct = tmp_path / "in" / "ct.nii.gz"
    ct.parent.mkdir()
    ct.write_bytes(b"ct")
    series = tmp_path / "series"
    (series / "sub").mkdir(parents=True)
    for name in ("IMG0001.dcm", "sub/IMG0002.dcm"):
        (series / name).write_bytes(b"slice")
    return ct, series


def test_guard_allows_outputs_beside_and_apart_from_inputs(tmp_path: Path) -> None:
    ct, series = _files(tmp_path)
    ok = [tmp_path / "in" / "ct_mask.nii.gz", tmp_path / "out" / "ct.nii.gz", tmp_path / "series.dcm", tmp_path / "series_out" / "a.dcm"]
    refuse_overwriting_inputs(ok, [ct, series, None], command="lungtumor x")
    refuse_overwriting_inputs([], [ct], command="lungtumor x")


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("in/ct.nii.gz", ["this output is the input"]),
        ("in/../in/ct.nii.gz", ["this output is the input"]),
        ("series/IMG0001.dcm", ["inside the input folder", "write outside it"]),
        ("series/sub/IMG0002.dcm", ["inside the input folder"]),
        ("series/new_mask.nii.gz", ["inside the input folder"]),
        ("series", ["this output is the input"]),
    ],
)
def test_guard_refuses_an_input_or_a_place_inside_an_input_folder(tmp_path: Path, output: str, words: list[str]) -> None:
    ct, series = _files(tmp_path)
    with pytest.raises(ConfigError) as info:
        refuse_overwriting_inputs([tmp_path / output], [ct, series], command="lungtumor x")
    message = str(info.value)
    assert "\n" not in message and "`lungtumor x`" in message
    for word in words:
        assert word in message


def test_guard_sees_links(tmp_path: Path) -> None:
    ct, series = _files(tmp_path)
    (tmp_path / "sym.nii.gz").symlink_to(ct)
    os.link(ct, tmp_path / "hard.nii.gz")
    os.link(series / "sub" / "IMG0002.dcm", tmp_path / "slice.dcm")
    for name, word in (("sym.nii.gz", "is the input"), ("hard.nii.gz", "is the input"), ("slice.dcm", "hard link")):
        with pytest.raises(ConfigError, match=word):
            refuse_overwriting_inputs([tmp_path / name], [ct, series], command="lungtumor x")


def test_parse_list() -> None:
    assert parse_list("a.ckpt", "CHECKPOINT") == ["a.ckpt"]
    assert parse_list(" a , b,,", "CHECKPOINT") == ["a", "b"]
    assert parse_list("0,2", "--only-folds", item=int) == [0, 2]
    for bad in (",", "", " , "):
        with pytest.raises(ConfigError, match="empty list"):
            parse_list(bad, "--only-folds", item=int, example="0,2")
    with pytest.raises(ConfigError, match=r"--only-folds '0,x': 'x' is not valid here.*0,2"):
        parse_list("0,x", "--only-folds", item=int, example="0,2")
