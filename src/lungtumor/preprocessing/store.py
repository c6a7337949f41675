"""CT volume -> 2D slices, and an MSD-layout folder -> a memory-mappable slice store.

Every case is written through its :class:`~lungtumor.preprocessing.grid.SliceGrid` (recorded in
its ``meta.json``). The default :class:`~lungtumor.config.PreprocessConfig` is the ``lung`` preset:
it crops to the lung region (labels outside it are reported and kept: the region grows to include
them), resamples to a spacing in mm and keeps the slices of the lung extent; slice sizes then
differ between cases. The ``seed`` preset reproduces the seed's recipe bit for bit: reorient to one
canonical orientation without resampling (('L','A','S'), the MSD files' own), HU / 3071, drop the
30 most inferior axial slices, resize every axial slice to 256x256 (bilinear CT, nearest mask).

Store layout (``STORE_DIR``)::

    config.json          preprocessing config (a re-run with another config is refused)
    cases/<case>/        one folder per case, renamed into place when complete (atomic)
        image.npy        (D, H, W) float16, HU / hu_scale, slice d = canonical axial slice
                         ``kept_start + d``; memory-mappable, one contiguous block per slice
        mask.npy         (D, H, W) uint8 {0, 1}
        meta.json        original shape/affine, orientation transform, kept range, the slice
                         grid, the lung region record, tumour voxels per stored slice
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
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.atomic import publish_permissions, refuse_overwriting_inputs, write_text_atomic
from lungtumor.config import MAX_VOXELS_PER_CASE, SENSIBLE_SPACING_MM, PreprocessConfig, SplitConfig
from lungtumor.errors import ConfigError, InputError, LungTumorError
from lungtumor.io.datasets import CaseFiles, find_cases, tumour_mask
from lungtumor.io.nifti import read_nifti
from lungtumor.io.volume import CanonicalVolume, Volume, require_same_grid, to_canonical
from lungtumor.preprocessing.grid import SliceGrid, fit_grid
from lungtumor.preprocessing.presets import preset_for
from lungtumor.workers import pool_context, single_threaded

log = logging.getLogger(__name__)

STORE_FORMAT = "lungtumor-slice-store"
#: Cases whose memory maps a reader keeps open at once (two file descriptors each); the least
#: recently used are closed beyond it, so stores of thousands of cases stay far below the usual
#: limit of 1,024 open files per process, per DataLoader worker.
MAX_OPEN_CASES = 128
STORE_VERSION = 1
#: Defaults of :func:`preprocess_task`: the lung preset and a 5-fold split.
DEFAULT_PREPROCESS = PreprocessConfig()
DEFAULT_SPLIT = SplitConfig()


def load_case(case: CaseFiles) -> tuple[Volume, Volume]:
    """Read and validate one image/label pair.

    Raises:
        InputError / GeometryError: missing label, unreadable files, NaNs, non-3D data,
            shape or affine mismatch, labels other than {0, 1}.
    """
    if case.label is None:
        raise InputError(f"{case.image}: no label file {case.label_hint}; add it or remove the image")
    ct = read_nifti(case.image)
    if ct.array.dtype.kind not in "iuf":
        raise InputError(f"{case.image}: voxel type {ct.array.dtype} is not numeric; expected CT in HU")
    label = read_nifti(case.label)
    require_same_grid(label, ct, "label", "image", fix="the label must be on the image's grid")
    # Binarise: label == case.label_value (the dataset's tumour label); undeclared values raise.
    mask = tumour_mask(label.array, case)
    if not mask.any():  # recorded so that a tumour label absent from every case can be reported
        return ct, label.with_array(mask, label_values=label_values(label.array))
    return ct, label.with_array(mask)


def label_values(array: np.ndarray) -> list[int | float]:
    """The distinct values of a label map (a count per value for small integers: no sort of 80M voxels)."""
    a = np.asarray(array)
    if a.size and a.dtype.kind in "iub" and int(a.min()) >= 0 and int(a.max()) < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(a.ravel().astype(np.int64, copy=False)))]
    return [v.item() for v in np.unique(a)]


def check_label_present(metas: dict[str, dict[str, Any]], label_value: int | None, task_dir: Any) -> None:
    """Refuse a store in which the tumour label occurs in no case (a wrong ``--label`` would train on empty masks)."""
    if not metas or any(int(m.get("tumour_voxels_original", 1)) > 0 for m in metas.values()):
        return
    present = sorted({v for m in metas.values() for v in m.get("label_values", [])})
    shown = ", ".join(str(v) for v in present) or "none recorded"
    raise InputError(
        f"{task_dir}: the tumour label {label_value} occurs in none of the {len(metas)} case(s) (label values present: {shown}); "
        "choose the tumour's value with --label"
    )


def lung_region_for(ct: Volume | CanonicalVolume, label: Volume | None, cfg: PreprocessConfig) -> tuple[Volume | None, dict[str, Any]]:
    """The region the slice grid crops to (on the CT's own grid), and a record of it for ``meta.json``.

    ``ct`` may be the CT already reoriented by :func:`~lungtumor.io.volume.to_canonical` (the
    region finder then does not reorient it again). A preset without a lung region (the seed's)
    uses none (None). The lung preset finds the lungs
    (:func:`~lungtumor.preprocessing.lungs.find_lung_region`); labelled voxels outside the region are
    reported (a warning with their count) and kept: the region grows to include them. A scan whose
    lungs are not found is kept whole, with a warning.
    """
    if not preset_for(cfg).needs_lung_region:
        return None, {}
    from lungtumor.preprocessing.lungs import lung_region_or_whole_scan

    region, n_outside = lung_region_or_whole_scan(ct, label, fallback="the whole field of view is kept for this case")
    info: dict[str, Any] = {"found": bool(region.found), "volume_ml": float(region.volume_ml), "label_voxels_outside": int(n_outside)}
    return (region.mask if region.found else None), info


def check_grid_size(grid: SliceGrid, cfg: PreprocessConfig, where: Any) -> None:
    """Refuse a slice grid too large to make sense (:data:`~lungtumor.config.MAX_VOXELS_PER_CASE`),
    before its slices are allocated: a spacing far finer than the scan's own asks for many GiB.

    Raises:
        ConfigError: naming the case, the spacing (or size), the grid and the smallest spacing that fits.
    """
    d, h, w = grid.slice_shape
    voxels = d * h * w
    if voxels <= MAX_VOXELS_PER_CASE:
        return
    shown = f"{d} slices of {h}x{w} pixels ({voxels / 1e6:,.0f} M voxels; at most {MAX_VOXELS_PER_CASE / 1e6:,.0f} M per case)"
    if cfg.preset == "seed":
        raise ConfigError(f"{where}: --size {cfg.size} would make {shown}; use a smaller --size (256 is the seed's)")
    finest = float(cfg.spacing_mm) * (voxels / MAX_VOXELS_PER_CASE) ** 0.5
    lo, hi = SENSIBLE_SPACING_MM
    raise ConfigError(
        f"{where}: --spacing-mm {cfg.spacing_mm:g} would make {shown}; use --spacing-mm {max(finest, lo):.2g} or coarser "
        f"({lo:g}-{hi:g} mm makes sense for CT)"
    )


def process_case(case: CaseFiles, store_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> dict[str, Any]:
    """Preprocess one case into ``store_dir/cases/<case>/``, atomically.

    The slices are written through the case's :class:`~lungtumor.preprocessing.grid.SliceGrid`
    (recorded in ``meta.json``). Everything is written into a temporary folder that is renamed into
    place only when complete, so an interrupted run leaves no half-written case.

    Returns:
        The case's metadata (also written as ``meta.json``).
    """
    ct, label = load_case(case)
    # Reoriented once each; the region finder, the grid's fit and its slicing take these.
    ct_c, label_c = to_canonical(ct, cfg.axcodes), to_canonical(label, cfg.axcodes)
    region, region_info = lung_region_for(ct_c, label, cfg)
    grid: SliceGrid = fit_grid(ct_c, region, cfg)
    check_grid_size(grid, cfg, case.image)  # before the slices are allocated
    slices = grid.image_to_slices(ct_c)
    mask = grid.mask_to_slices(label_c)
    tumour_voxels = mask.reshape(mask.shape[0], -1).sum(axis=1, dtype=np.int64)
    covered, total = grid.coverage(label_c)
    meta = {
        "case": case.case_id,
        "image": str(case.image),
        "label": str(case.label),
        "source": source_identity(case),
        "original_shape": list(ct.shape),
        "original_affine": ct.affine.tolist(),
        "spacing_mm": list(ct.spacing_mm),
        "ornt": [list(r) for r in grid.ornt],
        "canonical_shape": list(grid.canonical_shape),
        "kept_start": grid.slice_start,
        "n_slices": int(slices.shape[0]),
        "slice_shape": list(grid.out_shape),
        "tumour_voxels": tumour_voxels.tolist(),
        "tumour_voxels_original": int(total),
        "tumour_voxels_covered": int(covered),
        "preset": cfg.preset,
        **({"label_values": label.meta["label_values"]} if "label_values" in label.meta else {}),
        "lung_region": region_info,
        "grid": grid.to_dict(),
    }
    cases_dir = Path(store_dir) / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{case.case_id}-", dir=cases_dir))
    try:
        np.save(tmp / "image.npy", slices.astype(np.float16))
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


#: The options a store was built with, refused when a re-run asks for others.
STORE_FIX = "use a new STORE_DIR or the options it was built with"


def _check_config(store: Path, cfg: PreprocessConfig, label_value: int | None = None) -> bool:
    """True when ``store`` already holds ``cfg`` (and the tumour label ``label_value``); False for a
    new store; a one-line ConfigError naming the differing options for another config
    (:func:`lungtumor.runstate.refuse_config_differences`, as for run and cross-validation folders)."""
    from lungtumor.runstate import config_differences, refuse_config_differences

    path = store / "config.json"
    wanted = {"format": STORE_FORMAT, "version": STORE_VERSION, "preprocess": cfg.to_dict()}
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable store config ({exc}); delete the store folder and re-run") from exc
        if isinstance(have, dict) and isinstance(have.get("preprocess"), dict):
            try:  # a store written before the presets existed lacks their keys: it reads as the seed preset
                have = {**have, "preprocess": PreprocessConfig.from_dict(have["preprocess"]).to_dict()}
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{path}: invalid store config ({exc}); delete the store folder and re-run") from exc
        if not isinstance(have, dict) or {k: have.get(k) for k in ("format", "version")} != {k: wanted[k] for k in ("format", "version")}:
            raise ConfigError(f"{store}: store was built with a different config (format {have.get('format') if isinstance(have, dict) else None!r}); {STORE_FIX}")
        recorded = dict(have.get("preprocess") or {})
        current = dict(wanted["preprocess"])
        if have.get("tumour_label") is not None and label_value is not None:  # stores before it was recorded: not compared
            recorded["label"], current["label"] = have["tumour_label"], int(label_value)
        refuse_config_differences(store, config_differences(recorded, current), what="store", fix=STORE_FIX)
        return True
    # A first run interrupted before any case finished leaves only an empty cases/ folder.
    entries = [e for e in store.iterdir() if not (e.name == "cases" and e.is_dir() and not any(e.iterdir()))]
    if entries:
        raise ConfigError(f"{store}: folder is not empty and is not a lungtumor store; choose an empty or new folder")
    return False


def _write_config(store: Path, cfg: PreprocessConfig, label_value: int | None = None) -> None:
    wanted: dict[str, Any] = {"format": STORE_FORMAT, "version": STORE_VERSION, "preprocess": cfg.to_dict()}
    if label_value is not None:
        wanted["tumour_label"] = int(label_value)
    write_text_atomic(store / "config.json", json.dumps(wanted, indent=2))


def preprocess_task(
    task_dir: str | os.PathLike[str],
    store_dir: str | os.PathLike[str],
    cfg: PreprocessConfig = DEFAULT_PREPROCESS,
    split: SplitConfig = DEFAULT_SPLIT,
    *,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    layout: str = "auto",
    label: str | int | None = None,
) -> dict[str, Any]:
    """Preprocess a dataset folder (MSD, nnU-Net v2 raw or CT/label pairs) into a slice store.

    Finished cases are skipped on a re-run; a store built with another config is refused.

    Args:
        task_dir: dataset folder (:func:`lungtumor.io.datasets.find_cases`).
        store_dir: output folder (created).
        cfg: preprocessing recipe.
        split: patient-level split.
        workers: processes (1 = in this process).
        skip_bad: warn and skip bad cases instead of stopping at the first.
        progress: show a progress bar.
        layout: dataset layout, ``auto`` or one of :data:`lungtumor.io.datasets.LAYOUTS`.
        label: the tumour label (name or value) of a multi-label dataset; None chooses.

    Returns:
        The store summary (also written as ``store.json``).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1 (processes working on cases in parallel)")
    cases = find_cases(task_dir, layout=layout, label=label)
    store = Path(store_dir)
    refuse_overwriting_inputs([store], [task_dir], command="lungtumor preprocess")  # the API too, not only the CLI
    created, was_empty = not store.exists(), store.is_dir() and not any(store.iterdir())
    store.mkdir(parents=True, exist_ok=True)
    # Left-overs of an interrupted run are never valid cases.
    for tmp in (store / "cases").glob(".tmp-*") if (store / "cases").is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
    label_value = cases[0].label_value if cases else None
    config_written = _check_config(store, cfg, label_value)
    _check_split_unchanged(store, split)

    metas: dict[str, dict[str, Any]] = {}
    todo = []
    for case in cases:
        case_dir = store / "cases" / case.case_id
        if (case_dir / "meta.json").exists():
            meta = read_json(case_dir / "meta.json", "case metadata")
            check_same_source(meta, case, store)
            if cached_arrays_ok(case_dir, meta):
                metas[case.case_id] = meta
                continue
            log.warning("%s: cached arrays are truncated or corrupt; rebuilding this case", case_dir)
            shutil.rmtree(case_dir)
        todo.append(case)
    skipped: dict[str, str] = {}

    def on_success() -> None:
        # The config is written once the first case has succeeded: a first run that fails leaves
        # no config behind to refuse the corrected re-run as "a different config".
        nonlocal config_written
        if not config_written:
            _write_config(store, cfg, label_value)
            config_written = True

    from lungtumor.progress import progress_bar

    with progress_bar(total=len(cases), description="preprocess", enabled=progress, completed=len(metas)) as advance:
        if workers <= 1 or len(todo) <= 1:
            results: Iterable[tuple[str, dict[str, Any] | None, LungTumorError | None]] = (
                _process_case_safe(c, str(store), cfg) for c in todo
            )
            _collect(results, metas, skipped, skip_bad, advance, on_success)
        else:
            ctx = pool_context("lungtumor.preprocessing.store")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=single_threaded) as pool:
                futures = [pool.submit(_process_case_safe, c, str(store), cfg) for c in todo]
                try:
                    _collect((f.result() for f in cf.as_completed(futures)), metas, skipped, skip_bad, advance, on_success)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise

    if not metas:
        raise InputError(f"{task_dir}: no case could be preprocessed ({len(skipped)} skipped)")
    try:
        check_label_present(metas, label_value, task_dir)
    except InputError:
        if created or was_empty:  # a wrong --label: leave no store behind that a corrected re-run would refuse
            for entry in [store] if created else list(store.iterdir()):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise
    if not config_written:  # every case was already in the store
        _write_config(store, cfg, label_value)
    return write_manifest(store, cfg, split, metas, skipped)


def _collect(results, metas, skipped, skip_bad, advance, on_success) -> None:  # type: ignore[no-untyped-def]
    for cid, meta, err in results:
        if err is not None:
            if not skip_bad:
                raise err
            log.warning("skipping case %s: %s", cid, err)
            skipped[cid] = str(err)
        else:
            metas[cid] = meta
            on_success()
        advance()


def source_identity(case: CaseFiles) -> dict[str, Any]:
    """Where a case came from: resolved paths, sizes and modification times of its image and label."""
    out: dict[str, Any] = {}
    for role, path in (("image", case.image), ("label", case.label)):
        if path is None:
            continue
        st = Path(path).stat()
        out[role] = {"path": str(Path(path).resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    return out


def check_same_source(meta: dict[str, Any], case: CaseFiles, store: Path) -> None:
    """Refuse to reuse a stored case that came from other files than the dataset's case of that name."""
    recorded = meta.get("source")
    if not recorded:  # a store written before sources were recorded: nothing to compare
        return
    now = source_identity(case)
    for role in ("image", "label"):
        if recorded.get(role) != now.get(role):
            was, is_ = recorded.get(role) or {}, now.get(role) or {}
            if (was.get("path"), was.get("size")) == (is_.get("path"), is_.get("size")):
                # The same file name and size: the file was rewritten or copied again in place since.
                raise ConfigError(
                    f"{store}: case {case.case_id}'s {role} {is_.get('path')} was modified after it was preprocessed "
                    f"({_when(was.get('mtime_ns'))}, now {_when(is_.get('mtime_ns'))}); use a new STORE_DIR (or delete the store) for this dataset"
                )
            raise ConfigError(
                f"{store}: case {case.case_id} was preprocessed from {was.get('path')} ({was.get('size')} bytes) but the dataset's "
                f"{role} is now {is_.get('path')} ({is_.get('size')} bytes); use a new STORE_DIR (or delete the store) for this dataset"
            )


def _when(mtime_ns: Any) -> str:
    """A modification time in ns as UTC, to the second ('?' when not recorded)."""
    import datetime

    if mtime_ns is None:
        return "?"
    return datetime.datetime.fromtimestamp(int(mtime_ns) / 1e9, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def cached_arrays_ok(case_dir: Path, meta: dict[str, Any]) -> bool:
    """True when ``image.npy`` and ``mask.npy`` open and have the slice count and shape ``meta`` records."""
    try:
        image = np.load(case_dir / "image.npy", mmap_mode="r")
        mask = np.load(case_dir / "mask.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    n = int(meta.get("n_slices", -1))
    return image.shape[0] == n and mask.shape == image.shape[:1] + image.shape[1:] and image.ndim == 3


def read_json(path: Path, what: str) -> Any:
    """A JSON file of the store, or a one-line InputError naming it (truncated, corrupt, unreadable)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: {what} missing; the store is incomplete, re-run `lungtumor preprocess` into a new folder") from exc
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: {what} is corrupt ({first}); delete the store folder and re-run `lungtumor preprocess`") from exc


def _check_split_unchanged(store: Path, split: SplitConfig) -> None:
    """A store's split is fixed once written: runs depend on it. A different fold is the run's to choose."""
    summary_path = store / "store.json"
    if not summary_path.exists():
        return
    have = read_json(summary_path, "store summary").get("split_config")
    if have is not None and have != split.to_dict():
        raise ConfigError(
            f"{store}: the store's split is {have}, not {split.to_dict()}; runs trained on this store depend on it, so it is "
            "not rewritten: choose the fold when training (`lungtumor train STORE --fold K`) or preprocess into a new folder"
        )


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


class SliceStore:
    """Read-only view of a slice store (see :func:`preprocess_task`).

    Per-case arrays are memory-mapped lazily, once per process (DataLoader workers each
    open their own maps).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        summary_path = self.root / "store.json"
        manifest_path = self.root / "manifest.json"
        if not summary_path.exists() or not manifest_path.exists():
            raise InputError(
                f"{self.root}: not a finished slice store (store.json/manifest.json missing); "
                "run `lungtumor preprocess TASK_DIR STORE_DIR` first"
            )
        self.summary: dict[str, Any] = read_json(summary_path, "store summary")
        if self.summary.get("format") != STORE_FORMAT:
            raise InputError(f"{summary_path}: not a lungtumor slice store")
        self.manifest: dict[str, Any] = read_json(manifest_path, "store manifest")
        self.preprocess = PreprocessConfig.from_dict(self.summary["preprocess"])
        self._maps: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._metas: dict[str, dict[str, Any]] = {}
        self._case_dirs: dict[str, Path] = {}  # cases of another store joined to this one (:meth:`joined`)

    def case_dir(self, case: str) -> Path:
        """The folder of ``case``'s arrays and meta.json."""
        return self._case_dirs.get(case) or self.root / "cases" / case

    def joined(self, other: SliceStore, prefix: str) -> SliceStore:
        """This store with ``other``'s cases added as ``prefix + id`` (e.g. phantom scans for training).

        The split, summary and preprocessing stay this store's; ``other`` must have been preprocessed
        the same way (its slices are then the same kind of input for the model).

        Raises:
            ConfigError: the two stores' preprocessing differs, or a prefixed id is already a case here.
        """
        mine, theirs = self.preprocess.to_dict(), other.preprocess.to_dict()
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ConfigError(f"{other.root}: preprocessed otherwise than {self.root} ({', '.join(diff)}); build it with the store's options")
        added = {prefix + c: v for c, v in other.manifest["cases"].items()}
        clash = sorted(set(added) & set(self.manifest["cases"]))
        if clash:
            raise ConfigError(f"{self.root}: already holds a case named {clash[0]}; rename the case or use another prefix")
        out = SliceStore.__new__(SliceStore)
        out.__dict__.update(self.__dict__)
        out.manifest = {**self.manifest, "cases": {**self.manifest["cases"], **added}}
        out._case_dirs = {**self._case_dirs, **{prefix + c: other.case_dir(c) for c in other.manifest["cases"]}}
        out._maps, out._metas = OrderedDict(), {}
        return out

    @property
    def splits(self) -> dict[str, list[str]]:
        """Case ids per split (``train``, ``val``)."""
        return self.summary["splits"]

    def n_slices(self, case: str) -> int:
        """Number of stored slices of ``case``."""
        return int(self.manifest["cases"][case]["n_slices"])

    def tumour_voxels(self, case: str) -> np.ndarray:
        """Tumour voxels per stored slice of ``case`` (from the manifest, no data read)."""
        return np.asarray(self.manifest["cases"][case]["tumour_voxels"], dtype=np.int64)

    def meta(self, case: str) -> dict[str, Any]:
        """The case's ``meta.json`` (read once)."""
        meta = self._metas.get(case)
        if meta is None:
            meta = read_json(self.case_dir(case) / "meta.json", "case metadata")
            self._metas[case] = meta
        return meta

    def grid(self, case: str) -> SliceGrid | None:
        """The case's :class:`~lungtumor.preprocessing.grid.SliceGrid` (None in stores written before it existed)."""
        d = self.meta(case).get("grid")
        return SliceGrid.from_dict(d) if d is not None else None

    def context_offsets(self, case: str, context: int) -> np.ndarray:
        """2.5D channel offsets (slices, float) of ``case``: by mm under the lung preset, adjacent slices under the seed's."""
        if self.preprocess.context_step_mm is None:
            return np.arange(-int(context), int(context) + 1, dtype=np.float64)
        grid = self.grid(case)
        if grid is None:
            raise InputError(f"{self.case_dir(case) / 'meta.json'}: no slice grid recorded; re-run `lungtumor preprocess` into a new store")
        return grid.context_offsets(context)

    def arrays(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped (image (D,H,W) float16, mask (D,H,W) uint8) of ``case`` (H, W may differ between cases)."""
        maps = self._maps.get(case)
        if maps is not None:
            self._maps.move_to_end(case)
            return maps
        d = self.case_dir(case)
        try:
            maps = (np.load(d / "image.npy", mmap_mode="r"), np.load(d / "mask.npy", mmap_mode="r"))
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{d}: image.npy/mask.npy unreadable or truncated ({exc}); re-run `lungtumor preprocess` to rebuild the case") from exc
        if maps[0].shape[0] != self.n_slices(case) or maps[0].shape != maps[1].shape:
            raise InputError(f"{d}: image.npy {maps[0].shape} / mask.npy {maps[1].shape} do not match the manifest; re-run `lungtumor preprocess`")
        self._maps[case] = maps
        while len(self._maps) > MAX_OPEN_CASES:  # each map holds a file descriptor
            self._maps.popitem(last=False)
        return maps

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each worker process rather than pickled.
        state = dict(self.__dict__)
        state["_maps"] = OrderedDict()
        return state


