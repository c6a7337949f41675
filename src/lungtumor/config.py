"""Configuration dataclasses and named constants. The defaults reproduce the seed's recipe.

See ``shared/seed/REFERENCE.md``: HU / 3071, drop the 30 most inferior axial slices,
resize every axial slice to 256x256 (bilinear CT, nearest mask).
"""

from __future__ import annotations

import dataclasses
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
def check_known_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise ConfigError when ``d`` has keys that are not fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        from lungtumor.errors import ConfigError

        raise ConfigError(f"unknown {what} keys {sorted(unknown)}; expected a subset of {sorted(known)}")


#: Hounsfield units of air, used to pad and as the value outside the body.
HU_AIR = -1000
#: Lung window for display (centre, width) in HU.
LUNG_WINDOW_HU = (-600.0, 1500.0)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT volume becomes 2D slices. Written into every store and every checkpoint.

    Attributes:
        size: in-plane size (pixels) every axial slice is resized to.
        skip_inferior_slices: number of most inferior axial slices dropped.
        hu_scale: CT values are divided by this (HU / hu_scale).
        clip_hu: optional (low, high) HU clip applied before scaling; None (seed) = no clip.
        axcodes: canonical orientation the volume is reoriented to (no resampling).
        image_interpolation: ``bilinear`` for the CT.
        mask_interpolation: ``nearest`` for the mask.
    """

    size: int = SEED_SLICE_SIZE
    skip_inferior_slices: int = SEED_SKIP_INFERIOR_SLICES
    hu_scale: float = HU_SCALE
    clip_hu: tuple[float, float] | None = None
    axcodes: tuple[str, str, str] = CANONICAL_AXCODES
    image_interpolation: str = "bilinear"
    mask_interpolation: str = "nearest"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["axcodes"] = list(self.axcodes)
        d["clip_hu"] = list(self.clip_hu) if self.clip_hu is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        check_known_keys(cls, d, "preprocessing")
        d = dict(d)
        if "axcodes" in d:
            d["axcodes"] = tuple(d["axcodes"])
        if d.get("clip_hu") is not None:
            d["clip_hu"] = tuple(d["clip_hu"])
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


SEED_SPLIT = SplitConfig(val_cases=6)
