"""Trainer: fast_dev_run, learning, resume, checkpoints with safe loading, config files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from helpers.store import make_store
from lungtumor.errors import CheckpointError, ConfigError
from lungtumor.model.checkpoint import load_model, read_checkpoint
from lungtumor.model.unet import ModelConfig, UNet
from lungtumor.training.losses import make_loss
from lungtumor.training.trainer import TrainConfig, load_config_file, train

FAST = dict(width=4, batch_size=4, num_workers=0, progress=False, image_every_n_steps=2, log_every_n_steps=1)


def test_fast_dev_run(tmp_path) -> None:
    store = make_store(tmp_path)
    summary = train(TrainConfig(store=str(store), out=str(tmp_path / "run"), fast_dev_run=True, **FAST))
    assert summary["global_step"] == 1


def test_head_bias_starts_the_model_at_the_prior(tmp_path) -> None:
    import torch

    from lungtumor.training.module import SegmentationModule

    store = make_store(tmp_path)
    pre = json.loads((store / "store.json").read_text())["preprocess"]
    module = SegmentationModule(model=ModelConfig(width=4).to_dict(), preprocess=pre, head_bias=-4.0)
    assert torch.equal(module.net.head.bias.detach(), torch.full_like(module.net.head.bias, -4.0))
    default = SegmentationModule(model=ModelConfig(width=4).to_dict(), preprocess=pre)
    assert not torch.equal(default.net.head.bias.detach(), module.net.head.bias.detach())


def test_train_writes_checkpoints_logs_curves_and_resumes(tmp_path) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "run"
    cfg = TrainConfig(store=str(store), out=str(run), epochs=2, samples_per_epoch=8, **FAST)
    s1 = train(cfg)
    assert s1["global_step"] == 4 and s1["best_val_dice_case"] is not None
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "curves.png"):
        assert (run / name).exists(), name
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    header = (run / "logs" / "csv" / "session-0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/dice_case" in header and "val/dice_pooled_soft_seed" in header
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["epochs"] == 2 and resolved["precision"] in ("bf16-mixed", "32-true")
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)
    s2 = train(TrainConfig(**{**cfg.__dict__, "epochs": 4}), resume=True)
    assert s2["global_step"] == 8  # continued, not restarted
    ck = read_checkpoint(run / "last.ckpt")
    assert ck["global_step"] == 8 and "optimizer_states" in ck


def test_checkpoint_round_trip_is_safe_and_complete(tmp_path) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "run"
    train(TrainConfig(store=str(store), out=str(run), epochs=1, samples_per_epoch=4, context=1, **FAST))
    loaded = load_model(run / "best.ckpt")
    assert loaded.context == 1 and loaded.preprocess.size == 32
    assert loaded.info["model"]["in_channels"] == 3 and loaded.info["model"]["width"] == 4
    ck = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)
    net = UNet(ModelConfig(**ck["lungtumor"]["model"]))
    x = torch.randn(1, 3, 32, 32)
    net.load_state_dict({k[len("net.") :]: v for k, v in ck["state_dict"].items()})
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), net.eval()(x))


class _Evil:
    def __reduce__(self):  # would run code if unpickled unsafely
        return (print, ("unsafe!",))


def test_corrupt_foreign_and_unsafe_checkpoints_are_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_model(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a lungtumor checkpoint"):
        load_model(foreign)
    evil = tmp_path / "evil.ckpt"
    torch.save({"lungtumor": {"format": "lungtumor-checkpoint"}, "state_dict": {}, "x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        load_model(evil)


def test_config_file_and_unknown_options(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 3\nbatch-size: 2\nloss: bce+dice\n")
    cfg = TrainConfig.from_dict(load_config_file(p))
    assert cfg.epochs == 3 and cfg.batch_size == 2 and cfg.loss == "bce+dice"
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"lr": 0.01}))
    assert TrainConfig.from_dict(load_config_file(j)).lr == 0.01


def test_training_size_must_fit_the_store(tmp_path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(ConfigError, match="larger than the store"):
        train(TrainConfig(store=str(store), out=str(tmp_path / "r"), size=64, **FAST))
    s = train(TrainConfig(store=str(store), out=str(tmp_path / "r2"), size=16, epochs=1, samples_per_epoch=4, **FAST))
    assert load_model(s["best_checkpoint"]).preprocess.size == 16


@pytest.fixture
def one_thread():
    """Pin torch to one thread (tiny convolutions gain nothing from two, and lose a lot when the
    other core is busy), restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_a_small_unet_learns_a_few_phantom_slices(one_thread) -> None:
    """Learning test: a small U-Net fits 4 phantom slices (vessels, heart, tumour) to Dice >= 0.9."""
    from lungtumor.config import PreprocessConfig
    from lungtumor.phantom.dataset import make_case
    from lungtumor.preprocessing.recipe import prepare_ct, prepare_mask

    ct, label = make_case(7, size="SMALL", n_tumours=1)
    cfg = PreprocessConfig(preset="seed", size=64)
    slices = prepare_ct(ct, cfg).slices
    masks = prepare_mask(label, cfg)
    tumour = np.flatnonzero(masks.reshape(len(masks), -1).sum(1) > 0)
    pick = tumour[np.linspace(0, len(tumour) - 1, 4).round().astype(int)]
    x = torch.from_numpy(slices[pick][:, None].copy())
    y = torch.from_numpy(masks[pick][:, None].astype(np.float32))
    torch.manual_seed(0)
    net = UNet(ModelConfig(width=8, depth=3, norm="batch"))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = make_loss("bce+dice")
    dice = 0.0
    for step in range(300):
        net.train()
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if step % 10 == 9:
            net.eval()
            with torch.no_grad():
                pred = (net(x) > 0).float()
            dice = (2 * (pred * y).sum() / (pred.sum() + y.sum())).item()
            if dice >= 0.9:
                break
    assert dice >= 0.9, f"Dice {dice:.3f} after {step + 1} steps"


def test_last_checkpoint_is_the_last_epoch_even_when_best_stalls(tmp_path) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "run"
    # lr 0: the validation score never improves after the first epoch, so "best" stays at epoch 0
    train(TrainConfig(store=str(store), out=str(run), epochs=3, samples_per_epoch=4, lr=0.0, **FAST))
    assert read_checkpoint(run / "best.ckpt")["epoch"] == 0
    assert read_checkpoint(run / "last.ckpt")["epoch"] == 2


def test_last_checkpoint_exists_without_validation(tmp_path) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "run"
    s = train(TrainConfig(store=str(store), out=str(run), epochs=1, samples_per_epoch=4, val_every_n_epochs=3, **FAST))
    assert s["last_checkpoint"] and read_checkpoint(run / "last.ckpt")["epoch"] == 0


def test_every_config_field_has_its_flag_and_back() -> None:
    import argparse
    import dataclasses

    from lungtumor.training.options import CONFIG_FILE_ONLY_FIELDS, POSITIONAL_FIELDS, add_train_arguments, flags_of_fields

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    dests = {a.dest for a in parser._actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(POSITIONAL_FIELDS) - set(CONFIG_FILE_ONLY_FIELDS)
    assert fields <= dests
    assert set(flags_of_fields()) == fields
    ns = parser.parse_args(["--batch-size", "3", "--no-augment", "--limit-train-batches", "0.5", "--fold", "2"])
    assert (ns.batch_size, ns.augment, ns.limit_train_batches, ns.fold) == (3, False, 0.5, 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0}, {"batch_size": -2}, {"epochs": 0}, {"epochs": -3}, {"lr": -1.0}, {"lr": float("nan")},
        {"num_workers": -1}, {"val_every_n_epochs": 0}, {"limit_train_batches": -1}, {"samples_per_epoch": 0},
        {"samples_per_epoch": -5}, {"accelerator": "tpu"}, {"threshold": 2.0}, {"max_minutes": -1.0},
        {"tumour_fraction": 1.5}, {"fold": 5}, {"fold": 1, "val_cases": 2}, {"loss": "focal"},
        {"head_bias": 50.0}, {"head_bias": float("nan")},
    ],
)
def test_bad_options_are_one_line_config_errors(bad) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(store="s", out="o", **bad)
    assert "\n" not in str(info.value) and str(info.value).startswith("--")


def test_checkpoint_records_the_runs_split_and_resume_refuses_changes(tmp_path) -> None:
    store = make_store(tmp_path, n=4, val_cases=1)
    run = tmp_path / "run"
    cfg = TrainConfig(store=str(store), out=str(run), epochs=1, samples_per_epoch=4, fold=1, folds=2, **FAST)
    train(cfg)
    split = read_checkpoint(run / "last.ckpt")["lungtumor"]["split"]
    assert split["source"] == "run" and split["fold"] == 1 and split["folds"] == 2
    assert len(split["val"]) == 2 and not set(split["val"]) & set(split["train"])
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="different model"):
        train(TrainConfig(**{**cfg.__dict__, "epochs": 2, "width": 8}), resume=True)
    with pytest.raises(ConfigError, match="validation cases"):
        train(TrainConfig(**{**cfg.__dict__, "epochs": 2, "fold": 0}), resume=True)
    assert (run / "config.yaml").read_bytes() == before  # nothing written by the refused resumes


@pytest.mark.slow
def test_ddp_validation_is_sharded_and_reduces_to_the_single_process_dice(tmp_path) -> None:
    """Two gloo ranks each score half of the validation slices; the reduced per-case Dice equals one process's.

    lr = 0 keeps the weights at their seeded initialisation in both runs, so any difference
    would come from the sharding or the reduce (counting a slice twice, or missing one).
    """
    import subprocess
    import sys

    store = make_store(tmp_path, n=4, val_cases=2)
    common = ["--epochs", "1", "--samples-per-epoch", "4", "--lr", "0", "--width", "4", "--batch-size", "2",
              "--num-workers", "0", "--no-progress", "--accelerator", "cpu", "--precision", "32-true", "--threshold", "0.45"]
    results = {}
    # One process in this one (the same options as the flags below), two through the CLI's DDP launcher.
    train(TrainConfig(store=str(store), out=str(tmp_path / "one"), epochs=1, samples_per_epoch=4, lr=0.0, width=4, batch_size=2,
                      num_workers=0, progress=False, accelerator="cpu", precision="32-true", threshold=0.45, devices="1"))
    for name, extra in (("one", None), ("two", ["--devices", "2", "--strategy", "ddp"])):
        run = tmp_path / name
        if extra is not None:
            proc = subprocess.run(
                [sys.executable, "-m", "lungtumor.cli", "train", str(store), "--out", str(run), *common, *extra],
                capture_output=True, text=True, timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
            )
            assert proc.returncode == 0, proc.stderr[-2000:]
        callbacks = read_checkpoint(run / "best.ckpt")["callbacks"]
        results[name] = float(next(v["best_model_score"] for k, v in callbacks.items() if "val/dice_case" in k))
        rows = (run / "logs" / "csv" / "session-0" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        scored = [float(r.split(",")[header.index("val/slices_scored")]) for r in rows[1:] if r.split(",")[header.index("val/slices_scored")]]
        assert scored == [2 * 40 - 2 * 30]  # two validation cases of 40 slices, 30 dropped each: every slice once
    assert 0.0 < results["one"] < 1.0  # a Dice that sharding errors would move
    assert results["two"] == pytest.approx(results["one"], abs=1e-6)


@pytest.mark.slow
def test_resume_after_an_interruption_mid_epoch_matches_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    """Ctrl-C in the middle of epoch 2, then --resume: same step count and the same weights as one run.

    The sampler redraws from seed + epoch and the augmentation from the global step, so the resumed
    run repeats exactly the batches the interrupted epoch had started.
    """
    from lungtumor.training.module import SegmentationModule

    store = make_store(tmp_path, n=4, val_cases=1)
    opts = dict(store=str(store), epochs=3, samples_per_epoch=8, seed=3, **FAST)
    full = train(TrainConfig(out=str(tmp_path / "full"), **opts))
    original = SegmentationModule.training_step

    def interrupting(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "cut"), **opts))
    monkeypatch.setattr(SegmentationModule, "training_step", original)
    assert read_checkpoint(tmp_path / "cut" / "last.ckpt")["global_step"] == 2  # the end of epoch 1
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), **opts), resume=True)
    assert resumed["global_step"] == full["global_step"] == 6
    a = read_checkpoint(tmp_path / "full" / "last.ckpt")["state_dict"]
    b = read_checkpoint(tmp_path / "cut" / "last.ckpt")["state_dict"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_non_finite_loss_stops_training_with_one_clear_error(tmp_path, monkeypatch) -> None:
    from lungtumor.training.module import SegmentationModule

    store = make_store(tmp_path)
    original = SegmentationModule._step

    def nan_step(self, batch, stage):
        loss, logits = original(self, batch, stage)
        return loss * float("nan"), logits

    monkeypatch.setattr(SegmentationModule, "_step", nan_step)
    with pytest.raises(ConfigError, match="not finite|non-finite"):
        train(TrainConfig(store=str(store), out=str(tmp_path / "run"), epochs=1, samples_per_epoch=8, **FAST))
    assert not (tmp_path / "run" / "best.ckpt").exists()
