"""The ``lungtumor`` command line: a thin layer over the Python API.

User mistakes (bad paths, bad files, bad options) end in one line on stderr and exit code 2;
nothing is half-written because every writer in the library is atomic.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungtumor.errors import ConfigError, LungTumorError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write a synthetic Task06-shaped dataset (built-in data)")
    p.add_argument("out_dir")
    p.add_argument("--cases", type=int, default=10, help="training cases with labels (default 10)")
    p.add_argument("--test-cases", type=int, default=2, help="test cases without labels (default 2)")
    p.add_argument("--size", choices=["SMALL", "FULL", "small", "full"], default="SMALL", help="SMALL for tests/demos, FULL is MSD-like 512x512")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_phantom)


def _cmd_phantom(a: argparse.Namespace) -> None:
    from lungtumor.phantom.dataset import write_phantom_dataset

    t0 = time.perf_counter()
    out = write_phantom_dataset(a.out_dir, cases=a.cases, test_cases=a.test_cases, size=a.size.upper(), seed=a.seed, progress=True)
    print(f"wrote {a.cases} training + {a.test_cases} test cases to {out} in {time.perf_counter() - t0:.1f} s")


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    from lungtumor.config import DEFAULT_PRESET, LUNG_MARGIN_MM, LUNG_SPACING_MM, PRESET_NAMES, PreprocessConfig

    d = PreprocessConfig(preset="seed")
    p = sub.add_parser("preprocess", help="dataset folder (MSD, nnU-Net v2 raw, CT/label pairs) -> slice store for training")
    p.add_argument("task_dir")
    p.add_argument("store_dir")
    p.add_argument(
        "--preset", choices=list(PRESET_NAMES), default=DEFAULT_PRESET,
        help="slice grid: lung (default: crop to the lung region, spacing in mm, the slices of the lung extent) or seed "
        "(the seed's recipe bit for bit: drop 30 slices, resize to 256x256; to reproduce old stores and checkpoints)",
    )
    p.add_argument("--spacing-mm", type=float, default=None, help=f"lung preset: in-plane spacing of the model slices in mm (default {LUNG_SPACING_MM})")
    p.add_argument("--margin-mm", type=float, default=None, help=f"lung preset: margin around the lung region's box in mm (default {LUNG_MARGIN_MM})")
    p.add_argument("--size", type=int, default=None, help=f"seed preset: in-plane slice size (default {d.size}, the seed's)")
    p.add_argument("--skip-inferior-slices", type=int, default=None, help=f"seed preset: drop this many most inferior slices (default {d.skip_inferior_slices})")
    p.add_argument("--clip-hu", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None, help="clip HU before scaling (default: seed no clip, lung -1024 3071)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val-cases", type=int, default=None, help="the seed's preset: last N cases (sorted) are validation, e.g. 6")
    g.add_argument("--fold", type=int, default=None, help="k-fold: this fold is validation (default 0 of 5, seeded shuffle)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes, parallel over cases")
    p.add_argument("--skip-bad", action="store_true", help="warn and skip bad cases instead of stopping")
    p.add_argument("--layout", choices=["auto", "msd", "nnunet", "pairs"], default="auto", help="dataset layout: MSD imagesTr/+labelsTr/, nnU-Net v2 raw, <case>_ct/<case>_label pairs (default: detect)")
    p.add_argument("--label", default=None, help="tumour label of a multi-label dataset, by name (cancer) or value (1); default: the only one, or the one named as a tumour")
    p.set_defaults(func=_cmd_preprocess)


def _cmd_preprocess(a: argparse.Namespace) -> None:
    from lungtumor.config import PreprocessConfig, SplitConfig
    from lungtumor.preprocessing.presets import preset_for
    from lungtumor.preprocessing.store import preprocess_task

    if not preset_for(a.preset).fixed_size and (a.size is not None or a.skip_inferior_slices is not None):
        from lungtumor.errors import ConfigError

        raise ConfigError(
            "--size and --skip-inferior-slices belong to --preset seed (the seed's recipe); add --preset seed, "
            "or leave them out: the lung preset sizes its slices by --spacing-mm and the lung region"
        )
    cfg = PreprocessConfig.from_preset(
        a.preset, size=a.size, skip_inferior_slices=a.skip_inferior_slices, clip_hu=tuple(a.clip_hu) if a.clip_hu else None,
        spacing_mm=a.spacing_mm, margin_mm=a.margin_mm,
    )
    split = SplitConfig(folds=a.folds, fold=a.fold or 0, seed=a.split_seed, val_cases=a.val_cases)
    from lungtumor.atomic import refuse_overwriting_inputs

    refuse_overwriting_inputs([a.store_dir], [a.task_dir], command="lungtumor preprocess")
    t0 = time.perf_counter()
    s = preprocess_task(a.task_dir, a.store_dir, cfg, split, workers=a.workers, skip_bad=a.skip_bad, layout=a.layout, label=a.label)
    n = len(s["splits"]["train"]) + len(s["splits"]["val"])
    print(
        f"store {a.store_dir}: {n} cases ({len(s['splits']['train'])} train, {len(s['splits']['val'])} val), "
        f"{s['slices']['train']} train slices ({s['tumour_slices']['train']} with tumour), {s['slices']['val']} val slices, "
        f"{len(s['skipped'])} skipped, {time.perf_counter() - t0:.1f} s"
    )


def _add_import_dicom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-dicom", help="DICOM CT series (+ RTSTRUCT ROI) -> NIfTI for training")
    p.add_argument("dicom_dir")
    p.add_argument("out", help="output CT .nii.gz")
    p.add_argument("--series-uid", default=None, help="which series, where the folder holds several")
    p.add_argument("--rtstruct", default=None, help="RTSTRUCT file")
    p.add_argument("--roi", default=None, help="ROI name in the RTSTRUCT, e.g. GTV-1")
    p.add_argument("--label-out", default=None, help="output label .nii.gz")
    p.add_argument(
        "--fill-rule",
        choices=["pillow", "centre"],
        default="pillow",
        help="contour fill: pillow (default, edge pixels included, as the NSCLC reference labels) or centre (pixel centres inside)",
    )
    p.set_defaults(func=_cmd_import_dicom)


def _cmd_import_dicom(a: argparse.Namespace) -> None:
    from lungtumor.atomic import refuse_overwriting_inputs

    refuse_overwriting_inputs([a.out, a.label_out], [a.dicom_dir, a.rtstruct], command="lungtumor import-dicom")
    from lungtumor.io.importer import import_dicom

    r = import_dicom(a.dicom_dir, a.out, rtstruct=a.rtstruct, roi=a.roi, label_out=a.label_out, series_uid=a.series_uid, fill_rule=a.fill_rule)
    print(json.dumps(r, indent=2, default=str))


def _add_train(sub: argparse._SubParsersAction) -> None:
    from lungtumor.training.options import add_train_arguments

    p = sub.add_parser("train", help="train a U-Net on a slice store")
    p.add_argument("store", nargs="?", default=None, help="slice store from `lungtumor preprocess`")
    p.add_argument("--out", default=None, help="run folder (checkpoints, logs, curves)")
    p.add_argument("--config", default=None, help="YAML/JSON file with any of these options")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR/last.ckpt with its config")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


#: Lightning notices that are harmless for lungtumor's set-up and would only confuse users.
_QUIET_LIGHTNING = (
    r".*overridden `on_after_batch_transfer`.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*is smaller than the logging interval.*",
    r".*does not have many workers.*",
    r".*LeafSpec.*",
    r".*not supported by the model summary.*",
)


def _quiet_lightning() -> None:
    """Process-wide warning filters and logger levels: the CLI's to set, never the library's."""
    import warnings

    for pattern in _QUIET_LIGHTNING:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def _cmd_train(a: argparse.Namespace) -> None:

    from lungtumor.errors import ConfigError
    from lungtumor.training.options import TrainConfig, load_config_file

    options: dict[str, Any] = {}
    if a.resume:
        saved = Path(a.resume) / "config.yaml"
        if not saved.exists():
            raise ConfigError(f"{saved}: not found; --resume takes a run folder written by `lungtumor train`")
        from lungtumor.training.options import load_config_file

        saved_options = load_config_file(saved)  # a corrupt config.yaml is a one-line error naming it
        options.update(saved_options)
    if a.config:
        options.update(load_config_file(a.config))
    given = {k: v for k, v in vars(a).items() if k in TrainConfig.field_names() and v is not None}
    options.update(given)
    if a.store:
        options["store"] = a.store
    if a.out:
        options["out"] = a.out
    if a.resume:
        options["out"] = a.resume
    cfg = TrainConfig.from_dict(options)  # every value checked before Lightning is imported
    from lungtumor.atomic import refuse_overwriting_inputs

    refuse_overwriting_inputs([cfg.out], [cfg.store, a.config], command="lungtumor train")
    _quiet_lightning()
    from lungtumor.training.trainer import train

    summary = train(cfg, resume=bool(a.resume))
    print(json.dumps(summary, indent=2))


def _add_train_rescorer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-rescorer",
        help="train the second-stage 3D lesion re-scorer (nodule vs vessel) for a U-Net checkpoint and write a checkpoint that carries it",
    )
    p.add_argument("checkpoint", help="the U-Net's checkpoint (last.ckpt / best.ckpt of `lungtumor train`)")
    p.add_argument("store", help="the slice store the U-Net was trained on (its training cases give positives and negatives)")
    p.add_argument("--out", required=True, help="the new checkpoint file (never one of the inputs)")
    p.add_argument("--lesion-dir", default=None, help="folder of lesion crops (<id>_ct.nii.gz + <id>_label.nii.gz): more positives")
    p.add_argument("--crop-exclude", default=None, help="patient or crop ids whose crops are left out, comma-separated (e.g. held-out test patients)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 600)")
    p.add_argument("--batch", type=int, default=None, help="patches per step, half positive (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_rescorer)


def _cmd_train_rescorer(a: argparse.Namespace) -> None:
    from lungtumor.atomic import refuse_overwriting_inputs

    refuse_overwriting_inputs([a.out], [a.checkpoint, a.store, a.lesion_dir], command="lungtumor train-rescorer")
    from lungtumor.training.rescorer import add_rescorer, train_rescorer

    options = {k: v for k, v in (("steps", a.steps), ("batch", a.batch)) if v is not None}
    net, summary = train_rescorer(
        a.checkpoint, a.store, lesion_dir=a.lesion_dir, crop_exclude=a.crop_exclude, seed=a.seed, progress=not a.no_progress, **options,
    )
    out = add_rescorer(a.checkpoint, a.out, net, summary)
    print(json.dumps({"checkpoint": str(out), **summary}, indent=2, default=str))


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment a CT (NIfTI file, folder of NIfTI, or DICOM series folder)")
    p.add_argument(
        "checkpoint",
        help="a checkpoint (best.ckpt / last.ckpt), several joined by commas, or a folder of runs (e.g. a `lungtumor cv` folder): "
        "several make an ensemble that averages probabilities",
    )
    p.add_argument("input")
    p.add_argument("output", help="output .nii.gz (or a folder when INPUT is a folder of NIfTI files)")
    p.add_argument("--report", action="store_true", help="also write the lesion table (RECIST diameters) and report.html into NAME_report/")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false", help="keep predicted lesions that do not touch the lung region")
    p.add_argument("--min-lesion-ml", type=float, default=None, help="drop predicted lesions smaller than this (ml; default keep all, or for a `lungtumor cv` folder the volume its folds chose; 0 keeps all)")
    p.add_argument(
        "--min-lesion-score", type=float, default=None,
        help="drop predicted lesions whose score (max probability inside; the re-scorer's for a checkpoint with one) is below "
        "this, in [0, 1] (default keep all, or for a `lungtumor cv` folder the score its folds chose, or for a checkpoint "
        "with a re-scorer the operating point it carries, 0.1; 0 keeps all)",
    )
    p.add_argument("--skip-bad", action="store_true", help="folder input: warn about a case that fails and go on with the others")
    p.add_argument(
        "--workers", type=int, default=0,
        help="folder input: worker processes that read and prepare the next scans (lung finder, slice grid) while the model "
        "runs, with outputs written in the background (default 0: one scan after the other in this process; same outputs)",
    )
    p.add_argument(
        "--skip-existing", action="store_true",
        help="do not predict inputs whose outputs all exist (outputs are written atomically, so an existing one is whole): "
        "completes a run that was stopped",
    )
    p.add_argument("--probabilities", action="store_true", help="also write a float32 probability map (NAME_prob.nii.gz)")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the checkpoint's, 0.5)")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="test-time augmentation")
    p.add_argument(
        "--mode", choices=["auto", "fast", "full"], default="full",
        help="full (default): every slice at full resolution; fast: candidates on a 2x coarser grid, then only their "
        "neighbourhood at full resolution (TTA only there; about 7x less arithmetic, quality margin not yet measured on "
        "real CT, see BENCHMARKS.md); auto: fast on a CPU, full on CUDA",
    )
    p.add_argument("--batch-size", type=int, default=None, help="slices per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--series-uid", default=None, help="DICOM series to use where the folder holds several")
    p.add_argument(
        "--output-format", default="nifti", metavar="nifti|dicom-seg|nifti,dicom-seg",
        help="DICOM input only: dicom-seg writes a DICOM Segmentation beside OUTPUT as NAME.dcm (default nifti)",
    )
    p.set_defaults(func=_cmd_predict)


def _lung_region_ahead(volume: Any) -> Any:
    """``predict``'s lung region of a CT it has not checked yet, in the prefetch thread (nothing for a CT
    ``check_ct`` refuses: predict then raises its own error)."""
    from lungtumor.io.readers import check_ct
    from lungtumor.preprocessing.lungs import prediction_region_ahead

    return prediction_region_ahead(check_ct(volume))


def _cmd_predict(a: argparse.Namespace) -> None:
    from lungtumor.io import prefetch

    if a.series_uid is None:  # one NIfTI file: read it and find its lungs while torch is imported below (io/prefetch.py)
        prefetch.start(a.input, then=_lung_region_ahead)
    from lungtumor.config import check_batch_size, check_threshold, parse_list

    # One path may hold a comma (a folder named so): only a value that is not an existing path is a list.
    checkpoints = [a.checkpoint] if Path(a.checkpoint).exists() else parse_list(a.checkpoint, "CHECKPOINT", example="fold0/last.ckpt,fold1/last.ckpt")
    if not a.postprocess and a.min_lesion_ml is not None:
        raise ConfigError(
            f"--no-postprocess keeps every predicted lesion, --min-lesion-ml {a.min_lesion_ml:g} drops small ones: "
            "give one of them (--min-lesion-ml 0 keeps every lesion while the lung-region post-processing stays on)"
        )
    if a.batch_size is not None:
        check_batch_size(a.batch_size)
    if a.threshold is not None:
        check_threshold(a.threshold)
    if a.min_lesion_score is not None:
        from lungtumor.config import check_min_lesion_score

        check_min_lesion_score(a.min_lesion_score)
    from lungtumor.predict import predict_path

    results = predict_path(
        checkpoints if len(checkpoints) > 1 else checkpoints[0],
        a.input,
        a.output,
        probabilities=a.probabilities,
        threshold=a.threshold,
        tta=a.tta,
        mode=a.mode,
        batch_size=a.batch_size,
        device=a.device,
        series_uid=a.series_uid,
        output_format=a.output_format,
        postprocess=a.postprocess,
        min_lesion_ml=a.min_lesion_ml,
        min_lesion_score=a.min_lesion_score,
        report=a.report,
        skip_bad=a.skip_bad,
        workers=a.workers,
        skip_existing=a.skip_existing,
    )
    failed = [r for r in results if r.get("error")]
    for r in results:
        if r.get("error"):
            print(f"{r['input']}: skipped: {r['error']}")
            continue
        if r.get("skipped"):
            print(f"{r['input']} -> {r['output']}  already there, skipped (--skip-existing)")
            continue
        seg = f" + {r['dicom_seg']}" if r.get("dicom_seg") and r["dicom_seg"] != r["output"] else ""
        if r.get("report"):
            seg += f" + {r['report']}"
        print(f"{r['input']} -> {r['output']}{seg}  shape {tuple(r['shape'])}  tumour {r['volume_ml']:.2f} ml  {r['seconds']:.1f} s")
    if failed:
        raise ConfigError(f"{len(failed)} of {len(results)} inputs failed and were skipped (listed above); fix them and predict those again")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-case metrics of predicted masks against reference labels")
    p.add_argument("pred_dir")
    p.add_argument("label_dir")
    p.add_argument("--out", default=None, help="output folder (default PRED_DIR/evaluation)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance (default 2 mm)")
    p.add_argument("--prob-dir", default=None, help="probability maps for the seed's pooled soft Dice")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from lungtumor.evaluation.evaluate import check_distinct_folders, evaluate_folder, format_table

    check_distinct_folders(a.pred_dir, a.label_dir, a.prob_dir)
    out = a.out or str(Path(a.pred_dir) / "evaluation")
    result = evaluate_folder(a.pred_dir, a.label_dir, out_dir=out, tolerance_mm=a.tolerance_mm, prob_dir=a.prob_dir)
    print(format_table(result))
    print(f"wrote {out}/metrics.csv and {out}/summary.json")


def _add_lesions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lesions", help="per-lesion table (volume, RECIST diameters, side) of a mask, instance mask, HTML report")
    p.add_argument("mask", help="binary tumour mask .nii.gz on the CT's grid")
    p.add_argument("ct", help="the CT (.nii.gz or a DICOM series folder)")
    p.add_argument("--probabilities", default=None, help="probability map .nii.gz (mean/max probability per lesion)")
    p.add_argument("--lungs", default=None, help="lung region mask .nii.gz (which lung each lesion lies in)")
    p.add_argument("--out", required=True, help="output folder: lesions.csv, lesions.json, instances.nii.gz")
    p.add_argument("--report", action="store_true", help="also write a self-contained report.html")
    p.add_argument("--checkpoint", default=None, help="checkpoint that made the mask (recorded with its preprocessing)")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold that made the mask (recorded)")
    p.add_argument("--series-uid", default=None, help="DICOM series to use where the CT folder holds several")
    p.set_defaults(func=_cmd_lesions)


def _cmd_lesions(a: argparse.Namespace) -> None:
    from lungtumor.config import check_threshold

    if a.threshold is not None:
        check_threshold(a.threshold)
    from lungtumor.atomic import refuse_overwriting_inputs
    from lungtumor.io.nifti import read_nifti
    from lungtumor.io.readers import check_ct, read_volume
    from lungtumor.reporting.html import lesions_folder_files, write_lesions_folder

    refuse_overwriting_inputs(
        lesions_folder_files(a.out, html_report=a.report), [a.mask, a.ct, a.probabilities, a.lungs, a.checkpoint], command="lungtumor lesions"
    )

    model_facts: dict[str, Any] = {}
    if a.checkpoint:
        from lungtumor.model.checkpoint import read_checkpoint

        meta = read_checkpoint(a.checkpoint)["lungtumor"]
        model_facts = {"checkpoint": str(a.checkpoint), "preprocessing": meta.get("preprocess"), "model": meta.get("model")}
        model_facts["threshold"] = a.threshold if a.threshold is not None else meta.get("threshold", 0.5)
    elif a.threshold is not None:
        model_facts = {"threshold": a.threshold}
    mask = read_nifti(a.mask)
    ct = check_ct(read_volume(a.ct, series_uid=a.series_uid))
    prob = read_nifti(a.probabilities, dtype="float32") if a.probabilities else None
    lungs = read_nifti(a.lungs) if a.lungs else None
    report, files = write_lesions_folder(ct, mask, a.out, probabilities=prob, lungs=lungs, model_facts=model_facts or None, html_report=a.report)
    for lesion in report.lesions:
        print(
            f"lesion {lesion.id}: {lesion.volume_ml:.2f} ml, longest {lesion.longest_diameter_mm:.1f} mm, "
            f"short {lesion.short_axis_mm:.1f} mm, {lesion.side or 'side unknown'}, {'measurable' if lesion.measurable else 'not measurable'}"
        )
    print(f"{len(report.lesions)} lesion(s); wrote " + ", ".join(str(p) for p in files))


def _add_followup(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("followup", help="two CTs of one patient: lesions paired, their changes, RECIST 1.1 response")
    p.add_argument("baseline", help="baseline CT (.nii.gz or a DICOM series folder)")
    p.add_argument("followup", help="follow-up CT (.nii.gz or a DICOM series folder), any grid or position")
    p.add_argument("--out", required=True, help="output folder: followup.json, followup.csv (+ followup.html)")
    p.add_argument("--baseline-mask", default=None, help="binary tumour mask .nii.gz on the baseline CT's grid")
    p.add_argument("--followup-mask", default=None, help="binary tumour mask .nii.gz on the follow-up CT's grid")
    p.add_argument("--checkpoint", nargs="+", default=None, help="checkpoint(s) or a cv/train folder: predict the mask(s) not given")
    p.add_argument("--report", action="store_true", help="also write a self-contained followup.html")
    p.add_argument("--targets", default=None, help="RECIST target lesions: baseline lesion ids, e.g. 1,3 (default: by the RECIST rule)")
    p.add_argument("--dates", default=None, help="study dates YYYY-MM-DD,YYYY-MM-DD (baseline, follow-up); default: the DICOM dates")
    p.add_argument("--affine", action="store_true", help="refine the rigid alignment with an affine one (12 dof)")
    p.add_argument("--match-tolerance-mm", type=float, default=None, help="largest centroid distance of lesions paired without overlap (default 10)")
    p.add_argument("--lungs-as-two-organs", action="store_true", help="RECIST: count each lung as an organ (default: the lungs are one organ)")
    p.add_argument("--threshold", type=float, default=None, help="with --checkpoint: probability threshold (default: the checkpoint's)")
    p.add_argument("--min-lesion-ml", type=float, default=None, help="with --checkpoint: drop predicted lesions below this volume")
    p.add_argument("--device", default=None, help="with --checkpoint: cpu, cuda, cuda:1, ...")
    p.add_argument("--baseline-series-uid", default=None, help="DICOM series of the baseline where its folder holds several")
    p.add_argument("--followup-series-uid", default=None, help="DICOM series of the follow-up where its folder holds several")
    p.set_defaults(func=_cmd_followup)


def _parse_ids(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give lesion ids separated by commas, e.g. {option} 1,3") from None


def _cmd_followup(a: argparse.Namespace) -> None:
    from lungtumor.followup import followup

    checkpoint = None if a.checkpoint is None else (a.checkpoint[0] if len(a.checkpoint) == 1 else a.checkpoint)
    doc = followup(
        a.baseline, a.followup, a.out, baseline_mask=a.baseline_mask, followup_mask=a.followup_mask, checkpoint=checkpoint,
        report=a.report, targets=_parse_ids(a.targets, "--targets"), dates=a.dates, affine=a.affine,
        match_tolerance_mm=a.match_tolerance_mm, lungs_as_one_organ=not a.lungs_as_two_organs,
        series_uids=(a.baseline_series_uid, a.followup_series_uid), threshold=a.threshold, min_lesion_ml=a.min_lesion_ml, device=a.device,
    )
    for warning in doc["warnings"]:
        print(f"lungtumor followup: warning: {warning}", file=sys.stderr)
    for statement in doc["statements"]:
        print(statement)
    counts = ", ".join(f"{n} {status}" for status, n in doc["counts"].items() if n)
    print(f"lesions: {counts or 'none at either visit'}")
    sums = doc["recist"]["sums"]
    if sums:
        print(f"sum of target diameters {sums['baseline_mm']:.1f} -> {sums['followup_mm']:.1f} mm ({sums['change_percent']:+.1f} %)")
    print(f"response: {doc['response']} ({doc['response_name']}); computed from the segmentation, not a clinical read")
    print("wrote " + ", ".join(doc["written"]))


def _add_lungs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lungs", help="tumour-inclusive lung region of a CT (NIfTI file or DICOM series folder) -> uint8 NIfTI")
    p.add_argument("ct", help="CT .nii/.nii.gz file or DICOM series folder")
    p.add_argument("out", help="output .nii.gz: 1 inside the lung region, on the CT's exact grid")
    p.add_argument("--series-uid", default=None, help="DICOM series to use where the folder holds several")
    p.set_defaults(func=_cmd_lungs)


def _cmd_lungs(a: argparse.Namespace) -> None:
    from lungtumor.errors import InputError
    from lungtumor.io.nifti import is_nifti, write_nifti
    from lungtumor.io.readers import read_volume
    from lungtumor.preprocessing.lungs import find_lung_region

    if not is_nifti(a.out):
        raise InputError(f"{a.out}: the lung region is written as NIfTI; give an output name ending in .nii.gz or .nii")
    from lungtumor.atomic import refuse_overwriting_inputs

    refuse_overwriting_inputs([a.out], [a.ct], command="lungtumor lungs")
    t0 = time.perf_counter()
    ct = read_volume(a.ct, series_uid=a.series_uid)
    region = find_lung_region(ct)
    write_nifti(region.mask, a.out, dtype="uint8")
    for warning in region.warnings:
        print(f"lungtumor lungs: warning: {warning}", file=sys.stderr)
    box = "empty" if region.bbox_ijk is None else " x ".join(f"{lo}:{hi}" for lo, hi in region.bbox_ijk)
    print(
        f"{a.ct} -> {a.out}  shape {ct.shape}  region {region.volume_ml:.0f} ml (lungs {region.lung_volume_ml:.0f} ml), "
        f"box {box}, {time.perf_counter() - t0:.1f} s"
    )


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="GIF animation or PNG montage of a mask over the CT")
    p.add_argument("ct")
    p.add_argument("mask", nargs="?", default=None)
    p.add_argument("--reference", default=None, help="reference label drawn in another colour")
    p.add_argument("--out", required=True, help="FILE.gif (animation) or FILE.png (montage)")
    p.add_argument("--all-slices", action="store_true", help="animate the whole scan, not only the tumour range")
    p.add_argument("--every", type=int, default=1, help="every N-th slice")
    p.add_argument("--series-uid", default=None)
    p.set_defaults(func=_cmd_visualize)


def _cmd_visualize(a: argparse.Namespace) -> None:
    from lungtumor.atomic import refuse_overwriting_inputs
    from lungtumor.io.nifti import read_nifti
    from lungtumor.io.readers import read_volume
    from lungtumor.reporting.figures import visualize

    refuse_overwriting_inputs([a.out], [a.ct, a.mask, a.reference], command="lungtumor visualize")
    ct = read_volume(a.ct, series_uid=a.series_uid)
    mask = read_nifti(a.mask) if a.mask else None
    ref = read_nifti(a.reference) if a.reference else None
    out = visualize(ct, mask, a.out, reference=ref, mode="all" if a.all_slices else "tumour", every=a.every)
    print(f"wrote {out}")


#: Training options that ``cv`` sets per fold itself.
_CV_SETS = ("fold", "folds", "split_seed", "val_cases", "seed")


def _add_cv(sub: argparse._SubParsersAction) -> None:
    from lungtumor.training.options import add_train_arguments

    p = sub.add_parser("cv", help="k-fold cross-validation: train every fold (and seed), score each fold's cases, report mean +- SD")
    p.add_argument("store", help="slice store (lungtumor preprocess) or a dataset folder (preprocessed first)")
    p.add_argument("--out", required=True, help="cross-validation folder (resumable: finished folds are reused)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, each a new split shuffle and initialisation (default 1)")
    p.add_argument("--only-folds", default=None, help="run only these folds now, e.g. 0,1 (for one process per GPU)")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="test-time augmentation of the fold predictions")
    p.add_argument("--parallel", type=int, default=None, help="folds trained at once, one process each (default: one per visible GPU; 1 on a CPU)")
    p.add_argument("--config", default=None, help="YAML/JSON file with training options")
    add_train_arguments(p, exclude=_CV_SETS)
    p.set_defaults(func=_cmd_cv)


def _cmd_cv(a: argparse.Namespace) -> None:
    from lungtumor.training.options import TrainConfig, load_config_file

    options: dict[str, Any] = load_config_file(a.config) if a.config else {}
    options.update({k: v for k, v in vars(a).items() if k in TrainConfig.field_names() and k not in _CV_SETS and v is not None})
    for key in _CV_SETS:
        options.pop(key, None)
    if a.only_folds is not None:
        from lungtumor.cv import parse_only_folds

        parse_only_folds(a.only_folds, a.folds)  # ",": an empty list, not "every fold"; 7 of 5 folds: refused before anything
    from lungtumor.atomic import refuse_overwriting_inputs

    refuse_overwriting_inputs([a.out], [a.store, a.config], command="lungtumor cv")
    base = TrainConfig.from_dict({**options, "store": a.store, "out": a.out})
    _quiet_lightning()
    from lungtumor.cv import cross_validate, format_report

    summary = cross_validate(a.store, a.out, base, folds=a.folds, seeds=a.seeds, only_folds=a.only_folds, tta=a.tta, parallel=a.parallel)
    print(format_report(summary))
    print(f"wrote {Path(a.out) / 'cv_summary.json'} and {Path(a.out) / 'cv_cases.csv'}")
    if summary["failed"]:
        raise ConfigError(f"{len(summary['failed'])} fold(s) failed (listed above and in cv_summary.json); fix and re-run: finished folds are kept")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from lungtumor.config import PRESET_NAMES

    p = sub.add_parser("demo", help="the whole pipeline on built-in synthetic data (or --task-dir)")
    p.add_argument("--workdir", default="demo_run", help="where everything is written (default ./demo_run)")
    p.add_argument("--task-dir", default=None, help="run on a real MSD-layout folder instead of the phantom")
    p.add_argument("--cases", type=int, default=None, help="phantom training cases")
    p.add_argument("--test-cases", type=int, default=None)
    p.add_argument("--val-cases", type=int, default=None, help="validation cases (the last ones in sorted order; with --task-dir the held-out ones)")
    p.add_argument("--heldout-cases", type=int, default=None, help="phantom held-out cases, a dataset of their own, scored at the end")
    p.add_argument("--train-minutes", type=float, default=None, help="training time budget")
    p.add_argument("--preset", choices=list(PRESET_NAMES), default=None, help="slice grid (default lung; seed = the seed's recipe)")
    p.add_argument("--spacing-mm", type=float, default=None, help="lung preset: model pixel in mm (default 3, the SMALL phantom's own)")
    p.add_argument("--size", type=int, default=None, help="seed preset: slice size (default 128)")
    p.add_argument("--width", type=int, default=None, help="U-Net base width")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a: argparse.Namespace) -> None:
    from lungtumor.demo import DemoConfig, run_demo

    _quiet_lightning()

    overrides = {k: getattr(a, k) for k in ("cases", "test_cases", "val_cases", "heldout_cases", "train_minutes", "preset", "spacing_mm", "size", "width", "epochs") if getattr(a, k) is not None}
    cfg = DemoConfig(workdir=a.workdir, task_dir=a.task_dir, seed=a.seed, **overrides)
    run_demo(cfg)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="lungtumor", description="Lung tumour segmentation in chest CT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_phantom, _add_import_dicom, _add_preprocess, _add_train, _add_train_rescorer, _add_predict, _add_evaluate, _add_lesions, _add_followup, _add_lungs, _add_visualize, _add_cv, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lungtumor`` console script."""
    command = "lungtumor"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"lungtumor {args.command}"
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
        try:
            args.func(args)
        except LungTumorError as exc:
            if args.verbose:
                raise
            print(f"{command}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except OSError as exc:
            # The file system said no (not a folder, permission denied, disk full): the user's to fix.
            if args.verbose:
                raise
            where = exc.filename or "a file"
            print(f"{command}: error: {where}: {exc.strerror or exc}; check the path and its permissions", file=sys.stderr)
            return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


#: What torch's DataLoader puts before the traceback of an error raised in a worker process (it
#: re-raises the error's own type in the main process with this text as the message).
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _original_message(text: str) -> str:
    """The message of an error raised in a DataLoader worker: the traceback's last line without the type."""
    if _WORKER_TRACEBACK not in text:
        return text
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    match = re.match(r"^[A-Za-z_][\w.]*: (.*)$", lines[-1]) if lines else None
    return match.group(1) if match else lines[-1]


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a user sees one line, whatever the library wrote), the
    original message where a DataLoader worker wrapped it in its traceback."""
    return " ".join(_original_message(str(exc)).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
