"""Safe checkpoint loading for inference: nothing but the checkpoint is needed.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain Python
containers only, never arbitrary pickled objects, so an untrusted file cannot run code.
Every lungtumor checkpoint embeds, under the key ``"lungtumor"``, the model config, the
preprocessing config of the store it was trained on, and the 2.5D context.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lungtumor.atomic import atomic_output
from lungtumor.config import PreprocessConfig
from lungtumor.errors import CheckpointError
from lungtumor.model.rescorer import RESCORER_KEY, rescorer_from_block

CHECKPOINT_FORMAT = "lungtumor-checkpoint"
CHECKPOINT_VERSION = 1
#: Prefix of the U-Net's parameters inside the LightningModule's state dict.
NET_PREFIX = "net."
#: The previous ``last.ckpt`` of a run, kept (a hard link: no extra space until the next save) so
#: that a resume survives a ``last.ckpt`` damaged by anything but our own atomic writer.
PREVIOUS_LAST = "last.previous.ckpt"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference and everything needed to feed it.

    Attributes:
        net: the U-Net in eval mode.
        preprocess: the preprocessing its training data went through.
        context: neighbouring slices on each side used as channels (2.5D).
        info: the checkpoint's embedded metadata (configs, epoch, metric).
        rescorer: the second-stage lesion re-scorer (:mod:`lungtumor.model.rescorer`) when the
            checkpoint carries one (key ``"rescorer"``), else None.
    """

    net: torch.nn.Module
    preprocess: PreprocessConfig
    context: int
    info: dict[str, Any]
    rescorer: torch.nn.Module | None = None


def checkpoint_metadata(model_cfg: dict[str, Any], preprocess: dict[str, Any], context: int, **extra: Any) -> dict[str, Any]:
    """The plain-dict block embedded in every checkpoint under ``"lungtumor"``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": dict(model_cfg),
        "preprocess": dict(preprocess),
        "context": int(context),
        **extra,
    }


def _dump(obj: Any, fh: Any) -> None:
    """Serialise ``obj`` into the open binary file ``fh`` (one place, so a test can make it fail)."""
    torch.save(obj, fh)


def save_checkpoint_file(obj: dict[str, Any], path: str | os.PathLike[str], *, keep_previous: str | None = None) -> Path:
    """Write a checkpoint atomically on the target's own file system.

    The bytes go to a hidden temporary file in the target's folder, are flushed to the disk
    (``fsync``) and only then renamed over ``path``: a full disk, a crash or a kill leaves the
    previous checkpoint (or none), never a truncated one under the final name. (Lightning's own
    writer stages the file elsewhere and copies it across file systems, which can truncate it.)

    Args:
        obj: the checkpoint dictionary.
        path: the final file.
        keep_previous: a file name in the same folder that receives the checkpoint being replaced
            (a hard link, so no copy; skipped where the file system has none).
    """
    target = Path(path)
    with atomic_output(target, suffix=".tmp") as tmp:
        try:
            with open(tmp, "wb") as fh:
                _dump(obj, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.filename is None:  # a full disk names no file: name the checkpoint being written
                raise OSError(exc.errno, exc.strerror, str(target)) from exc
            raise
        if keep_previous and target.is_file():
            previous = target.with_name(keep_previous)
            staged = target.with_name(f".{keep_previous}.link")
            try:
                staged.unlink(missing_ok=True)
                os.link(target, staged)
                os.replace(staged, previous)
            except OSError as exc:  # no hard links here: the previous one is simply not kept
                staged.unlink(missing_ok=True)
                log.debug("%s: previous checkpoint not kept (%s)", target, exc)
    try:  # the rename itself reaches the disk only with the folder's entry
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check it is ours.

    Raises:
        CheckpointError: missing, corrupt, unsafe or foreign file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found; pass best.ckpt or last.ckpt from a `lungtumor train` run folder")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError, IndexError, KeyError, TypeError, AttributeError) as exc:
        # The safe unpickler rejects a text file or a foreign pickle with any of these.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: not a loadable checkpoint ({first[:200]}); it is corrupt or not a safe PyTorch file — "
            "use a checkpoint written by `lungtumor train`"
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("lungtumor"), dict):
        raise CheckpointError(f"{p}: not a lungtumor checkpoint (no 'lungtumor' metadata); use best.ckpt or last.ckpt from `lungtumor train`")
    meta = ckpt["lungtumor"]
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: unknown checkpoint format {meta.get('format')!r}")
    if int(meta.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {meta.get('version')} is newer than this lungtumor; upgrade lungtumor")
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{p}: checkpoint has no weights (state_dict)")
    return ckpt


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Build the U-Net of a checkpoint and load its weights (safely).

    Raises:
        CheckpointError: see :func:`read_checkpoint`, or weights that do not fit the model.
    """
    from lungtumor.model.unet import ModelConfig, UNet

    ckpt = read_checkpoint(path)
    meta = ckpt["lungtumor"]
    try:
        model_cfg = ModelConfig.from_dict(meta["model"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
    except Exception as exc:
        raise CheckpointError(f"{path}: invalid embedded configuration ({exc})") from exc
    net = UNet(model_cfg)
    state = {k[len(NET_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the embedded model config ({str(exc).splitlines()[0]})") from exc
    bad = [name for name, tensor in net.state_dict().items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"{path}: weights are not finite (NaN or inf in {bad[0]}{' and more' if len(bad) > 1 else ''}); the training diverged — retrain with a lower --lr")
    net.eval().to(device)
    info = {k: v for k, v in meta.items()}
    info["epoch"] = ckpt.get("epoch")
    info["global_step"] = ckpt.get("global_step")
    rescorer = None
    if ckpt.get(RESCORER_KEY) is not None:
        rescorer = rescorer_from_block(ckpt[RESCORER_KEY], str(path))
        info[RESCORER_KEY] = {k: v for k, v in ckpt[RESCORER_KEY].items() if k != "state_dict"}
    return LoadedModel(net=net, preprocess=preprocess, context=int(meta.get("context", 0)), info=info, rescorer=rescorer)
