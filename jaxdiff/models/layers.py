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
import jax.numpy as jnp

from jaxdiff import ops
from jaxdiff.errors import InputError
# The ops under their old names here, for callers of this module (the blocks below call `ops.*`).
from jaxdiff.ops import (chunked_attention, dot_product_attention, layer_norm, matmul, patch_conv_transpose,  # noqa: F401
                         spatial_broadcast, tn_matmul, upsample_conv, with_scalar, xla_attention)
from jaxdiff.ops.attention import _attention, _scores  # noqa: F401
from jaxdiff.ops.upsample import _conv_dims  # noqa: F401

# nn.Conv whose float32 3x3 stride-1 2D convolutions lower for the CPU to the native Winograd kernel
# (`ops.conv_general_dilated`; every other convolution, and every GPU/TPU lowering, is lax.conv_general_dilated).
Conv = functools.partial(nn.Conv, conv_general_dilated=ops.conv_general_dilated)

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


def group_norm(x, groups: int, name: str | None = None, film=None, act: Callable | None = None):
    """GroupNorm over channels-last `x` (B, ..., C) with min(groups, C) groups and eps 1e-5 (as PyTorch), then
    optionally FiLM `film` = (scale, shift) of shape (B, C) and the activation `act` (`GroupNorm`).

    Raises InputError when C is not divisible by the group count (a `model.groups` / width mismatch).
    """
    c = x.shape[-1]
    g = min(groups, c)
    if c % g:
        raise InputError(f"config key model.groups: {c} channels are not divisible into {g} groups")
    return GroupNorm(num_groups=g, epsilon=1e-5, name=name)(x, film, act)


class GroupNorm(nn.Module):
    """GroupNorm over the channels of (B, ..., C) with learned per-channel `scale` and `bias` (the parameters
    of `nn.GroupNorm`, same names and init), optionally followed by a FiLM modulation and an activation, as one
    `ops.group_norm_act` call.

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
        return ops.group_norm_act(x, a, b, self.num_groups, self.epsilon, act)


class LayerNorm(nn.Module):
    """`nn.LayerNorm` over the last axis (same parameters: `scale` ones, `bias` zeros when `use_bias`; same names)
    computed by `ops.layer_norm` (two-pass variance). Call: x (..., C) -> (..., C)."""
    epsilon: float = 1e-6
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32) if self.use_bias else None
        return ops.layer_norm(x, scale, bias, self.epsilon)


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


class Dense(nn.Module):
    """`nn.Dense` (same parameters: `kernel` (C_in, features) lecun-normal, `bias` zeros; same name in the tree)
    applied by `ops.matmul` (on the CPU its kernel gradient x^T g is a tuned `tn_matmul`).
    Call: x (..., C_in) -> (..., features)."""
    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel, bias = _dense_params(self, x.shape[-1])
        x, kernel = nn.dtypes.promote_dtype(x, kernel)
        y = ops.matmul(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], self.features)
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


class Attention(nn.Module):
    """Multi-head self-attention over all spatial positions (2D or 3D), residual: x + proj(attn(qkv(GN(x)))).

    Uses `ops.dot_product_attention` (Pallas flash attention on TPU, cuDNN's on GPU, where shapes and dtypes
    allow; a hand-written backward pass on CPU). Heads: C // head_channels when head_channels > 0, else num_heads.
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
        out = ops.chunked_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.query_chunk)
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


class UpsampleConv(nn.Module):
    """Parameters of a 3x3(x3) `nn.Conv` (`kernel`, `bias`, same shapes and init) applied by `ops.upsample_conv`.
    Call: x (B, S1, ..., C) -> (B, 2 S1, ..., features)."""
    features: int

    @nn.compact
    def __call__(self, x):
        rank = x.ndim - 2
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3,) * rank + (x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return ops.upsample_conv(x, kernel.astype(x.dtype), bias.astype(x.dtype))


class PatchConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, kernel_size, strides=kernel_size, padding="VALID")` (same parameters: `kernel`
    (*kernel_size, C, features) lecun-normal, `bias` zeros) applied by `ops.patch_conv_transpose`.
    Call: x (B, S1, ..., C) -> (B, k1 S1, ..., features)."""
    features: int
    kernel_size: tuple[int, ...] = (2, 2)

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        return ops.patch_conv_transpose(x, kernel, bias)


class Upsample(nn.Module):
    """Double every spatial axis by nearest-neighbour repetition, then (use_conv) a 3x3(x3) conv to `channels`
    (default: input channels), by `ops.upsample_conv`.
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
