"""Super-resolution evaluation: model outputs against nearest, bilinear, bicubic and Lanczos upsampling.

`sr_report(high, low, predictions, out_dir)` scores every method on the same held-out images with PSNR,
SSIM, DSSIM (`jaxdiff.metrics.image_quality`, data range 1), the LPIPS-style perceptual distance
(`jaxdiff.metrics.features.perceptual_distance`, in-project random encoder unless `feature_fn` is given) and
gradient sharpness, and writes `sr_comparison.md` (best per column in bold), `sr_comparison.csv` and
`sr_comparison.png` (LR | each method | HR for the first few images). All images are in [0, 1]; every
method's output is clipped to [0, 1] before scoring, as when saved as an image.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxdiff.errors import InputError
from jaxdiff.io import files
from jaxdiff.metrics import features, image_quality

BASELINES = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic", "lanczos": "lanczos3"}
# (key, column title, direction): +1 higher is better, -1 lower is better, 0 closest to the HR value.
COLUMNS = (("psnr", "PSNR (dB) ↑", 1), ("ssim", "SSIM ↑", 1), ("dssim", "DSSIM ↓", -1),
           ("perceptual", "perceptual ↓", -1), ("sharpness", "sharpness (≈HR)", 0))


@functools.partial(jax.jit, static_argnums=1)
def upsample_baselines(low, size: tuple) -> dict:
    """{"nearest", "bilinear", "bicubic", "lanczos": (N, H, W, C)} from low (N, h, w, C) with jax.image.resize
    ("nearest", "linear", "cubic" (Keys a = -0.5), "lanczos3"), clipped to [0, 1]; size = (H, W)."""
    shape = (low.shape[0], *size, low.shape[-1])
    return {name: jnp.clip(jax.image.resize(low, shape, method), 0.0, 1.0) for name, method in BASELINES.items()}


@jax.jit
def _pixel_scores(pred, high):
    return {"psnr": image_quality.psnr(pred, high), "ssim": image_quality.ssim(pred, high),
            "dssim": image_quality.dssim(pred, high), "sharpness": image_quality.gradient_sharpness(pred)}


def score_method(pred, high, extractor) -> dict:
    """Per-image scores {"psnr", "ssim", "dssim", "perceptual", "sharpness": (N,) float64} of pred vs high."""
    out = {k: np.asarray(v, np.float64) for k, v in _pixel_scores(pred, high).items()}
    out["perceptual"] = np.asarray(features.perceptual_distance(2 * pred - 1, 2 * high - 1, extractor), np.float64)
    return out


def _best(values: list, direction: int, target: float) -> int:
    v = np.asarray(values, np.float64)
    if direction == 0:
        v = -np.abs(v - target)
    return int(np.nanargmax(v if direction >= 0 else -v))


def _markdown(table: dict, hr_sharpness: float, description: str, n: int, shapes: str) -> str:
    names = list(table)
    lines = [f"# Super-resolution vs interpolation ({n} images, {shapes})", "", description,
             f"HR gradient sharpness: {hr_sharpness:.4f} (the sharpness column is best when closest to it).", "",
             "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    best = {key: _best([table[m][key] for m in names], d, hr_sharpness) for key, _, d in COLUMNS}
    for i, m in enumerate(names):
        cells = [f"**{table[m][key]:.4f}**" if best[key] == i else f"{table[m][key]:.4f}" for key, _, _ in COLUMNS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(per_image: dict) -> str:
    keys = [key for key, _, _ in COLUMNS]
    rows = ["method," + ",".join(f"{k},{k}_std" for k in keys)]
    for m, scores in per_image.items():
        rows.append(m + "," + ",".join(f"{np.mean(scores[k]):.6g},{np.std(scores[k]):.6g}" for k in keys))
    return "\n".join(rows) + "\n"


def _figure(low, outputs: dict, high, path: str, max_images: int = 4) -> None:
    """Grid: one row per image, columns LR | methods... | HR (grey colormap for one channel)."""
    columns = {"LR": low, **outputs, "HR": high}
    rows = min(max_images, len(high))
    fig = Figure(figsize=(1.8 * len(columns), 1.9 * rows))
    for r in range(rows):
        for c, (name, images) in enumerate(columns.items()):
            ax = fig.add_subplot(rows, len(columns), r * len(columns) + c + 1)
            img = np.clip(np.asarray(images[r], np.float32), 0.0, 1.0)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    with files.open_write(path) as f:
        fig.savefig(f, format="png", dpi=100)


def _check(high, low, predictions):
    """Host float32 copies; InputError for wrong shapes, a name clash with a baseline, or NaN/inf (named)."""
    high, low = np.asarray(high, np.float32), np.asarray(low, np.float32)
    if high.ndim != 4 or low.ndim != 4 or high.shape[0] != low.shape[0] or high.shape[-1] != low.shape[-1]:
        raise InputError(f"sr_report: expected high (N,H,W,C) and low (N,h,w,C), got {high.shape} and {low.shape}")
    preds = {}
    for name, p in {"high-res images": high, "low-res images": low, **predictions}.items():
        p = np.asarray(p, np.float32)
        if not np.isfinite(p).all():
            raise InputError(f"sr_report: NaN or inf in {name!r}")
        if name in BASELINES:
            raise InputError(f"sr_report: prediction name {name!r} clashes with a baseline; rename it")
        if p.ndim != 4 or p.shape[0] != high.shape[0] or p.shape[-1] != high.shape[-1] or (
                name in predictions and p.shape != high.shape):
            raise InputError(f"sr_report: {name!r} has shape {p.shape}, high-res images {high.shape}")
        preds[name] = np.clip(p, 0.0, 1.0)
    return preds.pop("high-res images"), preds.pop("low-res images"), preds


def sr_report(high, low, predictions: dict, out_dir, feature_fn=None) -> dict:
    """Compare super-resolution outputs with interpolation baselines and write the table and figure.

    Args:
      high: (N, H, W, C) ground-truth high-resolution images in [0, 1] (H, W >= 11 for SSIM).
      low: (N, h, w, C) the low-resolution inputs in [0, 1].
      predictions: {method name: (N, H, W, C) output in [0, 1]}; baselines are added under their own names.
      out_dir: directory (local or gs://) for sr_comparison.md, sr_comparison.csv and sr_comparison.png.
      feature_fn: features for the perceptual distance, an `Extractor` from `features.get_extractor` or a
        callable images in [-1, 1] -> sequence of (N, h, w, c) maps; default the in-project random encoder.
    Returns:
      {"metrics": {method: {psnr, ssim, dssim, perceptual, sharpness: mean over images}}, "hr_sharpness",
       "features": the feature description line, "num_images", "files": {"md", "csv", "png": path}}.
    """
    high, low, preds = _check(high, low, predictions)  # before anything is written
    baselines = upsample_baselines(low, tuple(high.shape[1:3]))
    outputs = {**{name: baselines[name] for name in BASELINES}, **preds}
    extractor = feature_fn or features.get_extractor("in_project")
    description = getattr(extractor, "description", "features: user-supplied feature_fn")
    per_image = {name: score_method(out, high, extractor) for name, out in outputs.items()}
    table = {name: {k: float(np.mean(v)) for k, v in s.items()} for name, s in per_image.items()}
    hr_sharpness = float(np.mean(image_quality.gradient_sharpness(high)))
    shapes = f"{low.shape[1]}x{low.shape[2]} -> {high.shape[1]}x{high.shape[2]}"
    out_dir = str(out_dir).rstrip("/")
    paths = {ext: f"{out_dir}/sr_comparison.{ext}" for ext in ("md", "csv", "png")}
    files.write_text(paths["md"], _markdown(table, hr_sharpness, description, len(high), shapes))
    files.write_text(paths["csv"], _csv(per_image))
    _figure(low, outputs, high, paths["png"])
    return {"metrics": table, "hr_sharpness": hr_sharpness, "features": description, "num_images": int(len(high)),
            "files": paths}
