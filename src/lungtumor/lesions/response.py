"""RECIST 1.1 response of two visits from matched lesions (pure functions, no I/O).

Eisenhauer et al., "New response evaluation criteria in solid tumours: revised RECIST guideline
(version 1.1)", Eur. J. Cancer 45 (2009) 228-247, applied to what a segmentation gives:

- **Targets** at baseline: measurable lesions (longest axial diameter >= 10 mm, and >= twice the
  slice thickness for slices over 5 mm), the largest by long axis first, at most
  :data:`MAX_TARGETS` in total and :data:`MAX_TARGETS_PER_ORGAN` per organ. The lungs count as
  **one organ** (:data:`LUNGS_AS_ONE_ORGAN`, the usual reading), so at most two lung targets; with
  ``lungs_as_one_organ=False`` each lung is an organ (by the lesion's side). A user may choose the
  targets instead (baseline ids; validated by the same rules).
- **Sum of diameters** at each visit: the targets' long axes. At follow-up a target that is gone
  counts 0; a target that split counts the sum of its fragments' long axes; targets that merged:
  the merged lesion's long axis counts for one (the largest at baseline) and 0 for the others.
- **Category** (first that applies): PD when the sum grew by >= 20 % *and* >= 5 mm over the
  smallest sum on study (with two visits, the baseline sum), or when a new measurable lesion
  appeared; CR when every target and every non-target lesion is gone and no new lesion appeared;
  PR when the sum fell by >= 30 % from baseline; SD otherwise. "not evaluable" when the baseline has
  no measurable lesion.
- Lymph nodes (RECIST lets a node below 10 mm short axis count as normal for CR) do not occur:
  these are lung lesions, so a target must be gone (0 mm) for CR.
- A new lesion too small to be measurable is listed as equivocal: it does not make PD by itself
  (RECIST asks for an unequivocal new lesion), but it does rule out CR. Unequivocal progression
  of non-target lesions is a reader's judgement and is not assessed here.

The category is computed from the segmentation, not a clinical read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lungtumor.errors import ConfigError
from lungtumor.lesions.longitudinal import GONE, MATCHED, NEW, SPLIT, LesionGroup
from lungtumor.lesions.recist import MeasuredLesion

#: RECIST 1.1: at most this many target lesions in total ...
MAX_TARGETS = 5
#: ... and at most this many per organ.
MAX_TARGETS_PER_ORGAN = 2
#: The usual reading: both lungs are one organ (so at most two lung targets).
LUNGS_AS_ONE_ORGAN = True
LUNGS_ORGAN_TEXT = {
    True: "the lungs count as one organ (the usual reading of RECIST 1.1), so at most 2 lung targets",
    False: "each lung counts as one organ (by the lesion's side), so at most 2 targets per lung",
}
#: PR: the sum fell by at least this fraction of the baseline sum.
PR_DECREASE_FRACTION = 0.30
#: PD: the sum grew by at least this fraction of the smallest sum on study ...
PD_INCREASE_FRACTION = 0.20
#: ... and by at least this many mm.
PD_MIN_INCREASE_MM = 5.0
CATEGORIES = ("CR", "PR", "SD", "PD", "not evaluable")
CATEGORY_NAMES = {
    "CR": "complete response",
    "PR": "partial response",
    "SD": "stable disease",
    "PD": "progressive disease",
    "not evaluable": "not evaluable",
}
DISCLAIMER = "The category is computed from the segmentation, not a clinical read."
LYMPH_NODE_NOTE = (
    "RECIST 1.1 lets lymph nodes below 10 mm short axis count as normal for CR; these are lung lesions, not lymph nodes, so "
    "every target must be gone (0 mm)"
)


def organ_of(lesion: MeasuredLesion, lungs_as_one_organ: bool = LUNGS_AS_ONE_ORGAN) -> str:
    """The organ a lesion counts in for the per-organ target limit."""
    if lungs_as_one_organ:
        return "lungs"
    return f"{lesion.side} lung" if lesion.side in ("right", "left") else "lung (side unknown)"


def choose_targets(
    lesions: Sequence[MeasuredLesion], requested: Sequence[int] | None = None, *, lungs_as_one_organ: bool = LUNGS_AS_ONE_ORGAN
) -> tuple[list[int], list[str]]:
    """Target lesion ids at baseline (see the module docstring), and the steps that chose them.

    Args:
        lesions: the baseline lesions.
        requested: baseline ids the user chose (None: by the rule).
        lungs_as_one_organ: how the lungs count against the per-organ limit.

    Returns:
        ``(ids, steps)``: ids largest first (by long axis), and one sentence per decision.

    Raises:
        ConfigError: a requested id is unknown, repeated, not measurable, or breaks a limit.
    """
    by_id = {les.id: les for les in lesions}
    steps = [LUNGS_ORGAN_TEXT[lungs_as_one_organ] + "."]
    if requested is not None:
        ids = list(requested)
        if not ids:
            raise ConfigError("--targets is empty; give baseline lesion ids such as --targets 1,3, or leave it out to choose by the rule")
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ConfigError(f"--targets repeats lesion id(s) {repeated}; give each baseline lesion once")
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ConfigError(
                f"--targets: baseline has no lesion {unknown} (its lesions are {sorted(by_id) or 'none'}); use ids from the baseline"
            )
        small = [i for i in ids if not by_id[i].measurable]
        if small:
            shown = ", ".join(f"{i} ({by_id[i].longest_diameter_mm:.1f} mm)" for i in small)
            raise ConfigError(f"--targets: lesion(s) {shown} are not measurable by RECIST 1.1, so they cannot be targets; choose measurable lesions")
        if len(ids) > MAX_TARGETS:
            raise ConfigError(f"--targets: {len(ids)} lesions given, RECIST 1.1 allows at most {MAX_TARGETS}")
        per_organ: dict[str, list[int]] = {}
        for i in ids:
            per_organ.setdefault(organ_of(by_id[i], lungs_as_one_organ), []).append(i)
        for organ, members in per_organ.items():
            if len(members) > MAX_TARGETS_PER_ORGAN:
                raise ConfigError(
                    f"--targets: {len(members)} targets in the {organ} ({members}); RECIST 1.1 allows at most {MAX_TARGETS_PER_ORGAN} per organ "
                    f"({LUNGS_ORGAN_TEXT[lungs_as_one_organ]})"
                )
        ids.sort(key=lambda i: (-by_id[i].longest_diameter_mm, i))
        steps.append(f"targets chosen by the user: {ids}")
        return ids, steps
    measurable = sorted((les for les in lesions if les.measurable), key=lambda les: (-les.longest_diameter_mm, les.id))
    chosen: list[int] = []
    count: dict[str, int] = {}
    for les in measurable:
        organ = organ_of(les, lungs_as_one_organ)
        if len(chosen) >= MAX_TARGETS:
            steps.append(f"lesion {les.id} ({les.longest_diameter_mm:.1f} mm) is not a target: {MAX_TARGETS} targets already")
            continue
        if count.get(organ, 0) >= MAX_TARGETS_PER_ORGAN:
            steps.append(f"lesion {les.id} ({les.longest_diameter_mm:.1f} mm) is not a target: {MAX_TARGETS_PER_ORGAN} targets in the {organ} already")
            continue
        chosen.append(les.id)
        count[organ] = count.get(organ, 0) + 1
        steps.append(f"lesion {les.id} ({les.longest_diameter_mm:.1f} mm, {organ}) is a target")
    unmeasurable = [les.id for les in lesions if not les.measurable]
    if unmeasurable:
        steps.append(f"lesion(s) {unmeasurable} are not measurable by RECIST 1.1 (non-target)")
    return chosen, steps


def _followup_diameters(targets: list[int], baseline: Sequence[MeasuredLesion], followup: Sequence[MeasuredLesion], groups: Sequence[LesionGroup]) -> dict[int, tuple[float, str]]:
    """Each target's follow-up diameter (mm) and how it was counted."""
    by_b = {les.id: les for les in baseline}
    by_f = {les.id: les for les in followup}
    out: dict[int, tuple[float, str]] = {}
    for tid in targets:
        group = next(g for g in groups if tid in g.baseline_ids)
        fragments = [by_f[j].longest_diameter_mm for j in group.followup_ids]
        if group.status == GONE:
            out[tid] = (0.0, "gone: 0 mm")
        elif group.status == MATCHED:
            out[tid] = (fragments[0], f"follow-up lesion {group.followup_ids[0]}: {fragments[0]:.1f} mm")
        elif group.status == SPLIT:
            text = " + ".join(f"{d:.1f}" for d in fragments)
            out[tid] = (float(sum(fragments)), f"split into follow-up lesions {list(group.followup_ids)}: sum of the fragments {text} mm")
        else:  # merged (and perhaps split): the merged long axis to the largest target of the group, 0 to the others
            group_targets = sorted((i for i in group.baseline_ids if i in targets), key=lambda i: (-by_b[i].longest_diameter_mm, i))
            if tid == group_targets[0]:
                total = float(sum(fragments))
                out[tid] = (total, f"{group.status} with baseline lesions {list(group.baseline_ids)} into follow-up lesion(s) "
                                   f"{list(group.followup_ids)}: {total:.1f} mm counted here")
            else:
                out[tid] = (0.0, f"{group.status} into follow-up lesion(s) {list(group.followup_ids)}: its long axis is counted for target {group_targets[0]}, 0 mm here")
    return out


def assess_response(
    baseline: Sequence[MeasuredLesion],
    followup: Sequence[MeasuredLesion],
    groups: Sequence[LesionGroup],
    *,
    targets: Sequence[int] | None = None,
    lungs_as_one_organ: bool = LUNGS_AS_ONE_ORGAN,
) -> dict[str, Any]:
    """RECIST 1.1 category of the follow-up against the baseline, with every step written down.

    Args:
        baseline, followup: each visit's lesions (ids 1..N of each scan).
        groups: the matching (:func:`lungtumor.lesions.longitudinal.match_lesions`).
        targets: baseline ids chosen by the user (None: by the rule).
        lungs_as_one_organ: see :data:`LUNGS_AS_ONE_ORGAN`.

    Returns:
        ``category`` (one of :data:`CATEGORIES`), ``category_name``, ``targets`` (per target: ids,
        baseline and follow-up diameters, how counted), ``non_targets``, ``new_lesions``, ``sums``
        (baseline, follow-up, nadir, changes), ``rules`` (each rule: fired, why), ``steps``,
        ``organ_counting``, ``notes``.

    Raises:
        ConfigError: invalid user-chosen targets.
    """
    chosen, steps = choose_targets(baseline, targets, lungs_as_one_organ=lungs_as_one_organ)
    by_b = {les.id: les for les in baseline}
    by_f = {les.id: les for les in followup}
    new_groups = [g for g in groups if g.status == NEW]
    new_lesions = [
        {
            "followup_id": g.followup_ids[0],
            "longest_diameter_mm": by_f[g.followup_ids[0]].longest_diameter_mm,
            "measurable": by_f[g.followup_ids[0]].measurable,
            "counts_for_pd": by_f[g.followup_ids[0]].measurable,
        }
        for g in new_groups
    ]
    non_targets = []
    for les in baseline:
        if les.id in chosen:
            continue
        group = next(g for g in groups if les.id in g.baseline_ids)
        non_targets.append(
            {
                "baseline_id": les.id,
                "longest_diameter_mm": les.longest_diameter_mm,
                "measurable": les.measurable,
                "followup_status": group.status,
                "followup_ids": list(group.followup_ids),
            }
        )
    result: dict[str, Any] = {
        "criteria": "RECIST 1.1 (Eisenhauer et al. 2009), applied to the segmentation",
        "organ_counting": LUNGS_ORGAN_TEXT[lungs_as_one_organ],
        "lungs_as_one_organ": lungs_as_one_organ,
        "max_targets": MAX_TARGETS,
        "max_targets_per_organ": MAX_TARGETS_PER_ORGAN,
        "targets_chosen_by": "user" if targets is not None else "rule",
        "new_lesions": new_lesions,
        "non_targets": non_targets,
        "notes": [LYMPH_NODE_NOTE, "unequivocal progression of non-target lesions is a reader's judgement and is not assessed", DISCLAIMER],
    }
    if not chosen:
        steps.append("the baseline has no measurable lesion, so there is no target and the response is not evaluable")
        result.update(
            category="not evaluable", category_name=CATEGORY_NAMES["not evaluable"], targets=[], sums=None,
            rules=[{"rule": "not evaluable", "fired": True, "why": "no measurable lesion at baseline"}], steps=steps,
        )
        return result
    diameters = _followup_diameters(chosen, baseline, followup, groups)
    target_rows = [
        {
            "baseline_id": tid,
            "baseline_long_axis_mm": by_b[tid].longest_diameter_mm,
            "followup_long_axis_mm": diameters[tid][0],
            "followup_ids": list(next(g for g in groups if tid in g.baseline_ids).followup_ids),
            "counted_as": diameters[tid][1],
        }
        for tid in chosen
    ]
    sum_b = float(sum(by_b[t].longest_diameter_mm for t in chosen))
    sum_f = float(sum(diameters[t][0] for t in chosen))
    nadir = sum_b  # the smallest sum on study: with two visits, the baseline's
    change_mm = sum_f - sum_b
    change_fraction = change_mm / sum_b
    increase_mm = sum_f - nadir
    steps.append(f"sum of diameters at baseline: {' + '.join(f'{by_b[t].longest_diameter_mm:.1f}' for t in chosen)} = {sum_b:.1f} mm")
    steps.append(f"sum of diameters at follow-up: {' + '.join(f'{diameters[t][0]:.1f}' for t in chosen)} = {sum_f:.1f} mm")
    steps.append(f"change from baseline: {change_mm:+.1f} mm ({100 * change_fraction:+.1f} %); smallest sum on study (nadir) = baseline = {nadir:.1f} mm")
    measurable_new = [n["followup_id"] for n in new_lesions if n["measurable"]]
    equivocal_new = [n["followup_id"] for n in new_lesions if not n["measurable"]]
    if equivocal_new:
        steps.append(f"new lesion(s) {equivocal_new} are not measurable: listed as equivocal, not PD by themselves, but no CR")
    all_targets_gone = all(diameters[t][0] == 0.0 for t in chosen)
    non_targets_left = [n["baseline_id"] for n in non_targets if n["followup_status"] != GONE]
    pd_growth = increase_mm >= PD_INCREASE_FRACTION * nadir and increase_mm >= PD_MIN_INCREASE_MM
    pd_new = bool(measurable_new)
    cr = all_targets_gone and not new_lesions and not non_targets_left
    pr = -change_fraction >= PR_DECREASE_FRACTION
    rules = [
        {
            "rule": "PD (growth)",
            "fired": pd_growth,
            "why": f"increase over the nadir {increase_mm:+.1f} mm = {100 * increase_mm / nadir:+.1f} %; needs >= "
            f"{100 * PD_INCREASE_FRACTION:.0f} % and >= {PD_MIN_INCREASE_MM:g} mm",
        },
        {
            "rule": "PD (new lesion)",
            "fired": pd_new,
            "why": f"new measurable lesion(s): {measurable_new}" if measurable_new else "no new measurable lesion",
        },
        {
            "rule": "CR",
            "fired": cr and not (pd_growth or pd_new),
            "why": (
                f"targets all gone: {'yes' if all_targets_gone else 'no'}; non-target lesions left: {non_targets_left or 'none'}; "
                f"new lesions: {[n['followup_id'] for n in new_lesions] or 'none'}"
            ),
        },
        {
            "rule": "PR",
            "fired": pr and not (pd_growth or pd_new or cr),
            "why": f"decrease from baseline {-100 * change_fraction:.1f} %; needs >= {100 * PR_DECREASE_FRACTION:.0f} %",
        },
    ]
    if pd_growth or pd_new:
        category = "PD"
    elif cr:
        category = "CR"
    elif pr:
        category = "PR"
    else:
        category = "SD"
    rules.append({"rule": "SD", "fired": category == "SD", "why": "neither PD, CR nor PR" if category == "SD" else "another rule applied"})
    fired = [r["rule"] for r in rules if r["fired"]]
    steps.append(f"rules that apply: {', '.join(fired)}; category {category} ({CATEGORY_NAMES[category]})")
    if all_targets_gone and category == "PR":
        steps.append(f"every target is gone, but not CR: non-target lesion(s) left {non_targets_left or 'none'}, new lesion(s) {equivocal_new or 'none'}")
    result.update(
        category=category,
        category_name=CATEGORY_NAMES[category],
        targets=target_rows,
        sums={
            "baseline_mm": sum_b,
            "followup_mm": sum_f,
            "nadir_mm": nadir,
            "nadir_note": "with two visits, the smallest sum on study is the baseline sum",
            "change_mm": change_mm,
            "change_percent": 100 * change_fraction,
        },
        rules=rules,
        steps=steps,
    )
    return result

