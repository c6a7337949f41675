"""The demo replaces only what it made: its workdir stamp and its phantom sets' stamps (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungtumor.demo import DEMO_DATA_STAMP, DEMO_WORKDIR_STAMP, claim_workdir, phantom_set
from lungtumor.errors import ConfigError


def test_a_new_or_stamped_workdir_is_the_demos(tmp_path: Path) -> None:
    work = tmp_path / "w"
    claim_workdir(work, None)
    assert (work / DEMO_WORKDIR_STAMP).is_file()
    (work / "run").mkdir()
    claim_workdir(work, None)  # its own run folder, from an earlier demo: may be replaced
    legacy = tmp_path / "old"
    (legacy / "data").mkdir(parents=True)
    (legacy / "data" / DEMO_DATA_STAMP).write_text(json.dumps({"cases": 1, "test_cases": 0, "seed": 0}))
    (legacy / "run").mkdir()
    claim_workdir(legacy, None)  # made by a demo before the workdir stamp existed


@pytest.mark.parametrize("part", ["data", "run", "store", "figures"])
def test_a_folder_the_demo_did_not_make_is_refused(tmp_path: Path, part: str) -> None:
    work = tmp_path / "w"
    (work / part).mkdir(parents=True)
    (work / part / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=rf"w/{part}: already exists and the demo did not make it.*another --workdir"):
        claim_workdir(work, None)
    assert not (work / DEMO_WORKDIR_STAMP).exists() and (work / part / "keep.txt").read_text() == "mine"


def test_task_dir_among_the_outputs_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "w"
    with pytest.raises(ConfigError, match="another --workdir"):
        claim_workdir(work, str(work / "store" / "Task06"))
    work.mkdir()
    with pytest.raises(ConfigError, match="inside the input folder"):
        claim_workdir(work, str(work))
    claim_workdir(work, str(work / "data"))  # with --task-dir the demo writes no data/ of its own


def test_phantom_set_refuses_data_it_did_not_stamp(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "imagesTr" / "lung_001.nii.gz").write_bytes(b"a user's scan")
    with pytest.raises(ConfigError, match=rf"{data}: holds data the demo did not make.*another --workdir"):
        phantom_set(data, 1, 0, 0, progress=False)
    assert (data / "imagesTr" / "lung_001.nii.gz").read_bytes() == b"a user's scan"
