"""The second-stage lesion re-scorer: a small 3D CNN that tells a nodule from a vessel.

The first-stage 2.5D U-Net finds large tumours but, on real scans, also marks vessel-sized blobs and
hilar structures (5-20 false-positive lesions per scan). As in LUNA16's false-positive reduction and
nnDetection's second stage, a small 3D classifier looks at a patch of **fixed physical size** around
each predicted lesion and gives it a probability of being a lesion; the lesion score then is that
probability for lesions that fit in the patch, and the U-Net's maximum probability for larger ones
(:mod:`lungtumor.inference.rescore`). A re-scorer is written with its operating point
(:data:`RESCORER_MIN_LESION_SCORE`): ``predict`` with its checkpoint removes the lesions scoring under it
unless ``--min-lesion-score`` says otherwise.

The patch: :attr:`RescorerConfig.patch_shape` voxels ``(slices, rows, columns)`` of
:attr:`RescorerConfig.patch_spacing_mm` (default 12 x 24 x 24 at 2.5 x 1.25 x 1.25 mm: 30 x 30 x 30 mm),
cut by trilinear interpolation (:func:`cut_patches`, ``scipy.ndimage.map_coordinates`` order 1) from
a volume of known spacing at given centres; the point asked for lies at the patch's geometric centre
(between the two middle voxels of an even axis). Outside the volume the patch is air
(:data:`~lungtumor.config.HU_AIR`). The CT is clipped to :attr:`RescorerConfig.window_hu` and mapped
to [-1, 1] (:func:`normalise_hu`).

The network (:class:`Rescorer`): three blocks of two 3x3x3 convolutions (batch norm, ReLU) of width
8-16-32 with 2x max pooling between them, global average and max pooling, one logit. About 40 k
parameters; a batch of 32 default patches is about 0.6 GFLOP forward and backward.

The checkpoint stays self-describing: :func:`rescorer_block` packs the config as a plain dict and
the weights as tensors (loadable with ``weights_only=True``) under the checkpoint key
:data:`RESCORER_KEY`; :func:`rescorer_from_block` rebuilds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from lungtumor.config import HU_AIR, check_min_lesion_score
from lungtumor.errors import CheckpointError, ConfigError

#: The checkpoint key of the re-scorer block (its config dict and state dict).
RESCORER_KEY = "rescorer"

#: Version of the block's layout.
RESCORER_VERSION = 1

#: The operating point written with a re-scorer (the block's ``min_lesion_score``): ``predict`` with the
#: checkpoint removes the lesions scoring under it unless ``--min-lesion-score`` is given (0 keeps every
#: lesion). Measured leave-one-scan-out on the three shared real scans at the CPU recipe's budget
#: (BENCHMARKS.md, "Nodule benchmark" (g)): the 25 mm nodule, which every U-Net found, scored 0.99, 0.52,
#: 0.62 and 0.17 by four runs' re-scorers, so 0.5 (the first choice, the probability's middle) lost it
#: once; 0.1 keeps every tumour of the four runs, with 2.0, 1.0 and 1.7 false-positive lesions per scan
#: over three seeds (against 4.3, 4.0 and 4.3 without a re-scorer). Chosen on those predictions, as
#: ``cv`` chooses its minimum lesion score on its folds: a favourable estimate for unseen scans.
RESCORER_MIN_LESION_SCORE = 0.1


@dataclass(frozen=True)
class RescorerConfig:
    """What the re-scorer sees and how wide it is (saved in the checkpoint).

    Attributes:
        patch_shape: patch voxels ``(slices, rows, columns)``; rows and columns equal (the in-plane
            90-degree rotations of training need a square).
        patch_spacing_mm: voxel size of the patch ``(slice, row, column)`` in mm; row and column equal.
        window_hu: the HU window ``(low, high)`` clipped and mapped to [-1, 1].
        widths: channels of the three convolution blocks.
    """

    patch_shape: tuple[int, int, int] = (12, 24, 24)
    patch_spacing_mm: tuple[float, float, float] = (2.5, 1.25, 1.25)
    window_hu: tuple[float, float] = (-1000.0, 400.0)
    widths: tuple[int, int, int] = (8, 16, 32)

    def __post_init__(self) -> None:
        for name in ("patch_shape", "patch_spacing_mm", "window_hu", "widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        shape, sp = self.patch_shape, self.patch_spacing_mm
        if len(shape) != 3 or any(int(n) != n or n < 4 for n in shape):
            raise ConfigError(f"rescorer patch_shape {shape}: expected three whole numbers >= 4 (slices, rows, columns)")
        if shape[1] != shape[2] or len(sp) != 3 or sp[1] != sp[2] or any(not (np.isfinite(s) and s > 0) for s in sp):
            raise ConfigError(f"rescorer patch {shape} at {sp} mm: rows and columns must be equal in number and size, every spacing > 0")
        if len(self.window_hu) != 2 or not self.window_hu[0] < self.window_hu[1]:
            raise ConfigError(f"rescorer window_hu {self.window_hu}: expected (low, high) with low < high")
        if len(self.widths) != 3 or any(int(w) != w or w < 1 for w in self.widths):
            raise ConfigError(f"rescorer widths {self.widths}: expected three whole numbers >= 1")

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """The patch's physical size (mm) along (slice, row, column)."""
        return tuple(float(n * s) for n, s in zip(self.patch_shape, self.patch_spacing_mm))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (a ``weights_only`` checkpoint holds them)."""
        return {k: [float(x) if isinstance(x, float) else int(x) for x in v] for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RescorerConfig:
        """The config of :meth:`to_dict`; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"rescorer config: unknown keys {sorted(unknown)}")
        return cls(**{k: tuple(v) for k, v in d.items()})


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
    )


class Rescorer(nn.Module):
    """The 3D classifier: ``(N, 1, d, h, w)`` normalised patches -> ``(N,)`` logits.

    Args:
        config: patch geometry, HU window, widths.
    """

    def __init__(self, config: RescorerConfig | None = None) -> None:
        super().__init__()
        self.config = config or RescorerConfig()
        w1, w2, w3 = (int(w) for w in self.config.widths)
        self.features = nn.Sequential(_block(1, w1), nn.MaxPool3d(2), _block(w1, w2), nn.MaxPool3d(2), _block(w2, w3))
        self.head = nn.Linear(2 * w3, 1)
        #: The operating point the checkpoint carries (None: keep every lesion unless told otherwise).
        self.min_lesion_score: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat((f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4))), dim=1)
        return self.head(pooled)[:, 0]


def normalise_hu(patches_hu: np.ndarray | torch.Tensor, config: RescorerConfig) -> torch.Tensor:
    """HU patches ``(N, d, h, w)`` -> network input ``(N, 1, d, h, w)`` float32: clipped to the window, mapped to [-1, 1]."""
    lo, hi = (float(v) for v in config.window_hu)
    x = torch.as_tensor(np.asarray(patches_hu, dtype=np.float32)) if isinstance(patches_hu, np.ndarray) else patches_hu.float()
    return ((x.clamp(lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0)[:, None]


def patch_offsets_mm(config: RescorerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patch voxels' centres relative to the patch centre (mm), per axis: ``(i - (n - 1) / 2) * spacing``."""
    return tuple(  # type: ignore[return-value]
        (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * float(s) for n, s in zip(config.patch_shape, config.patch_spacing_mm)
    )


def cut_patches(
    volume: np.ndarray, spacing_mm: tuple[float, float, float], centres_vox: np.ndarray, config: RescorerConfig, *,
    scale: float = 1.0, fill_hu: float = float(HU_AIR),
) -> np.ndarray:
    """Patches of fixed physical size around points of a volume (trilinear), in HU.

    Args:
        volume: ``(D, H, W)`` array (e.g. a store's memory-mapped ``image.npy``); voxel ``v`` of it holds
            ``v * scale`` HU.
        spacing_mm: the volume's voxel size along (D, H, W) in mm.
        centres_vox: ``(N, 3)`` continuous voxel coordinates (voxel centres at integers) of the patch centres.
        config: the patch's shape and spacing.
        scale: HU per volume unit (a store's ``hu_scale``; 1 for a volume in HU).
        fill_hu: the value outside the volume (air).

    Returns:
        ``(N, d, h, w)`` float32 HU; the centre point lies at the patch's geometric centre ``(n - 1) / 2``.
    """
    centres = np.atleast_2d(np.asarray(centres_vox, dtype=np.float64))
    out = np.empty((centres.shape[0], *config.patch_shape), dtype=np.float32)
    sp = np.asarray(spacing_mm, dtype=np.float64)
    steps = [off / s for off, s in zip(patch_offsets_mm(config), sp)]  # patch offsets in volume voxels, per axis
    shape = np.asarray(volume.shape)
    for n, c in enumerate(centres):
        axes = [c[a] + steps[a] for a in range(3)]
        # Only the box the patch touches is read (a memory map is not converted whole).
        lo = np.array([int(np.floor(ax[0])) for ax in axes])
        hi = np.array([int(np.floor(ax[-1])) + 2 for ax in axes])
        lo_c, hi_c = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        if np.any(hi_c <= lo_c):
            out[n] = fill_hu
            continue
        sub = np.asarray(volume[lo_c[0] : hi_c[0], lo_c[1] : hi_c[1], lo_c[2] : hi_c[2]], dtype=np.float32) * np.float32(scale)
        # Pad one voxel of fill on every side, so that interpolation towards the outside blends into
        # air exactly as the full volume with an air surround would.
        sub = np.pad(sub, 1, constant_values=np.float32(fill_hu))
        grid = np.meshgrid(*[ax - lo_c[a] + 1 for a, ax in enumerate(axes)], indexing="ij")
        out[n] = ndimage.map_coordinates(sub, grid, order=1, mode="constant", cval=float(fill_hu), prefilter=False)
    return out


def lesion_centres(labels: np.ndarray, count: int, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The patch centre of each labelled lesion 1..count: ``(count, 3)`` voxel coordinates of ``labels``.

    The centroid; where the centroid falls outside its own lesion (a C-shaped lesion, two touching
    nodules), the lesion's voxel nearest to it (in mm): the patch is then centred on the lesion, not
    on the lung between its parts. The one rule of training and inference.
    """
    if count == 0:
        return np.zeros((0, 3), dtype=np.float64)
    index = np.arange(1, count + 1)
    centres = np.asarray(ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, index), dtype=np.float64).reshape(-1, 3)
    sp = np.asarray(spacing_mm, dtype=np.float64)
    for i, box in enumerate(ndimage.find_objects(labels, max_label=count)):
        if box is None:
            continue
        nearest = np.clip(np.round(centres[i]).astype(int), 0, np.asarray(labels.shape) - 1)
        if labels[tuple(nearest)] == i + 1:
            continue
        voxels = np.argwhere(labels[box] == i + 1) + np.array([s.start for s in box])
        centres[i] = voxels[np.argmin(np.sum(((voxels - centres[i]) * sp) ** 2, axis=1))]
    return centres


@torch.no_grad()
def score_patches(net: Rescorer, patches_hu: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The re-scorer's probabilities ``(N,)`` float64 for HU patches ``(N, d, h, w)`` (eval mode, on the net's device)."""
    net.eval()
    if len(patches_hu) == 0:
        return np.zeros(0, dtype=np.float64)
    dev = next(net.parameters()).device
    out = []
    for start in range(0, len(patches_hu), batch_size):
        x = normalise_hu(patches_hu[start : start + batch_size], net.config).to(dev)
        out.append(torch.sigmoid(net(x).float()).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def rescorer_block(net: Rescorer, **facts: Any) -> dict[str, Any]:
    """The checkpoint block: ``{"version", "config", "state_dict", "min_lesion_score", **facts}`` (tensors
    and plain types only; ``min_lesion_score`` only when the net has one)."""
    block = {
        "version": RESCORER_VERSION,
        "config": net.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        **facts,
    }
    if net.min_lesion_score is not None:
        block["min_lesion_score"] = float(net.min_lesion_score)
    return block


def rescorer_from_block(block: Any, where: str = "checkpoint") -> Rescorer:
    """Rebuild the re-scorer of a checkpoint block (eval mode, on the CPU).

    Raises:
        CheckpointError: a malformed block, or weights that do not fit its config or are not finite.
    """
    if not isinstance(block, dict) or not isinstance(block.get("config"), dict) or not isinstance(block.get("state_dict"), dict):
        raise CheckpointError(f"{where}: the {RESCORER_KEY!r} block is malformed (expected its config and state_dict); re-run `lungtumor train-rescorer`")
    if int(block.get("version", 0)) > RESCORER_VERSION:
        raise CheckpointError(f"{where}: re-scorer version {block.get('version')} is newer than this lungtumor; upgrade lungtumor")
    try:
        net = Rescorer(RescorerConfig.from_dict(block["config"]))
        net.load_state_dict(block["state_dict"])
    except (ConfigError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: the re-scorer does not load ({str(exc).splitlines()[0]}); re-run `lungtumor train-rescorer`") from exc
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in net.state_dict().values()):
        raise CheckpointError(f"{where}: the re-scorer's weights are not finite; re-run `lungtumor train-rescorer`")
    point = block.get("min_lesion_score")
    if point is not None:
        try:
            net.min_lesion_score = check_min_lesion_score(point, flag="the re-scorer's min_lesion_score")
        except ConfigError as exc:
            raise CheckpointError(f"{where}: {exc}; re-run `lungtumor train-rescorer`") from exc
    return net.eval()
