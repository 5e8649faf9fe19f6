"""What jaxdiff writes about a run: sample images and volumes, figures, tables, CSV and JSON reports.

Tasks and evaluators compute arrays and metrics and hand them here; this module names the files and writes them,
drawing with `jaxdiff.viz` and writing through `jaxdiff.io` (local paths or gs://). Every function returns the
paths it wrote.

  generated samples   sample_grid, write_image_samples, write_volume_samples
  super-resolution    write_sr_grids, write_sr_comparison
  classification      write_classification
  segmentation        save_error_map, region_overlays, write_case_scores, write_slice_report
  text                csv_text, summary_table (folder scores), format_report (what `train` / `evaluate` print)
"""
from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from jaxdiff.io import files, nifti
from jaxdiff.viz import grid

# Figures that need matplotlib (`jaxdiff.viz.volume`, `overlay`, `figures`) are imported where they are drawn, so
# that importing a task does not load matplotlib.


# ------------------------------------------------------------------------------------------------------------
# Generated samples
# ------------------------------------------------------------------------------------------------------------
def sample_grid(samples, path: str) -> str:
    """(N, H, W, C) images in [-1, 1] as one PNG grid at `path`, each pixel drawn 2x2."""
    return grid.save_grid(samples, path, scale=2)


def write_image_samples(samples, out_dir: str) -> list[str]:
    """`out_dir`/grid.png (all samples, 2x) and one `sample_NNN.png` per sample of (N, H, W, C) in [-1, 1]."""
    paths = [sample_grid(samples, os.path.join(out_dir, "grid.png"))]
    for i, s in enumerate(samples):
        paths.append(grid.save_grid(s[None], os.path.join(out_dir, f"sample_{i:03d}.png"), ncol=1))
    return paths


def write_volume_samples(out_dir: str, samples, affines, real, trajectory, labels=None) -> list[str]:
    """Generated volumes and their figures in `out_dir`.

    Args:
      samples: (N, X, Y, Z, C) volumes in [-1, 1]; affines: N voxel -> mm affines (4, 4).
      real: (M, X, Y, Z, C) real examples for the real-vs-generated figure (M <= N; the first M samples beside
        them).
      trajectory: (S, X, Y, Z, C) the denoising trajectory of sample 0.
      labels: None, or (N,) region labels of patch samples (named in the file names).
    Writes per sample `sample_NNN[_regionL].nii.gz` and `..._montage.png`, then `real_vs_generated.png`,
    `diffusion_process.png` and `sample_000.html` (interactive view of sample 0 with the voxel spacing of its
    affine). Returns the paths in that order.
    """
    from jaxdiff.viz import volume
    paths = []
    for i, (sample, affine) in enumerate(zip(samples, affines)):
        name = os.path.join(out_dir, f"sample_{i:03d}" + ("" if labels is None else f"_region{labels[i]}"))
        paths.append(nifti.save_nifti(name + ".nii.gz", sample, affine))
        paths.append(volume.save_montage(sample, name + "_montage.png"))
    paths.append(volume.save_real_vs_generated(real, samples[: len(real)],
                                               os.path.join(out_dir, "real_vs_generated.png")))
    paths.append(volume.save_process(trajectory, os.path.join(out_dir, "diffusion_process.png")))
    spacing = tuple(float(z) for z in np.sqrt((np.asarray(affines[0])[:3, :3] ** 2).sum(axis=0)))
    paths.append(volume.save_html(samples[0], os.path.join(out_dir, "sample_000.html"), spacing=spacing))
    return [str(p) for p in paths]


# ------------------------------------------------------------------------------------------------------------
# Super-resolution
# ------------------------------------------------------------------------------------------------------------
def write_sr_grids(out_dir: str, grids: dict, sr) -> dict:
    """`out_dir`/<name>.png (2x) for each {name: (N, H, W, C) in [-1, 1]} of `grids`, and one
    `sr/sr_NNN.png` per super-resolved image of `sr` (N, H, W, C). Returns {name: grid path}."""
    paths = {name: grid.save_grid(x, os.path.join(out_dir, f"{name}.png"), scale=2) for name, x in grids.items()}
    for i, s in enumerate(sr):
        grid.save_grid(s[None], os.path.join(out_dir, "sr", f"sr_{i:03d}.png"), ncol=1)
    return paths


def _sr_markdown(table: dict, hr_sharpness: float, description: str, n: int, shapes: str) -> str:
    from jaxdiff.metrics.super_resolution import COLUMNS, best_index
    names = list(table)
    lines = [f"# Super-resolution vs interpolation ({n} images, {shapes})", "", description,
             f"HR gradient sharpness: {hr_sharpness:.4f} (the sharpness column is best when closest to it).", "",
             "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    best = {key: best_index([table[m][key] for m in names], d, hr_sharpness) for key, _, d in COLUMNS}
    for i, m in enumerate(names):
        cells = [f"**{table[m][key]:.4f}**" if best[key] == i else f"{table[m][key]:.4f}" for key, _, _ in COLUMNS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sr_csv(per_image: dict) -> str:
    from jaxdiff.metrics.super_resolution import COLUMNS
    keys = [key for key, _, _ in COLUMNS]
    rows = ["method," + ",".join(f"{k},{k}_std" for k in keys)]
    for m, scores in per_image.items():
        rows.append(m + "," + ",".join(f"{np.mean(scores[k]):.6g},{np.std(scores[k]):.6g}" for k in keys))
    return "\n".join(rows) + "\n"


def write_sr_comparison(out_dir, table: dict, per_image: dict, hr_sharpness: float, description: str, low,
                        outputs: dict, high) -> dict:
    """The super-resolution comparison files in `out_dir`: `sr_comparison.md` (mean per method and score, best
    per column in bold), `sr_comparison.csv` (mean and std per method) and `sr_comparison.png` (LR | each method
    | HR for the first 4 images).

    Args:
      table: {method: {score: mean}}; per_image: {method: {score: (N,)}} (scores of
        `jaxdiff.metrics.super_resolution.COLUMNS`); hr_sharpness: the HR images' mean gradient sharpness;
        description: the feature line; low (N, h, w, C), outputs {method: (N, H, W, C)}, high (N, H, W, C) in [0, 1].
    Returns {"md", "csv", "png": path}.
    """
    from jaxdiff.viz import figures
    shapes = f"{low.shape[1]}x{low.shape[2]} -> {high.shape[1]}x{high.shape[2]}"
    out_dir = str(out_dir).rstrip("/")
    paths = {ext: f"{out_dir}/sr_comparison.{ext}" for ext in ("md", "csv", "png")}
    files.write_text(paths["md"], _sr_markdown(table, hr_sharpness, description, len(high), shapes))
    files.write_text(paths["csv"], _sr_csv(per_image))
    figures.image_columns({"LR": low, **outputs, "HR": high}, paths["png"])
    return paths


# ------------------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------------------
def write_classification(out_dir: str, confusion, class_names: list, labels, probs) -> dict:
    """`out_dir`/confusion_matrix.png (the (K, K) matrix, counts and row %) and `out_dir`/predictions.json
    (labels (N,) and class probabilities (N, K), rounded to 6 decimals). Returns {"confusion_png",
    "predictions_json": path}."""
    from jaxdiff.viz import figures
    png = figures.confusion_matrix(np.asarray(confusion), list(class_names),
                                   os.path.join(out_dir, "confusion_matrix.png"))
    json_path = files.write_text(os.path.join(out_dir, "predictions.json"), files.strict_json(
        {"labels": np.asarray(labels).tolist(), "probs": np.asarray(probs).round(6).tolist()}))
    return {"confusion_png": png, "predictions_json": json_path}


# ------------------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------------------
def save_error_map(recon, out_dir: str) -> str:
    """`out_dir`/error_map_recon.png: the error head's reconstructions (N, H, W, C) >= 0, 2x, scaled to their max."""
    recon = np.asarray(recon)
    return grid.save_grid(recon, os.path.join(out_dir, "error_map_recon.png"),
                          value_range=(0.0, float(recon.max()) or 1.0), scale=2)


def region_overlays(out_dir: str, images, truths, preds, regions: dict, uncertainty=None, titles=None,
                    suptitle: str = "") -> str:
    """`out_dir`/overlays.png: one row per panel (image, truth regions, predicted regions, uncertainty if given);
    arguments as `jaxdiff.viz.overlay.region_panel`."""
    from jaxdiff.viz import overlay
    return overlay.region_panel(images, truths, preds, os.path.join(out_dir, "overlays.png"), regions,
                                uncertainty=uncertainty, titles=titles, suptitle=suptitle)


def csv_text(rows, columns) -> str:
    """Rows (dicts) as CSV text with a header of `columns`; floats written with repr (full precision, nan, inf)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def write_case_scores(out_dir, rows, columns, body: dict, json_name: str = "evaluation.json") -> dict:
    """`out_dir`/per_case.csv (one row per case and region, `columns`) and `out_dir`/<json_name> (`body` with
    "per_case_csv" set to the CSV's path). Returns {"per_case_csv", "<json stem>_json": paths}."""
    out_dir = str(out_dir)
    csv_path = files.write_text(os.path.join(out_dir, "per_case.csv"), csv_text(rows, columns))
    body = {**body, "per_case_csv": csv_path}
    json_path = files.write_text(os.path.join(out_dir, json_name), files.strict_json(body, indent=1))
    return {"per_case_csv": csv_path, f"{json_name.removesuffix('.json')}_json": json_path}


def write_slice_report(out_dir: str, images, truths, preds, report: dict, per_case: dict, uncertainty=None,
                       titles=None) -> dict:
    """Slice-level segmentation report: `out_dir`/overlays.png of the given slices (images (k, H, W, C) in
    [-1, 1], truths / preds (k, H, W) binary, uncertainty (k, H, W) or None, titles), then
    `out_dir`/evaluation.json {"mean": report with "overlays_png", "per_case": {metric: per-slice list}}.
    Returns `report` with "overlays_png" added."""
    from jaxdiff.viz import overlay
    fig = overlay.segmentation_panel(images, truths, preds, os.path.join(out_dir, "overlays.png"),
                                     uncertainty=uncertainty, titles=titles)
    report = {**report, "overlays_png": fig}
    files.write_text(os.path.join(out_dir, "evaluation.json"), files.strict_json(
        {"mean": report, "per_case": {k: [float(v) for v in vals] for k, vals in per_case.items()}}, indent=1))
    return report


def summary_table(summary: dict, metrics=("dice", "hd95_mm", "iou", "sensitivity", "specificity", "assd_mm")) -> str:
    """Plain-text table of a folder-scoring summary (`jaxdiff.scoring.score_folders`): one line per region,
    mean +- std and median [q1, q3] per metric."""
    lines = [summary["title"]]
    for region, values in summary["metrics"].items():
        cells = []
        for m in metrics:
            s = values[m]
            cells.append(f"{m} {s['mean']:.4g} +- {s['std']:.3g} (median {s['median']:.4g} [{s['q1']:.4g}, "
                         f"{s['q3']:.4g}], n={s['n']})")
        lines.append(f"  {region}: " + "; ".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# The run report as text (what `train` and `evaluate` print at the end)
# ------------------------------------------------------------------------------------------------------------
# The full report stays in JSON (WORKDIR/report.json, DIR/eval_<split>/metrics.json); the table names the split
# scored and its number of cases, a few headline metrics (rounded) and where the figures are. Report keys vary
# with the task (`finalize` / `evaluate` in `jaxdiff.tasks`): segmentation (per-region `dice_WT`, `hd95_mm_WT`,
# ... with `regions`, num_cases, scored_as, overlays_png; SAM's slice-level dice, iou, hd95), classification
# (accuracy, ..., num_examples), generation (pixel_mmd, kid, samples_png; 3D: feature MMD, MS-SSIM, samples_dir),
# super-resolution (psnr_sr, psnr_bilinear, sr_report); unknown keys are left to the JSON.

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
