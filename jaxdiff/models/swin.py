"""Swin transformer blocks (Liu et al. 2021) on channels-last 2D feature maps, as in the cascaded
super-resolution DDPM's bottleneck.

A block is pre-LN: x + WindowAttention(LN(x)) then x + MLP(LN(x)) (GELU, hidden = mlp_ratio * dim), attention
inside non-overlapping `window` x `window` windows with a learned relative position bias ((2w - 1)^2 entries
per head). Shifted windows (a cyclic roll by window // 2 with the usual attention mask) let windows talk.

`faithful=True` reproduces the original cascade's block: no shift, and the feature map is reshaped as in PyTorch
when an NCHW tensor is `.view`-ed as NHWC, so "tokens" mix channels and positions (`scramble`); the output is
reshaped back the same way.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxdiff.models.layers import LayerNorm

MASK_VALUE = -100.0  # added to attention logits between tokens of different regions of a shifted window


def scramble(x):
    """The original's NCHW-as-NHWC view: (B, H, W, C) -> transpose to NCHW memory order -> reshape (B, H, W, C)."""
    b, h, w, c = x.shape
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(b, h, w, c)


def unscramble(x):
    """Inverse of `scramble`: (B, H, W, C) viewed as (B, C, H, W) memory -> channels-last (B, H, W, C)."""
    b, h, w, c = x.shape
    return jnp.transpose(x.reshape(b, c, h, w), (0, 2, 3, 1))


def window_partition(x, window: int):
    """(B, H, W, C) -> (B * H/w * W/w, w * w, C): windows in row-major order, tokens row-major inside (jax or
    NumPy arrays)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows, window: int, h: int, w: int):
    """Inverse of `window_partition`: (B * H/w * W/w, w * w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> np.ndarray:
    """(w*w, w*w) int32: index into the ((2w-1)^2,) bias table for query token i and key token j (row-major
    tokens (r, c)): (r_i - r_j + w - 1) * (2w - 1) + (c_i - c_j + w - 1)."""
    r, c = np.divmod(np.arange(window * window), window)
    dr = r[:, None] - r[None, :] + window - 1
    dc = c[:, None] - c[None, :] + window - 1
    return (dr * (2 * window - 1) + dc).astype(np.int32)


def shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """(num_windows, w*w, w*w) float32 additive mask of the shifted-window attention: 0 between tokens of the
    same region of the rolled map, MASK_VALUE otherwise (a trace-time constant)."""
    regions = np.zeros((h, w), np.int32)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rs in enumerate(cuts):
        for j, cs in enumerate(cuts):
            regions[rs, cs] = 3 * i + j
    win = window_partition(regions[None, :, :, None], window)[..., 0]  # NumPy in, NumPy out
    return np.where(win[:, :, None] == win[:, None, :], 0.0, MASK_VALUE).astype(np.float32)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias.

    Attributes: dim, heads, window.
    Call: tokens (N_windows * B, w*w, dim), mask (num_windows, w*w, w*w) or None -> same shape as tokens.
    """
    dim: int
    heads: int
    window: int

    @nn.compact
    def __call__(self, x, mask=None):
        n, t, _ = x.shape
        hd = self.dim // self.heads
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * self.window - 1) ** 2, self.heads))
        bias = table[relative_position_index(self.window).reshape(-1)].reshape(t, t, self.heads).transpose(2, 0, 1)
        qkv = nn.Dense(3 * self.dim, name="qkv")(x).reshape(n, t, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
        logits = q @ k.swapaxes(-1, -2) + bias[None].astype(x.dtype)
        if mask is not None:
            nw = mask.shape[0]
            logits = logits.reshape(n // nw, nw, self.heads, t, t) + jnp.asarray(mask, x.dtype)[None, :, None]
            logits = logits.reshape(n, self.heads, t, t)
        out = (nn.softmax(logits, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(n, t, self.dim)
        return nn.Dense(self.dim, name="proj")(out)


class SwinBlock(nn.Module):
    """One pre-LN Swin block on a (B, H, W, dim) map (H, W multiples of the window; a map no larger than the
    window is one window, unshifted).

    Attributes: heads, window, shift (cyclic shift in pixels, 0 = regular windows), mlp_ratio.
    Call: x (B, H, W, dim) -> (B, H, W, dim).
    """
    heads: int
    window: int
    shift: int = 0
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x):
        b, h, w, dim = x.shape
        window, shift = (self.window, self.shift) if min(h, w) > self.window else (min(h, w), 0)
        y = LayerNorm(epsilon=1e-5, name="norm_0")(x)
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        mask = shift_mask(h, w, window, shift) if shift else None
        y = WindowAttention(dim, self.heads, window, name="attn")(window_partition(y, window), mask)
        y = window_merge(y, window, h, w)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + y
        y = LayerNorm(epsilon=1e-5, name="norm_1")(x)
        y = nn.Dense(int(dim * self.mlp_ratio), name="mlp_0")(y)
        y = nn.Dense(dim, name="mlp_1")(nn.gelu(y, approximate=False))
        return x + y


def block_shift(i: int, depth: int, window: int, faithful: bool) -> int:
    """Shift of block i of a stage: Swin alternates regular / shifted windows (odd blocks shifted); a one-block
    stage is shifted (else it would never shift); the faithful original never shifts."""
    if faithful:
        return 0
    return window // 2 if (i % 2 == 1 or depth == 1) else 0


class SwinStage(nn.Module):
    """`depth` Swin blocks (see `block_shift`) on a channels-last map.

    Attributes: depth, heads, window, mlp_ratio, faithful (the original cascade's shift-0 block on an NCHW-as-NHWC
    view).
    Call: x (B, H, W, C) -> (B, H, W, C); C divisible by heads; H, W multiples of window (or <= window).
    """
    depth: int = 1
    heads: int = 8
    window: int = 4
    mlp_ratio: float = 4.0
    faithful: bool = False

    @nn.compact
    def __call__(self, x):
        if self.faithful:
            x = scramble(x)
        for i in range(self.depth):
            x = SwinBlock(self.heads, self.window, block_shift(i, self.depth, self.window, self.faithful),
                          self.mlp_ratio, name=f"block_{i}")(x)
        return unscramble(x) if self.faithful else x
