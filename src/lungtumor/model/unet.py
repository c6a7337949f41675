"""2D U-Net for slice-wise lung tumour segmentation.

The default :class:`ModelConfig` reproduces the seed notebook's network exactly: DoubleConv = (conv3x3 pad 1 + ReLU) x 2 without normalisation,
encoder 1 -> 64 -> 128 -> 256 -> 512 with three 2x2 max-pools, decoder with bilinear x2
upsampling (``align_corners=False``, the default of the seed's ``nn.Upsample``), concatenation
``[upsampled, skip]`` and DoubleConv (512+256 -> 256, 256+128 -> 128, 128+64 -> 64), final 1x1
conv to one logit channel: 7,781,761 parameters.

Layouts: input ``(N, C, H, W)`` with ``C == in_channels``; output logits ``(N, out_channels, H, W)``.
H and W must be divisible by ``2 ** depth`` (no silent cropping or padding inside the model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lungtumor.config import check_known_keys
from lungtumor.errors import ConfigError

NormName = Literal["none", "batch", "instance"]
UpsampleName = Literal["bilinear", "transpose"]

NORM_NAMES: tuple[str, ...] = ("none", "batch", "instance")
UPSAMPLE_NAMES: tuple[str, ...] = ("bilinear", "transpose")

#: Spatial factor of every pooling / upsampling step.
POOL_FACTOR = 2
#: Kernel size of the DoubleConv convolutions (padding keeps the size).
CONV_KERNEL = 3
#: Kernel size of the final projection to logits.
HEAD_KERNEL = 1
#: FLOPs per multiply-accumulate (the usual convention: 1 MAC = 2 FLOPs).
FLOPS_PER_MAC = 2


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the U-Net. The defaults are the seed's network.

    Attributes:
        in_channels: input channels (1 for a single CT slice; more for 2.5D stacks).
        out_channels: output logit channels (1: tumour vs background).
        width: channels of the first level; level ``i`` has ``width * 2**i`` channels.
        depth: number of 2x2 max-pools (the seed: 3, so 4 resolution levels).
        norm: ``none`` (seed), ``batch`` or ``instance`` normalisation after every 3x3 conv.
        upsample: ``bilinear`` (seed, x2, align_corners=False) or ``transpose``
            (``ConvTranspose2d(c, c, 2, stride=2)``).
    """

    in_channels: int = 1
    out_channels: int = 1
    width: int = 64
    depth: int = 3
    norm: NormName = "none"
    upsample: UpsampleName = "bilinear"

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "width", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model config: {name} must be an integer >= 1, got {value!r}")
        if self.norm not in NORM_NAMES:
            raise ConfigError(f"model config: norm must be one of {list(NORM_NAMES)}, got {self.norm!r}")
        if self.upsample not in UPSAMPLE_NAMES:
            raise ConfigError(
                f"model config: upsample must be one of {list(UPSAMPLE_NAMES)}, got {self.upsample!r}"
            )

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (``2 ** depth``)."""
        return POOL_FACTOR**self.depth

    def level_widths(self) -> list[int]:
        """Channels per resolution level, ``width * 2**i`` for ``i = 0 .. depth``."""
        return [self.width * POOL_FACTOR**i for i in range(self.depth + 1)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored in checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Raises:
            ConfigError: on unknown keys or invalid values.
        """
        check_known_keys(cls, d, "model config")
        return cls(**d)


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    """Smallest ``(H', W') >= (h, w)`` with both divisible by ``multiple``."""
    return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    # affine=True so that instance norm has the same learnable scale/shift as batch norm.
    return nn.InstanceNorm2d(channels, affine=True)


class DoubleConv(nn.Sequential):
    """(conv3x3 pad 1 [+ norm] + ReLU) x 2, the U-Net's basic block."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "none") -> None:
        layers: list[nn.Module] = []
        # A bias right before a normalisation layer is cancelled by its mean subtraction,
        # so convs only carry a bias when there is no norm (the seed's case).
        bias = norm == "none"
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, CONV_KERNEL, padding=CONV_KERNEL // 2, bias=bias))
            if norm != "none":
                layers.append(_norm_layer(norm, out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """2D U-Net returning logits. See the module docstring for the architecture.

    Args:
        config: architecture; ``ModelConfig()`` is the seed's network.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        cfg = self.config
        widths = cfg.level_widths()
        self.encoders = nn.ModuleList()
        c_in = cfg.in_channels
        for c in widths:
            self.encoders.append(DoubleConv(c_in, c, cfg.norm))
            c_in = c
        self.pool = nn.MaxPool2d(POOL_FACTOR)
        # Decoder level i (from the bottom up) upsamples widths[i + 1] channels and fuses them
        # with the skip of widths[i] channels.
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(cfg.depth)):
            c_low, c_skip = widths[i + 1], widths[i]
            if cfg.upsample == "transpose":
                self.upsamplers.append(nn.ConvTranspose2d(c_low, c_low, POOL_FACTOR, stride=POOL_FACTOR))
            else:
                self.upsamplers.append(nn.Upsample(scale_factor=POOL_FACTOR, mode="bilinear", align_corners=False))
            self.decoders.append(DoubleConv(c_low + c_skip, c_skip, cfg.norm))
        self.head = nn.Conv2d(widths[0], cfg.out_channels, HEAD_KERNEL)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ConfigError` unless ``x`` is ``(N, in_channels, H, W)`` with H, W divisible.

        Raises:
            ConfigError: wrong rank, channel count, or spatial size not divisible by ``2**depth``.
        """
        cfg = self.config
        if x.ndim != 4:
            raise ConfigError(
                f"U-Net input must be 4D (N, C, H, W), got shape {tuple(x.shape)}; add the batch/channel axes"
            )
        if x.shape[1] != cfg.in_channels:
            raise ConfigError(
                f"U-Net input has {x.shape[1]} channels but the model expects in_channels={cfg.in_channels}; "
                "feed (N, in_channels, H, W) or build the model with a matching in_channels"
            )
        h, w = int(x.shape[-2]), int(x.shape[-1])
        m = cfg.multiple
        if h % m or w % m:
            ph, pw = padded_size(h, w, m)
            raise ConfigError(
                f"U-Net input height/width ({h}, {w}) must be divisible by 2**depth = {m}; pad to ({ph}, {pw})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of slices.

        Args:
            x: ``(N, in_channels, H, W)``, H and W divisible by ``2**depth``.

        Returns:
            Logits ``(N, out_channels, H, W)``.
        """
        self.check_input(x)
        skips: list[torch.Tensor] = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        x = skips.pop()  # the bottleneck is not a skip
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_slice(cfg: ModelConfig, h: int, w: int) -> float:
    """Analytic forward FLOPs (2 x MACs) of the U-Net's convolutions for one ``h x w`` slice.

    Counts every Conv2d / ConvTranspose2d multiply-accumulate; biases, ReLU, pooling,
    normalisation, bilinear upsampling and concatenation are negligible (< 1 %) and left out.
    The seed's network at 256x256 is 84.6 GFLOP (42.3 GMAC).

    Raises:
        ConfigError: if ``h`` or ``w`` is not divisible by ``2**depth``.
    """
    m = cfg.multiple
    if h < 1 or w < 1 or h % m or w % m:
        ph, pw = padded_size(max(h, 1), max(w, 1), m)
        raise ConfigError(f"height/width ({h}, {w}) must be divisible by 2**depth = {m}; pad to ({ph}, {pw})")
    widths = cfg.level_widths()
    k2 = CONV_KERNEL * CONV_KERNEL
    macs = 0
    c_in = cfg.in_channels
    for level, c in enumerate(widths):
        pixels = (h // POOL_FACTOR**level) * (w // POOL_FACTOR**level)
        macs += pixels * k2 * (c_in * c + c * c)
        c_in = c
    for i in reversed(range(cfg.depth)):
        c_low, c_skip = widths[i + 1], widths[i]
        pixels = (h // POOL_FACTOR**i) * (w // POOL_FACTOR**i)
        if cfg.upsample == "transpose":
            # Every output pixel receives exactly one kernel tap per (in, out) channel pair.
            macs += pixels * c_low * c_low
        macs += pixels * k2 * ((c_low + c_skip) * c_skip + c_skip * c_skip)
    macs += h * w * widths[0] * cfg.out_channels * HEAD_KERNEL * HEAD_KERNEL
    return float(FLOPS_PER_MAC * macs)
