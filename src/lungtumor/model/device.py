"""Devices and precision, decided once for training and inference.

bfloat16 is used where the hardware runs it natively: CUDA GPUs that support it, and CPUs whose
oneDNN has bf16 kernels (AVX-512 BF16 or AMX; e.g. AMD Zen 4). Elsewhere (e.g. Zen 3, AVX2 only)
everything runs in float32, because emulated bf16 is slower than float32 there.
"""

from __future__ import annotations

import torch

from lungtumor.errors import ConfigError

#: Device types lungtumor runs on.
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")


def bf16_native(device_type: str) -> bool:
    """True when bfloat16 autocast is native (fast) on ``device_type`` ('cpu' or 'cuda') here."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe
        return False


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (None = default), or a one-line ConfigError a user can act on."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"--device {device!r}: not a device name; use cpu, cuda or cuda:N") from exc
    if dev.type not in SUPPORTED_DEVICE_TYPES:
        raise ConfigError(f"--device {device}: lungtumor runs on {' or '.join(SUPPORTED_DEVICE_TYPES)} only; use --device cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev
