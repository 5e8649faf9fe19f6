"""Distribution distances between sets of images (generated vs real): pixel MMD, and FID, KID and Inception
Score on feature arrays (NumPy / SciPy on the host), plus the LPIPS-style distance between feature maps.

The features themselves come from networks in `jaxdiff.evaluators.features` (2D) and
`jaxdiff.evaluators.features3d` (3D); everything here takes arrays.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from jaxdiff.errors import InputError


def pooled_pixels(images, size: int = 16) -> np.ndarray:
    """(N, H, W, C) images -> (N, size*size*C) features by average pooling (H, W divisible by size)."""
    x = np.asarray(images, np.float64)
    n, h, w, c = x.shape
    fh, fw = max(h // size, 1), max(w // size, 1)
    x = x[:, : (h // fh) * fh, : (w // fw) * fw]
    return x.reshape(n, h // fh, fh, w // fw, fw, c).mean(axis=(2, 4)).reshape(n, -1)


def block_means(x, cells: int = 8) -> np.ndarray:
    """(N, *spatial, C) images or volumes -> (N, F) float64 features: the mean over about `cells` blocks per
    spatial axis (trailing voxels that do not fill a block are dropped)."""
    x = np.asarray(x, np.float64)
    for axis in range(1, x.ndim - 1):
        f = max(x.shape[axis] // cells, 1)
        n = x.shape[axis] // f
        x = np.take(x, np.arange(n * f), axis=axis)
        x = x.reshape(*x.shape[:axis], n, f, *x.shape[axis + 1:]).mean(axis=axis + 1)
    return x.reshape(len(x), -1)


def mmd_rbf(x, y, bandwidths=(0.5, 1.0, 2.0, 4.0)) -> float:
    """Unbiased squared MMD between feature sets x (N, D) and y (M, D) with a sum of RBF kernels.

    Bandwidths are multiples of the median pairwise distance of the pooled sets. 0 means same distribution.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.concatenate([x, y])
    d2 = np.maximum(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1), 0.0)
    med = np.median(d2[np.triu_indices(len(z), 1)])
    k = sum(np.exp(-d2 / (2.0 * b * b * max(med, 1e-12))) for b in bandwidths)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.mean())


def _feature_sets(feats_a, feats_b, min_rows: int = 2):
    """(N, F) and (M, F) float64 arrays; InputError for a wrong rank, F mismatch, too few rows or NaN/inf."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"features: expected (N, F) and (M, F) arrays, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < min_rows:
        raise InputError(f"features: need at least {min_rows} samples per set, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("features: NaN or inf in the feature arrays")
    return a, b


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The matrix square root is `scipy.linalg.sqrtm`; if it is not finite (singular product), eps * I is added to
    both covariances (the pytorch-fid / TTUR fix); an imaginary part from round-off is dropped, one larger than
    1e-3 on the diagonal is an error (too few samples for the feature dimension).
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    with warnings.catch_warnings():  # a singular product (N <= F) is expected; handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm has an imaginary part {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Fréchet Inception Distance between feature sets (N, F) and (M, F) (e.g. Inception pool3, F = 2048).

    Fits a Gaussian to each set (mean, unbiased covariance) and returns their `frechet_distance`, in squared
    feature units; 0 for identical sets. Published FIDs use pytorch-fid's Inception features of 10k-50k images;
    other features or small N give numbers that are only comparable among themselves.
    """
    a, b = _feature_sets(feats_a, feats_b)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False), eps)


def _poly_mmd2(x, y) -> float:
    """Unbiased MMD^2 of (m, d) sets with the kernel k(u, v) = (u.v / d + 1)^3."""
    m, d = x.shape
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731 - mean over i != j
    return float(off(kxx) + off(kyy) - 2.0 * kxy.mean())


def kid(feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
    (x.y / d + 1)^3, averaged over random subsets (as torch-fidelity and the Keras DDIM example).

    Args:
      feats_a, feats_b: (N, F) and (M, F) features.
      num_subsets: subsets drawn; each takes `subset_size` rows of each set without replacement (clipped to
        min(N, M), so small sets use all rows: one subset is then the full-set estimate).
      seed: NumPy seed of the subset draws.
    Returns:
      (mean, std) over subsets; the mean is ~0 (it can be slightly negative) for sets from one distribution.
    """
    a, b = _feature_sets(feats_a, feats_b)
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [_poly_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) from classifier logits (N, K), per split (Salimans et al.).

    The N rows are cut into `splits` contiguous chunks (numpy.array_split); p(y) is each chunk's mean
    softmax. Returns (mean, std) over chunks; 1 means uninformative, K the maximum (confident and uniform).
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise InputError(f"inception_score: expected (N, K) logits with N >= splits={splits}, got {logits.shape}")
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    scores = []
    for chunk in np.array_split(log_p, splits):
        log_py = np.log(np.exp(chunk).mean(0, keepdims=True))
        scores.append(np.exp(np.mean(np.sum(np.exp(chunk) * (chunk - log_py), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def _unit(m, eps: float = 1e-10):
    """Feature maps divided by their L2 norm over channels (LPIPS's normalize_tensor)."""
    return m / (jnp.sqrt(jnp.sum(m * m, axis=-1, keepdims=True)) + eps)


@jax.jit
def lpips_from_layers(maps_a, maps_b):
    """LPIPS-style distance of two sequences of (B, h, w, c) feature maps (one per layer, as the extractors of
    `jaxdiff.evaluators.features` give): (B,) mean over layers of the spatial mean of
    sum_c (unit(a) - unit(b))^2, unit = divided by the L2 norm over channels; each term in [0, 4]."""
    per_layer = [jnp.mean(jnp.sum((_unit(a) - _unit(b)) ** 2, axis=-1), axis=(1, 2)) for a, b in zip(maps_a, maps_b)]
    return jnp.mean(jnp.stack(per_layer), axis=0)
