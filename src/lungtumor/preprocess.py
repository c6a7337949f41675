"""CT volume -> 2D slices, and an MSD-layout folder -> a memory-mappable slice store.

The default :class:`~lungtumor.config.PreprocessConfig` reproduces the seed's recipe:
reorient to one canonical orientation without resampling (('L','A','S'), the MSD files' own),
HU / 3071, drop the 30 most inferior axial slices, resize every axial slice to 256x256
(bilinear CT, nearest mask).

Store layout (``STORE_DIR``)::

    config.json          preprocessing config (a re-run with another config is refused)
    cases/<case>/        one folder per case, renamed into place when complete (atomic)
        image.npy        (D, S, S) float16, HU / hu_scale, slice d = canonical axial slice
                         ``kept_start + d``; memory-mappable, one contiguous block per slice
        mask.npy         (D, S, S) uint8 {0, 1}
        meta.json        original shape/affine, orientation transform, kept range,
                         tumour voxels per stored slice
    manifest.json        every case's slice count, tumour voxels per slice, split; the
                         training sampler needs nothing else
    manifest.csv         the same, one row per slice (case, slice, original_index,
                         tumour_voxels, split), for people
    store.json           summary: config, split config, case lists per split, skipped cases
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lungtumor.config import PreprocessConfig, SplitConfig
from lungtumor.atomic import publish_permissions, write_text_atomic
from lungtumor.errors import ConfigError, GeometryError, InputError, LungTumorError
from lungtumor.volume import Volume, is_nifti, nifti_stem, read_nifti, reorient, undo_reorient_array

log = logging.getLogger(__name__)

STORE_FORMAT = "lungtumor-slice-store"
STORE_VERSION = 1
#: Affines of an image and its label may differ by float noise from re-saving; more is an error.
AFFINE_ATOL_MM = 1e-3


# --------------------------------------------------------------------------------------------
# One volume


@dataclass(frozen=True)
class PreparedCT:
    """A CT volume turned into model-ready axial slices, plus what is needed to undo it.

    Attributes:
        slices: (D, S, S) float32, HU / hu_scale, D = kept axial slices.
        ornt: nibabel orientation transform original -> canonical.
        canonical_shape: (I, J, K) shape after reorientation.
        kept_start: index of the first kept slice along the canonical axial axis.
    """

    slices: np.ndarray
    ornt: np.ndarray
    canonical_shape: tuple[int, int, int]
    kept_start: int


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output pixel for nearest-neighbour resizing.

    ``floor(i * n_in / n_out)``: the rule of OpenCV's INTER_NEAREST (the seed's) and of torch's
    ``mode="nearest"``.
    """
    return np.minimum((np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


#: Slices converted and resized at a time: bounds the float32 working memory of a big scan.
CHUNK_SLICES = 32


def _as_slice(indices: np.ndarray) -> np.ndarray | slice:
    """A regular index progression as a slice (a view instead of a gather), else unchanged."""
    if len(indices) > 1:
        step = int(indices[1] - indices[0])
        if step > 0 and np.array_equal(indices, np.arange(indices[0], indices[0] + step * len(indices), step)):
            return slice(int(indices[0]), int(indices[0]) + step * len(indices), step)
    return indices


def _torch_view(array: np.ndarray) -> Any:
    """A torch tensor over ``array`` without a copy where numpy's strides allow it (flipped
    axes have negative strides, which torch does not take: those are copied)."""
    import torch

    if any(st < 0 for st in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


def _prepare_stack(canonical: np.ndarray, start: int, cfg: PreprocessConfig, *, is_mask: bool) -> np.ndarray:
    """Canonical (I, J, K) array -> (K - start, S, S) resized axial slices, in chunks.

    The chunks bound the float working memory of a big scan. The CT chunk is converted to
    float32 straight from its (possibly Fortran-ordered) view in one pass, resized, and only
    then divided by ``hu_scale`` (resizing is linear, so the order does not matter, and the
    division touches 4x fewer pixels at 512 -> 256). Masks with nearest neighbour are indexed
    directly, without a float copy.
    """
    import torch.nn.functional as F

    depth = canonical.shape[2] - start
    size = cfg.size
    out = np.empty((depth, size, size), dtype=np.uint8 if is_mask else np.float32)
    if is_mask and cfg.mask_interpolation == "nearest":
        rows = _as_slice(nearest_indices(canonical.shape[0], size))
        cols = _as_slice(nearest_indices(canonical.shape[1], size))
    for c0 in range(0, depth, CHUNK_SLICES):
        c1 = min(depth, c0 + CHUNK_SLICES)
        view = canonical[:, :, start + c0 : start + c1]  # (I, J, n)
        if is_mask and cfg.mask_interpolation == "nearest":
            out[c0:c1] = np.moveaxis(view[rows][:, cols], 2, 0) != 0
            continue
        t = _torch_view(view).permute(2, 0, 1).float().unsqueeze(1)  # (n, 1, I, J) float32
        mode = cfg.mask_interpolation if is_mask else cfg.image_interpolation
        if not is_mask and cfg.clip_hu is not None:
            t.clamp_(cfg.clip_hu[0], cfg.clip_hu[1])
        if t.shape[-2:] != (size, size):
            kwargs: dict[str, Any] = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            t = F.interpolate(t, size=(size, size), mode=mode, **kwargs)
        if is_mask:
            out[c0:c1] = (t[:, 0] > 0.5).numpy()
        else:
            t /= cfg.hu_scale
            out[c0:c1] = t[:, 0].numpy()
    return out


def prepare_ct(ct: Volume, cfg: PreprocessConfig) -> PreparedCT:
    """Apply the preprocessing recipe to a CT in HU.

    Raises:
        InputError: the scan has no slices left after dropping ``skip_inferior_slices``.
    """
    canon, ornt = reorient(ct, cfg.axcodes)
    depth = canon.shape[2]
    if depth <= cfg.skip_inferior_slices:
        raise InputError(
            f"{ct.meta.get('path', 'CT')}: has {depth} axial slices, not more than the "
            f"{cfg.skip_inferior_slices} the recipe drops; use --skip-inferior-slices smaller than {depth}"
        )
    slices = _prepare_stack(canon.array, cfg.skip_inferior_slices, cfg, is_mask=False)
    return PreparedCT(slices, ornt, canon.shape, cfg.skip_inferior_slices)


def prepare_mask(mask: Volume, cfg: PreprocessConfig) -> np.ndarray:
    """The label counterpart of :func:`prepare_ct`: (D, S, S) uint8 {0, 1}."""
    canon, _ = reorient(mask, cfg.axcodes)
    return _prepare_stack(canon.array, cfg.skip_inferior_slices, cfg, is_mask=True)


def restore_slices(
    probs: np.ndarray, prepared: PreparedCT, original_shape: tuple[int, ...], threshold: float | None = None
) -> np.ndarray:
    """Inverse of :func:`prepare_ct` for a (D, S, S) probability stack.

    Probabilities (not binary masks) are resized back bilinearly to the canonical in-plane
    size, slices the recipe dropped are put back as zeros, and the reorientation is undone.
    With ``threshold`` the result is a uint8 mask ``prob > threshold`` (thresholded after
    resizing, chunk by chunk, so no full-size float copy is made); else float32 probabilities.

    Returns:
        Array with exactly ``original_shape``.
    """
    import torch
    import torch.nn.functional as F

    ci, cj, ck = prepared.canonical_shape
    canon = np.zeros((ci, cj, ck), dtype=np.float32 if threshold is None else np.uint8)
    depth = probs.shape[0]
    for c0 in range(0, depth, CHUNK_SLICES):
        c1 = min(depth, c0 + CHUNK_SLICES)
        t = torch.from_numpy(np.ascontiguousarray(probs[c0:c1], dtype=np.float32)).unsqueeze(1)
        if t.shape[-2:] != (ci, cj):
            t = F.interpolate(t, size=(ci, cj), mode="bilinear", align_corners=False)
        chunk = t.squeeze(1).numpy()  # (n, I, J)
        if threshold is not None:
            chunk = chunk > threshold
        canon[:, :, prepared.kept_start + c0 : prepared.kept_start + c1] = np.moveaxis(chunk, 0, 2)
    out = undo_reorient_array(canon, prepared.ornt)
    if out.shape != tuple(original_shape):
        raise GeometryError(f"internal: restored shape {out.shape} != original {tuple(original_shape)}")
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# MSD folder -> cases


@dataclass(frozen=True)
class CaseFiles:
    """One training case of an MSD-layout folder."""

    case_id: str
    image: Path
    label: Path | None


def _visible_niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith("._") and not p.name.startswith("."))


def find_cases(task_dir: str | os.PathLike[str], *, require_labels: bool = True) -> list[CaseFiles]:
    """List the cases of an MSD-layout folder (``imagesTr/`` + ``labelsTr/``).

    ``._*`` files (macOS resource forks in the MSD archive) are skipped; ``dataset.json`` is
    optional. A missing label is reported per case by :func:`check_case` so that
    ``skip_bad`` can skip it.
    """
    root = Path(task_dir)
    images = root / "imagesTr"
    if not root.is_dir():
        raise InputError(f"{root}: folder not found; pass an MSD task folder with imagesTr/ and labelsTr/")
    if not images.is_dir():
        raise InputError(f"{root}: no imagesTr/ folder; expected the MSD layout imagesTr/ + labelsTr/")
    labels = root / "labelsTr"
    cases = []
    for img in _visible_niftis(images):
        cid = nifti_stem(img)
        lbl = None
        for suffix in (".nii.gz", ".nii"):
            cand = labels / f"{cid}{suffix}"
            if cand.exists():
                lbl = cand
                break
        cases.append(CaseFiles(cid, img, lbl))
    if not cases:
        raise InputError(f"{images}: no .nii/.nii.gz files; expected lung_XXX.nii.gz volumes")
    if require_labels and not labels.is_dir():
        raise InputError(f"{root}: no labelsTr/ folder; training data needs one label file per image")
    return cases


def _is_binary(array: np.ndarray) -> bool:
    """True when every value is 0 or 1 (min/max for integers: no sort of 80M voxels)."""
    if array.dtype.kind in "iub":
        return array.size == 0 or (int(array.min()) >= 0 and int(array.max()) <= 1)
    return bool(np.all((array == 0) | (array == 1)))


def load_case(case: CaseFiles) -> tuple[Volume, Volume]:
    """Read and validate one image/label pair.

    Raises:
        InputError / GeometryError: missing label, unreadable files, NaNs, non-3D data,
            shape or affine mismatch, labels other than {0, 1}.
    """
    if case.label is None:
        raise InputError(f"{case.image}: no label file labelsTr/{case.case_id}.nii.gz; add it or remove the image")
    ct = read_nifti(case.image)
    if ct.array.dtype.kind not in "iuf":
        raise InputError(f"{case.image}: voxel type {ct.array.dtype} is not numeric; expected CT in HU")
    label = read_nifti(case.label)
    if label.shape != ct.shape:
        raise GeometryError(
            f"{case.label}: shape {label.shape} differs from its image {case.image.name} {ct.shape}; "
            "the label must be on the image's grid"
        )
    if not np.allclose(label.affine, ct.affine, atol=AFFINE_ATOL_MM):
        raise GeometryError(
            f"{case.label}: affine differs from its image {case.image.name} "
            f"(max difference {np.abs(label.affine - ct.affine).max():.4g} mm); the label must be on the image's grid"
        )
    if not _is_binary(label.array):
        shown = ", ".join(str(v) for v in np.unique(label.array)[:8])
        raise InputError(
            f"{case.label}: label values {{{shown}}} are not binary; expected 0 = background, 1 = tumour "
            "(merge or binarise the labels first)"
        )
    return ct, label.with_array(label.array.astype(np.uint8, copy=False))


def process_case(case: CaseFiles, store_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> dict[str, Any]:
    """Preprocess one case into ``store_dir/cases/<case>/``, atomically.

    Everything is written into a temporary folder that is renamed into place only when
    complete, so an interrupted run leaves no half-written case.

    Returns:
        The case's metadata (also written as ``meta.json``).
    """
    ct, label = load_case(case)
    prepared = prepare_ct(ct, cfg)
    mask = prepare_mask(label, cfg)
    tumour_voxels = mask.reshape(mask.shape[0], -1).sum(axis=1, dtype=np.int64)
    meta = {
        "case": case.case_id,
        "image": str(case.image),
        "label": str(case.label),
        "original_shape": list(ct.shape),
        "original_affine": ct.affine.tolist(),
        "spacing_mm": list(ct.spacing_mm),
        "ornt": prepared.ornt.tolist(),
        "canonical_shape": list(prepared.canonical_shape),
        "kept_start": prepared.kept_start,
        "n_slices": int(prepared.slices.shape[0]),
        "tumour_voxels": tumour_voxels.tolist(),
        "tumour_voxels_original": int(np.count_nonzero(label.array)),
    }
    cases_dir = Path(store_dir) / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{case.case_id}-", dir=cases_dir))
    try:
        np.save(tmp / "image.npy", prepared.slices.astype(np.float16))
        np.save(tmp / "mask.npy", mask)
        (tmp / "meta.json").write_text(json.dumps(meta))
        for f in tmp.iterdir():
            publish_permissions(f)
        publish_permissions(tmp, directory=True)
        final = cases_dir / case.case_id
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _pool_context() -> Any:
    """Worker processes that start fast and safely.

    ``fork`` after torch has started threads can deadlock, and ``spawn`` re-imports torch in
    every worker (seconds each). A fork server that has imported torch and this module once
    forks ready workers from a single-threaded process.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "lungtumor.preprocess"])
        return ctx
    return mp.get_context("spawn")


def _worker_init() -> None:
    import torch

    # Parallelism is over cases; one thread per worker avoids oversubscription.
    torch.set_num_threads(1)


def _process_case_safe(
    case: CaseFiles, store_dir: str, cfg: PreprocessConfig
) -> tuple[str, dict[str, Any] | None, LungTumorError | None]:
    # User errors come back as values so that skip_bad can decide; anything else propagates.
    try:
        return case.case_id, process_case(case, store_dir, cfg), None
    except LungTumorError as exc:
        return case.case_id, None, exc


# --------------------------------------------------------------------------------------------
# Split


def split_cases(case_ids: Iterable[str], split: SplitConfig) -> dict[str, list[str]]:
    """Patient-level split of case ids into ``train`` and ``val``.

    ``val_cases=N``: the last N ids in sorted order are validation (the seed's preset).
    Otherwise the sorted ids are shuffled with ``numpy.random.default_rng(seed)`` and dealt
    round-robin into ``folds`` folds; fold ``fold`` is validation.
    """
    ids = sorted(case_ids)
    if split.val_cases is not None:
        n = int(split.val_cases)
        if not 0 <= n < len(ids):
            raise ConfigError(f"--val-cases {n} must be at least 0 and less than the number of cases ({len(ids)})")
        val = ids[len(ids) - n :] if n else []
    else:
        if split.folds < 2:
            raise ConfigError(f"--folds {split.folds}: need at least 2 folds")
        if not 0 <= split.fold < split.folds:
            raise ConfigError(f"--fold {split.fold} must be in 0..{split.folds - 1}")
        order = np.random.default_rng(split.seed).permutation(len(ids))
        val = sorted(ids[i] for pos, i in enumerate(order) if pos % split.folds == split.fold)
    val_set = set(val)
    return {"train": [c for c in ids if c not in val_set], "val": val}


# --------------------------------------------------------------------------------------------
# Whole store


def _check_or_write_config(store: Path, cfg: PreprocessConfig) -> None:
    path = store / "config.json"
    wanted = {"format": STORE_FORMAT, "version": STORE_VERSION, "preprocess": cfg.to_dict()}
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable store config ({exc}); delete the store folder and re-run") from exc
        if have != wanted:
            diff = {
                k: (have.get("preprocess", {}).get(k), v)
                for k, v in wanted["preprocess"].items()
                if have.get("preprocess", {}).get(k) != v
            }
            raise ConfigError(
                f"{store}: store was built with a different config (stored vs requested: {diff}); "
                "use a new STORE_DIR or the options it was built with"
            )
        return
    if any(store.iterdir()):
        raise ConfigError(f"{store}: folder is not empty and is not a lungtumor store; choose an empty or new folder")
    write_text_atomic(path, json.dumps(wanted, indent=2))


def preprocess_task(
    task_dir: str | os.PathLike[str],
    store_dir: str | os.PathLike[str],
    cfg: PreprocessConfig = PreprocessConfig(),
    split: SplitConfig = SplitConfig(),
    *,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess an MSD-layout folder into a slice store (see the module docstring).

    Finished cases are skipped on a re-run; a store built with another config is refused.

    Args:
        task_dir: folder with ``imagesTr/`` and ``labelsTr/``.
        store_dir: output folder (created).
        cfg: preprocessing recipe.
        split: patient-level split.
        workers: processes (1 = in this process).
        skip_bad: warn and skip bad cases instead of stopping at the first.
        progress: show a progress bar.

    Returns:
        The store summary (also written as ``store.json``).
    """
    cases = find_cases(task_dir)
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    _check_or_write_config(store, cfg)
    # Left-overs of an interrupted run are never valid cases.
    for tmp in (store / "cases").glob(".tmp-*") if (store / "cases").is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)

    metas: dict[str, dict[str, Any]] = {}
    todo = []
    for case in cases:
        meta_path = store / "cases" / case.case_id / "meta.json"
        if meta_path.exists():
            metas[case.case_id] = json.loads(meta_path.read_text())
        else:
            todo.append(case)
    skipped: dict[str, str] = {}

    from lungtumor.progress import progress_bar

    with progress_bar(total=len(cases), description="preprocess", enabled=progress, completed=len(metas)) as advance:
        if workers <= 1 or len(todo) <= 1:
            results: Iterable[tuple[str, dict[str, Any] | None, LungTumorError | None]] = (
                _process_case_safe(c, str(store), cfg) for c in todo
            )
            _collect(results, metas, skipped, skip_bad, advance)
        else:
            ctx = _pool_context()
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
                futures = [pool.submit(_process_case_safe, c, str(store), cfg) for c in todo]
                try:
                    _collect((f.result() for f in cf.as_completed(futures)), metas, skipped, skip_bad, advance)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise

    if not metas:
        raise InputError(f"{task_dir}: no case could be preprocessed ({len(skipped)} skipped)")
    return write_manifest(store, cfg, split, metas, skipped)


def _collect(results, metas, skipped, skip_bad, advance) -> None:  # type: ignore[no-untyped-def]
    for cid, meta, err in results:
        if err is not None:
            if not skip_bad:
                raise err
            log.warning("skipping case %s: %s", cid, err)
            skipped[cid] = str(err)
        else:
            metas[cid] = meta
        advance()


def write_manifest(
    store: Path, cfg: PreprocessConfig, split: SplitConfig, metas: dict[str, dict[str, Any]], skipped: dict[str, str]
) -> dict[str, Any]:
    """Write ``manifest.json``, ``manifest.csv`` and ``store.json`` for the finished cases."""
    splits = split_cases(metas.keys(), split)
    split_of = {c: s for s, ids in splits.items() for c in ids}
    manifest = {
        "cases": {
            cid: {
                "n_slices": metas[cid]["n_slices"],
                "kept_start": metas[cid]["kept_start"],
                "tumour_voxels": metas[cid]["tumour_voxels"],
                "split": split_of[cid],
            }
            for cid in sorted(metas)
        }
    }
    write_text_atomic(store / "manifest.json", json.dumps(manifest))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "slice", "original_index", "tumour_voxels", "split"])
    for cid, m in manifest["cases"].items():
        for d, n in enumerate(m["tumour_voxels"]):
            w.writerow([cid, d, m["kept_start"] + d, n, m["split"]])
    write_text_atomic(store / "manifest.csv", buf.getvalue())
    n_slices = {s: sum(manifest["cases"][c]["n_slices"] for c in ids) for s, ids in splits.items()}
    n_tumour = {
        s: sum(int(np.count_nonzero(manifest["cases"][c]["tumour_voxels"])) for c in ids) for s, ids in splits.items()
    }
    summary = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "preprocess": cfg.to_dict(),
        "split_config": split.to_dict(),
        "splits": splits,
        "slices": n_slices,
        "tumour_slices": n_tumour,
        "skipped": skipped,
    }
    write_text_atomic(store / "store.json", json.dumps(summary, indent=2))
    return summary
