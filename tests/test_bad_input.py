"""Bad input and misuse, one row per case: the command, its exit code, the words its one line holds.

Every row also checks that nothing was written where the command would write and that every
input file is unchanged (by checksum). The rows are the hostile-user cases that once ended in a
traceback, a wrong result with exit 0, or state that blocked the next run, and those that already
passed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import affine_for
from helpers.dicom import write_ct_series
from helpers.store import make_store
from lungtumor.cli import EXIT_USER_ERROR, main
from lungtumor.io.nifti import write_nifti
from lungtumor.io.volume import Volume
from lungtumor.model.checkpoint import NET_PREFIX, checkpoint_metadata
from lungtumor.model.unet import ModelConfig, UNet

SHAPE = (32, 32, 40)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A CT, a mask, a probability map, a folder of CTs, a checkpoint, a store and odd files."""
    root = tmp_path_factory.mktemp("bad_input")
    rng = np.random.default_rng(0)
    ct = rng.normal(-700, 50, SHAPE).astype(np.int16)
    mask = np.zeros(SHAPE, np.uint8)
    mask[10:16, 10:16, 34:38] = 1
    w = {"root": root}
    w["ct"] = write_nifti(Volume(ct, affine_for("LAS")), root / "in" / "ct.nii.gz")
    w["mask"] = write_nifti(Volume(mask, affine_for("LAS")), root / "mask.nii.gz")
    w["prob"] = write_nifti(Volume(mask * np.float32(0.7), affine_for("LAS")), root / "prob.nii.gz")
    w["folder"] = w["ct"].parent
    # A checkpoint in lungtumor's format (weights of an untrained width-4 U-Net): no training needed.
    net = UNet(ModelConfig(width=4))
    meta = checkpoint_metadata(ModelConfig(width=4).to_dict(), {"size": 32, "skip_inferior_slices": 30}, 0, threshold=0.5)
    w["ckpt"] = root / "model.ckpt"
    torch.save({"lungtumor": meta, "state_dict": {NET_PREFIX + k: v for k, v in net.state_dict().items()}}, w["ckpt"])
    # The same U-Net made silent (its output bias -1000: no voxel above any threshold), so that what it would
    # mine as false positives never depends on the random weights the test process happens to draw.
    silent = {k: v.clone() for k, v in net.state_dict().items()}
    silent["head.bias"].fill_(-1000.0)
    w["silent_ckpt"] = root / "silent.ckpt"
    torch.save({"lungtumor": meta, "state_dict": {NET_PREFIX + k: v for k, v in silent.items()}}, w["silent_ckpt"])
    w["nonet_ckpt"] = root / "nonet.ckpt"  # lungtumor's metadata but no U-Net weights
    torch.save({"lungtumor": meta, "state_dict": {}}, w["nonet_ckpt"])
    w["text_ckpt"] = root / "notes.ckpt"
    w["text_ckpt"].write_text("this is not a checkpoint\n")
    nan_ckpt = {k: v.clone() for k, v in net.state_dict().items()}
    next(iter(nan_ckpt.values())).fill_(float("nan"))
    w["nan_ckpt"] = root / "nan.ckpt"
    torch.save({"lungtumor": meta, "state_dict": {NET_PREFIX + k: v for k, v in nan_ckpt.items()}}, w["nan_ckpt"])
    w["store"] = make_store(root / "s")
    w["task"] = root / "s" / "task"
    # A run folder whose config.yaml is corrupt.
    (root / "yamlrun").mkdir()
    (root / "yamlrun" / "config.yaml").write_text("store: [unclosed\n  - : :\n")
    # A run folder whose last.ckpt is text.
    (root / "badrun").mkdir()
    (root / "badrun" / "config.yaml").write_text(f"store: {w['store']}\nout: {root / 'badrun'}\n")
    (root / "badrun" / "last.ckpt").write_text("garbage")
    # A complex-valued NIfTI and one whose voxel size is zero (qform only).
    w["complex"] = root / "complex.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.complex64), np.eye(4)), w["complex"])
    img = nib.Nifti1Image(np.zeros((8, 8, 40), np.int16), None)
    img.set_qform(np.eye(4), code=1)
    img.set_sform(None, code=0)
    w["zero_voxel"] = root / "zero_voxel.nii"
    nib.save(img, w["zero_voxel"])
    raw = bytearray(w["zero_voxel"].read_bytes())  # nibabel "fixes" a zero pixdim on save: patch the header
    raw[80:84] = np.float32(0.0).tobytes()  # pixdim[1], the first voxel size (NIfTI-1 header offset 80)
    w["zero_voxel"].write_bytes(bytes(raw))
    # A cross-validation folder made with --folds 2 and the default training options, and an older
    # one (no cv_config.json) whose finished fold says 2 folds.
    from lungtumor.cv import CONFIG_JSON, cv_options
    from lungtumor.runstate import record_config
    from lungtumor.training.options import TrainConfig

    record_config(root / "cvdone", CONFIG_JSON, cv_options(w["store"], TrainConfig(store=str(w["store"])), folds=2, tta="none"))
    (root / "cvold" / "seed-0" / "fold-0").mkdir(parents=True)
    (root / "cvold" / "seed-0" / "fold-0" / "done.json").write_text('{"seed": 0, "fold": 0, "folds": 2, "rows": []}')
    # A NIfTI with zero slices; DICOM series whose first / last slice file is cut short.
    w["zero_slices"] = root / "zero_slices.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 0), np.int16), affine_for("LAS")), w["zero_slices"])

    for name, which in (("dicom_first_bad", 0), ("dicom_last_bad", -1)):
        write_ct_series(root / name, rng.normal(-700, 50, (8, 6, 5)).round(), affine_for("LPS"), shuffle_seed=None)
        bad = sorted((root / name).glob("*.dcm"))[which]
        bad.write_bytes(bad.read_bytes()[:100])
        w[name] = root / name
        w[f"{name}_file"] = bad.name
    # A dataset folder with a symbolic link loop among its images.
    import shutil

    shutil.copytree(w["task"], root / "looptask", symlinks=True)
    (root / "looptask" / "imagesTr" / "lung_099.nii.gz").symlink_to("lung_099.nii.gz")
    w["looptask"] = root / "looptask"
    # Inputs that a careless output name would replace: a scan called NAME_prob, a DICOM series,
    # a lesion folder whose instance mask is measured again, a user's dataset, a workdir holding a
    # user's dataset and trained run (for the demo) and one holding only a run.
    w["scan_prob"] = write_nifti(Volume(ct, affine_for("LAS")), root / "in2" / "scan_prob.nii.gz")
    w["series"] = root / "series"
    write_ct_series(w["series"], np.clip(ct, -1024, 3000).astype(np.float64), affine_for("LAS"), shuffle_seed=None)
    w["instances"] = write_nifti(Volume(mask, affine_for("LAS")), root / "lz" / "instances.nii.gz")
    w["dataset"] = root / "userdata"
    write_nifti(Volume(ct, affine_for("LAS")), w["dataset"] / "imagesTr" / "lung_001.nii.gz")
    write_nifti(Volume(mask, affine_for("LAS")), w["dataset"] / "labelsTr" / "lung_001.nii.gz")
    w["demo_ws"] = root / "ws"
    write_nifti(Volume(ct, affine_for("LAS")), w["demo_ws"] / "data" / "imagesTr" / "lung_001.nii.gz")
    (w["demo_ws"] / "run").mkdir(parents=True)
    (w["demo_ws"] / "run" / "last.ckpt").write_bytes(w["ckpt"].read_bytes())
    w["demo_run_ws"] = root / "ws2"
    (w["demo_run_ws"] / "run").mkdir(parents=True)
    (w["demo_run_ws"] / "run" / "last.ckpt").write_bytes(w["ckpt"].read_bytes())
    w["empty"] = write_nifti(Volume(np.zeros((0, 32, 40), np.uint8), affine_for("LAS")), root / "ev0" / "p" / "a.nii.gz")
    write_nifti(Volume(np.zeros((0, 32, 40), np.uint8), affine_for("LAS")), root / "ev0" / "l" / "a.nii.gz")
    w["ev0"] = root / "ev0"
    w["ev"] = root / "ev"
    write_nifti(Volume(mask, affine_for("LAS")), w["ev"] / "p" / "a.nii.gz")
    write_nifti(Volume(mask, affine_for("LAS")), w["ev"] / "l" / "a.nii.gz")
    # Lesion crop folders (--lesion-dir with --crop-rate): unpaired, a 0/255 label, no spacing, a validation patient's.
    from helpers.crops import write_crop

    write_crop(root / "crops_unpaired", "A_R_1")
    (root / "crops_unpaired" / "A_R_1_label.nii.gz").unlink()
    write_crop(root / "crops_255", "A_R_1", label_value=255)
    write_crop(root / "crops_nospacing", "A_R_1", affine=np.eye(4))
    write_crop(root / "crops_leak", "lung_003_R_1")  # lung_003 is the store's validation case
    for name in ("crops_unpaired", "crops_255", "crops_nospacing", "crops_leak"):
        w[name] = root / name
    return w


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


#: (id, argv template, words the one line must hold, paths that must not exist afterwards)
ROWS = [
    # predict
    ("predict-over-its-input", "predict {ckpt} {ct} {ct}", ["overwrite"], []),
    ("predict-folder-into-itself", "predict {ckpt} {folder} {folder}", ["overwrite"], []),
    ("predict-batch-0", "predict {ckpt} {ct} {root}/o1.nii.gz --batch-size 0", ["--batch-size"], ["o1.nii.gz"]),
    ("predict-threshold-2", "predict {ckpt} {ct} {root}/o2.nii.gz --threshold 2", ["--threshold"], ["o2.nii.gz"]),
    ("predict-threshold-0", "predict {ckpt} {ct} {root}/o2a.nii.gz --threshold 0", ["--threshold 0", "strictly between 0 and 1"], ["o2a.nii.gz"]),
    ("predict-threshold-1", "predict {ckpt} {ct} {root}/o2b.nii.gz --threshold 1", ["--threshold 1", "strictly between 0 and 1"], ["o2b.nii.gz"]),
    ("predict-threshold-nan", "predict {ckpt} {ct} {root}/o2c.nii.gz --threshold nan", ["--threshold nan"], ["o2c.nii.gz"]),
    ("predict-batch-neg", "predict {ckpt} {ct} {root}/o1a.nii.gz --batch-size -1", ["--batch-size -1", "at least 1"], ["o1a.nii.gz"]),
    ("predict-device-meta", "predict {ckpt} {ct} {root}/o3.nii.gz --device meta", ["--device"], ["o3.nii.gz"]),
    ("predict-device-mps", "predict {ckpt} {ct} {root}/o4.nii.gz --device mps", ["--device"], ["o4.nii.gz"]),
    ("predict-device-xpu", "predict {ckpt} {ct} {root}/o5.nii.gz --device xpu", ["--device"], ["o5.nii.gz"]),
    ("predict-text-checkpoint", "predict {text_ckpt} {ct} {root}/o6.nii.gz", ["notes.ckpt"], ["o6.nii.gz"]),
    ("predict-nan-weights", "predict {nan_ckpt} {ct} {root}/o7.nii.gz", ["nan.ckpt", "finite"], ["o7.nii.gz"]),
    ("predict-series-uid-for-nifti", "predict {ckpt} {ct} {root}/o8.nii.gz --series-uid 1.2.3", ["--series-uid"], ["o8.nii.gz"]),
    ("predict-missing-input", "predict {ckpt} {root}/nope.nii.gz {root}/o9.nii.gz", ["nope.nii.gz"], ["o9.nii.gz"]),
    ("predict-complex-nifti", "predict {ckpt} {complex} {root}/o10.nii.gz", ["complex.nii"], ["o10.nii.gz"]),
    ("predict-zero-slices", "predict {ckpt} {zero_slices} {root}/o12.nii.gz", ["zero_slices.nii.gz", "no voxels"], ["o12.nii.gz"]),
    ("predict-dicom-corrupt-first-slice", "predict {ckpt} {dicom_first_bad} {root}/o13.nii.gz", ["{dicom_first_bad_file}", "re-export"], ["o13.nii.gz"]),
    ("predict-dicom-corrupt-last-slice-seg", "predict {ckpt} {dicom_last_bad} {root}/o14.nii.gz --output-format dicom-seg", ["{dicom_last_bad_file}", "re-export"], ["o14.nii.gz", "o14.dcm"]),
    ("import-dicom-corrupt-first-slice", "import-dicom {dicom_first_bad} {root}/i1.nii.gz", ["{dicom_first_bad_file}", "not readable as DICOM"], ["i1.nii.gz"]),
    ("lungs-zero-slices", "lungs {zero_slices} {root}/l1.nii.gz", ["zero_slices.nii.gz", "no voxels"], ["l1.nii.gz"]),
    ("predict-min-lesion-score-2", "predict {ckpt} {ct} {root}/o15.nii.gz --min-lesion-score 2", ["--min-lesion-score 2", "between 0 and 1"], ["o15.nii.gz"]),
    ("predict-min-lesion-score-neg", "predict {ckpt} {ct} {root}/o15a.nii.gz --min-lesion-score -0.1", ["--min-lesion-score -0.1", "between 0 and 1"], ["o15a.nii.gz"]),
    ("predict-min-lesion-score-nan", "predict {ckpt} {ct} {root}/o15b.nii.gz --min-lesion-score nan", ["--min-lesion-score nan", "between 0 and 1"], ["o15b.nii.gz"]),
    ("predict-zero-voxel-size", "predict {ckpt} {zero_voxel} {root}/o11.nii.gz", ["zero_voxel.nii", "voxel size"], ["o11.nii.gz"]),
    ("predict-empty-checkpoint-list", "predict , {ct} {root}/o12.nii.gz", ["CHECKPOINT ','", "empty list"], ["o12.nii.gz"]),
    ("predict-probabilities-over-input", "predict {ckpt} {scan_prob} {root}/in2/scan.nii.gz --probabilities",
     ["scan_prob.nii.gz", "overwrite"], ["in2/scan.nii.gz"]),
    ("predict-dicom-seg-over-a-slice", "predict {ckpt} {series} {series}/IMG0003.nii.gz --output-format dicom-seg",
     ["IMG0003.dcm", "inside the input folder", "write outside it"], ["series/IMG0003.nii.gz"]),
    ("predict-dicom-seg-named-as-a-slice", "predict {ckpt} {series} {series}/IMG0003.dcm --output-format dicom-seg",
     ["IMG0003.dcm", "inside the input folder"], []),
    ("predict-mask-into-the-series", "predict {ckpt} {series} {series}/mask.nii.gz", ["mask.nii.gz", "inside the input folder"], ["series/mask.nii.gz"]),
    ("predict-no-postprocess-with-min-lesion-ml", "predict {ckpt} {ct} {root}/o13.nii.gz --no-postprocess --min-lesion-ml 1",
     ["--no-postprocess", "--min-lesion-ml 1"], ["o13.nii.gz"]),
    # every other writing command: an output over (or inside) one of its inputs is refused
    ("lungs-over-its-ct", "lungs {ct} {ct}", ["ct.nii.gz", "overwrite"], []),
    ("lungs-into-the-series", "lungs {series} {series}/lungs.nii.gz", ["inside the input folder"], ["series/lungs.nii.gz"]),
    ("lesions-over-its-mask", "lesions {instances} {ct} --out {root}/lz", ["instances.nii.gz", "overwrite"], []),
    ("import-dicom-into-the-series", "import-dicom {series} {series}/ct.nii.gz", ["inside the input folder"], ["series/ct.nii.gz"]),
    ("preprocess-store-over-its-dataset", "preprocess {task} {task}", ["overwrite"], []),
    ("phantom-over-a-dataset", "phantom {dataset} --cases 1 --test-cases 0", ["userdata", "not a phantom dataset", "new or empty folder"], []),
    # train: every value checked before anything is written
    ("train-batch-0", "train {store} --out {root}/r1 --batch-size 0", ["--batch-size"], ["r1"]),
    ("train-batch-neg", "train {store} --out {root}/r2 --batch-size -2", ["--batch-size"], ["r2"]),
    ("train-epochs-neg", "train {store} --out {root}/r3 --epochs -3", ["--epochs"], ["r3"]),
    ("train-epochs-0", "train {store} --out {root}/r4 --epochs 0", ["--epochs"], ["r4"]),
    ("train-lr-neg", "train {store} --out {root}/r5 --lr -1", ["--lr"], ["r5"]),
    ("train-lesion-dir-without-copy-paste", "train {store} --out {root}/r5b --lesion-dir {root}", ["--copy-paste-rate"], ["r5b"]),
    ("train-crop-rate-1", "train {store} --out {root}/r5c --crop-rate 1 --lesion-dir {crops_255}", ["--crop-rate 1.0", "[0, 1)"], ["r5c"]),
    ("train-phantoms-negative", "train {store} --out {root}/r5p --phantoms -1", ["--phantoms -1", ">= 0"], ["r5p"]),
    ("train-phantom-size", "train {store} --out {root}/r5q --phantoms 1 --phantom-size HUGE", ["--phantom-size 'HUGE'", "FULL, SMALL"], ["r5q"]),
    # Phantoms are built after every check: a bad crop folder leaves no run folder (and no phantoms in it).
    ("train-phantoms-bad-crops", "train {store} --out {root}/r5r --phantoms 1 --phantom-size SMALL --crop-rate 0.25 --lesion-dir {crops_255}",
     ["A_R_1_label.nii.gz", "0/1"], ["r5r"]),
    ("train-crops-unpaired", "train {store} --out {root}/r5d --crop-rate 0.25 --lesion-dir {crops_unpaired}", ["A_R_1_ct.nii.gz", "has no mask"], ["r5d"]),
    ("train-crops-label-255", "train {store} --out {root}/r5e --crop-rate 0.25 --lesion-dir {crops_255}", ["A_R_1_label.nii.gz", "0/1"], ["r5e"]),
    ("train-crops-no-spacing", "train {store} --out {root}/r5f --crop-rate 0.25 --lesion-dir {crops_nospacing}", ["A_R_1_ct.nii.gz", "no spacing"], ["r5f"]),
    ("train-crops-validation-patient", "train {store} --out {root}/r5g --crop-rate 0.25 --lesion-dir {crops_leak}", ["lung_003_R_1_ct.nii.gz", "leakage", "--crop-overlap exclude"], ["r5g"]),
    ("train-workers-neg", "train {store} --out {root}/r6 --num-workers -1", ["--num-workers"], ["r6"]),
    ("train-val-every-0", "train {store} --out {root}/r7 --val-every-n-epochs 0", ["--val-every-n-epochs"], ["r7"]),
    ("train-limit-neg", "train {store} --out {root}/r8 --limit-train-batches -1", ["--limit-train-batches"], ["r8"]),
    ("train-samples-neg", "train {store} --out {root}/r9 --samples-per-epoch -5", ["--samples-per-epoch"], ["r9"]),
    ("train-samples-0", "train {store} --out {root}/r10 --samples-per-epoch 0", ["--samples-per-epoch"], ["r10"]),
    ("train-accelerator-tpu", "train {store} --out {root}/r11 --accelerator tpu", ["--accelerator"], ["r11"]),
    ("train-threshold-2", "train {store} --out {root}/r12 --threshold 2", ["--threshold"], ["r12"]),
    ("train-threshold-0", "train {store} --out {root}/r12a --threshold 0", ["--threshold 0", "strictly between 0 and 1"], ["r12a"]),
    ("train-threshold-1", "train {store} --out {root}/r12b --threshold 1", ["--threshold 1", "strictly between 0 and 1"], ["r12b"]),
    ("train-max-minutes-neg", "train {store} --out {root}/r13 --max-minutes -1", ["--max-minutes"], ["r13"]),
    ("train-resume-text-ckpt", "train --resume {root}/badrun", ["last.ckpt"], []),
    ("train-resume-corrupt-config", "train --resume {root}/yamlrun", ["config.yaml"], []),
    ("train-size-0", "train {root}/nostore --out {root}/r15 --size 0", ["--size"], ["r15"]),
    ("train-no-store", "train {root}/nostore --out {root}/r14", ["not a finished slice store"], ["r14"]),
    # train-rescorer: inputs checked, never overwritten
    ("rescorer-no-store", "train-rescorer {ckpt} {root}/nostore --out {root}/rs1.ckpt", ["nostore", "not a finished slice store"], ["rs1.ckpt"]),
    ("rescorer-no-checkpoint", "train-rescorer {root}/none.ckpt {store} --out {root}/rs2.ckpt", ["none.ckpt", "not found"], ["rs2.ckpt"]),
    ("rescorer-text-checkpoint", "train-rescorer {text_ckpt} {store} --out {root}/rs3.ckpt", ["notes.ckpt", "not a loadable checkpoint"], ["rs3.ckpt"]),
    ("rescorer-checkpoint-without-unet", "train-rescorer {nonet_ckpt} {store} --out {root}/rs4.ckpt", ["nonet.ckpt", "weights do not match"], ["rs4.ckpt"]),
    ("rescorer-out-is-the-checkpoint", "train-rescorer {ckpt} {store} --out {ckpt}", ["overwrite"], []),
    ("rescorer-out-in-the-store", "train-rescorer {ckpt} {store} --out {store}/r.ckpt", ["overwrite"], []),
    ("rescorer-steps-0", "train-rescorer {ckpt} {store} --out {root}/rs5.ckpt --steps 0", ["steps 0"], ["rs5.ckpt"]),
    ("rescorer-no-crops-folder", "train-rescorer {ckpt} {store} --out {root}/rs6.ckpt --steps 1 --lesion-dir {root}/nocrops", ["nocrops", "lesion folder not found"], ["rs6.ckpt"]),
    ("rescorer-no-negatives", "train-rescorer {silent_ckpt} {store} --out {root}/rs7.ckpt --steps 1 --no-progress", ["no negative"], ["rs7.ckpt"]),
    # lesions: the threshold it records is checked like predict's
    ("lesions-threshold-0", "lesions {mask} {ct} --out {root}/l1 --threshold 0", ["--threshold 0", "strictly between 0 and 1"], ["l1"]),
    ("lesions-threshold-1", "lesions {mask} {ct} --out {root}/l2 --threshold 1", ["--threshold 1", "strictly between 0 and 1"], ["l2"]),
    ("lesions-threshold-5", "lesions {mask} {ct} --out {root}/l3 --threshold 5", ["--threshold 5", "strictly between 0 and 1"], ["l3"]),
    ("lesions-threshold-nan", "lesions {mask} {ct} --out {root}/l4 --threshold nan", ["--threshold nan"], ["l4"]),
    ("lesions-label-as-ct", "lesions {mask} {mask} --out {root}/l5", ["mask.nii.gz", "looks like a label"], ["l5"]),
    # visualize
    ("visualize-probabilities", "visualize {ct} {prob} --out {root}/v1.png", ["prob.nii.gz", "0 and 1"], ["v1.png"]),
    ("visualize-bad-suffix", "visualize {ct} {mask} --out {root}/v2.jpg", [".gif"], ["v2.jpg"]),
    ("visualize-label-as-ct", "visualize {mask} {mask} --out {root}/v3.png", ["mask.nii.gz", "looks like a label"], ["v3.png"]),
    ("visualize-zero-sized-ct", "visualize {empty} --out {root}/v4.png", ["a.nii.gz", "no voxels"], ["v4.png"]),
    # demo: option values checked before any stage runs
    ("demo-epochs-0", "demo --workdir {root}/d1 --epochs 0", ["epochs"], ["d1"]),
    ("demo-train-minutes-neg", "demo --workdir {root}/d2 --train-minutes -1", ["minutes"], ["d2"]),
    ("demo-heldout-0", "demo --workdir {root}/d3 --heldout-cases 0", ["--heldout-cases 0"], ["d3"]),
    ("demo-over-a-users-data-and-run", "demo --workdir {demo_ws}", ["ws/data", "did not make it", "another --workdir"], ["ws/lungtumor_demo.json"]),
    ("demo-over-a-users-run", "demo --workdir {demo_run_ws}", ["ws2/run", "did not make it", "another --workdir"], ["ws2/lungtumor_demo.json"]),
    ("cv-only-folds-empty", "cv {store} --out {root}/cv2 --only-folds ,", ["--only-folds ','", "empty list"], ["cv2"]),
    ("cv-out-is-the-store", "cv {store} --out {store}", ["overwrite"], []),
    ("train-out-is-the-store", "train {store} --out {store}", ["overwrite"], []),
    ("cv-parallel-0", "cv {store} --out {root}/cv1 --parallel 0", ["--parallel 0"], ["cv1"]),
    ("cv-other-folds", "cv {store} --out {root}/cvdone --folds 3", ["cvdone", "--folds 2 -> 3", "new --out"], ["cvdone/seed-0"]),
    ("cv-other-training-options", "cv {store} --out {root}/cvdone --folds 2 --lr 0.01 --width 8", ["cvdone", "--lr 0.0001 -> 0.01", "--width 64 -> 8"], ["cvdone/seed-0"]),
    ("cv-other-tta", "cv {store} --out {root}/cvdone --folds 2 --tta flip", ["cvdone", "--tta 'none' -> 'flip'"], ["cvdone/seed-0"]),
    ("cv-old-folder-other-folds", "cv {store} --out {root}/cvold --folds 3", ["cvold", "--folds 2 -> 3"], ["cvold/cv_config.json"]),
    # preprocess
    ("preprocess-label-absent", "preprocess {task} {root}/st1 --preset seed --size 32 --label 2", ["tumour label 2", "present: 0, 1", "--label"], ["st1"]),
    ("preprocess-spacing-too-fine", "preprocess {task} {root}/st2 --spacing-mm 0.01", ["lung_000.nii.gz", "--spacing-mm 0.01", "or coarser"], []),
    ("preprocess-symlink-loop", "preprocess {looptask} {root}/st3 --preset seed --size 32", ["lung_099.nii.gz", "loop"], ["st3"]),
    ("preprocess-store-other-label", "preprocess {task} {store} --preset seed --size 32 --val-cases 1 --label 2", ["different config", "--label 1 -> 2"], []),
    ("preprocess-store-other-spacing", "preprocess {task} {store} --preset seed --size 64 --val-cases 1", ["different config", "--size 32 -> 64"], []),
    # evaluate
    ("evaluate-missing", "evaluate {root}/nopred {root}/noref", ["nopred"], ["nopred"]),
    ("evaluate-zero-sized", "evaluate {ev0}/p {ev0}/l --out {root}/e1", ["a.nii.gz", "no voxels"], ["e1"]),
    ("evaluate-labels-as-predictions", "evaluate {ev}/l {ev}/l --out {root}/e2", ["label folder", "against itself"], ["e2"]),
    ("evaluate-labels-as-probabilities", "evaluate {ev}/p {ev}/l --out {root}/e3 --prob-dir {ev}/l", ["--prob-dir", "label folder"], ["e3"]),
]


@pytest.mark.parametrize(("argv", "words", "absent"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_nothing_written_inputs_unchanged(world, capsys, argv: str, words: list[str], absent: list[str]) -> None:
    before = _checksums(world["root"])
    args = argv.format(**{k: str(v) for k, v in world.items()}).split()
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == EXIT_USER_ERROR, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert "Traceback" not in err and "np.float64" not in line
    for word in words:
        word = word.format(**{k: str(v) for k, v in world.items()})
        assert word in line, line
    assert not re.search(r"/\.[^/\s]+\.[a-z0-9_]{8}", line)  # names the target, never the hidden temporary file
    for name in absent:
        assert not (world["root"] / name).exists(), name
    after = _checksums(world["root"])
    assert {k: v for k, v in after.items() if k in before} == before  # no input changed
    assert set(after) == set(before)  # and nothing new was left behind
