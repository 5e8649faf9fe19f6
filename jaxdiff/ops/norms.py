"""Normalisations, each a plain reference (as its paper writes it) beside its XLA:CPU form.

- `group_norm_act(x, a, b, groups, eps, act)` = act(GroupNorm(x) * a + b) (Wu & He 2018; a, b per sample and
  channel: the norm's gain and offset with any FiLM modulation folded in);
- `layer_norm(x, scale, bias, eps)` = LayerNorm over the last axis (Ba et al. 2016), two-pass variance as torch.

Each is `lax.platform_dependent(cpu=tuned_*, default=reference_*)`: the choice is made when the program is
lowered, so one traced program is right on every platform. Channels-last: x (B, ..., C).
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def spatial_broadcast(v, ndim: int):
    """(B, C) -> (B, 1, ..., 1, C) with `ndim` total axes, to broadcast over the spatial axes."""
    return v.reshape(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def reference_group_norm_act(x, a, b, groups: int, eps: float = 1e-5, act: Callable | None = None):
    """act(GN(x) * a + b) as written: x (B, ..., C) split into `groups` groups of C / groups channels, each
    normalised by its mean and variance over its channels and all positions; a, b (B, C). Float32 arithmetic;
    returns (B, ..., C) of x's dtype."""
    bsz, c = x.shape[0], x.shape[-1]
    xg = x.astype(jnp.float32).reshape(bsz, -1, groups, c // groups)
    mean = jnp.mean(xg, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=(1, 3), keepdims=True)
    y = ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
    y = y * spatial_broadcast(a.astype(jnp.float32), x.ndim) + spatial_broadcast(b.astype(jnp.float32), x.ndim)
    return (act(y) if act else y).astype(x.dtype)


def _group_stats(x, groups: int, eps: float):
    """Per-(sample, group) mean and 1/std of channels-last `x` (B, ..., C) in float32 -> two (B, G) arrays."""
    b = x.shape[0]
    xf, axes = x.astype(jnp.float32), tuple(range(1, x.ndim - 1))
    n = x.size // (b * groups)  # elements per group
    # Per-channel sums first (a reduction over the spatial axes only is what CPU reduction kernels do fast),
    # then per group on the small (B, C) arrays. One pass E[x^2] - E[x]^2 as Flax's GroupNorm.
    mean = _group_sum(jnp.sum(xf, axis=axes), groups) / n
    var = jnp.maximum(_group_sum(jnp.sum(jnp.square(xf), axis=axes), groups) / n - jnp.square(mean), 0.0)
    return mean, lax.rsqrt(var + eps)


def _group_sum(v, groups: int):
    """(B, C) -> (B, G): sum over each group's C / G consecutive channels."""
    return v.reshape(v.shape[0], groups, -1).sum(-1)


def _per_channel(v, c: int):
    """(B, G) per-group values -> (B, C) per-channel (each group's value repeated over its C / G channels)."""
    return jnp.repeat(v, c // v.shape[1], axis=1)


def _materialise(*small):
    """Compute these small (B, C) arrays once: without the barrier XLA fuses their arithmetic (rsqrt, FiLM
    split, group repeat) into every element of the big elementwise loop that consumes them."""
    return lax.optimization_barrier(small)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def tuned_group_norm_act(x, a, b, groups: int, eps: float = 1e-5, act: Callable | None = None):
    """`reference_group_norm_act` fused, with a hand-written backward pass (the XLA:CPU form).

    Args:
      x: (B, ..., C) channels-last input (any float dtype; statistics and arithmetic in float32).
      a, b: (B, C) per-sample per-channel gain and offset (the norm's scale and bias, times / plus FiLM).
      groups: number of groups (divides C); eps: variance epsilon; act: elementwise activation or None.
    Returns:
      (B, ..., C) array of x's dtype.

    Same function as `reference_group_norm_act` (statistics in one pass, E[x^2] - E[x]^2, as Flax's GroupNorm);
    the derivative is computed differently. The backward pass keeps x and the (B, G) statistics (not the
    normalised, modulated and activated tensors autodiff would keep) and recomputes the activation's input, so it
    reads x and the cotangent twice (one reduction, one elementwise pass) and writes dx once: memory-bound
    normalisation is most of a diffusion UNet's non-convolution time on XLA:CPU.
    """
    return _group_norm_act_fwd(x, a, b, groups, eps, act)[0]


def _silu_half(h):
    """silu(2h) = 2h sigmoid(2h) = h + h tanh(h). Written without a constant: XLA broadcasts a scalar constant
    to the full shape, shares that broadcast between all layers of the shape (CSE) and materialises it (on CPU
    one extra full-size pass per use)."""
    return h + h * jnp.tanh(h)


def _silu_half_grad(h, one):
    """2 silu'(2h) = 1 + t + h (1 - t^2) with t = tanh(h); `one` is a broadcast (B, 1, ..., C) array of ones
    (not a constant, see `_silu_half`)."""
    t = jnp.tanh(h)
    return one + t + h * (one - t * t)


def _act_input(x, a, b, mean, rstd, act):
    """The activation's input as one multiply-add per element, and the factor d(act input)/dy: SiLU is evaluated
    as `_silu_half(y / 2)` (the 1/2 folded into the (B, C) coefficients), any other activation as act(y)."""
    half = act is nn.silu
    s = 0.5 if half else 1.0
    c = x.shape[-1]
    coef = _per_channel(rstd, c) * a
    coef, offset, one = _materialise(s * coef, s * (b - _per_channel(mean, c) * coef), jnp.ones_like(a))
    y = x.astype(jnp.float32) * spatial_broadcast(coef, x.ndim) + spatial_broadcast(offset, x.ndim)
    return y, s, spatial_broadcast(one, x.ndim)


def _group_norm_act_fwd(x, a, b, groups, eps, act):
    mean, rstd = _group_stats(x, groups, eps)
    y, _, _ = _act_input(x, a, b, mean, rstd, act)
    out = _silu_half(y) if act is nn.silu else act(y) if act else y
    return out.astype(x.dtype), (x, a, b, mean, rstd)


def _group_norm_act_bwd(groups, eps, act, res, g):
    # The barrier keeps XLA from merging this recomputation of the activation's input with the forward's (CSE
    # would keep full-size intermediates alive from the forward pass to this one).
    x, a, b, mean, rstd = lax.optimization_barrier(res)
    c = x.shape[-1]
    y, s, one = _act_input(x, a, b, mean, rstd, act)
    gf = g.astype(jnp.float32)
    # u = dL/dy / s: the cotangent of the normalised, modulated tensor (up to the SiLU path's factor s = 1/2)
    u = gf * _silu_half_grad(y, one) if act is nn.silu else jax.vjp(act, y)[1](gf)[0] if act else gf
    axes = tuple(range(1, x.ndim - 1))
    xf = x.astype(jnp.float32)
    sum_dy = s * jnp.sum(u, axis=axes)                   # (B, C): gradient of b
    sum_dyx = s * jnp.sum(u * xf, axis=axes)             # (B, C)
    mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)
    da = rstd_c * (sum_dyx - mean_c * sum_dy)            # (B, C): sum of dy * normalised(x)
    n = x.size // (x.shape[0] * groups)                  # elements per group
    m1 = _per_channel(_group_sum(a * sum_dy, groups) / n, c)  # group mean of d(normalised x)
    m2 = _per_channel(_group_sum(a * da, groups) / n, c)      # group mean of d(normalised x) * normalised x
    # dx = rstd * (dy * a - m1 - normalised(x) * m2), written as u * A + x * C1 + C0 with (B, C) coefficients
    c2, c1, c0 = _materialise(s * rstd_c * a, -rstd_c * rstd_c * m2, rstd_c * (mean_c * rstd_c * m2 - m1))
    dx = u * spatial_broadcast(c2, x.ndim) + xf * spatial_broadcast(c1, x.ndim) + spatial_broadcast(c0, x.ndim)
    return dx.astype(x.dtype), da.astype(a.dtype), sum_dy.astype(b.dtype)


tuned_group_norm_act.defvjp(_group_norm_act_fwd, _group_norm_act_bwd)


def group_norm_act(x, a, b, groups: int, eps: float = 1e-5, act: Callable | None = None):
    """act(GroupNorm(x) * a + b): x (B, ..., C), a, b (B, C), `groups` dividing C -> (B, ..., C) of x's dtype
    (`tuned_group_norm_act` on the CPU, `reference_group_norm_act` elsewhere)."""
    return lax.platform_dependent(x, a, b, cpu=lambda x, a, b: tuned_group_norm_act(x, a, b, groups, eps, act),
                                  default=lambda x, a, b: reference_group_norm_act(x, a, b, groups, eps, act))


def reference_layer_norm(x, scale, bias, eps: float = 1e-5):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis of x (..., C) as written; scale (C,), bias
    (C,) or None; float32 arithmetic, returns x's dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) / jnp.sqrt(var + eps) * scale.astype(jnp.float32)
    return (y if bias is None else y + bias.astype(jnp.float32)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tuned_layer_norm(x, scale, bias, eps: float = 1e-5):
    """`reference_layer_norm` with a hand-written backward pass (the XLA:CPU form).

    Args:
      x: (..., C) input (any float dtype; statistics and arithmetic in float32).
      scale: (C,) gain; bias: (C,) offset or None.
      eps: variance epsilon. The variance is two-pass, mean((x - mean)^2), as torch and `nn.LayerNorm(
        use_fast_variance=False)`.
    Returns:
      (..., C) array of x's dtype.

    Same function as `nn.LayerNorm`. Under autodiff XLA shares the (C,) -> (..., C) broadcast of `scale` between
    the forward and the backward pass and XLA:CPU's YNNPACK fusions then write it out at full size and read it
    back in both; here the backward keeps x and the per-row statistics, recomputes the normalised x behind an
    optimisation barrier and forms its own broadcast.
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_stats(x, eps: float):
    """Per-row mean and 1/std of x (..., C) in float32 -> two (..., 1) arrays."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    return mean, lax.rsqrt(jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True) + eps)


def _layer_norm_fwd(x, scale, bias, eps):
    mean, rstd = _layer_norm_stats(x, eps)
    y = (x.astype(jnp.float32) - mean) * rstd * scale.astype(jnp.float32)
    y = y if bias is None else y + bias.astype(jnp.float32)
    return y.astype(x.dtype), (x, scale, bias, mean, rstd)


def _layer_norm_bwd(eps, res, g):
    x, scale, bias, mean, rstd = lax.optimization_barrier(res)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    gf = g.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    dscale = jnp.sum(gf * xhat, axis=axes).astype(scale.dtype)
    dbias = None if bias is None else jnp.sum(gf, axis=axes).astype(bias.dtype)
    dxhat = gf * scale.astype(jnp.float32)
    dx = rstd * (dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
                 - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), dscale, dbias


tuned_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x, scale, bias, eps: float = 1e-5):
    """LayerNorm over the last axis: x (..., C), scale (C,), bias (C,) or None -> (..., C) of x's dtype
    (`tuned_layer_norm` on the CPU, `reference_layer_norm` elsewhere)."""
    return lax.platform_dependent(x, scale, bias, cpu=lambda x, s, b: tuned_layer_norm(x, s, b, eps),
                                  default=lambda x, s, b: reference_layer_norm(x, s, b, eps))
