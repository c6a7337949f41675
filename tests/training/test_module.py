"""The LightningModule's speed levers on a CPU: torch.compile and fused Adam (auto = CUDA only),
linear learning-rate scaling, transposed upsampling recorded in the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.store import make_store
from lungtumor.errors import ConfigError
from lungtumor.model.checkpoint import load_model, read_checkpoint
from lungtumor.model.unet import ModelConfig
from lungtumor.training.module import SegmentationModule, compile_net, lever_on, make_optimizer
from lungtumor.training.trainer import TrainConfig, train

FAST = dict(width=4, batch_size=4, num_workers=0, progress=False, image_every_n_steps=0, log_every_n_steps=1)


def test_auto_levers_are_on_for_cuda_only() -> None:
    assert lever_on("auto", "cuda") and not lever_on("auto", "cpu")
    assert lever_on("on", "cpu") and not lever_on("off", "cuda")
    with pytest.raises(ConfigError):
        lever_on("yes", "cpu")


def test_fused_adam_runs_on_a_cpu_and_matches_the_plain_one() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 3)
    b = torch.nn.Linear(8, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 8)
    opts = [make_optimizer(a.parameters(), 1e-2, fused=False), make_optimizer(b.parameters(), 1e-2, fused=True)]
    assert opts[1].defaults["fused"] is True and not opts[0].defaults["fused"]
    for _ in range(3):
        for net, opt in zip((a, b), opts):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_compile_keeps_the_state_dict_names(monkeypatch) -> None:
    """nn.Module.compile in place: a checkpoint of a compiled net loads as an ordinary U-Net."""
    from lungtumor.model.unet import UNet

    net = UNet(ModelConfig(width=2, depth=2))
    before = list(net.state_dict())
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(self))  # the compile itself is not run here
    assert compile_net(net) is net and calls == [net]
    assert list(net.state_dict()) == before


@pytest.mark.parametrize(("mode", "compiled"), [("auto", False), ("on", True), ("off", False)])
def test_compile_option_on_a_cpu(tmp_path, monkeypatch, mode, compiled) -> None:
    """auto resolves to off on a CPU (compiling there costs 20-40 s and gains nothing); on compiles."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    store = make_store(tmp_path)
    train(TrainConfig(store=str(store), out=str(tmp_path / "run"), fast_dev_run=True, compile=mode, accelerator="cpu", **FAST))
    assert calls == (["UNet"] if compiled else [])


def test_fused_adam_option_reaches_the_optimiser(tmp_path) -> None:
    store = make_store(tmp_path)
    pre = json.loads((store / "store.json").read_text())["preprocess"]
    for mode, fused in (("auto", False), ("on", True), ("off", False)):
        module = SegmentationModule(model=ModelConfig(width=2, depth=2).to_dict(), preprocess=pre, fused_adam=mode)
        opt = module.configure_optimizers()
        assert bool(opt.defaults["fused"]) is fused, mode


def test_lr_scale_batch_scales_the_learning_rate_linearly(tmp_path) -> None:
    assert TrainConfig(store="s", out="o", lr=1e-4).effective_lr == 1e-4
    cfg = TrainConfig(store="s", out="o", lr=1e-4, batch_size=128, lr_scale_batch=32)
    assert cfg.effective_lr == pytest.approx(4e-4)
    store = make_store(tmp_path)
    opts = {**FAST, "batch_size": 8}
    train(TrainConfig(store=str(store), out=str(tmp_path / "run"), fast_dev_run=False, epochs=1, limit_train_batches=1, limit_val_batches=1,
                      lr=1e-4, lr_scale_batch=2, **opts))
    ckpt = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ckpt["hyper_parameters"]["lr"] == pytest.approx(4e-4)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(4e-4)
    for bad in (0, -4, 2.5):
        with pytest.raises(ConfigError, match="--lr-scale-batch"):
            TrainConfig(store="s", out="o", lr_scale_batch=bad)


def test_transposed_upsampling_is_recorded_and_old_checkpoints_are_bilinear(tmp_path) -> None:
    store = make_store(tmp_path)
    train(TrainConfig(store=str(store), out=str(tmp_path / "run"), epochs=1, limit_train_batches=1, limit_val_batches=1,
                      upsample="transpose", **FAST))
    loaded = load_model(tmp_path / "run" / "last.ckpt")
    assert loaded.net.config.upsample == "transpose"
    assert isinstance(loaded.net.upsamplers[0], torch.nn.ConvTranspose2d)
    # A checkpoint written before the option existed has no "upsample": the seed's bilinear network.
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    old_model = {k: v for k, v in ckpt["lungtumor"]["model"].items() if k != "upsample"}
    assert ModelConfig.from_dict(old_model).upsample == "bilinear"
