"""Resumable folders: atomic checkpoints, recovery from a damaged last.ckpt, one writer per run
folder, recorded options refused when they change."""

from __future__ import annotations

import errno

import pytest
import torch

from helpers.store import make_store
from lungtumor.cli import EXIT_USER_ERROR, main
from lungtumor.errors import ConfigError
from lungtumor.model import checkpoint as ckpt_mod
from lungtumor.model.checkpoint import PREVIOUS_LAST, read_checkpoint, save_checkpoint_file
from lungtumor.runstate import check_recorded_config, exclusive_folder_lock, record_config
from lungtumor.training.trainer import TrainConfig, train

FAST = dict(width=4, batch_size=4, num_workers=0, progress=False, image_every_n_steps=0, log_every_n_steps=1)


def _disk_full_after(n_bytes: int):
    """A checkpoint serialiser that writes ``n_bytes`` and then fails as a full disk does."""

    def dump(obj, fh) -> None:
        fh.write(b"\x50\x4b" * (n_bytes // 2))
        raise OSError(errno.ENOSPC, "No space left on device")

    return dump


def test_a_checkpoint_write_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    save_checkpoint_file({"step": 1}, target)
    good = target.read_bytes()
    monkeypatch.setattr(ckpt_mod, "_dump", _disk_full_after(1000))
    with pytest.raises(OSError) as info:
        save_checkpoint_file({"step": 2}, target, keep_previous=PREVIOUS_LAST)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)  # names the target, not the temporary
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no hidden temporary, no previous copy
    monkeypatch.undo()
    save_checkpoint_file({"step": 3}, target, keep_previous=PREVIOUS_LAST)
    assert torch.load(target, weights_only=True) == {"step": 3}
    assert torch.load(tmp_path / PREVIOUS_LAST, weights_only=True) == {"step": 1}  # one previous kept


def test_disk_full_during_training_then_resume_recovers(tmp_path, monkeypatch, caplog) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "run"
    cfg = TrainConfig(store=str(store), out=str(run), epochs=1, samples_per_epoch=4, **FAST)
    first = train(cfg)
    step = first["global_step"]
    # The disk fills up while the next epoch's checkpoints are written.
    monkeypatch.setattr(ckpt_mod, "_dump", _disk_full_after(4096))
    with pytest.raises(OSError):
        train(TrainConfig(**{**cfg.__dict__, "epochs": 2}), resume=True)
    monkeypatch.undo()
    assert read_checkpoint(run / "last.ckpt")["global_step"] == step  # the good one, under its final name
    assert not [p for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    # A last.ckpt truncated by another writer (an older lungtumor, a copy cut short): --resume takes
    # the newest loadable earlier checkpoint and says so.
    data = (run / "last.ckpt").read_bytes()
    (run / "last.ckpt").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        again = train(TrainConfig(**{**cfg.__dict__, "epochs": 2}), resume=True)
    assert again["global_step"] == 2 * step
    assert "resuming from" in caplog.text and "last.ckpt" in caplog.text
    assert read_checkpoint(run / "last.ckpt")["global_step"] == 2 * step
    assert (run / PREVIOUS_LAST).exists()


def test_a_run_with_no_loadable_checkpoint_says_what_to_delete(tmp_path, capsys) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"store: {store}\nout: {run}\n")
    (run / "last.ckpt").write_bytes(b"PK\x03\x04truncated")
    assert main(["train", "--resume", str(run)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "last.ckpt" in err and f"delete the run folder {run}" in err


def test_a_second_train_into_a_busy_run_folder_is_refused(tmp_path, capsys) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "run"
    argv = ["train", str(store), "--out", str(run), "--width", "4", "--batch-size", "4", "--num-workers", "0",
            "--no-progress", "--epochs", "1", "--samples-per-epoch", "4"]
    with exclusive_folder_lock(run, command="lungtumor train"):  # another train holds the folder
        assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(run) in err and "another `lungtumor train`" in err
    assert not (run / "last.ckpt").exists() and not (run / "logs").exists()  # nothing of the loser's written
    assert main(argv) == 0  # once the first is done, the folder is free


def test_recorded_config_check(tmp_path) -> None:
    assert not check_recorded_config(tmp_path, "rec.json", {"folds": 2}, what="thing", fix="do X")
    record_config(tmp_path, "rec.json", {"folds": 2, "clip_hu": (-1024, 3071), "lr": 0.1})
    assert check_recorded_config(tmp_path, "rec.json", {"folds": 2, "clip_hu": [-1024, 3071], "lr": 0.2}, ("folds", "clip_hu"), what="thing", fix="do X")
    assert check_recorded_config(tmp_path, "rec.json", {"folds": 2, "new_option": 1}, what="thing", fix="do X")  # unrecorded keys: not compared
    with pytest.raises(ConfigError, match=r"--folds 2 -> 3, --lr 0.1 -> 0.2\); do X") as info:
        check_recorded_config(tmp_path, "rec.json", {"folds": 3, "lr": 0.2}, what="thing", fix="do X")
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "rec.json").write_text("{trunc")
    with pytest.raises(ConfigError, match="unreadable"):
        check_recorded_config(tmp_path, "rec.json", {}, what="thing", fix="do X")


def test_an_error_in_a_dataloader_worker_is_its_own_one_line_message(tmp_path, capsys) -> None:
    store = make_store(tmp_path)
    for case in sorted((store / "cases").iterdir()):  # the store is damaged after it was made
        data = (case / "image.npy").read_bytes()
        (case / "image.npy").write_bytes(data[: len(data) // 2])
    rc = main(["train", str(store), "--out", str(tmp_path / "run"), "--width", "4", "--batch-size", "4", "--num-workers", "1",
               "--no-progress", "--epochs", "1", "--samples-per-epoch", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_USER_ERROR and err.count("\n") == 0
    assert "image.npy/mask.npy unreadable or truncated" in err and "re-run `lungtumor preprocess`" in err
    assert "Traceback" not in err and "DataLoader worker" not in err
