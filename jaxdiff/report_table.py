"""A short human-readable table of a run's report (what `train` and `evaluate` print at the end).

The full report stays in JSON (WORKDIR/report.json, DIR/eval_<split>/metrics.json); the table names the split
scored and its number of cases, a few headline metrics (rounded) and where the figures are. Report keys vary
with the task (`finalize` / `evaluate` in `jaxdiff.tasks`): segmentation (per-region `dice_WT`, `hd95_mm_WT`, ... with `regions`, num_cases, scored_as,
overlays_png; SAM's slice-level dice, iou, hd95),
classification (accuracy, ..., num_examples), generation (pixel_mmd, kid, samples_png; 3D: feature MMD, MS-SSIM,
samples_dir), super-resolution (psnr_sr, psnr_bilinear, sr_report); unknown keys are left to the JSON.
"""
from __future__ import annotations

import math

# Headline metrics in the order shown, with their labels (the first MAX_METRICS present are shown).
HEADLINE = {
    "dice": "Dice",
    "dice_tumour_cases": "Dice, cases with tumour",
    "iou": "IoU",
    "hd95": "HD95",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "psnr_sr": "PSNR SR (dB)",
    "psnr_bilinear": "PSNR bilinear (dB)",
    "ssim_sr": "SSIM SR",
    "pixel_mmd": "pixel MMD",
    "kid": "KID",
    "feature_mmd_random_conv3d": "feature MMD (3D)",
    "ms_ssim_generated": "MS-SSIM generated",
    "ms_ssim_real": "MS-SSIM real",
}
MAX_METRICS = 6
# Per-region metrics of the segmentation evaluation (`jaxdiff.tasks.seg_eval`): report keys `<metric>_<region>`
# for the regions listed in the report's "regions", shown in this order (MAX_METRICS lines: with WT / TC / ET,
# Dice and HD95 of each region).
REGION_METRICS = {"dice": "Dice {}", "hd95_mm": "HD95 {} (mm)", "hd95_px": "HD95 {} (px)", "iou": "IoU {}",
                  "sensitivity": "sensitivity {}", "specificity": "specificity {}", "assd_mm": "ASSD {} (mm)",
                  "assd_px": "ASSD {} (px)"}
# The number scored: report key -> noun.
COUNTS = (("num_cases", "cases"), ("num_examples", "examples"), ("num_images", "images"), ("files", "volumes"))


def number(value) -> str:
    """A metric rounded for reading: 4 significant digits, `n/a` for None / NaN / inf."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "n/a"
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def _flat(report: dict) -> dict:
    """The report with the super-resolution sub-report's counts, SR SSIM and files lifted to the top level."""
    flat = dict(report)
    sr = report.get("sr_report")
    if isinstance(sr, dict):
        flat.setdefault("num_images", sr.get("num_images"))
        ssim = (sr.get("metrics") or {}).get("sr_ddpm", {}).get("ssim") if isinstance(sr.get("metrics"), dict) else None
        if ssim is not None:
            flat.setdefault("ssim_sr", ssim)
        for ext, path in (sr.get("files") or {}).items():
            flat.setdefault(f"sr_comparison_{ext}", path)
    return flat


def format_report(report: dict, title: str, json_path: str | None = None) -> str:
    """Lines of text summing up `report`: a header (title, step, split scored and its size), the headline metrics,
    figure paths and where the full JSON is (`json_path`). A report of a stopped run (`stopped_at`) is one line."""
    if "stopped_at" in report:
        return (f"{title}: stopped at step {report['stopped_at']}, checkpoint saved; re-run the same command to "
                "resume.")
    r = _flat(report)
    head = [title]
    if r.get("step") is not None:
        head.append(f"step {r['step']}")
    split = r.get("split")
    count = next(((r[k], noun) for k, noun in COUNTS if isinstance(r.get(k), (int, float)) and r.get(k) is not None),
                 None)
    scored = f"scored on the {split} split" if split else "scored on held-out data"
    if count is not None:
        scored += f" ({number(count[0])} {count[1]}" + (f", {r['scored_as']}" if r.get("scored_as") else "") + ")"
    lines = [", ".join(head) + f": {scored}"]
    for key in ("subsample", "note"):
        if r.get(key):
            lines.append(f"  {r[key]}")
    if r.get("first_step_s") is not None:
        lines.append(f"  first step {number(r['first_step_s'])} s (compilation included)")
    regions = r.get("regions") if isinstance(r.get("regions"), (list, tuple)) else ()
    metrics = [(label.format(region), f"{key}_{region}") for key, label in REGION_METRICS.items()
               for region in regions if f"{key}_{region}" in r][:MAX_METRICS]
    if metrics:
        lines.append("  per-case mean +- std over the cases:")
    else:
        metrics = [(label, key) for key, label in HEADLINE.items() if key in r][:MAX_METRICS]
    if metrics:
        width = max(len(label) for label, _ in metrics) + 2
        for label, key in metrics:
            line = f"  {label:<{width}}{number(r[key])}"
            if r.get(f"{key}_std") is not None and number(r[f"{key}_std"]) != "n/a":
                line += f" +- {number(r[f'{key}_std'])}"
            undefined = r.get(f"{key}_undefined")
            if undefined:
                line += f"  (undefined in {number(undefined)} cases, left out of the mean)"
            lines.append(line)
    else:
        lines.append("  (no metrics)")
    paths = [(k[: -len("_png")] if k.endswith("_png") else k, v) for k, v in r.items()
             if isinstance(v, str) and (k.endswith("_png") or k.endswith("_dir") or k.startswith("sr_comparison_"))]
    if paths:
        lines.append("figures:")
        width = max(len(k) for k, _ in paths) + 2
        lines += [f"  {k:<{width}}{v}" for k, v in paths]
    if isinstance(r.get("per_case_csv"), str):
        lines.append(f"per-case values: {r['per_case_csv']}")
    if isinstance(r.get("evaluation_json"), str):
        lines.append(f"summary per region (mean, std, median, quartiles; conventions): {r['evaluation_json']}")
    if json_path:
        lines.append(f"full report: {json_path}")
    return "\n".join(lines)
