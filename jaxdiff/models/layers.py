"""Shared Flax building blocks. All tensors are channels-last: (B, H, W, C) in 2D, (B, D, H, W, C) in 3D.

Every block takes its spatial rank from the input's ndim, so one block serves 1D, 2D and 3D data. Blocks follow
the dtype of their inputs and parameters (the task casts both for bf16 compute); nothing is forced to float32.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.errors import InputError

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


def group_norm(x, groups: int, name: str | None = None):
    """GroupNorm over channels-last `x` (B, ..., C) with min(groups, C) groups and eps 1e-5 (as PyTorch).

    Raises InputError when C is not divisible by the group count (a `model.groups` / width mismatch).
    """
    c = x.shape[-1]
    g = min(groups, c)
    if c % g:
        raise InputError(f"config key model.groups: {c} channels are not divisible into {g} groups")
    return nn.GroupNorm(num_groups=g, epsilon=1e-5, name=name)(x)


def conv(features: int, ndim: int, kernel: int = 3, stride: int = 1, zero_init: bool = False,
         name: str | None = None) -> nn.Conv:
    """A conv over the `ndim - 2` spatial axes of a (B, ..., C) input, PyTorch-style padding (kernel - 1) // 2
    (so a stride-2 kernel-3 conv keeps PyTorch's sampling grid), optionally zero-initialised."""
    rank = ndim - 2
    kw = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros) if zero_init else {}
    return nn.Conv(features, (kernel,) * rank, strides=(stride,) * rank, padding=[((kernel - 1) // 2,) * 2] * rank,
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
    """
    features: int
    scale: bool = True

    @nn.compact
    def __call__(self, x, cond):
        out = nn.Dense(self.features * (2 if self.scale else 1), name="dense")(cond)
        out = spatial_broadcast(out, x.ndim)
        if not self.scale:
            return x + out
        scale, shift = jnp.split(out, 2, axis=-1)
        return x * (1 + scale) + shift


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
        if cond is not None and not self.use_scale_shift_norm:
            h = FiLM(c, scale=False, name="film")(h, cond)
        h = group_norm(h, self.groups, name=f"norm_{i}")
        if cond is not None and self.use_scale_shift_norm:
            h = FiLM(c, name="film")(h, cond)
        h = self.act(h)
        if i == 1:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return layer(h) if self.norm_first else h


def chunked_attention(q, k, v, chunk: int = 0):
    """`jax.nn.dot_product_attention` (B, N, heads, d) -> (B, N, heads, d), over query chunks of `chunk`
    positions when 0 < chunk < N (one rematerialised `lax.map` step per chunk: scores of chunk x N only; the
    queries are zero-padded to a multiple of the chunk and the padding dropped)."""
    b, n, heads, d = q.shape
    if not chunk or n <= chunk:
        return jax.nn.dot_product_attention(q, k, v, implementation=None)
    pad = -n % chunk
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    step = jax.checkpoint(lambda qc: jax.nn.dot_product_attention(qc, k, v, implementation=None))
    out = jax.lax.map(step, q.reshape(b, (n + pad) // chunk, chunk, heads, d).swapaxes(0, 1))
    return out.swapaxes(0, 1).reshape(b, n + pad, heads, d)[:, :n]


class Attention(nn.Module):
    """Multi-head self-attention over all spatial positions (2D or 3D), residual: x + proj(attn(qkv(GN(x)))).

    Uses `jax.nn.dot_product_attention` (cuDNN flash attention on GPU when dtype and head size allow, XLA
    otherwise). Heads: C // head_channels when head_channels > 0, else num_heads. Parameters: GN 2C,
    qkv C*3C + 3C, proj C*C + C (proj zero-initialised when `zero_init`, so the block starts as identity).

    `query_chunk` > 0 (memory-efficient attention for XLA backends without a flash kernel, e.g. 3D patches on
    CPU/TPU): queries are processed in chunks of that many positions in a `lax.map` whose body is
    rematerialised, so neither pass holds more than chunk x N scores. Same result as the unchunked call.

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
        qkv = nn.Dense(3 * c, name="qkv")(h).reshape(b, h.shape[1], 3, heads, c // heads)
        out = chunked_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.query_chunk)
        kw = dict(kernel_init=nn.initializers.zeros) if self.zero_init else {}
        out = nn.Dense(c, name="proj", **kw)(out.reshape(b, -1, c))
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


class Upsample(nn.Module):
    """Double every spatial axis by nearest-neighbour repetition, then (use_conv) a 3x3(x3) conv to `channels`
    (default: input channels). Call: x (B, S1, ..., C) -> (B, 2 S1, ..., channels)."""
    channels: int | None = None
    use_conv: bool = True

    @nn.compact
    def __call__(self, x):
        for axis in range(1, x.ndim - 1):
            x = jnp.repeat(x, 2, axis=axis)
        return conv(self.channels or x.shape[-1], x.ndim, name="conv")(x) if self.use_conv else x


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
