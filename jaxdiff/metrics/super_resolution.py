"""Super-resolution scores on arrays: interpolation baselines and per-image pixel scores.

The full comparison (these scores plus the perceptual distance of a feature network, and the table, CSV and
figure it writes) is `jaxdiff.evaluators.super_resolution.sr_report`. All images are in [0, 1].
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.metrics import image_quality

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
def pixel_scores(pred, high) -> dict:
    """Per-image {"psnr", "ssim", "dssim", "sharpness": (N,)} of pred vs high (N, H, W, C) in [0, 1] (data range 1;
    sharpness is pred's own gradient sharpness)."""
    return {"psnr": image_quality.psnr(pred, high), "ssim": image_quality.ssim(pred, high),
            "dssim": image_quality.dssim(pred, high), "sharpness": image_quality.gradient_sharpness(pred)}


def best_index(values, direction: int, target: float) -> int:
    """Index of the best of `values`: the largest (direction +1), the smallest (-1) or the closest to `target`
    (0); NaN never wins."""
    v = np.asarray(values, np.float64)
    if direction == 0:
        v = -np.abs(v - target)
    return int(np.nanargmax(v if direction >= 0 else -v))
