"""Super-resolution evaluation: model outputs against nearest, bilinear, bicubic and Lanczos upsampling.

`sr_report(high, low, predictions, out_dir)` scores every method on the same held-out images with PSNR,
SSIM, DSSIM (`jaxdiff.metrics.image_quality`, data range 1), the LPIPS-style perceptual distance
(`jaxdiff.evaluators.features.perceptual_distance`, in-project random encoder unless `feature_fn` is given) and
gradient sharpness, and writes `sr_comparison.md` (best per column in bold), `sr_comparison.csv` and
`sr_comparison.png` (LR | each method | HR for the first few images) through `jaxdiff.reporting`. All images are
in [0, 1]; every method's output is clipped to [0, 1] before scoring, as when saved as an image.
"""
from __future__ import annotations

import numpy as np

from jaxdiff import reporting
from jaxdiff.errors import InputError
from jaxdiff.evaluators import features
from jaxdiff.metrics import image_quality
from jaxdiff.metrics.super_resolution import BASELINES, COLUMNS, pixel_scores, upsample_baselines  # noqa: F401


def score_method(pred, high, extractor) -> dict:
    """Per-image scores {"psnr", "ssim", "dssim", "perceptual", "sharpness": (N,) float64} of pred vs high."""
    out = {k: np.asarray(v, np.float64) for k, v in pixel_scores(pred, high).items()}
    out["perceptual"] = np.asarray(features.perceptual_distance(2 * pred - 1, 2 * high - 1, extractor), np.float64)
    return out


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
    paths = reporting.write_sr_comparison(out_dir, table, per_image, hr_sharpness, description, low, outputs, high)
    return {"metrics": table, "hr_sharpness": hr_sharpness, "features": description, "num_images": int(len(high)),
            "files": paths}
