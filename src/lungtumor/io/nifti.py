"""NIfTI files: reading (sform, then qform; ISA-L inflate) and atomic writing, and folder listing."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from lungtumor.atomic import atomic_output
from lungtumor.errors import GeometryError, InputError
from lungtumor.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: sizeof_hdr of a NIfTI-2 header (NIfTI-1: 348).
NIFTI2_HEADER_BYTES = 540
#: Largest distance (mm) anywhere on the grid between where the sform and the qform put a voxel.
#: Above float32 storage and DICOM position rounding (about 0.001 mm), below a tenth of the finest
#: CT pixel (0.5 mm); a 0.1 deg gantry tilt over 300 mm already moves voxels 0.5 mm.
QFORM_SFORM_ATOL_MM = 0.05

try:  # optional fast inflate/deflate (a declared dependency; the stdlib path stays as a fallback)
    from isal.igzip import compress as _gzip
    from isal.igzip import decompress as _gunzip
except ImportError:  # pragma: no cover
    _gzip = _gunzip = None
#: Byte offset of the voxels in a single-file NIfTI-1 (348-byte header + 4-byte extension flag).
NIFTI1_VOX_OFFSET = 352
#: Deflate level of written ``.nii.gz`` files (ISA-L's fastest; masks compress well at any level).
GZIP_LEVEL = 1



def is_nifti(path: str | os.PathLike[str]) -> bool:
    """True for ``.nii`` / ``.nii.gz`` file names."""
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike[str]) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_link(path: Path) -> None:
    """Refuse a symbolic link that loops or points nowhere (a walk would skip it without a word).

    Raises:
        InputError: naming the link and what is wrong with it.
    """
    if not path.is_symlink():
        return
    try:
        path.stat()
    except OSError as exc:
        why = "loops back on itself (a symbolic link loop)" if exc.errno == errno.ELOOP else f"points to {os.readlink(path)}, which does not exist"
        raise InputError(f"{path}: this symbolic link {why}; fix or remove the link") from exc


def list_niftis(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``.nii`` / ``.nii.gz`` files of ``folder`` (not recursive), sorted by name.

    Hidden files and ``._*`` files (macOS resource forks, e.g. in the MSD archives) are
    skipped, and so are sub-folders. A folder holding both ``x.nii`` and ``x.nii.gz`` is
    refused: both would be case ``x`` and which one is meant cannot be guessed.

    Raises:
        InputError: ``folder`` is not a folder, or two files share one case name.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found; pass a folder of .nii/.nii.gz files")
    check_link(root)
    named = [p for p in root.iterdir() if is_nifti(p) and not p.name.startswith(".")]
    for path in named:
        check_link(path)
    files = sorted(p for p in named if p.is_file())
    seen: dict[str, Path] = {}
    for path in files:
        stem = nifti_stem(path)
        if stem in seen:
            raise InputError(
                f"{root}: both {seen[stem].name} and {path.name} exist, which are the same case {stem!r}; delete or move one of them"
            )
        seen[stem] = path
    return files


def check_not_empty(shape: tuple[int, ...], where: Any) -> None:
    """Refuse a volume with no voxels (a dimension of size 0): nothing in it can be segmented or measured.

    Raises:
        InputError: naming ``where`` and the shape.
    """
    if any(int(n) == 0 for n in shape):
        raise InputError(f"{where}: the volume has no voxels (shape {tuple(int(n) for n in shape)}); the file is empty or cut short, re-export the scan")


def read_nifti(path: str | os.PathLike[str], dtype: Any = None, *, allow_nan: bool = False) -> Volume:
    """Read a 3D NIfTI file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: numpy dtype to return (default: the file's on-disk dtype, scaling applied only
            when the header has a non-trivial slope/intercept).
        allow_nan: when False, NaN/inf voxels are an error.

    Raises:
        InputError: missing, unreadable or corrupt file, non-finite voxels.
        GeometryError: not 3D, or an affine with unknown orientation.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a .nii or .nii.gz file")
    try:
        img = _load_image(p)
    except Exception as exc:
        raise InputError(f"{p}: not a readable NIfTI file ({type(exc).__name__}: {exc}); re-export it as .nii.gz") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{p}: not a NIfTI image ({type(img).__name__}); convert it to .nii.gz")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise GeometryError(f"{p}: expected a 3D volume, found {len(img.shape)}D shape {tuple(img.shape)}; pass a single 3D volume")
    check_not_empty(shape, p)
    on_disk = img.get_data_dtype()
    if on_disk.kind not in "iubf":
        raise InputError(f"{p}: voxels are stored as {on_disk} (not real numbers); export the CT or mask as int16, uint8 or float32")
    pixdim = _raw_voxel_size(p)
    uses_qform = not img.get_sform(coded=True)[1]
    if uses_qform and (not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0)):
        # nibabel would quietly read a zero voxel size as 1 mm: every distance and volume would be wrong.
        raise GeometryError(f"{p}: voxel size {pixdim.tolist()} mm is not positive; fix the header's pixdim (the scanner's spacing)")
    try:
        slope, inter = img.dataobj.slope, img.dataobj.inter
        if dtype is None and (slope in (1.0, None) or np.isnan(slope)) and (inter in (0.0, None) or np.isnan(inter)):
            array = np.asarray(img.dataobj.get_unscaled())
        elif dtype is None:
            array = np.asarray(img.dataobj)
        else:
            raw = img.dataobj
            array = np.asarray(raw).astype(dtype, copy=False)
    except Exception as exc:
        raise InputError(f"{p}: corrupt or truncated NIfTI data ({type(exc).__name__}: {exc}); re-export the file") from exc
    array = array.reshape(shape)
    if not allow_nan and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        n = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{p}: {n} voxels are NaN or infinite; fix or mask them before use")
    affine = _nifti_affine(img, p)
    return Volume(array, affine, {"path": str(p)})


def _raw_voxel_size(path: Path) -> np.ndarray:
    """pixdim[1:4] as stored in the file (nibabel's header replaces a zero by 1 when it loads)."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        head = fh.read(NIFTI2_HEADER_BYTES)
    size_le = int.from_bytes(head[:4], "little")
    size_be = int.from_bytes(head[:4], "big")
    order = "<" if size_le in (348, NIFTI2_HEADER_BYTES) else ">"
    if NIFTI2_HEADER_BYTES in (size_le, size_be):
        return np.frombuffer(head[104 + 8 : 104 + 32], dtype=order + "f8").astype(np.float64)  # NIfTI-2: float64 pixdim at 104
    return np.frombuffer(head[76 + 4 : 76 + 16], dtype=order + "f4").astype(np.float64)  # NIfTI-1: float32 pixdim at 76


def _load_image(path: Path) -> Any:
    """nibabel image of ``path``; ``.nii.gz`` is inflated with ISA-L when available.

    Python's zlib is the bottleneck of reading a CT (0.76 s for 150 MB of int16 voxels here);
    ISA-L inflates the same bytes in 0.43 s. The header and voxels are then parsed by nibabel
    from memory, so nothing about the format's handling changes.
    """
    if _gunzip is not None and path.name.lower().endswith(".gz"):
        raw = _gunzip(path.read_bytes())
        size_le = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
        size_be = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
        klass = nib.Nifti2Image if NIFTI2_HEADER_BYTES in (size_le, size_be) else nib.Nifti1Image
        return klass.from_bytes(raw)
    return nib.load(str(path))


def _nifti_affine(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The image's affine, preferring a valid sform, then a qform; refuse unknown orientation."""
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    if scode and sform is not None:
        return np.asarray(sform, dtype=np.float64)
    if qcode and qform is not None:
        return np.asarray(qform, dtype=np.float64)
    raise GeometryError(
        f"{path}: neither sform nor qform is set (both codes 0), so the orientation is unknown; "
        "write the file with a valid affine (e.g. nibabel's set_sform/set_qform with code 1)"
    )


def qform_mismatch_mm(affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) over a grid between ``affine`` and the rigid qform NIfTI stores for it.

    The qform holds only a rotation, zooms and a flip, so for a sheared affine (a gantry-tilted
    CT series) it is an approximation; readers that prefer the qform (ITK, hence 3D Slicer and
    ITK-SNAP, when the sform is not orthonormal) then place voxels this far from the sform's
    position. The map is affine, so the largest distance is at a corner of the grid.
    """
    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    qform = header.get_qform()
    corners = np.array(np.meshgrid(*[(0, max(int(n) - 1, 0)) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    corners_h = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.max(np.linalg.norm(((qform - np.asarray(affine, dtype=np.float64)) @ corners_h)[:3], axis=0)))


def check_nifti_affine(volume: Volume, path: str | os.PathLike[str]) -> None:
    """Refuse a grid whose sform and qform would disagree by more than :data:`QFORM_SFORM_ATOL_MM`.

    Raises:
        GeometryError: the affine is sheared (typically a gantry-tilted DICOM series).
    """
    mismatch_mm = qform_mismatch_mm(volume.affine, volume.shape)
    if mismatch_mm <= QFORM_SFORM_ATOL_MM:
        return
    m = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    shear_deg = max(abs(90.0 - float(np.degrees(np.arccos(np.clip(m[:, a] @ m[:, b], -1.0, 1.0))))) for a, b in ((0, 1), (0, 2), (1, 2)))
    source = volume.meta.get("path", "the input")
    tilt = f"gantry-tilted DICOM series {source}" if volume.meta.get("format") == "dicom" else f"grid of {source}"
    raise GeometryError(
        f"{path}: not written: the {tilt} is sheared by {shear_deg:.2f} deg, which NIfTI cannot store consistently "
        f"(ITK-based viewers would read voxels up to {mismatch_mm:.2f} mm off); resample the tilt away first "
        "(e.g. dcm2niix writes a tilt-corrected NIfTI) or, for predict on a DICOM series, use --output-format dicom-seg"
    )


def _single_file_bytes(img: nib.Nifti1Image, array: np.ndarray) -> bytes:
    """The bytes of a single-file NIfTI-1 (header, empty extension flag, voxels in Fortran order).

    What ``img.to_bytes()`` produces, without its scaling machinery and extra copies; the tests read
    the result back with nibabel and SimpleITK.
    """
    img.update_header()
    hdr = img.header.copy()
    hdr.set_data_dtype(array.dtype)
    hdr["vox_offset"] = NIFTI1_VOX_OFFSET
    return hdr.binaryblock + bytes(NIFTI1_VOX_OFFSET - len(hdr.binaryblock)) + array.astype(array.dtype.newbyteorder("="), copy=False).tobytes(order="F")


def write_nifti(volume: Volume, path: str | os.PathLike[str], dtype: Any = None) -> Path:
    """Write ``volume`` to ``path`` atomically, with sform and qform both set to its affine.

    The qform can only hold rigid + scaling, so a sheared affine (a gantry-tilted DICOM series)
    is refused (:func:`check_nifti_affine`) instead of being written with an exact sform beside a
    rigid qform that ITK-based viewers read millimetres off.

    Raises:
        InputError: ``path`` is not a NIfTI name.
        GeometryError: the affine is sheared beyond :data:`QFORM_SFORM_ATOL_MM`.
    """
    p = Path(path)
    if not is_nifti(p):
        raise InputError(f"{p}: output must end in .nii or .nii.gz")
    check_nifti_affine(volume, p)
    p.parent.mkdir(parents=True, exist_ok=True)
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    img = nib.Nifti1Image(array, volume.affine)
    img.set_sform(volume.affine, code=1)
    img.set_qform(volume.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if array.dtype.kind in "iu":
        img.header.set_slope_inter(1.0, 0.0)
    suffix = ".nii.gz" if str(p).lower().endswith(".gz") else ".nii"
    with atomic_output(p, suffix=suffix) as tmp:
        if suffix == ".nii.gz" and _gzip is not None:
            # ISA-L's deflate at level 1 instead of zlib's default: a 512x512x300 int16 CT is written in
            # 4.8 s instead of 12 s (a uint8 mask 0.9 s instead of 1.0 s: there the Fortran-order copy
            # dominates); files are a few percent larger and any gzip reader reads them.
            tmp.write_bytes(_gzip(_single_file_bytes(img, array), GZIP_LEVEL))
        else:
            nib.save(img, str(tmp))
    return p
