"""Dataset discovery: the cases (image, label, tumour label value) of a dataset folder.

Three layouts are recognised (:func:`detect_layout`):

``msd``
    The Medical Segmentation Decathlon layout: ``imagesTr/<case>.nii.gz`` and
    ``labelsTr/<case>.nii.gz``, with an optional ``dataset.json`` whose ``labels`` map values
    to names (``{"0": "background", "1": "cancer"}``).
``nnunet``
    The nnU-Net v2 raw layout (``DatasetXXX_Name/``): ``imagesTr/<case>_0000<file_ending>``
    (one file per channel, ``_0000`` first), ``labelsTr/<case><file_ending>``, and a required
    ``dataset.json`` with ``channel_names``, ``labels`` (names to values,
    ``{"background": 0, "tumor": 1}``) and ``file_ending``. lungtumor reads one CT channel:
    a single-channel dataset is taken as it is; of a multi-channel one, channel 0 is used when
    it is named CT (the other channels are ignored, with a log message), else it is refused.
    An nnU-Net v1 raw folder (MSD-style dataset.json, ``<case>_0000`` images) is read the same way.
``pairs``
    A plain folder of ``<case>_ct.nii.gz`` / ``<case>_label.nii.gz`` pairs (``.nii`` too),
    with an optional ``dataset.json`` ``labels`` map in either of the two forms above.

Which label value is the tumour (:func:`choose_label`): the one named by ``label`` (a name,
case-insensitive, or a value); without ``label``, the only foreground label, or else the one
foreground label whose name says tumour (``tumour``, ``tumor``, ``cancer``, ``lesion``,
``nodule``, ``gtv``, ...). Anything else is ambiguous and refused. The chosen value travels
in :class:`CaseFiles` to preprocessing, where :func:`tumour_mask` makes the binary mask.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.errors import InputError
from lungtumor.io.nifti import check_link, list_niftis, nifti_stem
from lungtumor.io.volume import is_binary

log = logging.getLogger(__name__)

#: Layout names accepted by :func:`find_cases` (``auto`` = :func:`detect_layout`).
LAYOUTS = ("msd", "nnunet", "pairs")
LAYOUT_AUTO = "auto"
DATASET_JSON = "dataset.json"
IMAGES_DIR = "imagesTr"
LABELS_DIR = "labelsTr"
#: Pairs layout: ``<case>_ct.nii.gz`` next to ``<case>_label.nii.gz`` (suffix case-insensitive).
PAIR_IMAGE_SUFFIX = "_ct"
PAIR_LABEL_SUFFIX = "_label"
#: nnU-Net v2: the channel index after the case id (``_0000``), and the only channel read.
NNUNET_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
NNUNET_CT_CHANNEL = 0
NNUNET_DEFAULT_FILE_ENDING = ".nii.gz"
NIFTI_FILE_ENDINGS = (".nii.gz", ".nii")
#: The channel name nnU-Net gives CT (it selects CT intensity normalisation).
CT_CHANNEL_NAME = "ct"
#: Label value of background in every layout.
BACKGROUND_VALUE = 0
#: The default tumour value where a dataset declares no labels (the MSD Task06 convention).
DEFAULT_TUMOUR_VALUE = 1
#: Words that make a label name a tumour (lower-case substrings).
TUMOUR_WORDS = ("tumour", "tumor", "cancer", "lesion", "nodule", "gtv", "neoplasm", "carcinoma", "malignan", "metasta")
#: Label values listed in full in an error message.
_MAX_VALUES_SHOWN = 8


@dataclass(frozen=True)
class CaseFiles:
    """One training case: its image, its label and which label value is the tumour.

    Attributes:
        case_id: the case name (file name without layout suffixes).
        image: the CT (for nnU-Net, channel ``_0000``).
        label: the label map, None when the file is missing.
        label_value: the voxel value that is tumour; every other declared value is background.
        other_label_values: the other foreground values the dataset declares (they become
            background); a value outside ``{0, label_value, *other_label_values}`` is an error.
            None: any other value is background (a value chosen by the user for a dataset
            that declares no labels).
        expected_label: where the label should be, relative to the dataset folder (for the
            message when it is missing).
    """

    case_id: str
    image: Path
    label: Path | None
    label_value: int = DEFAULT_TUMOUR_VALUE
    other_label_values: tuple[int, ...] | None = ()
    expected_label: str = ""

    @property
    def label_hint(self) -> str:
        """Where the missing label file should be (``labelsTr/<case>.nii.gz`` by default)."""
        return self.expected_label or f"{LABELS_DIR}/{self.case_id}.nii.gz"


# --------------------------------------------------------------------------------------------
# Layout


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"{path}: unreadable dataset.json ({type(exc).__name__}: {exc}); "
            "fix the JSON or remove the file"
        ) from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: dataset.json must hold a JSON object, found {type(data).__name__}; fix the file")
    return data


def _is_nnunet_json(data: Mapping[str, Any]) -> bool:
    # nnU-Net v2 requires channel_names (v1 and the MSD use "modality") and adds file_ending.
    return "channel_names" in data or "file_ending" in data


def _has_channel_suffixes(root: Path) -> bool:
    """True for an nnU-Net v1 raw folder: every image is ``<case>_XXXX`` and labels are ``<case>``.

    (nnU-Net v1's dataset.json has MSD keys, so only the file names tell it from the MSD.)
    """
    images = list_niftis(root / IMAGES_DIR)
    matches = [NNUNET_CHANNEL_RE.match(nifti_stem(p)) for p in images]
    if not images or not all(matches):
        return False
    label_dir = root / LABELS_DIR
    stems = [nifti_stem(p) for p in images]
    if any(_find_label_file(label_dir, stem, NIFTI_FILE_ENDINGS) for stem in stems):
        return False
    return any(_find_label_file(label_dir, m["case"], NIFTI_FILE_ENDINGS) for m in matches if m is not None)


def detect_layout(folder: str | os.PathLike[str]) -> str:
    """Which dataset layout ``folder`` is in: ``"msd"``, ``"nnunet"`` or ``"pairs"``.

    ``nnunet`` when ``dataset.json`` has nnU-Net v2 keys (``channel_names`` / ``file_ending``),
    or when every image in ``imagesTr/`` is ``<case>_XXXX`` and the labels are ``<case>`` (an
    nnU-Net v1 raw folder); ``msd`` when there is an ``imagesTr/`` folder otherwise; ``pairs``
    when the folder holds ``<case>_ct.nii.gz`` files.

    Raises:
        InputError: not a folder, or a folder in none of the layouts.
    """
    root = Path(folder)
    for path in (root, root / IMAGES_DIR, root / LABELS_DIR):  # a link loop reads as "not there"; say what it is
        check_link(path)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found; check the path")
    json_path = root / DATASET_JSON
    data = _read_dataset_json(json_path) if json_path.is_file() else {}
    if _is_nnunet_json(data):
        return "nnunet"
    if (root / IMAGES_DIR).is_dir():
        return "nnunet" if _has_channel_suffixes(root) else "msd"
    if any(_pair_stem(p, PAIR_IMAGE_SUFFIX) is not None for p in list_niftis(root)):
        return "pairs"
    raise InputError(
        f"{root}: not a dataset folder in a known layout; expected imagesTr/ + labelsTr/ (MSD), an nnU-Net v2 "
        f"DatasetXXX_Name folder with dataset.json, or <case>{PAIR_IMAGE_SUFFIX}.nii.gz + <case>{PAIR_LABEL_SUFFIX}.nii.gz pairs"
    )


# --------------------------------------------------------------------------------------------
# Labels


def _label_map(raw: Any, path: Path) -> dict[str, int | tuple[int, ...]]:
    """``labels`` of a dataset.json as name -> value (a tuple for an nnU-Net region).

    Accepts the MSD form (value -> name, ``{"0": "background", "1": "cancer"}``) and the
    nnU-Net v2 form (name -> value, ``{"background": 0, "tumor": 1}``; a list is a region).
    """
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: 'labels' must be a non-empty object mapping names to values; fix the dataset.json")
    if all(isinstance(v, str) for v in raw.values()):  # MSD: value -> name
        out: dict[str, int | tuple[int, ...]] = {}
        for key, name in raw.items():
            if not str(key).strip().lstrip("-").isdigit():
                raise InputError(
                    f"{path}: label key {key!r} is not an integer value; "
                    "MSD labels map values to names, e.g. {\"1\": \"cancer\"}"
                )
            out[name] = int(key)
        return out
    out = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            raise InputError(
                f"{path}: label {name!r} has value {value!r}; "
                "nnU-Net labels map names to integers, e.g. {\"tumor\": 1}"
            )
        if isinstance(value, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise InputError(f"{path}: label {name!r} has value {value!r}; a region must be a list of integers")
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


def _looks_like_tumour(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in TUMOUR_WORDS)


def _parse_label_option(label: str | int | None) -> str | int | None:
    """A ``--label`` value: an integer string is a value, anything else a name."""
    if isinstance(label, str):
        text = label.strip()
        if not text:
            raise InputError("--label is empty; pass a label name (e.g. cancer) or value (e.g. 1)")
        return int(text) if text.lstrip("-").isdigit() else text
    return label


def choose_label(
    labels: Mapping[str, int | tuple[int, ...]] | None, label: str | int | None, source: str | os.PathLike[str]
) -> tuple[int, tuple[int, ...] | None]:
    """The tumour's label value and the other foreground values of a dataset.

    Args:
        labels: name -> value from the dataset.json (None when the dataset declares none).
        label: the user's choice, a name (case-insensitive) or a value; None = choose.
        source: the dataset.json (or folder) named in error messages.

    Returns:
        ``(label_value, other_label_values)``; see :class:`CaseFiles`.

    Raises:
        InputError: the choice names no label, names a region or the background, or without
            a choice several foreground labels exist and not exactly one of them names a tumour.
    """
    choice = _parse_label_option(label)
    if labels is None:
        if choice is None:
            return DEFAULT_TUMOUR_VALUE, ()
        if isinstance(choice, str):
            raise InputError(
                f"{source}: --label {choice!r} is a name but the dataset declares no labels; "
                "pass the tumour's value (e.g. --label 1)"
            )
        if choice == BACKGROUND_VALUE:
            raise InputError(f"{source}: --label 0 is background; pass the tumour's value (e.g. --label 1)")
        return int(choice), None
    foreground = {name: value for name, value in labels.items() if value != BACKGROUND_VALUE}
    declared = ", ".join(f"{name}={list(value) if isinstance(value, tuple) else value}" for name, value in foreground.items())
    if choice is None:
        if len(foreground) == 1:
            chosen_name = next(iter(foreground))
        else:
            tumours = [name for name in foreground if _looks_like_tumour(name)]
            if len(tumours) != 1:
                found = "none names a tumour" if not tumours else f"{len(tumours)} name a tumour ({', '.join(tumours)})"
                raise InputError(
                    f"{source}: {len(foreground)} foreground labels ({declared}) and {found}; "
                    "choose one with --label NAME or --label VALUE"
                )
            chosen_name = tumours[0]
    elif isinstance(choice, str):
        matches = [name for name in labels if name.lower() == choice.lower()]
        if len(matches) != 1:
            why = "is not one of" if not matches else "matches several of"
            raise InputError(
                f"{source}: --label {choice!r} {why} the declared labels ({declared}); "
                "pass one of these names or values"
            )
        chosen_name = matches[0]
    else:
        matches = [name for name, value in labels.items() if value == choice]
        if not matches or choice == BACKGROUND_VALUE:
            raise InputError(
                f"{source}: --label {choice} is not a foreground label value ({declared}); "
                "pass one of these names or values"
            )
        chosen_name = matches[0]
    value = labels[chosen_name]
    if isinstance(value, tuple):
        raise InputError(
            f"{source}: label {chosen_name!r} is an nnU-Net region {list(value)}, not one value; "
            "choose a single-value label with --label"
        )
    if value == BACKGROUND_VALUE:
        raise InputError(f"{source}: label {chosen_name!r} is background (0); choose the tumour with --label")
    others: set[int] = set()
    for other in foreground.values():
        others.update(other if isinstance(other, tuple) else (other,))
    others.discard(int(value))
    others.discard(BACKGROUND_VALUE)
    return int(value), tuple(sorted(others))


def tumour_mask(label: np.ndarray, case: CaseFiles) -> np.ndarray:
    """The binary tumour mask (uint8 {0, 1}) of a label map: ``label == case.label_value``.

    Raises:
        InputError: the label holds a value the dataset does not declare (for a dataset
            without declared labels: anything but 0 and 1), naming the label file.
    """
    array = np.asarray(label)
    where = case.label if case.label is not None else case.image
    if case.label_value == DEFAULT_TUMOUR_VALUE and case.other_label_values == ():
        # Today's binary datasets: min/max for integers (no sort of 80M voxels).
        if is_binary(array):
            return array.astype(np.uint8, copy=False)
        shown = ", ".join(str(v) for v in np.unique(array)[:_MAX_VALUES_SHOWN])
        raise InputError(
            f"{where}: label values {{{shown}}} are not binary; expected 0 = background, 1 = tumour "
            "(merge or binarise the labels first, or name the tumour label with --label)"
        )
    if case.other_label_values is not None:
        allowed = [BACKGROUND_VALUE, case.label_value, *case.other_label_values]
        bad = np.isin(array, allowed, invert=True)
        if bad.any():
            shown = ", ".join(str(v) for v in np.unique(array[bad])[:_MAX_VALUES_SHOWN])
            raise InputError(
                f"{where}: label values {{{shown}}} are not among the values the dataset declares ({sorted(allowed)}); "
                "fix the label file or the labels of its dataset.json"
            )
    return (array == case.label_value).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Layouts -> cases


def _pair_stem(path: Path, suffix: str) -> str | None:
    """``<case>`` of ``<case><suffix>.nii[.gz]`` (suffix case-insensitive), else None."""
    stem = nifti_stem(path)
    if stem.lower().endswith(suffix) and len(stem) > len(suffix):
        return stem[: -len(suffix)]
    return None


def _find_label_file(folder: Path, stem: str, endings: tuple[str, ...]) -> Path | None:
    for ending in endings:
        candidate = folder / f"{stem}{ending}"
        if candidate.is_file():
            return candidate
    return None


def _msd_cases(root: Path, labels: dict[str, Any] | None, label: str | int | None, require_labels: bool) -> list[CaseFiles]:
    images = root / IMAGES_DIR
    if not images.is_dir():
        raise InputError(f"{root}: no {IMAGES_DIR}/ folder; expected the MSD layout {IMAGES_DIR}/ + {LABELS_DIR}/")
    label_dir = root / LABELS_DIR
    images_found = list_niftis(images)
    if not images_found:
        raise InputError(f"{images}: no .nii/.nii.gz files; expected lung_XXX.nii.gz volumes")
    if require_labels and not label_dir.is_dir():
        raise InputError(f"{root}: no {LABELS_DIR}/ folder; training data needs one label file per image")
    value, others = choose_label(labels, label, root / DATASET_JSON if labels is not None else root)
    cases = []
    for img in images_found:
        cid = nifti_stem(img)
        lbl = _find_label_file(label_dir, cid, NIFTI_FILE_ENDINGS)
        cases.append(CaseFiles(cid, img, lbl, value, others, f"{LABELS_DIR}/{cid}.nii.gz"))
    return cases


def _nnunet_file_ending(data: Mapping[str, Any], path: Path) -> str:
    ending = data.get("file_ending", NNUNET_DEFAULT_FILE_ENDING)
    if not isinstance(ending, str) or ending.lower() not in NIFTI_FILE_ENDINGS:
        raise InputError(
            f"{path}: file_ending {ending!r} is not NIfTI; "
            "lungtumor reads .nii.gz/.nii (convert the images, e.g. with SimpleITK)"
        )
    return ending


def _nnunet_check_channels(data: Mapping[str, Any], path: Path) -> None:
    """Refuse datasets whose channel 0 is not CT when there are several channels."""
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{path}: no 'channel_names' (e.g. {{\"0\": \"CT\"}}); add it as nnU-Net v2 requires")
    names = {str(k): str(v) for k, v in channels.items()}
    first = names.get(str(NNUNET_CT_CHANNEL))
    if first is None:
        raise InputError(f"{path}: channel_names {names} has no channel \"0\"; number the channels from 0")
    if len(names) == 1:
        if first.lower() != CT_CHANNEL_NAME:
            log.warning("%s: the only channel is named %r, not CT; reading it as CT in HU", path, first)
        return
    if first.lower() != CT_CHANNEL_NAME:
        raise InputError(
            f"{path}: {len(names)} channels {names} and channel 0 is {first!r}, not CT; lungtumor reads one CT channel "
            "(make CT channel 0 or build a single-channel dataset)"
        )
    log.info("%s: reading channel 0 (CT) of %d; ignoring %s", path, len(names), {k: v for k, v in names.items() if k != "0"})


def _nnunet_cases(root: Path, data: dict[str, Any], label: str | int | None, require_labels: bool) -> list[CaseFiles]:
    json_path = root / DATASET_JSON
    _nnunet_check_channels(data, json_path)
    ending = _nnunet_file_ending(data, json_path)
    if "labels" not in data:
        raise InputError(f"{json_path}: no 'labels' (e.g. {{\"background\": 0, \"tumor\": 1}}); add them as nnU-Net v2 requires")
    value, others = choose_label(_label_map(data["labels"], json_path), label, json_path)
    images = root / IMAGES_DIR
    if not images.is_dir():
        raise InputError(f"{root}: no {IMAGES_DIR}/ folder; an nnU-Net raw dataset has {IMAGES_DIR}/<case>_0000{ending}")
    label_dir = root / LABELS_DIR
    ct_files: dict[str, Path] = {}
    channel_only: dict[str, Path] = {}
    for path in list_niftis(images):
        if not path.name.lower().endswith(ending.lower()):
            raise InputError(
                f"{path}: file ending differs from dataset.json's file_ending {ending!r}; "
                "rename the file or fix file_ending"
            )
        match = NNUNET_CHANNEL_RE.match(path.name[: -len(ending)])
        if match is None:
            raise InputError(
                f"{path}: not an nnU-Net image name; "
                f"expected <case>_0000{ending} (case id, then the 4-digit channel)"
            )
        cid, channel = match["case"], int(match["channel"])
        if channel == NNUNET_CT_CHANNEL:
            ct_files[cid] = path
        else:
            channel_only.setdefault(cid, path)
    for cid, path in channel_only.items():
        if cid not in ct_files:
            raise InputError(
                f"{path}: case {cid!r} has no channel 0 file {cid}_0000{ending} in {IMAGES_DIR}/; "
                "add it or remove the case"
            )
    if not ct_files:
        raise InputError(f"{images}: no <case>_0000{ending} files; expected nnU-Net raw images")
    if require_labels and not label_dir.is_dir():
        raise InputError(
            f"{root}: no {LABELS_DIR}/ folder; "
            f"training data needs one label file per case ({LABELS_DIR}/<case>{ending})"
        )
    n_declared = data.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(ct_files):
        log.warning("%s: numTraining is %d but %s/ holds %d cases", json_path, n_declared, IMAGES_DIR, len(ct_files))
    cases = []
    for cid in sorted(ct_files):
        lbl = _find_label_file(label_dir, cid, (ending,))
        cases.append(CaseFiles(cid, ct_files[cid], lbl, value, others, f"{LABELS_DIR}/{cid}{ending}"))
    return cases


def _pairs_cases(root: Path, labels: dict[str, Any] | None, label: str | int | None, require_labels: bool) -> list[CaseFiles]:
    images: dict[str, Path] = {}
    label_files: dict[str, Path] = {}
    for path in list_niftis(root):
        cid = _pair_stem(path, PAIR_IMAGE_SUFFIX)
        if cid is not None:
            if cid in images:
                raise InputError(f"{root}: both {images[cid].name} and {path.name} are the CT of case {cid!r}; keep one")
            images[cid] = path
            continue
        cid = _pair_stem(path, PAIR_LABEL_SUFFIX)
        if cid is not None:
            if cid in label_files:
                raise InputError(f"{root}: both {label_files[cid].name} and {path.name} are the label of case {cid!r}; keep one")
            label_files[cid] = path
        else:
            log.debug("%s: neither <case>%s nor <case>%s; ignored", path, PAIR_IMAGE_SUFFIX, PAIR_LABEL_SUFFIX)
    for cid, path in label_files.items():
        if cid not in images:
            raise InputError(
                f"{path}: label without a CT; "
                f"expected {cid}{PAIR_IMAGE_SUFFIX}.nii.gz beside it (add it or remove the label)"
            )
    if not images:
        raise InputError(
            f"{root}: no <case>{PAIR_IMAGE_SUFFIX}.nii.gz files; "
            f"expected <case>{PAIR_IMAGE_SUFFIX}.nii.gz + <case>{PAIR_LABEL_SUFFIX}.nii.gz pairs"
        )
    if require_labels and not label_files:
        raise InputError(f"{root}: no <case>{PAIR_LABEL_SUFFIX}.nii.gz files; training data needs one label beside each CT")
    value, others = choose_label(labels, label, root / DATASET_JSON if labels is not None else root)
    return [
        CaseFiles(cid, images[cid], label_files.get(cid), value, others, f"{cid}{PAIR_LABEL_SUFFIX}.nii.gz")
        for cid in sorted(images)
    ]


def find_cases(
    folder: str | os.PathLike[str],
    *,
    layout: str = LAYOUT_AUTO,
    label: str | int | None = None,
    require_labels: bool = True,
) -> list[CaseFiles]:
    """List the cases of a dataset folder in the MSD, nnU-Net v2 raw or pairs layout.

    A missing label file is not an error here: it is reported per case when the case is
    loaded (so that ``skip_bad`` can skip it); a missing ``labelsTr/`` (or no label at all in
    a pairs folder) is, when ``require_labels``.

    Args:
        folder: the dataset folder.
        layout: ``"auto"`` (:func:`detect_layout`), ``"msd"``, ``"nnunet"`` or ``"pairs"``.
        label: the tumour label, a name from dataset.json's ``labels`` (case-insensitive) or a
            value (an integer or an integer string); None chooses (see :func:`choose_label`).
        require_labels: refuse a dataset without labels.

    Returns:
        The cases sorted by case id (MSD: by image file name, as before).

    Raises:
        InputError: folder missing or in none of the layouts, bad dataset.json, ambiguous or
            unknown label, files that do not follow the layout.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(
            f"{root}: folder not found; "
            "pass a dataset folder (MSD, nnU-Net v2 raw, or <case>_ct/<case>_label pairs)"
        )
    if layout not in (LAYOUT_AUTO, *LAYOUTS):
        raise InputError(f"layout {layout!r} is unknown; use one of {', '.join((LAYOUT_AUTO, *LAYOUTS))}")
    chosen = detect_layout(root) if layout == LAYOUT_AUTO else layout
    json_path = root / DATASET_JSON
    data = _read_dataset_json(json_path) if json_path.is_file() else None
    if chosen == "nnunet":
        if data is None:
            raise InputError(
                f"{root}: no {DATASET_JSON}; "
                "an nnU-Net v2 raw dataset needs one with channel_names, labels and file_ending"
            )
        return _nnunet_cases(root, data, label, require_labels)
    labels = _label_map(data["labels"], json_path) if data is not None and "labels" in data else None
    if chosen == "msd":
        return _msd_cases(root, labels, label, require_labels)
    return _pairs_cases(root, labels, label, require_labels)
