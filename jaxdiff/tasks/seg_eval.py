"""Evaluation shared by the segmentation tasks, as BraTS scores: whole held-out cases, per region, in mm.

Volume sources (`source.case_volumes()`: the built-in phantom, BraTS) are scored per case in 3D. Every case of
the split (or `eval.num_cases` of them, chosen evenly spaced in the split's case order and said so in the
output) is segmented whole by `jaxdiff.inference.Predictor.segment`, the code path of `python -m
jaxdiff.predict` (every axial slice of the case on the source's own grid, batched; slices in which every
modality is constant are not run), and its label volume is scored against the case's truth with
`jaxdiff.metrics.regions.case_metrics` (Dice, IoU, sensitivity, specificity, HD95 and ASSD in mm from the
voxel spacing of the case's affine; the empty-case conventions are `regions.conventions()`, written into
evaluation.json). Regions: `regions_for_run`.

Image sources (LGG, mask folders: 2D images, not volumes) are scored per image: each image of the split is one
case in 2D on the model's input grid (`Predictor.segment_images`), distances in pixels (keys and columns
hd95_px / assd_px), the same empty-case conventions (one empty: the image diagonal).

Outputs in `out_dir`: per_case.csv (one row per case and region), evaluation.json (per region and metric: mean,
std, median, q1, q3, n, undefined; the conventions; split and number of cases; the cases scored) and
overlays.png (the axial slice with the largest tumour, truth or prediction, of the cases with the largest
tumours, plus the case with the lowest Dice of the first region; each panel labelled with case id, slice index
and per-region Dice of the whole case).
"""
from __future__ import annotations

import time

import numpy as np

from jaxdiff import reporting
from jaxdiff.errors import InputError
from jaxdiff.metrics import regions as regions_lib
from jaxdiff.metrics import segmentation
from jaxdiff.tasks.base import progress_bar, progress_line, split_name

NUM_FIGURES = 6
BRATS_SOURCES = ("brats", "phantom")       # sources whose truths carry BraTS labels 1 / 2 / 4
DISTANCES_2D = {"hd95_mm": "hd95_px", "assd_mm": "assd_px"}


def regions_for_run(config, truth_labels) -> dict:
    """The region table a run is scored with.

    `data.regions = "brats"` (a run trained on BraTS' nested regions, predicting labels {0, 1, 2, 4}):
    `regions.BRATS_REGIONS` (WT, TC, ET). Otherwise the model predicts the whole tumour (label 1): one region
    scored as pred > 0 vs truth > 0, named "WT" when the truths carry BraTS labels (a BraTS or phantom source, or
    `truth_labels`, an iterable of the labels present, within {0, 1, 2, 4} with more than one foreground label),
    else "foreground".
    """
    if str(config.data.get("regions", "") or "").lower() == "brats":
        return dict(regions_lib.BRATS_REGIONS)
    brats_labels = regions_lib.regions_for_labels(truth_labels) == regions_lib.BRATS_REGIONS
    if config.data.get("source", None) in BRATS_SOURCES or brats_labels:
        return {"WT": None}
    return dict(regions_lib.FOREGROUND)


def num_cases_setting(config, num: int | None = None) -> tuple:
    """(number of cases to score or None for all, note or None): `num` (the CLI's --num), else `eval.num_cases`
    when the config has that key (None = all), else the old key `eval.num_examples` read as a number of cases
    (with a note saying so)."""
    if num:
        return int(num), None
    ev = config.get("eval", {})
    if "num_cases" in ev:
        return (None if ev.num_cases is None else int(ev.num_cases)), None
    if ev.get("num_examples", None) is not None:
        return int(ev.num_examples), ("config key eval.num_examples is read as eval.num_cases (segmentation scores "
                                      "whole cases, not slices)")
    return None, None


def choose_cases(cases, num: int | None) -> tuple:
    """(the cases to score, note or None): all of `cases`, or `num` of them evenly spaced in their order
    (deterministic; the note says how many of how many)."""
    cases = list(cases)
    if num is None or num >= len(cases):
        return cases, None
    if num < 1:
        raise InputError(f"config key eval.num_cases: {num} must be >= 1 (or None for every case)")
    picks = np.unique(np.round(np.linspace(0, len(cases) - 1, num)).astype(int))
    return [cases[i] for i in picks], (f"subsampled: {len(picks)} of the split's {len(cases)} cases (--num or "
                                       "eval.num_cases; evenly spaced in case order)")


def _zooms(affine) -> tuple:
    return tuple(float(z) for z in np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0)))


def predict_case(predictor, case: dict, rng) -> tuple:
    """(labels (X, Y, Z) uint8 on the case's grid, MedSegDiff's uncertainty (X, Y, Z) float32 or None) of one
    `case_volumes()` case, through `Predictor.segment` (as `python -m jaxdiff.predict` segments a scan)."""
    import nibabel as nib
    affine = np.asarray(case["affine"], np.float64)
    missing = [m for m in predictor.modalities if m not in case["images"]]
    if missing:
        raise InputError(f"case {case['case']}: no {', '.join(missing)} volume (the model takes "
                         f"{', '.join(predictor.modalities)})")
    images = {m: nib.Nifti1Image(np.asarray(case["images"][m], np.float32), affine) for m in predictor.modalities}
    out = predictor.segment(images, rng)
    unc = out.get("uncertainty")
    return np.asarray(out["mask"].dataobj), None if unc is None else np.asarray(unc.dataobj, np.float32)


def _display_slice(volume, k: int) -> np.ndarray:
    """Axial slice k of a volume (X, Y, Z) as `axial_slices` shows it (rot90: rows = Y, columns = X)."""
    return np.rot90(np.asarray(volume)[:, :, k])


def _figure_candidate(case_id, image, truth, pred, unc, metrics, regions) -> dict:
    """The axial slice with the largest tumour of a case, with what its panel shows: the largest truth tumour, or
    for a case without one the largest predicted tumour (its false positives)."""
    truth_area = (np.asarray(truth) > 0).sum(axis=(0, 1))
    pred_area = (np.asarray(pred) > 0).sum(axis=(0, 1))
    k = int(np.argmax(truth_area if truth_area.any() else pred_area))
    lo, hi = np.percentile(image, [0.5, 99.5])
    shown = 2.0 * (np.clip(_display_slice(image, k), lo, hi) - lo) / max(hi - lo, 1e-6) - 1.0
    first = next(iter(regions))
    return {"case": case_id, "slice": k, "area": (int(truth_area[k]), int(pred_area[k])),
            "first_dice": metrics[first]["dice"],
            "image": shown[..., None], "truth": _display_slice(truth, k), "pred": _display_slice(pred, k),
            "uncertainty": None if unc is None else _display_slice(unc, k),
            "title": f"{case_id}, slice z={k}: Dice " + ", ".join(f"{r} {metrics[r]['dice']:.2f}" for r in regions)}


def pick_figures(candidates: list, num: int = NUM_FIGURES) -> list:
    """Indices of the panels to show: the `num - 1` cases whose largest-tumour slice holds the most tumour (truth
    area, then predicted area), then the case with the lowest Dice of the first region (WT) if not already among
    them."""
    if not candidates:
        return []
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i]["area"][0], -candidates[i]["area"][1], i))
    worst = _worst(candidates)
    chosen = [i for i in order if any(candidates[i]["area"])][: max(num - 1, 0)]
    if worst not in chosen:
        chosen.append(worst)
    return chosen


def _worst(candidates) -> int:
    """Index of the case with the lowest Dice of the first region (ties: the larger tumour, then the first)."""
    return min(range(len(candidates)), key=lambda i: (candidates[i]["first_dice"], -candidates[i]["area"][0], i))


def _figure(candidates, regions, out_dir, title_extra: str = "") -> str | None:
    """overlays.png of the panels `pick_figures` chooses (None when there is none)."""
    picks = pick_figures(candidates)
    if not picks:
        return None
    worst = _worst(candidates)
    sel = [candidates[i] for i in picks]
    titles = [c["title"] + (f" (lowest {next(iter(regions))} Dice)" if i == worst else "") for i, c in
              zip(picks, sel)]
    unc = [c["uncertainty"] for c in sel]
    return reporting.region_overlays(out_dir, [c["image"] for c in sel], [c["truth"] for c in sel],
                                     [c["pred"] for c in sel], regions,
                                     uncertainty=None if any(u is None for u in unc) else unc, titles=titles,
                                     suptitle=title_extra)


def _headline(summary: dict, regions, rename=None) -> dict:
    """Report keys `<metric>_<region>` (mean over cases), `<metric>_<region>_std` and, where some cases are
    undefined, `<metric>_<region>_undefined`."""
    rename = rename or {}
    out = {}
    for region in regions:
        for metric, stats in summary[region].items():
            key = f"{rename.get(metric, metric)}_{region}"
            out[key] = stats["mean"]
            out[f"{key}_std"] = stats["std"]
            if stats["undefined"]:
                out[f"{key}_undefined"] = stats["undefined"]
    return out


def evaluate_volumes(predictor, source, out_dir: str, rng, num: int | None, split: str | None,
                     note: str | None = None) -> dict:
    """Score whole cases of a volume source in 3D (module docstring); returns the report dict."""
    import jax
    from jaxdiff import inference
    from jaxdiff.scoring import COLUMNS
    cases, subsample = choose_cases(source.cases, num)
    split = split or getattr(source, "split", None)
    what = (f"{len(cases)} whole cases in 3D" + (f" x ensemble {predictor.ensemble}" if predictor.diffusion else "")
            + f", slices in batches of {predictor.batch_size}")
    progress_line(f"scoring {split_name(source, split)}: {what}" + (f" ({subsample})" if subsample else ""))
    t0 = time.perf_counter()
    rows, candidates, regions = [], [], None
    for i, case in enumerate(progress_bar(source.case_volumes(cases), "segmenting cases", total=len(cases),
                                          unit="case")):
        pred, unc = predict_case(predictor, case, jax.random.fold_in(rng, i))
        truth = regions_lib.as_labels(case["seg"], f"case {case['case']} truth")
        if regions is None:
            regions = regions_for_run(predictor.config, regions_lib.labels_in(truth))
        spacing = _zooms(case["affine"])
        metrics = regions_lib.case_metrics(pred, truth, spacing, regions)
        rows += [{"case": case["case"], "region": r, **metrics[r]} for r in regions]
        image = inference.normalise_volume(np.asarray(case["images"][predictor.modalities[0]]), predictor.config.data)
        candidates.append(_figure_candidate(case["case"], image, truth, pred, unc, metrics, regions))
    seconds = time.perf_counter() - t0
    summary = regions_lib.summarize_cases(rows)
    scored = f"{len(cases)} cases of the {split} split, whole volumes in 3D"
    fig = _figure(candidates, regions, out_dir, scored)
    body = {"split": split, "num_cases": len(cases), "num_cases_in_split": len(source.cases),
            "scored_as": "whole cases in 3D", "subsample": subsample, "note": note,
            "regions": {r: "every label > 0" if v is None else list(v) for r, v in regions.items()},
            "metrics": summary, "conventions": regions_lib.conventions(), "distance_unit": "mm",
            "cases": [c["case"] for c in candidates], "overlays_png": fig, "seconds": seconds}
    paths = reporting.write_case_scores(out_dir, rows, COLUMNS, body)
    progress_line(f"scored {len(cases)} cases in {seconds:.1f} s")
    return {"split": split, "num_cases": len(cases), "scored_as": "whole cases in 3D", "regions": list(regions),
            **_headline(summary, regions), **({"subsample": subsample} if subsample else {}),
            **({"note": note} if note else {}), "eval_seconds": seconds, **paths,
            **({"overlays_png": fig} if fig else {})}


def _image_metrics(pred, truth, regions) -> dict:
    """`regions.case_metrics` for one 2D image (H, W) in pixels: BraTS conventions, one empty -> the diagonal."""
    far = regions_lib.diagonal_mm(truth.shape, (1.0, 1.0))
    out = {}
    for name, labels in regions.items():
        p = pred > 0 if labels is None else np.isin(pred, labels)
        t = truth > 0 if labels is None else np.isin(truth, labels)
        v = segmentation.case_metrics(p, t, (1.0, 1.0), connectivity=1)
        row = {"dice": v["dice"], "iou": v["iou"], "sensitivity": v["sensitivity"],
               "specificity": v["specificity"], "hd95_px": v["hd95"], "assd_px": v["average_surface_distance"]}
        if p.any() != t.any():
            row.update(hd95_px=far, assd_px=far)
        out[name] = {**{k: float(x) for k, x in row.items()}, "truth_voxels": int(t.sum()), "pred_voxels": int(p.sum())}
    return out


def evaluate_images(predictor, source, out_dir: str, rng, num: int | None, split: str | None,
                    note: str | None = None) -> dict:
    """Score a 2D image source per image (module docstring); returns the report dict."""
    from jaxdiff.data.pipeline import TransformedSource
    raw = source.source if isinstance(source, TransformedSource) else source   # the Predictor applies data.clahe
    index, subsample = choose_cases(range(len(raw)), num)
    split = split or getattr(source, "split", None)
    progress_line(f"scoring {split_name(source, split)}: {len(index)} images, each one case in 2D"
                  + (f" ({subsample.replace('cases', 'images')})" if subsample else ""))
    t0 = time.perf_counter()
    examples = [raw[i] for i in index]
    images = np.stack([np.asarray(e["image"], np.float32) for e in examples])
    truths = np.stack([(np.asarray(e["mask"])[..., 0] > 0.5).astype(np.uint8) for e in examples])
    out = predictor.segment_images(images, rng)
    regions = regions_for_run(predictor.config, regions_lib.labels_in(truths))
    rows, candidates = [], []
    for j, i in enumerate(index):
        case = f"image_{i:05d}"
        metrics = _image_metrics(out["mask"][j], truths[j], regions)
        rows += [{"case": case, "region": r, **metrics[r]} for r in regions]
        var = out.get("variance")
        c = _figure_candidate(case, _as_volume(images[j][..., 0]), _as_volume(truths[j]), _as_volume(out["mask"][j]),
                              None if var is None else _as_volume(var[j][..., 0]), metrics, regions)
        c["title"] = c["title"].replace(", slice z=0", "")
        candidates.append(c)
    seconds = time.perf_counter() - t0
    metric_names = ("dice", "iou", "sensitivity", "specificity", "hd95_px", "assd_px")
    summary = regions_lib.summarize_cases(rows, metric_names)
    fig = _figure(candidates, regions, out_dir, f"{len(index)} images of the {split} split, each one case in 2D")
    body = {"split": split, "num_cases": len(index), "num_cases_in_split": len(raw),
            "scored_as": "each image one case in 2D (model input grid)", "subsample": subsample, "note": note,
            "regions": {r: "every label > 0" if v is None else list(v) for r, v in regions.items()},
            "metrics": summary, "conventions": {**regions_lib.conventions(), "distances": "pixels of the model's "
                                                "input grid; one empty: the image diagonal in pixels"},
            "distance_unit": "pixels", "cases": [c["case"] for c in candidates], "overlays_png": fig,
            "seconds": seconds}
    columns = ("case", "region", *metric_names, *regions_lib.COUNTS)
    paths = reporting.write_case_scores(out_dir, rows, columns, body)
    progress_line(f"scored {len(index)} images in {seconds:.1f} s")
    return {"split": split, "num_cases": len(index), "scored_as": "each image one case in 2D",
            "regions": list(regions), **_headline(summary, regions), **({"subsample": subsample} if subsample else {}),
            **({"note": note} if note else {}), "eval_seconds": seconds, **paths,
            **({"overlays_png": fig} if fig else {})}


def evaluate(task, variables, source, out_dir: str, rng=None, num: int | None = None, num_steps=None,
             split: str | None = None) -> dict:
    """The evaluation of a segmentation task (`task.evaluate`): a `jaxdiff.inference.Predictor` of `variables`
    (batches of `eval.batch_size`, MedSegDiff with `num_steps` sampler steps or the config's), then
    `evaluate_volumes` for a source with `case_volumes`, else `evaluate_images`. num: cases to score (None:
    `num_cases_setting`)."""
    import jax
    from jaxdiff.inference import Predictor
    config = task.config
    count, note = num_cases_setting(config, num)
    if note:
        progress_line(f"note: {note}")
    predictor = Predictor(config, task, variables, num_steps=num_steps)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    if hasattr(source, "case_volumes"):
        return evaluate_volumes(predictor, source, out_dir, rng, count, split, note)
    return evaluate_images(predictor, source, out_dir, rng, count, split, note)


def _as_volume(image) -> np.ndarray:
    """A 2D image (H, W) as a one-slice volume (W, H, 1) that `_display_slice` shows as the image itself."""
    return np.rot90(np.asarray(image), -1)[..., None]


# ------------------------------------------------------------------------------------------------------------
# Slice-level scoring (SAM's box-prompted end-of-run report: prompts are per slice, not per case)
# ------------------------------------------------------------------------------------------------------------
def collect(source, num: int | None) -> dict:
    """Stack the first `num` examples (all if None) of a random-access source into arrays."""
    n = len(source) if num is None else min(num, len(source))
    examples = [source[i] for i in range(n)]
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def report(images, masks, preds, out_dir: str, spacing=(1.0, 1.0), uncertainty=None, num_figures: int = 6,
           extra: dict | None = None) -> dict:
    """Slice-level metrics of `preds` vs `masks` (N, H, W, 1), each slice one case, their means, overlays of the
    first slices (SAM's box-prompted report).

    Writes `<out_dir>/evaluation.json` (means, per-slice lists, "scored_as": "slice_level") and
    `<out_dir>/overlays.png`. Returns the per-slice means (conventions in `jaxdiff.metrics.segmentation`), counts
    of undefined slices, the TransUNet-style segmenter's batch-level figures for comparison, and `extra`.
    """
    truth = np.asarray(masks)[..., 0] > 0.5
    pred = np.asarray(preds)[..., 0] > 0.5
    per_case = segmentation.per_case(pred, truth, spacing=spacing)
    means = segmentation.summarize(per_case)
    seed = segmentation.seed_batch_metrics(pred, truth)
    k = min(num_figures, len(pred))
    titles = [f"Dice {d:.2f}" for d in per_case["dice"][:k]]
    has_tumour = truth.reshape(len(truth), -1).any(1)
    tumour_only = {f"{k}_tumour_cases": float(np.mean(per_case[k][has_tumour])) if has_tumour.any() else float("nan")
                   for k in ("dice", "iou")}
    out = {**means, **tumour_only, "num_cases": int(len(pred)), "num_cases_with_tumour": int(has_tumour.sum()),
           "scored_as": "slice level, each slice one case", **(extra or {}), "seed_batch_metrics": seed}
    return reporting.write_slice_report(out_dir, images[:k], truth[:k], pred[:k], out, per_case,
                                        uncertainty=None if uncertainty is None else uncertainty[:k], titles=titles)
