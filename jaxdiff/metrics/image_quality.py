"""Full-reference image quality for 2D and 3D batches: PSNR, SSIM, DSSIM, MS-SSIM, gradient sharpness.

Every function takes channels-last batches, (B, H, W, C) images or (B, D, H, W, C) volumes, through one code
path (a separable filter applied along each spatial axis in turn), returns one value per batch element,
shape (B,), and is jitted (`data_range`, `k1`, `k2`, `sigma`, `weights` are static Python numbers: one
compilation per input shape and setting).

SSIM is the Wang et al. (2004) setting, equal to `skimage.metrics.structural_similarity(x, y,
data_range=R, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)`: a Gaussian
window of sigma 1.5 truncated at 3.5 sigma (11 taps per axis), population covariances, and the mean of the
SSIM map over the positions where the whole window fits (skimage computes the map with reflected borders
and then crops 5 voxels from each side; filtering with "valid" borders gives the same numbers). Every
spatial side must therefore be at least 11. Channels are averaged.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import InputError

SIGMA = 1.5
TRUNCATE = 3.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik (2003)


def _check(pred, target=None):
    """(B, *spatial, C) arrays as float32 JAX arrays; InputError for a wrong rank or mismatched shapes."""
    pred = jnp.asarray(pred, jnp.float32)
    if pred.ndim not in (4, 5):
        raise InputError(f"image quality: expected (B,H,W,C) or (B,D,H,W,C), got shape {pred.shape}")
    if target is None:
        return pred
    target = jnp.asarray(target, jnp.float32)
    if target.shape != pred.shape:
        raise InputError(f"image quality: prediction shape {pred.shape} != target shape {target.shape}")
    return pred, target


def _spatial_axes(x) -> tuple:
    return tuple(range(1, x.ndim - 1))


def gaussian_kernel(sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
    """1D Gaussian taps as scipy.ndimage builds them: radius int(truncate*sigma + 0.5), summing to 1."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter_axis(x, taps: np.ndarray, axis: int):
    """Valid correlation of `x` with 1D `taps` along `axis` (output side shrinks by len(taps) - 1)."""
    moved = jnp.moveaxis(x, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1], 1)
    out = jax.lax.conv_general_dilated(flat, jnp.asarray(taps).reshape(-1, 1, 1), (1,), "VALID",
                                       dimension_numbers=("NWC", "WIO", "NWC"),
                                       precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out.reshape(*moved.shape[:-1], out.shape[1]), -1, axis)


def gaussian_filter_valid(x, sigma: float = SIGMA):
    """Separable Gaussian filter of (B, *spatial, C) over every spatial axis, keeping only full windows."""
    taps = gaussian_kernel(sigma)
    for axis in _spatial_axes(x):
        x = _filter_axis(x, taps, axis)
    return x


def _ssim_maps(x, y, data_range: float, k1: float, k2: float, sigma: float):
    """(SSIM map, contrast-structure map), each (B, *spatial - 2r, C)."""
    small = min(x.shape[1:-1])
    size = len(gaussian_kernel(sigma))
    if small < size:
        raise InputError(f"ssim: spatial side {small} is smaller than the {size}-voxel Gaussian window")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    # Moments of data shifted by a per-sample offset (exact; keeps float32 variances accurate for raw
    # intensities far from 0), in one filter pass over the five maps stacked on the channel axis.
    offset = jnp.mean(x + y, axis=tuple(range(1, x.ndim)), keepdims=True) / 2.0
    x, y = x - offset, y - offset
    stats = gaussian_filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), sigma)
    ux, uy, uxx, uyy, uxy = jnp.split(stats, 5, axis=-1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    cs = (2.0 * vxy + c2) / (vx + vy + c2)
    ux, uy = ux + offset, uy + offset
    luminance = (2.0 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    return luminance * cs, cs


@functools.partial(jax.jit, static_argnames=("data_range",))
def psnr(pred, target, data_range: float = 1.0):
    """Peak signal-to-noise ratio in dB, 10 log10(data_range^2 / MSE), per batch element.

    Args:
      pred, target: (B, H, W, C) or (B, D, H, W, C).
      data_range: max - min of the intensity scale (1.0 for [0, 1], 2.0 for [-1, 1]).
    Returns:
      (B,) float32; +inf where pred == target exactly (as skimage's peak_signal_noise_ratio).
    """
    pred, target = _check(pred, target)
    mse = jnp.mean((pred - target) ** 2, axis=tuple(range(1, pred.ndim)))
    return 10.0 * jnp.log10(data_range ** 2 / mse)


@functools.partial(jax.jit, static_argnames=("data_range", "k1", "k2", "sigma"))
def ssim(pred, target, data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03, sigma: float = SIGMA):
    """Structural similarity (Gaussian window, sigma 1.5, 11 taps; see the module docstring), per element.

    Args:
      pred, target: (B, H, W, C) or (B, D, H, W, C), every spatial side >= 11.
      data_range: max - min of the intensity scale; k1, k2: stabilising constants (C = (k R)^2).
    Returns:
      (B,) float32 in [-1, 1]; 1 for identical inputs.
    """
    pred, target = _check(pred, target)
    s, _ = _ssim_maps(pred, target, data_range, k1, k2, sigma)
    return jnp.mean(s, axis=tuple(range(1, s.ndim)))


def dssim(pred, target, data_range: float = 1.0, **kwargs):
    """Structural dissimilarity (1 - SSIM) / 2, (B,) in [0, 1]; 0 for identical inputs. kwargs go to `ssim`."""
    return (1.0 - ssim(pred, target, data_range, **kwargs)) / 2.0


def num_scales(spatial_shape, max_scales: int = len(MS_SSIM_WEIGHTS), sigma: float = SIGMA) -> int:
    """Number of MS-SSIM scales whose 2x-downsampled images still hold one Gaussian window (>= 1)."""
    size, small = len(gaussian_kernel(sigma)), min(spatial_shape)
    if small < size:
        raise InputError(f"ms_ssim: spatial side {small} is smaller than the {size}-voxel Gaussian window")
    return min(max_scales, 1 + int(math.floor(math.log2(small / size))))


def _downsample(x):
    """2x average pooling over every spatial axis (an odd last row/column is dropped)."""
    for axis in _spatial_axes(x):
        n = x.shape[axis] // 2
        x = jax.lax.slice_in_dim(x, 0, 2 * n, axis=axis)
        x = x.reshape(*x.shape[:axis], n, 2, *x.shape[axis + 1:]).mean(axis=axis + 1)
    return x


def ms_ssim(pred, target, data_range: float = 1.0, weights=None, k1: float = 0.01, k2: float = 0.03,
            sigma: float = SIGMA):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), per batch element.

    MS-SSIM = prod_{j<M} cs_j^{w_j} * ssim_M^{w_M}: contrast-structure means at the finer scales and the full
    SSIM at the coarsest, with 2x average pooling between scales. Means are taken per channel, clipped at 0
    before the power (as tf.image.ssim_multiscale and pytorch-msssim do, so no NaN), and the per-channel
    products are averaged.

    Intensities must be non-negative, in [0, data_range], as in Wang et al.: the luminance term
    (2 ux uy + C1) / (ux^2 + uy^2 + C1) is not shift-invariant and turns negative where local means of
    zero-centred data have opposite signs, so [-1, 1] data would drive the coarsest SSIM below 0 and the
    clipped product to 0. Map such data to [0, 1] first ((x + 1) / 2, data_range=1) and clip predictions to
    [0, data_range]. Called eagerly, inputs below -1e-3 * data_range raise InputError; inside a jitted
    caller they are not checked.

    Args:
      pred, target: (B, H, W, C) or (B, D, H, W, C), values in [0, data_range], every spatial side >= 11.
      data_range: max - min of the intensity scale.
      weights: per-scale exponents; default the standard 5 (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Inputs
        too small for all of them (5 scales need every side >= 176) use as many scales as fit, the first
        M = `num_scales(...)` weights renormalised to sum to 1, e.g. M = 2 for 32^3 volumes, 3 for 64^3.
        Weights given explicitly are used as given and the input must be big enough for them (InputError
        otherwise).
    Returns:
      (B,) float32 in [0, 1], 1 for identical inputs.
    """
    for name, a in (("pred", pred), ("target", target)):
        if not isinstance(a, jax.core.Tracer) and np.size(a) and float(np.min(a)) < -1e-3 * data_range:
            raise InputError(f"ms_ssim: {name} has values down to {float(np.min(a)):.4g}; MS-SSIM needs "
                             f"intensities in [0, data_range={data_range:g}]: clip predictions to it, and map "
                             "[-1, 1] data to [0, 1] with (x + 1) / 2 and data_range=1")
    m = num_scales(np.shape(pred)[1:-1], sigma=sigma)
    if weights is None:
        weights = np.asarray(MS_SSIM_WEIGHTS[:m]) / sum(MS_SSIM_WEIGHTS[:m])
    elif len(weights) > m:
        need = len(gaussian_kernel(sigma)) << (len(weights) - 1)
        raise InputError(f"ms_ssim: {len(weights)} scales need spatial sides >= {need}, "
                         f"got spatial shape {np.shape(pred)[1:-1]}")
    return _ms_ssim(pred, target, float(data_range), tuple(float(w) for w in weights), k1, k2, sigma)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _ms_ssim(pred, target, data_range, weights, k1, k2, sigma):
    pred, target = _check(pred, target)
    total = 1.0
    for j, w in enumerate(weights):
        s, cs = _ssim_maps(pred, target, data_range, k1, k2, sigma)
        last = j == len(weights) - 1
        value = jnp.mean(s if last else cs, axis=_spatial_axes(s))  # (B, C)
        total = total * jnp.maximum(value, 0.0) ** w
        if not last:
            pred, target = _downsample(pred), _downsample(target)
    return jnp.mean(total, axis=-1)


@jax.jit
def gradient_sharpness(images):
    """Mean gradient magnitude, in intensity units per voxel, per batch element.

    Central differences (x[i+1] - x[i-1]) / 2 along every spatial axis (as numpy.gradient inside the
    image), evaluated on the interior voxels where all of them exist; the magnitude sqrt(sum of squares)
    is averaged over those voxels and the channels. Higher means sharper (more edge energy).

    Args:
      images: (B, H, W, C) or (B, D, H, W, C), every spatial side >= 3.
    Returns:
      (B,) float32 >= 0; 0 for a constant image.
    """
    x = _check(images)
    axes = _spatial_axes(x)
    if min(x.shape[1:-1]) < 3:
        raise InputError(f"gradient_sharpness: every spatial side must be >= 3, got shape {x.shape}")
    interior = tuple(slice(None) if a not in axes else slice(1, -1) for a in range(x.ndim))
    sq = 0.0
    for axis in axes:
        n = x.shape[axis]
        diff = (jax.lax.slice_in_dim(x, 2, n, axis=axis) - jax.lax.slice_in_dim(x, 0, n - 2, axis=axis)) / 2.0
        sq = sq + diff[tuple(slice(None) if a == axis else s for a, s in enumerate(interior))] ** 2
    return jnp.mean(jnp.sqrt(sq), axis=tuple(range(1, x.ndim)))


def pairwise_ms_ssim(volumes) -> float:
    """Mean MS-SSIM over all pairs of (N, *spatial, C) images or volumes in [-1, 1], N >= 2, computed on
    (x + 1) / 2 with data range 1 (MS-SSIM's luminance term needs non-negative intensities; see `ms_ssim`): a
    set's diversity, lower is more varied. Unrelated volumes (e.g. noise-like samples of a barely trained model)
    score about 0: their contrast-structure means are near 0 or below, and negative ones clip to 0."""
    i, j = np.triu_indices(len(volumes), 1)
    x = (np.clip(np.asarray(volumes, np.float32), -1.0, 1.0) + 1.0) / 2.0
    return float(np.mean(np.asarray(ms_ssim(x[i], x[j], data_range=1.0))))
