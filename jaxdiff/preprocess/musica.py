"""MUSICA (multiscale image contrast amplification) in JAX: Laplacian pyramid, amplified detail layers,
reconstruction.

Pyramid of (B, H, W, C) images: G0 = x, G(l+1) = blur(Gl)[::2, ::2] with the 5-tap binomial kernel
[1, 4, 6, 4, 1] / 16 (reflect padding); detail Ll = Gl - up(G(l+1)) with bilinear `jax.image.resize` to
Gl's exact shape (odd sizes are fine); the residual is G(levels). Reconstruction runs the recursion back, so
it is exact up to float rounding whatever the up-sampler. MUSICA replaces each detail layer d by
alpha_l * M * sign(d) * (|d| / M)^power, with M = max |d| of that image and level: power = 1 is a plain
gain alpha_l (alpha = 1 and power = 1 give back the input); power < 1 lifts faint details more than strong
edges (the classic MUSICA non-linearity).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

_BINOMIAL = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


def _blur(x: jax.Array) -> jax.Array:
    """Separable 5-tap binomial blur of (B, H, W, C), reflect padding."""
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (2, 2)
        xp = jnp.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(w * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i, w in enumerate(_BINOMIAL))
    return x


def _up(x: jax.Array, shape: tuple) -> jax.Array:
    return jax.image.resize(x, shape, method="linear")


def max_levels(height: int, width: int) -> int:
    """The most pyramid levels an (H, W) image allows (the residual stays at least 2 x 2)."""
    return max(0, min(height, width).bit_length() - 2)


def laplacian_pyramid(x: jax.Array, levels: int) -> list:
    """(B, H, W, C) -> [L0 (B, H, W, C), L1 (B, ceil(H/2), ...), ..., residual G(levels)]: levels + 1 arrays."""
    if not 0 <= levels <= max_levels(x.shape[1], x.shape[2]):
        raise ValueError(f"musica levels {levels}: an image of {x.shape[1]}x{x.shape[2]} allows 0.."
                         f"{max_levels(x.shape[1], x.shape[2])}")
    pyramid = []
    for _ in range(levels):
        low = _blur(x)[:, ::2, ::2]
        pyramid.append(x - _up(low, x.shape))
        x = low
    return pyramid + [x]


def reconstruct(pyramid: Sequence[jax.Array]) -> jax.Array:
    """Inverse of `laplacian_pyramid`: residual up-sampled and added to each detail layer, coarse to fine."""
    x = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        x = detail + _up(x, detail.shape)
    return x


def amplify(detail: jax.Array, alpha, power: float = 1.0) -> jax.Array:
    """alpha * M * sign(d) * (|d| / M)^power per image of a (B, h, w, C) detail layer, M = max |d| per image."""
    m = jnp.max(jnp.abs(detail), axis=(1, 2, 3), keepdims=True)
    safe = jnp.where(m > 0, m, 1.0)
    return alpha * safe * jnp.sign(detail) * (jnp.abs(detail) / safe) ** power


@functools.partial(jax.jit, static_argnames=("levels", "power", "clip"))
def musica(x: jax.Array, alpha=1.5, levels: int = 4, power: float = 1.0, clip: bool = True) -> jax.Array:
    """MUSICA contrast enhancement (module docstring).

    Args:
      x: (B, H, W, C) images in [0, 1] (or (H, W, C): one image).
      alpha: detail gain, a scalar or one value per level (finest first), traced (no recompile per value).
      levels: pyramid levels, 0..max_levels(H, W).
      power: detail non-linearity exponent (1: linear gain).
      clip: clip the result to [0, 1].
    Returns:
      The enhanced images, same shape as `x`, float32.
    """
    single = x.ndim == 3
    x = jnp.asarray(x, jnp.float32)[None] if single else jnp.asarray(x, jnp.float32)
    gains = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (levels,))
    pyramid = laplacian_pyramid(x, levels)
    details = [amplify(d, gains[i], power) for i, d in enumerate(pyramid[:-1])]
    out = reconstruct(details + [pyramid[-1]])
    out = jnp.clip(out, 0.0, 1.0) if clip else out
    return out[0] if single else out
