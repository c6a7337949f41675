"""Predicted lesions re-scored by the checkpoint's re-scorer: the patch lands on the lesion whatever the
input's orientation, the lesion score becomes the re-scorer's for lesions that fit in its patch (prob_max
for longer ones), the operating point it carries applies by default, and without one nothing changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import affine_for
from lungtumor.config import HU_SCALE, PreprocessConfig
from lungtumor.inference.predictor import finish, prepare, run_models, segment
from lungtumor.inference.rescore import lesion_scores, rescore_lesions
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.lesions.score import LESION_SCORE_TEXT, RESCORER_SCORE_TEXT, remove_low_score_lesions
from lungtumor.model.checkpoint import LoadedModel
from lungtumor.model.rescorer import Rescorer, RescorerConfig
from lungtumor.predict import predict_path

PATCH = RescorerConfig(patch_shape=(6, 12, 12), patch_spacing_mm=(2.5, 1.0, 1.0), widths=(2, 2, 2))
SHAPE = (40, 40, 30)
PRE = PreprocessConfig(preset="seed", size=40, skip_inferior_slices=0)


class ThresholdNet(torch.nn.Module):
    """Stub U-Net: 'tumour' (probability 1) wherever the centre channel is brighter than -300 HU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return 1000.0 * (centre - (-300.0) / HU_SCALE)


class CentreRescorer(Rescorer):
    """Stub re-scorer: the probability is high when the patch's central voxels are bright (tissue)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, d, h, w = x.shape
        centre = x[:, 0, d // 2 - 1 : d // 2 + 1, h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1]
        return 10.0 * centre.mean(dim=(1, 2, 3))


class SizeRescorer(Rescorer):
    """Stub re-scorer: the share of bright voxels in the whole patch (a big lesion scores higher)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * ((x > 0).float().mean(dim=(1, 2, 3, 4)) - 0.1)


def _ct(codes: str = "LAS") -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.normal(-800, 20, SHAPE).astype(np.float32)
    arr[5:15, 5:15, 8:20] = 40  # a big lesion
    arr[28:31, 29:32, 12:14] = 40  # a small one, off-centre
    return Volume(arr, affine_for(codes))


def _model(rescorer: Rescorer | None) -> LoadedModel:
    return LoadedModel(net=ThresholdNet(), preprocess=PRE, context=0, info={"threshold": 0.5}, rescorer=rescorer)


@pytest.mark.parametrize("codes", ["LAS", "LPS", "RPI"])
def test_the_patch_is_centred_on_each_lesion_in_any_orientation(codes) -> None:
    ct = _ct(codes)
    model = _model(None)
    prepared = prepare(ct, PRE)
    mask = finish(prepared, run_models(prepared, [model]), threshold=0.5)
    inst, scores = rescore_lesions(mask, prepared.slices, prepared.grid, [CentreRescorer(PATCH).eval()])
    assert inst.count == 2
    assert np.all(scores > 0.99), scores  # a wrong axis or a flipped one would centre the small lesion's patch on lung


def test_the_lesion_score_is_the_rescorers() -> None:
    ct = _ct()
    prepared = prepare(ct, PRE)
    probs = run_models(prepared, [_model(None)])
    rescorer = SizeRescorer(PATCH).eval()
    mask, prob = finish(prepared, probs, threshold=0.5, return_probabilities=True)
    inst, scores = rescore_lesions(mask, prepared.slices, prepared.grid, [rescorer])
    assert inst.count == 2 and scores[0] > scores[1]  # id 1 is the bigger lesion
    cut = float(np.mean(scores))
    # By the U-Net's prob_max both lesions stay (1.0 each); by the re-scorer's the small one goes.
    by_prob = remove_low_score_lesions(mask.array, prob.array, cut, mask.voxel_volume_ml)
    assert np.array_equal(by_prob, mask.array)
    kept = finish(prepared, probs, threshold=0.5, min_lesion_score=cut, rescorers=[rescorer])
    assert kept.array.sum() == inst.sizes[0] and kept.array[10, 10, 10] == 1 and kept.array[29, 30, 12] == 0
    assert kept.shape == ct.shape and np.allclose(kept.affine, ct.affine)


def test_without_a_rescorer_nothing_changes_and_a_rescorer_alone_changes_no_mask() -> None:
    ct = _ct()
    plain = segment(ct, _model(None), return_probabilities=True, min_lesion_score=0.5)
    with_rescorer = segment(ct, _model(SizeRescorer(PATCH).eval()), return_probabilities=True)
    mask, prob = segment(ct, _model(None), return_probabilities=True)
    # Without a re-scorer the score is prob_max, as before.
    assert np.array_equal(plain[0].array, remove_low_score_lesions(mask.array, prob.array, 0.5, mask.voxel_volume_ml))
    # A re-scorer changes scores, not the mask nor the probabilities, unless --min-lesion-score asks.
    assert np.array_equal(with_rescorer[0].array, mask.array) and np.array_equal(with_rescorer[1].array, prob.array)


def test_predict_report_carries_the_rescorers_score_and_its_definition(tmp_path) -> None:
    src = write_nifti(_ct(), tmp_path / "in" / "ct.nii.gz")
    rescorer = SizeRescorer(PATCH).eval()
    for name, model, text in (("plain", _model(None), LESION_SCORE_TEXT), ("rescored", _model(rescorer), RESCORER_SCORE_TEXT)):
        out = tmp_path / name / "ct.nii.gz"
        predict_path(model, src, out, progress=False, report=True)
        doc = json.loads((tmp_path / name / "ct_report" / "lesions.json").read_text())
        assert doc["conventions"]["score"] == text
        scores = [les["score"] for les in doc["lesions"]]
        if name == "plain":
            assert scores == pytest.approx([1.0, 1.0])
        else:
            prepared = prepare(_ct(), PRE)
            mask, prob = finish(prepared, run_models(prepared, [_model(None)]), threshold=0.5, return_probabilities=True)
            _, expected = lesion_scores(mask, prob, prepared.slices, prepared.grid, [rescorer])
            assert scores == pytest.approx(expected.tolist(), abs=1e-6)
    # --min-lesion-score through predict: the re-scorer's score decides.
    out = tmp_path / "cut" / "ct.nii.gz"
    predict_path(_model(rescorer), src, out, progress=False, min_lesion_score=float(np.mean(expected)))
    from lungtumor.io.nifti import read_nifti

    assert int(read_nifti(out).array.sum()) == 10 * 10 * 12


def test_workers_score_lesions_as_one_process_does(tmp_path) -> None:
    # The re-scorer travels to the worker that writes the report; the model slices stay with the scan.
    for name in ("a.nii.gz", "b.nii.gz"):  # two scans: one alone is never pipelined
        write_nifti(_ct(), tmp_path / "in" / name)
    torch.manual_seed(0)
    rescorer = Rescorer(PATCH).eval()  # a real (picklable) re-scorer with random weights
    scores = []
    for workers in (0, 1):
        predict_path(_model(rescorer), tmp_path / "in", tmp_path / f"w{workers}", progress=False, report=True, workers=workers)
        docs = [json.loads((tmp_path / f"w{workers}" / f"{n}_report" / "lesions.json").read_text()) for n in ("a", "b")]
        assert all(d["conventions"]["score"] == RESCORER_SCORE_TEXT for d in docs)
        scores.append([les["score"] for d in docs for les in d["lesions"]])
    assert len(scores[0]) == 4 and scores[0] == pytest.approx(scores[1], abs=1e-6)


def _brute_longest_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Longest in-plane distance between the corners of a lesion's voxels on any one slice (edge to edge)."""
    best = 0.0
    for k in range(mask.shape[2]):
        ij = np.argwhere(mask[:, :, k])
        if not len(ij):
            continue
        corners = np.concatenate([(ij + np.array([a, b])) * spacing[:2] for a in (0, 1) for b in (0, 1)])
        d = np.sqrt(((corners[:, None, :] - corners[None, :, :]) ** 2).sum(-1))
        best = max(best, float(d.max()))
    return best


@pytest.mark.parametrize("width_px", [10, 20])
def test_lesions_wider_than_the_patch_keep_the_unets_score(width_px) -> None:
    ct = _ct()
    prepared = prepare(ct, PRE)
    mask, prob = finish(prepared, run_models(prepared, [_model(None)]), threshold=0.5, return_probabilities=True)
    patch = RescorerConfig(patch_shape=(6, width_px, width_px), patch_spacing_mm=(2.5, 1.0, 1.0), widths=(2, 2, 2))
    rescorer = SizeRescorer(patch).eval()
    inst, rescored = rescore_lesions(mask, prepared.slices, prepared.grid, [rescorer])
    _, scores = lesion_scores(mask, prob, prepared.slices, prepared.grid, [rescorer])
    spacing = tuple(float(x) for x in mask.spacing_mm)
    for i in range(inst.count):
        lesion = np.zeros(mask.shape, dtype=bool)
        lesion[inst.box] = inst.labels == i + 1
        longest = _brute_longest_mm(lesion, spacing)  # 12.0 mm (big) and 3.6 mm (small) at 0.8 x 0.9 mm
        prob_max = float(prob.array[lesion].max())
        expected = rescored[i] if longest <= width_px else prob_max
        assert scores[i] == pytest.approx(expected), (i, longest, width_px)
    assert (scores[0] == rescored[0]) == (width_px == 20) and scores[1] == rescored[1]


def test_the_rescorers_operating_point_applies_by_default(tmp_path) -> None:
    from lungtumor.inference.predictor import rescorer_min_lesion_score

    torch.manual_seed(0)
    net = SizeRescorer(PATCH).eval()
    net.min_lesion_score = 0.5
    other = SizeRescorer(PATCH).eval()
    other.min_lesion_score = 0.3
    assert rescorer_min_lesion_score([_model(net), _model(other)]) == 0.3
    assert rescorer_min_lesion_score([_model(None), _model(SizeRescorer(PATCH).eval())]) is None
    # The point applies by default (segment and predict alike); 0 keeps every lesion.
    ct = _ct()
    prepared = prepare(ct, PRE)
    mask, prob = finish(prepared, run_models(prepared, [_model(None)]), threshold=0.5, return_probabilities=True)
    _, scores = lesion_scores(mask, prob, prepared.slices, prepared.grid, [net])
    point = float(np.mean(scores))
    net.min_lesion_score = point
    assert scores.min() < point <= scores.max()
    kept = segment(ct, _model(net))
    assert 0 < int(kept.array.sum()) < int(mask.array.sum())
    assert np.array_equal(segment(ct, _model(net), min_lesion_score=0).array, mask.array)
    src = write_nifti(ct, tmp_path / "ct.nii.gz")
    predict_path(_model(net), src, tmp_path / "out.nii.gz", progress=False)
    from lungtumor.io.nifti import read_nifti

    assert np.array_equal(read_nifti(tmp_path / "out.nii.gz").array, kept.array)
