"""Shared Flax building blocks. All tensors are channels-last: (B, H, W, C) in 2D, (B, D, H, W, C) in 3D."""
from __future__ import annotations

import math

import jax.numpy as jnp


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
      t: (B,) timesteps (int or float).
      dim: embedding width (even).
      max_period: the lowest frequency is 1 / max_period.
    Returns:
      (B, dim) float32 array `[sin(t f), cos(t f)]` with f_i = exp(-log(max_period) * i / (dim / 2)),
      i = 0..dim/2-1 (the guided-diffusion convention).
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
