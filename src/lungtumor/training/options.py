"""Every option of ``lungtumor train`` in one place: the config type, its validation and its flags.

A field of :class:`TrainConfig` is an option: its metadata holds the help text and how the command
line spells it, and :func:`add_train_arguments` builds the flags from the fields, so a config
field cannot exist without its flag (a test checks it). This module imports neither torch nor
Lightning, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungtumor.config import check_batch_size, check_known_keys, check_threshold
from lungtumor.errors import ConfigError, InputError

#: Probability threshold that turns the sigmoid into a mask (the seed thresholds at 0.5).
DEFAULT_THRESHOLD = 0.5
LR_SCHEDULES = ("constant", "cosine")
LOSSES = ("bce", "dice", "bce+dice")
NORMS = ("none", "batch", "instance")
UPSAMPLES = ("bilinear", "transpose")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
#: ``--crop-overlap``: what a crop of a training or validation patient does (``training/crops.py``).
CROP_OVERLAPS = ("refuse", "exclude")
#: ``--negative-weighting``: how tumour-free slices are drawn (``training/data.py``).
NEGATIVE_WEIGHTINGS = ("uniform", "lung")
#: ``--phantom-size``: the phantom scans' size (:func:`lungtumor.phantom.dataset.write_phantom_dataset`).
PHANTOM_SIZES = ("FULL", "SMALL")
#: ``--compile`` / ``--fused-adam``: ``auto`` turns the lever on where it pays (a CUDA device), off elsewhere.
SWITCHES = ("auto", "on", "off")
#: Fields that are positional arguments or folders of the command, not ``--flags``.
POSITIONAL_FIELDS = ("store", "out")
#: Fields only a config file can set (structured values).
CONFIG_FILE_ONLY_FIELDS = ("augment_options", "copy_paste_options")


def count_or_fraction(text: str) -> int | float:
    """Lightning's convention: an integer is a number of batches, a float a fraction."""
    try:
        return int(text) if text.strip().lstrip("+").isdigit() else float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a count (e.g. 10) or a fraction (e.g. 0.5), got {text!r}") from exc


def _opt(default: Any, help_: str, *, type_: Callable[[str], Any] | None = None, flag: str | None = None, **kw: Any) -> Any:
    """A dataclass field with its command-line help (``flag``: ``store_false`` spelling for booleans)."""
    meta = {"help": help_, "type": type_, "flag": flag}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``lungtumor train``. The defaults are the seed's recipe.

    ``None`` for ``precision`` means bfloat16 mixed where the hardware supports it, else 32-bit.
    ``augment_options`` overrides fields of :class:`~lungtumor.training.augment.AugmentConfig` (e.g.
    ``{"rotate_deg": 15, "elastic_p": 0}``; config files only), ``copy_paste_options`` those of
    :class:`~lungtumor.training.copy_paste.CopyPasteConfig` (config files only; ``copy_paste_rate`` and
    ``lesion_dir`` are flags). Values are validated when the config
    is built, so a bad option is a one-line :class:`~lungtumor.errors.ConfigError`, never a
    traceback in the middle of training.
    """

    store: str = _opt("", "slice store from `lungtumor preprocess`")
    out: str = _opt("", "run folder (checkpoints, logs, curves)")
    epochs: int = _opt(30, "epochs (default 30, the seed's)", type_=int)
    lr: float = _opt(1e-4, "Adam learning rate (default 1e-4)", type_=float)
    lr_schedule: str = _opt("constant", "constant (default, the seed's) or cosine (decays to 0 at the last planned step)")
    batch_size: int = _opt(8, "slices per batch (default 8)", type_=int)
    lr_scale_batch: int | None = _opt(
        None,
        "linear learning-rate scaling (Goyal et al. 2017): the learning rate used is --lr x --batch-size / this reference "
        "batch (e.g. --lr 1e-4 --lr-scale-batch 32 --batch-size 128 trains at 4e-4); default off (--lr as given)",
        type_=int,
    )
    loss: str = _opt("bce", "bce (default, the seed's), dice or bce+dice")
    width: int = _opt(64, "U-Net base width (default 64, the seed's)", type_=int)
    depth: int = _opt(3, "number of pools (default 3)", type_=int)
    norm: str = _opt("none", "none (default), batch or instance")
    upsample: str = _opt("bilinear", "bilinear (default) or transpose")
    context: int = _opt(0, "2.5D: neighbouring slices on each side as channels (default 0)", type_=int)
    head_bias: float | None = _opt(
        None,
        "initial bias of the output logit, e.g. -4 (the model starts at p = 0.018, as tumour is rare: the focal-loss "
        "prior initialisation); default PyTorch's own initialisation (the seed's)",
        type_=float,
    )
    size: int | None = _opt(None, "train at this slice size (<= the store's; default the store's)", type_=int)
    augment: bool = _opt(True, "turn augmentation off (copy-paste included)", flag="--no-augment")
    augment_options: dict[str, Any] = _opt({}, "AugmentConfig overrides (config files only)")  # noqa: RUF009
    copy_paste_rate: float = _opt(0.0, "tumour copy-paste: probability that a training slice gets a pasted real lesion (default 0 = off)", type_=float)
    lesion_dir: str | None = _opt(None, "copy-paste: folder of lesion crops (<id>_ct.nii.gz + <id>_label.nii.gz) besides the training cases' own tumours")
    copy_paste_options: dict[str, Any] = _opt({}, "CopyPasteConfig overrides (config files only)")  # noqa: RUF009
    crop_rate: float = _opt(
        0.0,
        "fraction of every training batch that are real lesion crops from --lesion-dir, with their true surroundings "
        "(default 0 = off; sampled by patient; without --lesion-dir the rate is ignored, with one log line)",
        type_=float,
    )
    negative_weighting: str = _opt(
        "uniform",
        "tumour-free slices: uniform (default, the seed's) or lung (weighted by their lung-density pixels: more mid-lung and hilar "
        "slices, fewer apex and base slices; the tumour fraction unchanged)",
    )
    crop_exclude: str | None = _opt(None, "crop samples: patient or crop ids to leave out, comma-separated (e.g. held-out test patients)")
    rescorer_steps: int = _opt(
        0,
        "after training, train the second-stage 3D lesion re-scorer this many steps on the same store and --lesion-dir, "
        "stored in best.ckpt and last.ckpt (default 0 = off; see `lungtumor train-rescorer`)",
        type_=int,
    )
    phantoms: int = _opt(
        0,
        "add this many synthetic phantom chest CTs with tumours to the training cases, preprocessed as the store (built once "
        "into RUN/phantoms; never validation cases; default 0 = off). With few real scans they teach what a tumour is "
        "(BENCHMARKS.md, 'Nodule benchmark')",
        type_=int,
    )
    phantom_size: str = _opt("FULL", "--phantoms: FULL (default: 512-pixel scans, as a chest CT) or SMALL (quick checks)")
    phantom_dir: str | None = _opt(None, "--phantoms: build and reuse the phantom stores in this folder (default RUN/phantoms; cv shares one between its folds)")
    crop_overlap: str = _opt("refuse", "a crop whose patient is a training or validation case of the store: refuse (default) or exclude")
    tumour_fraction: float | None = _opt(None, "target fraction of tumour slices per batch (default: the seed's n_neg/n_pos weights)", type_=float)
    samples_per_epoch: int | None = _opt(None, "draws per epoch (default: number of training slices)", type_=int)
    num_workers: int = _opt(2, "DataLoader workers (default 2)", type_=int)
    accelerator: str = _opt("auto", "Lightning accelerator: auto, cpu, gpu")
    devices: str = _opt("auto", "Lightning devices: auto, N or a list")
    strategy: str = _opt("auto", "Lightning strategy: auto, ddp, ...")
    num_nodes: int = _opt(1, "Lightning nodes", type_=int)
    precision: str | None = _opt(None, "Lightning precision (default bf16-mixed where supported, else 32-true)")
    channels_last: bool = _opt(True, "use the contiguous memory format instead of channels-last", flag="--no-channels-last")
    compile: str = _opt(
        "auto", "torch.compile the U-Net: auto (default: on a CUDA device only; on a CPU the compile costs 20-40 s and gains "
        "nothing here), on, off",
    )
    fused_adam: str = _opt("auto", "Adam's fused kernel: auto (default: on a CUDA device), on, off")
    max_minutes: float | None = _opt(
        None, "stop after this many minutes of training (cuts the schedule on a slow machine: results then depend on its speed)", type_=float
    )
    seed: int = _opt(0, "seed for sampling, augmentation and initialisation", type_=int)
    fold: int | None = _opt(None, "validate on this fold of a seeded k-fold split chosen by this run (default: the store's split)", type_=int)
    folds: int = _opt(5, "number of folds for --fold (default 5)", type_=int)
    split_seed: int = _opt(0, "seed of the k-fold shuffle for --fold (default 0)", type_=int)
    val_cases: int | None = _opt(None, "validate on the last N cases in sorted order, chosen by this run (the seed's preset is 6)", type_=int)
    early_stopping_patience: int | None = _opt(None, "stop after this many validations without improvement of val/dice_case", type_=int)
    limit_train_batches: float | None = _opt(None, "Lightning limit_train_batches (fraction or count)", type_=count_or_fraction)
    limit_val_batches: float | None = _opt(None, "Lightning limit_val_batches (fraction or count)", type_=count_or_fraction)
    image_every_n_steps: int = _opt(50, "TensorBoard image panel every N steps (0 = off)", type_=int)
    log_every_n_steps: int = _opt(10, "log scalars every N steps", type_=int)
    val_every_n_epochs: int = _opt(1, "validate every N epochs", type_=int)
    threshold: float = _opt(DEFAULT_THRESHOLD, "probability threshold of the validation Dice", type_=float)
    fast_dev_run: bool = _opt(False, "one batch of training and validation, to check the set-up", flag="--fast-dev-run")
    progress: bool = _opt(True, "no progress bar", flag="--no-progress")

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        def positive(name: str, *, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"--{_flag(name)} {v}: must be a positive number")

        def non_negative(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"--{_flag(name)} {v}: must be a whole number >= 0")

        def choice(name: str, options: tuple[str, ...]) -> None:
            v = getattr(self, name)
            if v not in options:
                raise ConfigError(f"--{_flag(name)} {v!r}: expected one of {', '.join(options)}")

        check_batch_size(self.batch_size)
        for name in ("epochs", "width", "depth", "num_nodes", "log_every_n_steps", "val_every_n_epochs"):
            positive(name)
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)}: must be a whole number")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr < 0:
            raise ConfigError(f"--lr {self.lr}: must be a number >= 0")
        for name in ("size", "samples_per_epoch", "max_minutes", "early_stopping_patience", "lr_scale_batch"):
            positive(name, allow_none=True)
        for name in ("context", "num_workers", "image_every_n_steps", "seed"):
            non_negative(name)
        if self.fold is not None and self.val_cases is not None:
            raise ConfigError("--fold and --val-cases both given; choose one way to split")
        if self.folds < 2:
            raise ConfigError(f"--folds {self.folds}: need at least 2 folds")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ConfigError(f"--fold {self.fold}: must be in 0..{self.folds - 1}")
        if self.val_cases is not None and self.val_cases < 1:
            raise ConfigError(f"--val-cases {self.val_cases}: must be at least 1")
        choice("lr_schedule", LR_SCHEDULES)
        choice("loss", LOSSES)
        choice("norm", NORMS)
        choice("upsample", UPSAMPLES)
        choice("accelerator", ACCELERATORS)
        choice("compile", SWITCHES)
        choice("fused_adam", SWITCHES)
        if self.lr_scale_batch is not None and (not isinstance(self.lr_scale_batch, int) or isinstance(self.lr_scale_batch, bool)):
            raise ConfigError(f"--lr-scale-batch {self.lr_scale_batch}: must be a whole number of slices (the reference batch)")
        if self.tumour_fraction is not None and not (0.0 < self.tumour_fraction < 1.0):
            raise ConfigError(f"--tumour-fraction {self.tumour_fraction}: must lie strictly between 0 and 1")
        if self.head_bias is not None and not (isinstance(self.head_bias, (int, float)) and math.isfinite(self.head_bias) and -20 <= self.head_bias <= 20):
            raise ConfigError(f"--head-bias {self.head_bias}: must be a logit between -20 and 20 (e.g. -4), or leave it unset")
        check_threshold(self.threshold)
        for name in ("limit_train_batches", "limit_val_batches"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0 or (isinstance(v, float) and v > 1.0)):
                raise ConfigError(f"--{_flag(name)} {v}: expected a count >= 0 or a fraction between 0 and 1")
        if not isinstance(self.augment_options, dict):
            raise ConfigError(f"augment_options: expected a mapping of AugmentConfig fields, found {type(self.augment_options).__name__}")
        if not isinstance(self.copy_paste_options, dict):
            raise ConfigError(f"copy_paste_options: expected a mapping of CopyPasteConfig fields, found {type(self.copy_paste_options).__name__}")
        if not (isinstance(self.copy_paste_rate, (int, float)) and 0.0 <= self.copy_paste_rate <= 1.0):
            raise ConfigError(f"--copy-paste-rate {self.copy_paste_rate}: must be a probability in [0, 1]")
        if not (isinstance(self.crop_rate, (int, float)) and not isinstance(self.crop_rate, bool) and 0.0 <= self.crop_rate < 1.0):
            raise ConfigError(f"--crop-rate {self.crop_rate}: must be a fraction of the batch in [0, 1)")
        non_negative("phantoms")
        choice("phantom_size", PHANTOM_SIZES)
        if isinstance(self.rescorer_steps, bool) or not isinstance(self.rescorer_steps, int) or self.rescorer_steps < 0:
            raise ConfigError(f"--rescorer-steps {self.rescorer_steps}: must be a whole number of steps >= 0 (0 = no re-scorer)")
        choice("crop_overlap", CROP_OVERLAPS)
        choice("negative_weighting", NEGATIVE_WEIGHTINGS)
        if self.lesion_dir and not self.copy_paste_rate and not self.crop_rate and not self.rescorer_steps:
            raise ConfigError(
                f"--lesion-dir {self.lesion_dir}: copy-paste and crop samples are off (--copy-paste-rate 0, --crop-rate 0), so the crops would "
                "not be used; add --crop-rate (e.g. 0.25) or --copy-paste-rate, or drop --lesion-dir"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all options."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (config file, keys already normalised to ``_``); unknown keys are an error."""
        check_known_keys(cls, d, "training option")
        try:
            return cls(**d)
        except TypeError as exc:  # a value of the wrong kind, e.g. a list where a number goes
            raise ConfigError(f"invalid training option ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-able)."""
        return dataclasses.asdict(self)

    @property
    def effective_lr(self) -> float:
        """The learning rate the optimiser gets: ``lr``, or with ``lr_scale_batch`` the linear scaling
        rule ``lr * batch_size / lr_scale_batch`` (a larger batch takes proportionally larger steps)."""
        if self.lr_scale_batch is None:
            return float(self.lr)
        return float(self.lr) * self.batch_size / self.lr_scale_batch


def _flag(name: str) -> str:
    return name.replace("_", "-")


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (keys with '-' become '_')."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) if p.suffix.lower() in (".yaml", ".yml") else json.loads(p.read_text())
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{p}: cannot parse config ({type(exc).__name__}: {first}); use YAML or JSON key: value pairs") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of option: value, found {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def add_train_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per :class:`TrainConfig` field (defaults None: "not given"), except ``exclude``."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in POSITIONAL_FIELDS or f.name in CONFIG_FILE_ONLY_FIELDS or f.name in exclude:
            continue
        meta = f.metadata
        if isinstance(f.default, bool):
            flag = meta.get("flag")
            if not flag:
                raise TypeError(f"boolean option {f.name} needs a flag spelling")  # a programmer error
            parser.add_argument(flag, dest=f.name, action="store_const", const=not f.default, default=None, help=meta["help"])
            continue
        parser.add_argument("--" + _flag(f.name), dest=f.name, type=meta.get("type") or str, default=None, help=meta["help"])


def flags_of_fields() -> dict[str, str]:
    """Field name -> the flag that sets it (for tests and docs)."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in POSITIONAL_FIELDS or f.name in CONFIG_FILE_ONLY_FIELDS:
            continue
        out[f.name] = f.metadata.get("flag") or "--" + _flag(f.name)
    return out
