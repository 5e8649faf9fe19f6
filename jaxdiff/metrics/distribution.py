"""Distribution distances between sets of images (generated vs real)."""
from __future__ import annotations

import numpy as np


def pooled_pixels(images, size: int = 16) -> np.ndarray:
    """(N, H, W, C) images -> (N, size*size*C) features by average pooling (H, W divisible by size)."""
    x = np.asarray(images, np.float64)
    n, h, w, c = x.shape
    fh, fw = max(h // size, 1), max(w // size, 1)
    x = x[:, : (h // fh) * fh, : (w // fw) * fw]
    return x.reshape(n, h // fh, fh, w // fw, fw, c).mean(axis=(2, 4)).reshape(n, -1)


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
