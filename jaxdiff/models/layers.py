"""Shared Flax building blocks. All tensors are channels-last: (B, H, W, C) in 2D, (B, D, H, W, C) in 3D.

Every block takes its spatial rank from the input's ndim, so one block serves 1D, 2D and 3D data. Blocks follow
the dtype of their inputs and parameters (the task casts both for bf16 compute); nothing is forced to float32.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.kernels.conv import conv_general_dilated
from jaxdiff.models import attention_kernels

# nn.Conv whose float32 3x3 stride-1 2D convolutions run on the native Winograd kernel on the CPU backend
# (jaxdiff.kernels.conv; every other convolution, and every GPU/TPU lowering, is lax.conv_general_dilated).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)

ACTIVATIONS = {"silu": nn.silu, "gelu": functools.partial(nn.gelu, approximate=False), "relu": nn.relu}


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


def activation(name: str, key: str = "model.act") -> Callable:
    """The activation function called `name` (silu, gelu (exact), relu); InputError naming `key` otherwise."""
    if name not in ACTIVATIONS:
        raise InputError(f"config key {key}: unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def spatial_broadcast(v, ndim: int):
    """(B, C) -> (B, 1, ..., 1, C) with `ndim` total axes, to broadcast over the spatial axes."""
    return v.reshape(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def group_norm(x, groups: int, name: str | None = None, film=None, act: Callable | None = None):
    """GroupNorm over channels-last `x` (B, ..., C) with min(groups, C) groups and eps 1e-5 (as PyTorch), then
    optionally FiLM `film` = (scale, shift) of shape (B, C) and the activation `act`, fused (`GroupNorm`).

    Raises InputError when C is not divisible by the group count (a `model.groups` / width mismatch).
    """
    c = x.shape[-1]
    g = min(groups, c)
    if c % g:
        raise InputError(f"config key model.groups: {c} channels are not divisible into {g} groups")
    return GroupNorm(num_groups=g, epsilon=1e-5, name=name)(x, film, act)


def _group_stats(x, groups: int, eps: float):
    """Per-(sample, group) mean and 1/std of channels-last `x` (B, ..., C) in float32 -> two (B, G) arrays."""
    b, c = x.shape[0], x.shape[-1]
    xf, axes = x.astype(jnp.float32), tuple(range(1, x.ndim - 1))
    n = x.size // (b * groups)  # elements per group
    # Per-channel sums first (a reduction over the spatial axes only is what CPU reduction kernels do fast),
    # then per group on the small (B, C) arrays. One pass E[x^2] - E[x]^2 as Flax's GroupNorm.
    mean = _group_sum(jnp.sum(xf, axis=axes), groups) / n
    var = jnp.maximum(_group_sum(jnp.sum(jnp.square(xf), axis=axes), groups) / n - jnp.square(mean), 0.0)
    return mean, jax.lax.rsqrt(var + eps)


def _group_sum(v, groups: int):
    """(B, C) -> (B, G): sum over each group's C / G consecutive channels."""
    return v.reshape(v.shape[0], groups, -1).sum(-1)


def _per_channel(v, c: int):
    """(B, G) per-group values -> (B, C) per-channel (each group's value repeated over its C / G channels)."""
    return jnp.repeat(v, c // v.shape[1], axis=1)


def _materialise(*small):
    """Compute these small (B, C) arrays once: without the barrier XLA fuses their arithmetic (rsqrt, FiLM
    split, group repeat) into every element of the big elementwise loop that consumes them."""
    return jax.lax.optimization_barrier(small)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_norm_act(x, a, b, groups: int, eps: float = 1e-5, act: Callable | None = None):
    """act(GroupNorm(x) * a + b), fused, with a hand-written backward pass.

    Args:
      x: (B, ..., C) channels-last input (any float dtype; statistics and arithmetic in float32).
      a, b: (B, C) per-sample per-channel gain and offset (the norm's scale and bias, times / plus FiLM).
      groups: number of groups (divides C); eps: variance epsilon; act: elementwise activation or None.
    Returns:
      (B, ..., C) array of x's dtype.

    Same function as `nn.GroupNorm` followed by FiLM and the activation; only the derivative is computed
    differently. The backward pass keeps x and the (B, G) statistics (not the normalised, modulated and
    activated tensors autodiff would keep) and recomputes the activation's input, so it reads x and the
    cotangent twice (one reduction, one elementwise pass) and writes dx once: memory-bound normalisation is
    most of a diffusion UNet's non-convolution time on every backend.
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
    x, a, b, mean, rstd = jax.lax.optimization_barrier(res)
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


group_norm_act.defvjp(_group_norm_act_fwd, _group_norm_act_bwd)


class GroupNorm(nn.Module):
    """GroupNorm over the channels of (B, ..., C) with learned per-channel `scale` and `bias` (the parameters
    of `nn.GroupNorm`, same names and init), optionally followed by a FiLM modulation and an activation, fused
    into one `group_norm_act` call.

    Call: x (B, ..., C), film (scale, shift) pair of (B, C) arrays or None, act -> (B, ..., C):
      act((GN(x) * gamma + beta) * (1 + scale) + shift).
    """
    num_groups: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, film=None, act: Callable | None = None):
        c = x.shape[-1]
        gamma = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        beta = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        a = jnp.broadcast_to(gamma, (x.shape[0], c))
        b = jnp.broadcast_to(beta, (x.shape[0], c))
        if film is not None:
            scale, shift = film
            a, b = a * (1 + scale), b * (1 + scale) + shift
        return group_norm_act(x, a, b, self.num_groups, self.epsilon, act)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps: float = 1e-5):
    """LayerNorm over the last axis with a hand-written backward pass: (x - mean) / sqrt(var + eps) * scale + bias.

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
    return mean, jax.lax.rsqrt(jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True) + eps)


def _layer_norm_fwd(x, scale, bias, eps):
    mean, rstd = _layer_norm_stats(x, eps)
    y = (x.astype(jnp.float32) - mean) * rstd * scale.astype(jnp.float32)
    y = y if bias is None else y + bias.astype(jnp.float32)
    return y.astype(x.dtype), (x, scale, bias, mean, rstd)


def _layer_norm_bwd(eps, res, g):
    x, scale, bias, mean, rstd = jax.lax.optimization_barrier(res)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    gf = g.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    dscale = jnp.sum(gf * xhat, axis=axes).astype(scale.dtype)
    dbias = None if bias is None else jnp.sum(gf, axis=axes).astype(bias.dtype)
    dxhat = gf * scale.astype(jnp.float32)
    dx = rstd * (dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
                 - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), dscale, dbias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """`nn.LayerNorm` over the last axis (same parameters: `scale` ones, `bias` zeros when `use_bias`; same names)
    computed by `layer_norm` (two-pass variance, hand-written backward). Call: x (..., C) -> (..., C)."""
    epsilon: float = 1e-6
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32) if self.use_bias else None
        return layer_norm(x, scale, bias, self.epsilon)


def max_pool2(x):
    """2x max pooling with stride 2 over every spatial axis of (B, S1, ..., C) -> (B, S1 // 2, ..., C) (odd sizes
    drop their last row, as "VALID" pooling and torch's MaxPool(2)).

    The same values as `nn.max_pool(x, (2,) * rank, (2,) * rank)`, computed as a max over reshaped 2x..x2 blocks:
    autodiff of a reduction max is one elementwise pass, where reduce_window's derivative tracks argmax indices
    (a full-size index array and a variadic window reduction; most of a small CNN's pooling time on XLA:CPU). At an
    exact tie inside a block the gradient is split between the tied inputs instead of going to one of them.
    """
    rank = x.ndim - 2
    x = x[(slice(None), *(slice(0, s - s % 2) for s in x.shape[1:-1]))]
    blocks = x.reshape(x.shape[0], *itertools.chain.from_iterable((s // 2, 2) for s in x.shape[1:-1]), x.shape[-1])
    return blocks.max(axis=tuple(2 + 2 * i for i in range(rank)))


def conv(features: int, ndim: int, kernel: int = 3, stride: int = 1, zero_init: bool = False,
         name: str | None = None) -> nn.Conv:
    """A conv (`Conv`) over the `ndim - 2` spatial axes of a (B, ..., C) input, PyTorch-style padding (kernel - 1) // 2
    (so a stride-2 kernel-3 conv keeps PyTorch's sampling grid), optionally zero-initialised."""
    rank = ndim - 2
    kw = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros) if zero_init else {}
    return Conv(features, (kernel,) * rank, strides=(stride,) * rank, padding=[((kernel - 1) // 2,) * 2] * rank,
                   name=name, **kw)


class TimeEmbedding(nn.Module):
    """Timestep embedding: sinusoidal(dim) -> Dense(hidden) -> act -> Dense(hidden).

    Attributes: dim (sinusoid width), hidden (output width, default 4 * dim), act, max_period.
    Call: t (B,) int or float timesteps -> (B, hidden) float32.
    """
    dim: int
    hidden: int | None = None
    act: Callable = nn.silu
    max_period: float = 10000.0

    @nn.compact
    def __call__(self, t):
        hidden = self.hidden or 4 * self.dim
        e = timestep_embedding(t, self.dim, self.max_period)
        return nn.Dense(hidden, name="dense_1")(self.act(nn.Dense(hidden, name="dense_0")(e)))


class FiLM(nn.Module):
    """Feature-wise modulation from a conditioning vector: x * (1 + scale) + shift, or x + shift.

    Attributes: features (C, channels of x); scale (False: additive shift only, Dense(C) instead of Dense(2C)).
    Call: x (B, ..., C), cond (B, E) -> (B, ..., C). `cond` is used as given (apply any activation before).
    `modulation(cond)` -> (scale or None, shift), each (B, C), for a caller that fuses the modulation.
    """
    features: int
    scale: bool = True

    def setup(self):
        self.dense = nn.Dense(self.features * (2 if self.scale else 1))

    def modulation(self, cond):
        out = self.dense(cond)
        return tuple(jnp.split(out, 2, axis=-1)) if self.scale else (None, out)

    def __call__(self, x, cond):
        scale, shift = (spatial_broadcast(v, x.ndim) if v is not None else None for v in self.modulation(cond))
        return x + shift if scale is None else x * (1 + scale) + shift


class ResBlock(nn.Module):
    """Residual block with optional conditioning, for any spatial rank.

    norm_first=True (guided-diffusion): h = conv(act(GN(x))); h = conv(dropout(act(FiLM(GN(h), act(emb))))).
    norm_first=False (lucidrains / MedSegDiff): h = act(FiLM(GN(conv(x)), act(emb))); h = dropout(act(GN(conv(h)))).
    With use_scale_shift_norm=False the conditioning is added before the norm instead (x + Dense(C)(act(emb))).
    Output = skip(x) + h, skip a 1x1 conv when the channel count changes. `emb=None`: no conditioning (and no
    conditioning parameters). Convs are 3x3(x3) with bias; the last one zero-initialised when `zero_init`.

    Call: x (B, ..., C_in), emb (B, E) or None, train (enables dropout, rng "dropout") -> (B, ..., out_channels).
    """
    out_channels: int
    dropout: float = 0.0
    groups: int = 32
    use_scale_shift_norm: bool = True
    norm_first: bool = True
    zero_init: bool = True
    act: Callable = nn.silu

    @nn.compact
    def __call__(self, x, emb=None, train: bool = False):
        cond = None if emb is None else self.act(emb)
        conditioned_unit = 1 if self.norm_first else 0
        h = x
        for i in range(2):
            h = self._unit(h, i, cond if i == conditioned_unit else None, train)
        skip = x if x.shape[-1] == self.out_channels else conv(self.out_channels, x.ndim, 1, name="skip")(x)
        return skip + h

    def _unit(self, h, i: int, cond, train: bool):
        """One [conv] -> norm -> [FiLM] -> act -> [dropout] -> [conv] unit (conv position set by norm_first)."""
        c = self.out_channels
        layer = conv(c, h.ndim, zero_init=self.zero_init and i == 1, name=f"conv_{i}")
        if not self.norm_first:
            h = layer(h)
        film = None
        if cond is not None and not self.use_scale_shift_norm:
            h = FiLM(c, scale=False, name="film")(h, cond)
        elif cond is not None:
            film = FiLM(c, name="film").modulation(cond)
        h = group_norm(h, self.groups, name=f"norm_{i}", film=film, act=self.act)
        if i == 1:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return layer(h) if self.norm_first else h


def dot_product_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v: q (B, N, heads, d), k and v (B, M, heads, d) -> (B, N, heads, d).

    The kernel is chosen when the program is lowered (`attention_kernels.attention`): on TPU the Pallas flash
    attention, on NVIDIA GPUs cuDNN flash attention, where shapes and dtypes allow (else an XLA form); on CPU
    `xla_attention`.
    """
    return attention_kernels.attention(q, k, v, xla_attention)


def xla_attention(q, k, v):
    """`_attention` for (B, N, heads, d) operands: heads-major matmuls and a hand-written backward pass from the
    saved probabilities (XLA's differentiation of the library's softmax took 2-3x longer on the CPU, see
    benchmarks/README.md). The CPU form, and the TPU form where the flash kernel does not apply."""
    heads_major = lambda a: a.swapaxes(1, 2)  # noqa: E731  (B, N, h, d) <-> (B, h, N, d)
    return heads_major(_attention(heads_major(q), heads_major(k), heads_major(v)))


def with_scalar(x, value: float):
    """(x, value as a 0-d array of x's dtype) through one optimisation barrier, for `x * s`-style uses.

    XLA broadcasts a constant scalar to the full shape and merges identical broadcasts (CSE), so every layer of
    that shape shares one broadcast; XLA:CPU's YNNPACK fusions then materialise it and read it back (a full-size
    pass each). Tied to x by the barrier, the scalar is a distinct value per call and its broadcast stays fused.
    """
    return jax.lax.optimization_barrier((x, jnp.asarray(value, x.dtype)))


def _scores(q, k):
    """(B, h, N, d), (B, h, M, d) -> (B, h, N, M) float32 scaled scores."""
    q, scale = with_scalar(q, q.shape[-1] ** -0.5)
    return jnp.einsum("bhqd,bhkd->bhqk", q * scale, k, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _attention(q, k, v):
    """Heads-major attention (B, h, N, d) -> (B, h, N, d); the primal normalises after the second matmul."""
    s = _scores(q, k)
    e = jnp.exp(s - s.max(-1, keepdims=True))
    out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / e.sum(-1, keepdims=True)).astype(v.dtype)


def _attention_fwd(q, k, v):
    p = jax.nn.softmax(_scores(q, k), axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v).astype(v.dtype), (q, k, v, p)


def _swap(a):
    return jnp.swapaxes(a, -1, -2)


@jax.custom_vjp
def tn_matmul(a, b):
    """a^T b over the last two axes: a (..., K, M), b (..., K, N) -> (..., M, N).

    The contracted axis is the leading one of both operands (a weight gradient x^T g, attention's p^T g). When b is
    the smaller operand (attention: p (N, M) and g (N, d)), XLA:CPU ran the direct product 1.5-3x slower than
    ((b^T) a)^T, with b transposed and the small (N, M)-result transposed back behind optimisation barriers (XLA
    otherwise folds the transposes back into the product). When a is the smaller one, the direct product was as
    fast or faster (`python -m benchmarks.micro`). The derivative avoids the form (custom VJP: a b^T products).
    """
    if a.size <= b.size:
        return jnp.einsum("...km,...kn->...mn", a, b)
    return _swap(jax.lax.optimization_barrier(jnp.matmul(jax.lax.optimization_barrier(_swap(b)), a)))


def _tn_matmul_fwd(a, b):
    return tn_matmul(a, b), (a, b)


def _tn_matmul_bwd(res, g):
    a, b = res  # out = a^T b: da = b g^T (K, N)(N, M), db = a g (K, M)(M, N)
    return jnp.matmul(b, _swap(g)).astype(a.dtype), jnp.matmul(a, g).astype(b.dtype)


tn_matmul.defvjp(_tn_matmul_fwd, _tn_matmul_bwd)


@jax.custom_vjp
def matmul(a, b):
    """a b over the last two axes, (..., M, K) x (..., K, N) -> (..., M, N), whose derivative with respect to b
    (a^T g) is computed by `tn_matmul` (the form XLA:CPU runs fast); same values as jnp.matmul."""
    return jnp.matmul(a, b)


def _matmul_fwd(a, b):
    return jnp.matmul(a, b), (a, b)


def _matmul_bwd(res, g):
    a, b = res
    db = tn_matmul(a, g)
    return jnp.matmul(g, _swap(b)).astype(a.dtype), jnp.sum(db, axis=tuple(range(db.ndim - b.ndim))).astype(b.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
    """`nn.Dense` (same parameters: `kernel` (C_in, features) lecun-normal, `bias` zeros; same name in the tree)
    whose kernel gradient x^T g goes through `tn_matmul`. Call: x (..., C_in) -> (..., features)."""
    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel, bias = _dense_params(self, x.shape[-1])
        x, kernel = nn.dtypes.promote_dtype(x, kernel)
        y = matmul(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], self.features)
        return y if bias is None else y + bias.astype(y.dtype)


class DenseParams(Dense):
    """The parameters of `Dense` (same names, shapes and init) for a caller that applies them itself.
    Call: in_features -> (kernel (in_features, features), bias (features,) or None)."""

    @nn.compact
    def __call__(self, in_features: int):
        return _dense_params(self, in_features)


def _dense_params(module: Dense, in_features: int):
    kernel = module.param("kernel", module.kernel_init, (in_features, module.features), jnp.float32)
    return kernel, (module.param("bias", module.bias_init, (module.features,), jnp.float32) if module.use_bias
                    else None)


def _attention_bwd(res, g):
    q, k, v, p = res
    dv = tn_matmul(p.astype(g.dtype), g)
    dp = jnp.einsum("bhqd,bhkd->bhqk", g, v, preferred_element_type=jnp.float32)
    p, scale = with_scalar(p, q.shape[-1] ** -0.5)
    ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * scale).astype(q.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", ds, k), tn_matmul(ds, q), dv


_attention.defvjp(_attention_fwd, _attention_bwd)


def chunked_attention(q, k, v, chunk: int = 0):
    """`dot_product_attention` (B, N, heads, d) -> (B, N, heads, d), over query chunks of `chunk`
    positions when 0 < chunk < N (one rematerialised `lax.map` step per chunk: scores of chunk x N only; the
    queries are zero-padded to a multiple of the chunk and the padding dropped)."""
    b, n, heads, d = q.shape
    if not chunk or n <= chunk:
        return dot_product_attention(q, k, v)
    pad = -n % chunk
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    step = jax.checkpoint(lambda qc: dot_product_attention(qc, k, v))
    out = jax.lax.map(step, q.reshape(b, (n + pad) // chunk, chunk, heads, d).swapaxes(0, 1))
    return out.swapaxes(0, 1).reshape(b, n + pad, heads, d)[:, :n]


class Attention(nn.Module):
    """Multi-head self-attention over all spatial positions (2D or 3D), residual: x + proj(attn(qkv(GN(x)))).

    Uses `dot_product_attention` (Pallas flash attention on TPU, cuDNN's on GPU, where shapes and dtypes allow;
    a hand-written backward pass on CPU). Heads: C // head_channels when head_channels > 0, else num_heads.
    Parameters: GN 2C, qkv C*3C + 3C, proj C*C + C (proj zero-initialised when `zero_init`, so the block starts
    as identity).

    `query_chunk` > 0 (memory-efficient attention where no flash kernel applies, e.g. 3D patches on CPU):
    queries are processed in chunks of that many positions in a `lax.map` whose body is rematerialised, so
    neither pass holds more than chunk x N scores. Same result as the unchunked call.

    Call: x (B, ..., C) -> (B, ..., C).
    """
    num_heads: int = 4
    head_channels: int = 0
    groups: int = 32
    zero_init: bool = True
    query_chunk: int = 0

    @nn.compact
    def __call__(self, x):
        b, c = x.shape[0], x.shape[-1]
        heads = c // self.head_channels if self.head_channels else self.num_heads
        if heads < 1 or c % heads:
            raise InputError(f"config key model.num_heads: {c} channels do not split into {heads} heads")
        h = group_norm(x, self.groups, name="norm").reshape(b, -1, c)
        qkv = Dense(3 * c, name="qkv")(h).reshape(b, h.shape[1], 3, heads, c // heads)
        out = chunked_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.query_chunk)
        kw = dict(kernel_init=nn.initializers.zeros) if self.zero_init else {}
        out = Dense(c, name="proj", **kw)(out.reshape(b, -1, c))
        return x + out.reshape(x.shape)


class Downsample(nn.Module):
    """Halve every spatial axis: 3x3(x3) stride-2 conv to `channels` (default: input channels), or 2x average
    pooling when use_conv=False (channels unchanged). Call: x (B, S1, ..., C) -> (B, S1/2, ..., channels)."""
    channels: int | None = None
    use_conv: bool = True

    @nn.compact
    def __call__(self, x):
        if self.use_conv:
            return conv(self.channels or x.shape[-1], x.ndim, stride=2, name="conv")(x)
        window = (2,) * (x.ndim - 2)
        return nn.avg_pool(x, window, strides=window)


# Nearest x2 then a 3-tap conv (padding 1), per output phase: phase 0 of an axis reads coarse offsets (-1, 0)
# with taps (w0, w1 + w2), phase 1 offsets (0, +1) with taps (w0 + w1, w2).
_PHASE_TAPS = (np.array([[1, 0, 0], [0, 1, 1]], np.float32), np.array([[1, 1, 0], [0, 0, 1]], np.float32))
_PHASE_PAD = ((1, 0), (0, 1))


def upsample_conv(x, kernel, bias):
    """conv3x3(nearest_upsample_x2(x)) with padding 1, computed on the coarse grid (same function, fewer FLOPs).

    Each of the 2^rank output phases is a 2x2(x2) conv of `x` with a kernel summed from `kernel`'s taps, so the
    work is 4 taps per phase instead of 9 on a 4x larger image (2.25x fewer multiply-adds in 2D, 3.4x in 3D),
    in the forward and the backward pass, on every backend.

    Args:
      x: (B, S1, ..., C) channels-last input.
      kernel: (3, ..., 3, C, K) the conv's kernel; bias: (K,).
    Returns:
      (B, 2 S1, ..., K), equal to `repeat(x, 2)` on every spatial axis followed by the 3x3(x3) conv.
    """
    rank = x.ndim - 2
    phases = []
    for phase in itertools.product((0, 1), repeat=rank):
        k = kernel
        for axis, ph in enumerate(phase):  # (3, ...) taps -> (2, ...) on this axis
            k = jnp.moveaxis(jnp.tensordot(jnp.asarray(_PHASE_TAPS[ph], k.dtype), k, axes=(1, axis)), 0, axis)
        phases.append(jax.lax.conv_general_dilated(
            x, k, (1,) * rank, [_PHASE_PAD[ph] for ph in phase],
            dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, k.shape, _conv_dims(rank))))
    b, spatial, out = x.shape[0], x.shape[1:-1], kernel.shape[-1]
    return _interleave(jnp.stack(phases, axis=-2).reshape(b, *spatial, *(2,) * rank, out)) + bias


def _interleave(y):
    """Depth to space: (B, S1, ..., Sr, k1, ..., kr, K) -> (B, k1 S1, ..., kr Sr, K), output position
    k_i s_i + d_i taken from y[b, s..., d..., :]."""
    rank = (y.ndim - 2) // 2
    spatial, ks = y.shape[1:1 + rank], y.shape[1 + rank:1 + 2 * rank]
    order = [0] + [a for i in range(rank) for a in (1 + i, 1 + rank + i)] + [1 + 2 * rank]
    return y.transpose(order).reshape(y.shape[0], *(n * k for n, k in zip(spatial, ks)), y.shape[-1])


def _conv_dims(rank: int):
    """Channels-last dimension numbers for a rank-D conv: ("NHWC", "HWIO", "NHWC") in 2D."""
    sp = "DHW"[-rank:]
    return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


class UpsampleConv(nn.Module):
    """Parameters of a 3x3(x3) `nn.Conv` (`kernel`, `bias`, same shapes and init) applied by `upsample_conv`.
    Call: x (B, S1, ..., C) -> (B, 2 S1, ..., features)."""
    features: int

    @nn.compact
    def __call__(self, x):
        rank = x.ndim - 2
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3,) * rank + (x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return upsample_conv(x, kernel.astype(x.dtype), bias.astype(x.dtype))


def patch_conv_transpose(x, kernel, bias):
    """Transposed conv whose kernel equals its stride ("VALID"), as one matmul and a depth-to-space reshape.

    With k = stride the output patches do not overlap: out[b, k i + d, ..., o] = sum_c x[b, i, ..., c]
    kernel[k-1-d, ..., c, o] + bias[o] (lax.conv_transpose's tap order). XLA lowers the weight gradient of the
    lhs-dilated convolution to a base-dilated convolution (most of S0's backward conv time on XLA:CPU); as a
    `matmul` the gradients are plain products (x^T g for the kernel), on every backend.

    Args:
      x: (B, S1, ..., C) channels-last input.
      kernel: (k1, ..., C, K) as `nn.ConvTranspose(K, (k1, ...), strides=(k1, ...), padding="VALID")` holds it.
      bias: (K,).
    Returns:
      (B, k1 S1, ..., K), the same values as that `nn.ConvTranspose`.
    """
    rank = x.ndim - 2
    ks, c, out = kernel.shape[:rank], kernel.shape[-2], kernel.shape[-1]
    flipped = kernel[(slice(None, None, -1),) * rank]
    w = jnp.moveaxis(flipped, rank, 0).reshape(c, -1)  # (C, k1 ... K)
    b, spatial = x.shape[0], x.shape[1:-1]
    return _interleave(matmul(x.reshape(-1, c), w).reshape(b, *spatial, *ks, out)) + bias


class PatchConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, kernel_size, strides=kernel_size, padding="VALID")` (same parameters: `kernel`
    (*kernel_size, C, features) lecun-normal, `bias` zeros) applied by `patch_conv_transpose`.
    Call: x (B, S1, ..., C) -> (B, k1 S1, ..., features)."""
    features: int
    kernel_size: tuple[int, ...] = (2, 2)

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        return patch_conv_transpose(x, kernel, bias)


class Upsample(nn.Module):
    """Double every spatial axis by nearest-neighbour repetition, then (use_conv) a 3x3(x3) conv to `channels`
    (default: input channels), computed on the coarse grid (`upsample_conv`).
    Call: x (B, S1, ..., C) -> (B, 2 S1, ..., channels)."""
    channels: int | None = None
    use_conv: bool = True

    @nn.compact
    def __call__(self, x):
        if self.use_conv:
            return UpsampleConv(self.channels or x.shape[-1], name="conv")(x)
        for axis in range(1, x.ndim - 1):
            x = jnp.repeat(x, 2, axis=axis)
        return x


class SEBlock(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(Dense(C)(relu(Dense(C // reduction)(mean_spatial(x))))), no biases.

    Call: x (B, ..., C) -> (B, ..., C). Parameters: 2 * C * (C // reduction).
    """
    reduction: int = 16

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        s = nn.relu(nn.Dense(max(c // self.reduction, 1), use_bias=False, name="squeeze")(s))
        s = nn.sigmoid(nn.Dense(c, use_bias=False, name="excite")(s))
        return x * spatial_broadcast(s, x.ndim)
