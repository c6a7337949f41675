"""Tests of the synthetic MSD-layout phantom (SMALL size only: fast and offline)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import lungtumor.phantom
from lungtumor.config import HU_AIR, SEED_SKIP_INFERIOR_SLICES
from lungtumor.errors import ConfigError
from lungtumor.io.nifti import read_nifti
from lungtumor.phantom.dataset import PHANTOM_SIZES, case_ids, make_case, write_phantom_dataset

SEEDS_WITH_TUMOURS = (0, 1, 3)


@pytest.fixture(scope="module")
def case0():
    return make_case(0)


@pytest.fixture(scope="module")
def cases():
    return {seed: make_case(seed) for seed in SEEDS_WITH_TUMOURS}


def test_deterministic_for_a_seed(case0):
    ct, label = make_case(0)
    np.testing.assert_array_equal(ct.array, case0[0].array)
    np.testing.assert_array_equal(label.array, case0[1].array)
    np.testing.assert_array_equal(ct.affine, case0[0].affine)


def test_different_seeds_differ(case0):
    ct, _ = make_case(1)
    assert ct.shape != case0[0].shape or not np.array_equal(ct.array, case0[0].array)
    assert not np.allclose(ct.affine, case0[0].affine)


def test_dtypes_grid_and_values(case0):
    ct, label = case0
    assert ct.array.dtype == np.int16
    assert label.array.dtype == np.uint8
    assert ct.same_grid(label)
    assert set(np.unique(label.array)) <= {0, 1}
    spec = PHANTOM_SIZES["SMALL"]
    nx, ny, nz = ct.shape
    assert (nx, ny) == (spec.n_inplane, spec.n_inplane)
    assert spec.slices[0] <= nz <= spec.slices[1]
    assert nz > SEED_SKIP_INFERIOR_SLICES + 20


def test_affine_is_msd_like(case0):
    ct, label = case0
    assert nib.aff2axcodes(ct.affine) == ("L", "A", "S")
    assert ct.axcodes == label.axcodes == ("L", "A", "S")
    diag = np.diag(ct.affine)[:3]
    assert diag[0] < 0 < diag[1] and diag[2] > 0
    np.testing.assert_allclose(ct.affine[:3, :3], np.diag(diag))  # no rotation, like MSD
    sx, sy, sz = ct.spacing_mm
    spec = PHANTOM_SIZES["SMALL"]
    assert sx == pytest.approx(sy)
    assert spec.spacing_xy_mm[0] <= sx <= 4.0 and 2.0 <= sz <= 5.0


def test_spacing_varies_between_cases(cases):
    spacings = {tuple(round(s, 3) for s in ct.spacing_mm) for ct, _ in cases.values()}
    assert len(spacings) == len(cases)


def test_tumours_are_soft_tissue_in_the_lungs(cases):
    for seed, (ct, label) in cases.items():
        a, m = ct.array, label.array.astype(bool)
        assert m.any(), f"seed {seed} should have a tumour"
        assert 0.0 < a[m].mean() < 80.0  # soft tissue, like vessels
        # Every tumour voxel sits in the lungs: most of the tumour's shell just outside the
        # label is lung (dark), the rest chest wall or mediastinum it abuts.
        shell = ndimage.binary_dilation(m, iterations=2) & ~m
        assert np.mean(a[shell] < -400) > 0.5
        # Inside the body (never in the air around it).
        assert a[m].min() > -500


def test_some_tumours_abut_the_chest_wall_or_mediastinum(cases):
    soft_fractions = []
    for ct, label in cases.values():
        components, n = ndimage.label(label.array, np.ones((3, 3, 3)))
        for c in range(1, n + 1):
            tumour = components == c
            shell = ndimage.binary_dilation(tumour, iterations=2) & ~tumour
            soft_fractions.append(float(np.mean(ct.array[shell] > -300)))
    assert max(soft_fractions) > 0.15  # juxtapleural / juxtamediastinal
    assert min(soft_fractions) < 0.1  # surrounded by lung


def test_no_tumour_in_the_dropped_inferior_slices(cases):
    for _, label in cases.values():
        assert not label.array[:, :, : SEED_SKIP_INFERIOR_SLICES + 1].any()


def test_inferior_slices_are_abdomen(case0):
    ct, _ = case0
    a = ct.array
    inner = a[32:96, 32:96]  # central part of the body
    lung_fraction_low = np.mean(inner[:, :, :20] < -500)
    lung_fraction_mid = np.mean(inner[:, :, a.shape[2] // 2] < -500)
    assert lung_fraction_low < 0.05
    assert lung_fraction_mid > 0.25


def test_hu_ranges(case0):
    ct, _ = case0
    a = ct.array
    assert a.min() >= -1024 and a.max() <= 3071
    corners = np.concatenate([a[:6, :6].ravel(), a[-6:, -6:].ravel()])
    assert abs(np.median(corners) - HU_AIR) < 10
    # Lung parenchyma: the dark tissue of the thorax, well away from the air outside.
    mid = a[16:-16, 16:-16, a.shape[2] // 2 - 5 : a.shape[2] // 2 + 5]
    lung = mid[(mid > -980) & (mid < -500)]
    assert lung.size > 1000
    assert -900 < np.median(lung) < -780
    assert np.any(a > 500)  # bone
    soft = a[(a > -150) & (a < 150)]
    assert soft.size > 0.1 * a.size  # fat, muscle, organs


def test_vessels_are_as_bright_as_tumours(case0):
    """Tumours must not be the only bright thing in the lungs."""
    ct, label = case0
    a, m = ct.array, label.array.astype(bool)
    nz = a.shape[2]
    thorax = np.zeros(a.shape, dtype=bool)
    thorax[:, :, SEED_SKIP_INFERIOR_SLICES + 5 : nz - 5] = True
    lung = ndimage.binary_erosion((a < -500) & thorax, iterations=1)
    lung_region = ndimage.binary_closing(lung, iterations=3) & thorax
    bright_in_lung = lung_region & (a > -200) & ~ndimage.binary_dilation(m, iterations=3)
    assert bright_in_lung.sum() > 1000


def test_n_tumours_override():
    _, label = make_case(4, n_tumours=0)
    assert not label.array.any()
    ct, label = make_case(4, n_tumours=3)
    _, n = ndimage.label(label.array, np.ones((3, 3, 3)))
    assert 1 <= n <= 3
    assert ct.meta["n_tumours"] == 3


def test_some_cases_have_no_tumour():
    """About 15 % of random cases have no tumour; seeds 0..14 contain at least one such case."""
    assert any(not make_case(seed)[1].array.any() for seed in range(15))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="size"):
        make_case(0, size="HUGE")
    with pytest.raises(ConfigError, match="n_tumours"):
        make_case(0, n_tumours=-1)
    with pytest.raises(ConfigError, match="cases"):
        write_phantom_dataset("/nonexistent/never", cases=0)


def test_case_ids_unique_three_digits():
    train, test = case_ids(10, 2)
    assert len(train) == 10 and len(test) == 2
    assert not set(train) & set(test)
    assert all(1 <= i <= 999 for i in train + test)
    assert case_ids(3, 0) == ([1, 2, 3], [])


def test_write_phantom_dataset(tmp_path: Path):
    out = write_phantom_dataset(tmp_path / "Task06_Lung", cases=3, test_cases=1, seed=7)
    names_tr = sorted(p.name for p in (out / "imagesTr").iterdir())
    names_lb = sorted(p.name for p in (out / "labelsTr").iterdir())
    names_ts = sorted(p.name for p in (out / "imagesTs").iterdir())
    assert names_tr == names_lb and len(names_tr) == 3 and len(names_ts) == 1
    assert all(n.startswith("lung_") and n.endswith(".nii.gz") and len(n) == len("lung_001.nii.gz") for n in names_tr)
    assert not set(names_tr) & set(names_ts)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "cancer"}
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    assert "synthetic" in meta["description"].lower()
    for entry in meta["training"]:
        assert (out / entry["image"]).is_file() and (out / entry["label"]).is_file()
    assert all((out / t).is_file() for t in meta["test"])

    first = meta["training"][0]
    ct = read_nifti(out / first["image"])
    label = read_nifti(out / first["label"])
    assert ct.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert ct.axcodes == ("L", "A", "S") and ct.same_grid(label)

    # Same seed -> same bytes; a case depends on (seed, case id) only, not on the case count.
    assert first["image"] == "./imagesTr/lung_001.nii.gz"
    again = write_phantom_dataset(tmp_path / "again", cases=1, test_cases=0, seed=7, progress=True)
    np.testing.assert_array_equal(read_nifti(again / "imagesTr" / "lung_001.nii.gz").array, ct.array)


def test_phantom_replaces_only_its_own_folder(tmp_path: Path):
    out = write_phantom_dataset(tmp_path / "set", cases=2, test_cases=1, seed=3)
    write_phantom_dataset(out, cases=1, test_cases=0, seed=3)  # its own: replaced, no case left over
    assert [p.name for p in sorted((out / "imagesTr").iterdir())] == ["lung_001.nii.gz"]
    assert not any((out / "imagesTs").iterdir()) and len(list((out / "labelsTr").iterdir())) == 1
    user = tmp_path / "user"
    (user / "imagesTr").mkdir(parents=True)
    (user / "imagesTr" / "lung_001.nii.gz").write_bytes(b"a user's scan")
    with pytest.raises(ConfigError, match=r"user: not empty and not a phantom dataset.*new or empty folder"):
        write_phantom_dataset(user, cases=1, test_cases=0)
    assert (user / "imagesTr" / "lung_001.nii.gz").read_bytes() == b"a user's scan"
    assert sorted(p.name for p in user.iterdir()) == ["imagesTr"]


#: The phantom's modules from the bottom up: each may import only modules before it.
PHANTOM_LAYERS = ("grid", "anatomy", "tissues", "vessels", "tumours", "render", "dataset")


def test_phantom_modules_import_only_lower_layers():
    """No import circles inside lungtumor.phantom: every module imports only lower layers."""
    package_dir = Path(lungtumor.phantom.__file__).parent
    assert sorted(p.stem for p in package_dir.glob("*.py")) == sorted((*PHANTOM_LAYERS, "__init__"))
    for rank, name in enumerate(PHANTOM_LAYERS):
        tree = ast.parse((package_dir / f"{name}.py").read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level:  # relative: siblings of this module
                imported |= {f"lungtumor.phantom.{node.module or alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
        phantom = {m.split(".")[2] for m in imported if m.startswith("lungtumor.phantom.")}
        assert "lungtumor.phantom" not in imported, name
        assert phantom <= set(PHANTOM_LAYERS[:rank]), f"{name} imports {sorted(phantom - set(PHANTOM_LAYERS[:rank]))}"


def test_public_names_stay_importable_from_the_old_module_and_the_package():
    """The one-file phantom's public names still import from lungtumor.phantom.dataset (same objects)."""
    from lungtumor.phantom import anatomy, dataset, grid, render, tissues, tumours, vessels

    homes = {
        grid: ["PHANTOM_SIZES"],
        anatomy: ["CT_NOISE_SIGMA_HU", "HU_LUNG_RANGE"],
        tissues: ["BOWEL_TEXTURE_THRESHOLD", "LUNG_DEPENDENT_HU_PER_MM"],
        vessels: ["HU_VESSEL", "VESSEL_MIN_RADIUS_MM", "VESSEL_REACH", "VESSEL_ROOT_RADIUS_MM", "VESSEL_SPLIT_FRACTION",
                  "VESSEL_TARGETS_PER_TREE"],
        tumours: ["HU_TUMOUR_RANGE", "JUXTAPLEURAL_FRACTION", "PRIMARY_TUMOUR_MIN_MM", "SECONDARY_TUMOUR_MAX_MM",
                  "TUMOUR_BOUNDARY_NOISE", "TUMOUR_COUNT_PROBABILITIES", "TUMOUR_DIAMETER_MM"],
        render: ["CT_HU_RANGE", "TEXTURE_CORRELATION_MM"],
    }
    for module, names in homes.items():
        assert set(names) == set(module.__all__), module.__name__
        for name in names:
            assert getattr(dataset, name) is getattr(module, name), name
    assert set(dataset.__all__) == {n for names in homes.values() for n in names} | {"case_ids", "make_case",
                                                                                       "write_phantom_dataset"}
    for name in lungtumor.phantom.__all__:
        assert getattr(lungtumor.phantom, name) is getattr(dataset, name)
    assert {"write_phantom_dataset", "make_case"} <= set(lungtumor.phantom.__all__)
