"""Tests for lungtumor.model: shapes, the seed's parameter count and FLOPs, input checks."""

from __future__ import annotations

import pytest
import torch

from lungtumor.errors import ConfigError
from lungtumor.model.unet import ModelConfig, UNet, count_parameters, flops_per_slice, padded_size

SIZE = 64


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(width=8),
        ModelConfig(width=8, norm="batch"),
        ModelConfig(width=8, norm="instance"),
        ModelConfig(width=8, upsample="transpose"),
        ModelConfig(width=8, depth=2),
        ModelConfig(width=8, depth=4),
        ModelConfig(width=8, in_channels=3),
        ModelConfig(width=8, out_channels=2, norm="batch", upsample="transpose"),
    ],
)
def test_output_shape(cfg: ModelConfig) -> None:
    model = UNet(cfg)
    x = torch.randn(2, cfg.in_channels, SIZE, SIZE)
    out = model(x)
    assert out.shape == (2, cfg.out_channels, SIZE, SIZE)
    assert torch.isfinite(out).all()


def test_default_is_the_seed_network() -> None:
    model = UNet()
    n = count_parameters(model)
    assert abs(n - 7.78e6) < 0.01e6
    assert n == 7_781_761  # hand count of the seed's layers
    # No normalisation layers, bilinear upsampling, 1x1 head to one channel.
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 1
    assert [e[0].out_channels for e in model.encoders] == [64, 128, 256, 512]
    assert [d[0].in_channels for d in model.decoders] == [768, 384, 192]


def test_flops_match_torch_counter() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    assert flops_per_slice(ModelConfig(), 256, 256) == pytest.approx(84.64e9, rel=1e-3)
    for cfg in (ModelConfig(width=8), ModelConfig(width=8, depth=2, upsample="transpose", in_channels=3)):
        model = UNet(cfg)
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, cfg.in_channels, SIZE, SIZE))
        assert flops_per_slice(cfg, SIZE, SIZE) == counter.get_total_flops()
    with pytest.raises(ConfigError, match="pad to"):
        flops_per_slice(ModelConfig(), 100, 256)


def test_non_divisible_input_names_padded_size() -> None:
    model = UNet(ModelConfig(width=8))
    with pytest.raises(ConfigError, match=r"\(60, 70\).*2\*\*depth = 8.*pad to \(64, 72\)"):
        model(torch.zeros(1, 1, 60, 70))
    assert padded_size(60, 70, 8) == (64, 72)


def test_wrong_channels_and_rank() -> None:
    model = UNet(ModelConfig(width=8))
    with pytest.raises(ConfigError, match="3 channels.*in_channels=1"):
        model(torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(ConfigError, match="4D"):
        model(torch.zeros(1, SIZE, SIZE))


def test_config_round_trip_and_validation() -> None:
    cfg = ModelConfig(width=16, depth=4, norm="instance", upsample="transpose", in_channels=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model config keys"):
        ModelConfig.from_dict({"width": 8, "dropout": 0.1})
    with pytest.raises(ConfigError, match="norm"):
        ModelConfig(norm="group")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="upsample"):
        ModelConfig(upsample="nearest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="depth"):
        ModelConfig(depth=0)


def test_channels_last_bf16_autocast_cpu() -> None:
    torch.manual_seed(0)
    model = UNet(ModelConfig(width=8, norm="batch")).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, SIZE, SIZE).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 1, SIZE, SIZE)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # Same numbers as float32 up to bf16 rounding.
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert torch.allclose(low, ref, atol=0.05 * ref.abs().max().item() + 1e-3)
