"""K-means in JAX with k-means++ initialisation, batched over images, and the choice of k.

One compiled function serves every k of a range: centres live in a (k_max, D) array and only the first k
are active (inactive ones are at infinite distance), so `vmap` runs all k values and all images at once.
Per fit the toolkit's four curves are computed: WCSS (within-cluster sum of squares), BCSS (between-cluster
sum of squares, sum_j n_j |c_j - mean|^2), the silhouette score (mean over a fixed-seed subsample of
`silhouette_points` points, computed on that subsample as sklearn's `silhouette_score(..., sample_size=)`;
a point alone in its cluster scores 0) and the Calinski-Harabasz index (BCSS / (k - 1)) / (WCSS / (N - k)).

Choice of k (`choose_k`, documented rule): per image, every curve is min-max normalised over the k range;
WCSS and BCSS are monotone, so they score by their elbow (kneedle: the normalised gain minus the normalised
k, largest at the elbow, min-max normalised again); silhouette and Calinski-Harabasz score by value. The four
scores are averaged over images (as the toolkit averaged its curves) and over the four curves; the chosen k
maximises that mean. (The toolkit read k = 10 off its averaged curves by eye; `fit(..., k=10)` or
`--kmeans-k 10` reproduces that setting.)

Clusters are then sorted by mean intensity (0 = darkest) and coloured, darkest to brightest, black, purple,
blue, cyan, light blue, green, yellow, pink, orange, red (the toolkit's order); fewer than 10 clusters take
evenly spaced colours of that list (always black to red), more than 10 interpolate between them.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CURVES = ("wcss", "bcss", "silhouette", "calinski_harabasz")
DEFAULT_K_RANGE = (2, 20)
COLOUR_NAMES = ("black", "purple", "blue", "cyan", "lightblue", "green", "yellow", "pink", "orange", "red")
PALETTE = np.array([(0, 0, 0), (128, 0, 128), (0, 0, 255), (0, 255, 255), (173, 216, 230), (0, 128, 0),
                    (255, 255, 0), (255, 192, 203), (255, 165, 0), (255, 0, 0)], np.uint8)


def _sqdist(x: jax.Array, centres: jax.Array) -> jax.Array:
    """(N, D), (K, D) -> (N, K) squared Euclidean distances."""
    return jnp.sum((x[:, None, :] - centres[None, :, :]) ** 2, axis=-1)


def kmeans_pp_init(key: jax.Array, x: jax.Array, k, k_max: int) -> jax.Array:
    """k-means++ seeding: (N, D) points -> (k_max, D) centres, the first `k` (traced int) drawn with
    probability proportional to the squared distance to the nearest centre so far; the rest are copies."""
    key, first = jax.random.split(key)
    c0 = x[jax.random.randint(first, (), 0, x.shape[0])]
    centres = jnp.broadcast_to(c0, (k_max, x.shape[1]))
    d2 = jnp.sum((x - c0) ** 2, axis=-1)

    def body(i, carry):
        centres, d2, key = carry
        key, sub = jax.random.split(key)
        logits = jnp.where(d2.sum() > 0, jnp.log(d2), 0.0)
        c = x[jax.random.categorical(sub, logits)]
        take = i < k
        centres = centres.at[i].set(jnp.where(take, c, centres[i]))
        d2 = jnp.where(take, jnp.minimum(d2, jnp.sum((x - c) ** 2, axis=-1)), d2)
        return centres, d2, key

    return jax.lax.fori_loop(1, k_max, body, (centres, d2, key))[0]


def _assign(x, centres, active):
    d2 = jnp.where(active[None, :], _sqdist(x, centres), jnp.inf)
    return jnp.argmin(d2, axis=-1), jnp.min(d2, axis=-1)


def _means(x, labels, centres):
    """Cluster means (empty clusters keep their centre) and counts."""
    k_max = centres.shape[0]
    sums = jax.ops.segment_sum(x, labels, num_segments=k_max)
    counts = jax.ops.segment_sum(jnp.ones(x.shape[0], x.dtype), labels, num_segments=k_max)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres), counts


def lloyd(key: jax.Array, x: jax.Array, k, k_max: int, iters: int = 30):
    """k-means++ then `iters` Lloyd steps on (N, D) points with `k` (traced) of `k_max` centres.

    Returns (centres (k_max, D), labels (N,) int32 in [0, k), active (k_max,) bool = arange < k)."""
    active = jnp.arange(k_max) < k
    centres = kmeans_pp_init(key, x, k, k_max)

    def step(_, centres):
        return _means(x, _assign(x, centres, active)[0], centres)[0]

    centres = jax.lax.fori_loop(0, iters, step, centres)
    labels = _assign(x, centres, active)[0]
    return _means(x, labels, centres)[0], labels.astype(jnp.int32), active


def silhouette(x: jax.Array, labels: jax.Array, k_max: int) -> jax.Array:
    """Mean silhouette of (M, D) points with labels in [0, k_max) (all pairs; pass a subsample)."""
    dist = jnp.sqrt(jnp.maximum(_sqdist(x, x), 0.0))
    onehot = jax.nn.one_hot(labels, k_max, dtype=x.dtype)
    counts = onehot.sum(0)
    sums = dist @ onehot                                                   # (M, K)
    own = counts[labels]
    a = jnp.take_along_axis(sums, labels[:, None], axis=1)[:, 0] / jnp.maximum(own - 1, 1)
    other = jnp.where((counts[None, :] > 0) & (onehot == 0), sums / jnp.maximum(counts, 1)[None, :], jnp.inf)
    b = jnp.min(other, axis=1)
    s = jnp.where(own > 1, (b - a) / jnp.maximum(jnp.maximum(a, b), 1e-12), 0.0)
    return jnp.mean(s)


def cluster_metrics(x: jax.Array, centres: jax.Array, labels: jax.Array, k, key: jax.Array,
                    silhouette_points: int = 1000) -> dict:
    """The four curves' values for one clustering of (N, D) points: centres (k_max, D), labels (N,), `k`
    active clusters; the silhouette uses a `key`-drawn subsample of `silhouette_points` -> {name: scalar}."""
    n, k_max = x.shape[0], centres.shape[0]
    counts = jax.ops.segment_sum(jnp.ones(n, x.dtype), labels, num_segments=k_max)
    wcss = jnp.sum((x - centres[labels]) ** 2)
    bcss = jnp.sum(counts * jnp.sum((centres - x.mean(0)) ** 2, axis=-1))
    kf = jnp.asarray(k, x.dtype)
    ch = jnp.where(wcss > 0, bcss * (n - kf) / jnp.maximum(wcss * (kf - 1), 1e-30), 1.0)
    idx = jax.random.permutation(key, n)[:min(n, silhouette_points)]
    return {"wcss": wcss, "bcss": bcss, "silhouette": silhouette(x[idx], labels[idx], k_max),
            "calinski_harabasz": ch}


def curves(key: jax.Array, x: jax.Array, k, k_max: int, iters: int = 30, silhouette_points: int = 1000) -> dict:
    """Fit (N, D) points with `k` (traced) of `k_max` clusters -> `cluster_metrics` {name: scalar}."""
    fit_key, sub_key = jax.random.split(key)
    centres, labels, _ = lloyd(fit_key, x, k, k_max, iters)
    return cluster_metrics(x, centres, labels, k, sub_key, silhouette_points)


@functools.partial(jax.jit, static_argnames=("ks", "iters", "silhouette_points"))
def k_curves(key: jax.Array, x: jax.Array, ks: tuple, iters: int = 30, silhouette_points: int = 1000) -> dict:
    """The four curves for every k in `ks` and every image: x (B, N, D) -> {name: (B, len(ks)) float32}.

    All (image, k) fits run in one vmapped computation; each image uses its own key, each k the same."""
    k_max = max(ks)
    keys = jax.random.split(key, x.shape[0])
    per_k = jax.vmap(lambda kk, xi, k: curves(kk, xi, k, k_max, iters, silhouette_points), (None, None, 0))
    per_image = jax.vmap(per_k, (0, 0, None))
    return per_image(keys, x, jnp.asarray(ks, jnp.int32))


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def fit(key: jax.Array, x: jax.Array, k: int, iters: int = 30):
    """K-means of a batch of images' points: x (B, N, D) -> (centres (B, k, D), labels (B, N) int32)."""
    keys = jax.random.split(key, x.shape[0])
    centres, labels, _ = jax.vmap(lambda kk, xi: lloyd(kk, xi, k, k, iters))(keys, x)
    return centres, labels


@jax.jit
def sort_by_intensity(centres, labels):
    """Relabel so cluster 0 has the lowest mean intensity (centre mean over D): (B, K, D), (B, N) ->
    (sorted centres (B, K, D), labels (B, N))."""
    order = jnp.argsort(jnp.mean(centres, axis=-1), axis=-1)               # (B, K) old index by rank
    rank = jnp.argsort(order, axis=-1)                                       # (B, K) rank of old index
    return jnp.take_along_axis(centres, order[..., None], axis=1), jnp.take_along_axis(rank, labels, axis=1)


def _normalise(c: np.ndarray) -> np.ndarray:
    lo, hi = c.min(-1, keepdims=True), c.max(-1, keepdims=True)
    return (c - lo) / np.where(hi > lo, hi - lo, 1.0)


def choose_k(curve_values: dict, ks: Sequence[int]) -> tuple[int, dict]:
    """The documented rule (module docstring) -> (chosen k, {name: (len(ks),) score in [0, 1]} averaged
    over images, plus "mean": the averaged score). `curve_values[name]` is (B, len(ks)) or (len(ks),)."""
    kn = _normalise(np.asarray(ks, np.float64))
    scores = {}
    for name in CURVES:
        c = _normalise(np.atleast_2d(np.asarray(curve_values[name], np.float64)))
        if name == "wcss":
            c = _normalise(1.0 - c - kn)
        elif name == "bcss":
            c = _normalise(c - kn)
        scores[name] = c.mean(0)
    scores["mean"] = np.mean([scores[n] for n in CURVES], axis=0)
    return int(ks[int(np.argmax(scores["mean"]))]), scores


def cluster_colours(k: int) -> np.ndarray:
    """(k, 3) uint8 RGB colours for clusters sorted darkest first (module docstring)."""
    if k <= len(PALETTE):
        return PALETTE[np.round(np.linspace(0, len(PALETTE) - 1, k)).astype(int)]
    pos = np.linspace(0, len(PALETTE) - 1, k)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(PALETTE) - 1)
    w = (pos - lo)[:, None]
    return np.round(PALETTE[lo] * (1 - w) + PALETTE[hi] * w).astype(np.uint8)


def colourise(labels, k: int) -> np.ndarray:
    """Integer labels (..., H, W) sorted by intensity -> (..., H, W, 3) uint8 colour mask."""
    return cluster_colours(k)[np.asarray(labels)]
