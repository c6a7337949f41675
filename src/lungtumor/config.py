"""Configuration dataclasses and named constants (the seed's recipe among them, as the seed preset).

The seed notebook's recipe: HU / 3071, drop the 30 most inferior axial slices, resize every
axial slice to 256x256 (bilinear CT, nearest mask).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The seed divides HU by this (the top of the 12-bit CT range), no clipping, no mean/std.
HU_SCALE = 3071.0
#: The seed drops this many of the most inferior axial slices (lower abdomen).
SEED_SKIP_INFERIOR_SLICES = 30
#: The seed resizes every axial slice to this many pixels square.
SEED_SLICE_SIZE = 256
#: Canonical orientation of every volume before slice logic (nibabel axis codes).
#: ('L','A','S') is the MSD Task06 files' own orientation, so MSD data is not flipped at all,
#: the last axis is axial and index 0 is the most inferior slice.
CANONICAL_AXCODES = ("L", "A", "S")
#: Axis of a (N, C, H, W) canonical ('L','A','S') slice batch that runs along the patient's
#: left-right (H; W is anterior-posterior): TTA and the left-right flip augmentation mirror it.
LEFT_RIGHT_AXIS = -2

def check_known_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise ConfigError when ``d`` has keys that are not fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        from lungtumor.errors import ConfigError

        raise ConfigError(f"unknown {what} keys {sorted(unknown)}; expected a subset of {sorted(known)}")


def check_threshold(value: Any, flag: str = "--threshold") -> float:
    """The probability threshold ``value`` as a float; the one check of every threshold option.

    A voxel is tumour where its probability *exceeds* the threshold (``probability > threshold``,
    in :func:`~lungtumor.inference.predictor.segment`, the slice grid and the validation Dice), so
    only ``0 < t < 1`` means something: 0 would mark nearly every voxel (a sigmoid is 0 only where
    float32 underflows) and 1 none at all (no probability exceeds 1).

    Args:
        value: the threshold (any real number type: Python, numpy).
        flag: the option's name in the error message.

    Raises:
        ConfigError: ``value`` is not a real number strictly between 0 and 1 (or is NaN).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise _config_error(
            f"{flag} {value}: must lie strictly between 0 and 1 (a probability; a voxel is tumour where its "
            "probability exceeds the threshold, so 0 would mark nearly every voxel and 1 none)"
        )
    return float(value)


def check_min_lesion_score(value: Any, flag: str = "--min-lesion-score") -> float:
    """The minimum lesion score ``value`` as a float; the one check of that option.

    Args:
        value: a real number in [0, 1] (0 keeps every lesion).
        flag: the option's name in the error message.

    Raises:
        ConfigError: not a real number in [0, 1] (NaN included).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise _config_error(f"{flag} {value}: must be a lesion score between 0 and 1 (0 keeps every lesion)")
    return float(value)


def check_batch_size(value: Any, flag: str = "--batch-size") -> int:
    """The batch size ``value`` (slices per batch or forward pass) as an int; the one check of every batch size.

    Raises:
        ConfigError: ``value`` is not a whole number >= 1 (a bool or a float such as 4.0 is refused too).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _config_error(f"{flag} {value}: must be a whole number of slices, at least 1")
    return int(value)


def parse_list(text: Any, flag: str, *, item: Callable[[str], Any] = str, example: str = "a,b") -> list[Any]:
    """A comma-separated option value as a list; the one parser of every list option.

    Blank parts are dropped (``"a,,b,"`` is ``a``, ``b``), each part is stripped and converted by
    ``item`` (``int`` for fold numbers). Used by ``predict``'s checkpoint list and ``cv``'s
    ``--only-folds`` (``--output-format`` has its own parser, which also refuses an empty list).

    Raises:
        ConfigError: nothing is left (``","``, ``""``), or a part that ``item`` cannot convert.
    """
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise _config_error(f"{flag} {str(text)!r}: an empty list; give at least one value, e.g. {example}")
    values = []
    for part in parts:
        try:
            values.append(item(part))
        except (TypeError, ValueError):
            raise _config_error(f"{flag} {str(text)!r}: {part!r} is not valid here; expected a comma-separated list such as {example}") from None
    return values


#: Hounsfield units of air, used to pad and as the value outside the body.
HU_AIR = -1000
#: Two volumes are on the same grid when their shapes are equal and their affines agree to this (mm):
#: far below any voxel, above float32 storage and DICOM decimal-string rounding. The one tolerance of
#: :func:`lungtumor.io.volume.require_same_grid`; the looser of the two once used (1e-4 mm in the
#: DICOM-SEG writer and the lung region; no test needs the tighter one).
GRID_ATOL_MM = 1e-3
#: The air/tissue boundary (HU): below it air or aerated lung, above it soft tissue, bone or the table.
#: The body on a slice (its midline, for a lesion's side), the lung density of copy-paste, and the
#: air every chest CT must hold (predict warns when no voxel lies below it).
AIR_TISSUE_HU = -500.0
#: Lung window for display (centre, width) in HU.
LUNG_WINDOW_HU = (-600.0, 1500.0)


#: Lung preset: in-plane target spacing of the model slices (mm). Chosen by measurement, see the grid module.
LUNG_SPACING_MM = 1.5
#: Most voxels one case's resampled slices may hold (2**28 = 268 M: 512 MiB as float16, with float32
#: working copies a few GiB). A 512x512x300 chest CT at 0.5 mm is about 150 M; a spacing far finer
#: than the scan's own (e.g. 0.01 mm, over 100 GiB) is refused before anything is allocated.
MAX_VOXELS_PER_CASE = 1 << 28
#: The in-plane spacings (mm) that make sense for CT model slices, named in the error above.
SENSIBLE_SPACING_MM = (0.5, 3.0)
#: Lung preset: margin around the lung region's box, in-plane and along the body axis (mm; the region itself
#: already reaches 15 mm in-plane and 10 mm along z beyond the lungs' hull).
LUNG_MARGIN_MM = 5.0
#: Lung preset: model slices are padded to a multiple of this (a U-Net with up to 4 pools takes them).
LUNG_PAD_MULTIPLE = 16
#: Lung preset: physical distance between the 2.5D context slices (mm).
LUNG_CONTEXT_STEP_MM = 2.5
#: Lung preset: HU clip before scaling (outside-the-reconstruction-circle values of -2048/-3024 become -1024).
LUNG_CLIP_HU = (-1024.0, 3071.0)
#: Lung-preset-only fields: they must stay None in the seed preset.
_LUNG_ONLY_FIELDS = ("spacing_mm", "margin_mm", "pad_multiple", "input_size_px", "context_step_mm")
#: Per slice-grid preset, the defaults of the fields whose default depends on the preset; a preset
#: that names no lung-only field takes none of them (they stay None). The key order is the order
#: of the names in messages. What each preset does and why: :mod:`lungtumor.preprocessing.presets`.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "seed": {"clip_hu": None},
    "lung": {
        "clip_hu": LUNG_CLIP_HU,
        "spacing_mm": LUNG_SPACING_MM,
        "margin_mm": LUNG_MARGIN_MM,
        "pad_multiple": LUNG_PAD_MULTIPLE,
        "input_size_px": None,
        "context_step_mm": LUNG_CONTEXT_STEP_MM,
    },
}
#: Names of the slice-grid presets.
PRESET_NAMES = tuple(PRESET_DEFAULTS)
#: The preset of ``PreprocessConfig()``, of every API function's default config and of the command line.
DEFAULT_PRESET = "lung"
#: The preset of a stored config that records none (stores and checkpoints written before the presets existed).
UNRECORDED_PRESET = "seed"


class _PresetDefault:
    """Marks a field left unset: it takes its preset's default (:data:`PRESET_DEFAULTS`)."""

    def __repr__(self) -> str:
        return "<preset default>"


#: Default of the fields whose default depends on the preset.
PRESET_DEFAULT: Any = _PresetDefault()


def _config_error(message: str) -> Exception:
    from lungtumor.errors import ConfigError

    return ConfigError(message)


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT volume becomes 2D slices (the slice grid's config). Written into every store and checkpoint.

    Two presets (``preset``): ``lung`` (the default, of the API and of ``lungtumor preprocess``,
    ``cv`` and the demo alike: physical and lung-aware: crop to the lung region's box plus
    ``margin_mm``, resample in-plane to ``spacing_mm``, pad to ``pad_multiple`` or to
    ``input_size_px``, keep the slices of the lung extent;
    :class:`~lungtumor.preprocessing.grid.SliceGrid` records every step) and ``seed`` (the seed's
    recipe bit for bit: drop the ``skip_inferior_slices`` most inferior slices, resize every axial
    slice to ``size`` pixels; a stored config that records no preset, written before the presets
    existed, reads back as the seed preset). Fields left unset take their preset's default
    (:data:`PRESET_DEFAULTS`); build one with ``PreprocessConfig(preset=...)`` or
    :meth:`from_preset`. Invalid values raise :class:`~lungtumor.errors.ConfigError` on construction.

    Attributes:
        size: seed preset: in-plane size (pixels) every axial slice is resized to.
        skip_inferior_slices: seed preset: number of most inferior axial slices dropped.
        hu_scale: CT values are divided by this (HU / hu_scale).
        clip_hu: optional (low, high) HU clip applied before scaling; None (the seed's default) = no clip.
        axcodes: canonical orientation the volume is reoriented to (no resampling).
        image_interpolation: ``bilinear`` for the CT.
        mask_interpolation: ``nearest`` for the mask.
        preset: ``seed`` or ``lung``.
        spacing_mm: lung preset: in-plane spacing of the model slices (mm).
        margin_mm: lung preset: margin around the lung region's box, in-plane and along z (mm).
        pad_multiple: lung preset: model slices are padded to a multiple of this many pixels.
        input_size_px: lung preset: fixed (H, W) model slice size (multiples of ``pad_multiple``);
            None = the crop's own size per case, padded to ``pad_multiple``.
        context_step_mm: lung preset: distance (mm) between 2.5D context slices; None = adjacent slices.
    """

    size: int = SEED_SLICE_SIZE
    skip_inferior_slices: int = SEED_SKIP_INFERIOR_SLICES
    hu_scale: float = HU_SCALE
    clip_hu: tuple[float, float] | None = PRESET_DEFAULT
    axcodes: tuple[str, str, str] = CANONICAL_AXCODES
    image_interpolation: str = "bilinear"
    mask_interpolation: str = "nearest"
    preset: str = DEFAULT_PRESET
    spacing_mm: float | None = PRESET_DEFAULT
    margin_mm: float | None = PRESET_DEFAULT
    pad_multiple: int | None = PRESET_DEFAULT
    input_size_px: tuple[int, int] | None = PRESET_DEFAULT
    context_step_mm: float | None = PRESET_DEFAULT

    def __post_init__(self) -> None:
        defaults = PRESET_DEFAULTS.get(self.preset) if isinstance(self.preset, str) else None
        if defaults is None:
            raise _config_error(f"preset {self.preset!r} is unknown; use one of {list(PRESET_NAMES)} (--preset)")
        for name in ("clip_hu", *_LUNG_ONLY_FIELDS):
            if getattr(self, name) is PRESET_DEFAULT:
                object.__setattr__(self, name, defaults.get(name))
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise _config_error(f"size (--size) must be a whole number of pixels >= 1, got {self.size!r}")
        if not isinstance(self.skip_inferior_slices, int) or self.skip_inferior_slices < 0:
            raise _config_error(f"skip_inferior_slices (--skip-inferior-slices) must be >= 0, got {self.skip_inferior_slices!r}")
        if not _positive_number(self.hu_scale):
            raise _config_error(f"hu_scale must be a positive number, got {self.hu_scale!r}")
        if self.clip_hu is not None and not (len(self.clip_hu) == 2 and float(self.clip_hu[0]) < float(self.clip_hu[1])):
            raise _config_error(f"clip_hu (--clip-hu LOW HIGH) needs LOW < HIGH, got {self.clip_hu!r}")
        if not set(_LUNG_ONLY_FIELDS) <= set(defaults):  # a preset without the physical grid's fields
            given = [f for f in _LUNG_ONLY_FIELDS if getattr(self, f) is not None]
            if given:
                raise _config_error(f"{', '.join(given)} apply to the lung preset only; use preset 'lung' (--preset lung) or leave them unset")
            return
        self._check_lung_fields()

    def _check_lung_fields(self) -> None:
        seed_only = [f"{name}={getattr(self, name)!r}" for name, seed in (("size", SEED_SLICE_SIZE), ("skip_inferior_slices", SEED_SKIP_INFERIOR_SLICES)) if getattr(self, name) != seed]
        if seed_only:  # the lung preset is the default: a seed value given without preset='seed' would be ignored silently
            raise _config_error(
                f"{', '.join(seed_only)} apply to the seed preset only; use preset 'seed' (--preset seed) or, for the lung preset, "
                "spacing_mm (--spacing-mm) or input_size_px"
            )
        if not _positive_number(self.spacing_mm):
            raise _config_error(f"spacing_mm (--spacing-mm) must be a positive number of mm, got {self.spacing_mm!r}; use e.g. {LUNG_SPACING_MM}")
        if not _positive_number(self.margin_mm):
            raise _config_error(f"margin_mm (--margin-mm) must be a positive number of mm, got {self.margin_mm!r}; use e.g. {LUNG_MARGIN_MM}")
        m = self.pad_multiple
        if not isinstance(m, int) or isinstance(m, bool) or m < 1 or m & (m - 1):
            raise _config_error(f"pad_multiple must be a power of two >= 1 (2**depth of the U-Net or more), got {m!r}; use e.g. {LUNG_PAD_MULTIPLE}")
        if self.input_size_px is not None:
            size = tuple(self.input_size_px)
            if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % m == 0 for v in size):
                fix = tuple(max(m, -(-int(v) // m) * m) if isinstance(v, (int, float)) else m for v in size[:2]) or (m, m)
                raise _config_error(
                    f"input_size_px {self.input_size_px!r} cannot be taken by the network: it needs two whole numbers of pixels, "
                    f"multiples of pad_multiple={m}; use e.g. {fix}"
                )
        if self.context_step_mm is not None and not _positive_number(self.context_step_mm):
            raise _config_error(f"context_step_mm must be a positive number of mm or None, got {self.context_step_mm!r}; use e.g. {LUNG_CONTEXT_STEP_MM}")
        if self.image_interpolation != "bilinear" or self.mask_interpolation != "nearest":
            raise _config_error(
                f"the lung preset resamples the CT bilinearly and masks by nearest neighbour, got "
                f"{self.image_interpolation!r}/{self.mask_interpolation!r}; leave image_interpolation and mask_interpolation unset"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PreprocessConfig:
        """The config of preset ``name`` (``seed`` or ``lung``) with ``overrides`` (None values are ignored).

        Raises:
            ConfigError: unknown preset, or an override the preset cannot take.
        """
        if name not in PRESET_NAMES:
            raise _config_error(f"preset {name!r} is unknown; use one of {list(PRESET_NAMES)} (--preset)")
        base = {k: v for k, v in overrides.items() if v is not None}
        check_known_keys(cls, base, "preprocessing")
        return cls(preset=name, **base)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["axcodes"] = list(self.axcodes)
        d["clip_hu"] = list(self.clip_hu) if self.clip_hu is not None else None
        d["input_size_px"] = list(self.input_size_px) if self.input_size_px is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take the defaults
        of the stored config's time (a store or checkpoint written before the presets existed
        records no preset and reads as the seed preset; a missing field of the presets reads as None)."""
        check_known_keys(cls, d, "preprocessing")
        d = dict(d)
        d.setdefault("preset", UNRECORDED_PRESET)
        for key in ("clip_hu", *_LUNG_ONLY_FIELDS):
            d.setdefault(key, None)
        for key in ("axcodes", "clip_hu", "input_size_px"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class SplitConfig:
    """Patient-level train/validation split.

    Default: the sorted case ids are shuffled with ``seed`` and cut into ``folds`` folds;
    fold ``fold`` is validation. ``val_cases=N`` instead takes the last N cases in sorted
    order as validation (the seed's preset, "the last 6 cases", made independent of the
    file system's listing order).
    """

    folds: int = 5
    fold: int = 0
    seed: int = 0
    val_cases: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

