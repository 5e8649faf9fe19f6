"""SAM image encoder: a plain ViT with windowed attention, decomposed relative positions and a conv neck.

`ImageEncoderViT` maps a normalised, padded image (B, S, S, 3) to image embeddings (B, S/p, S/p, out_dim).
ViT-B/16 (the defaults): 16x16 patches, 12 blocks of width 768 and 12 heads, 14x14 windows except the global
blocks 2, 5, 8, 11, a learned absolute position embedding, and a neck conv1x1 -> LN -> conv3x3 -> LN to 256
channels. PyTorch numerics are kept: LayerNorm eps 1e-6, exact (erf) GELU, float32 softmax.
Parameter names follow the official checkpoint (`image_encoder.blocks.3.attn.qkv` -> `blocks_3/attn/qkv`).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import LayerNorm

LN_EPS = 1e-6


def gelu(x):
    """Exact (erf) GELU, as torch.nn.GELU()."""
    return nn.gelu(x, approximate=False)


class MLPBlock(nn.Module):
    """lin2(act(lin1(x))); (..., D) -> (..., D) with a hidden width `mlp_dim`."""

    mlp_dim: int
    act: str = "gelu"

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.mlp_dim, name="lin1")(x)
        h = gelu(h) if self.act == "gelu" else nn.relu(h)
        return nn.Dense(x.shape[-1], name="lin2")(h)


def relative_positions(size: int, table):
    """Relative-position embeddings R[q, k] = table[q - k + size - 1] for a 1-D axis.

    Args:
      size: tokens along the axis (query and key size are equal in SAM).
      table: (2 * size - 1, head_dim) learned embeddings.
    Returns:
      (size, size, head_dim).
    """
    idx = jnp.arange(size)[:, None] - jnp.arange(size)[None, :] + size - 1
    return table[idx]


class WindowAttention(nn.Module):
    """Multi-head self-attention over an (h, w) token grid with decomposed relative positions (MViTv2).

    Input (B, h, w, D) -> (B, h, w, D). The bias added to the logits of query (i, j) and key (k, l) is
    q . Rh[i, k] + q . Rw[j, l], with the unscaled query q.
    """

    num_heads: int
    grid: int                     # h = w of the grids this layer sees (the window, or the whole image)
    qkv_bias: bool = True
    use_rel_pos: bool = True

    @nn.compact
    def __call__(self, x):
        b, h, w, d = x.shape
        hd = d // self.num_heads
        qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, name="qkv")(x).reshape(b, h, w, 3, self.num_heads, hd)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]          # (B, h, w, heads, hd)
        logits = jnp.einsum("bijnc,bklnc->bnijkl", q * hd ** -0.5, k)
        if self.use_rel_pos:
            zeros = nn.initializers.zeros
            rh = relative_positions(h, self.param("rel_pos_h", zeros, (2 * self.grid - 1, hd)))
            rw = relative_positions(w, self.param("rel_pos_w", zeros, (2 * self.grid - 1, hd)))
            logits = logits + jnp.einsum("bijnc,ikc->bnijk", q, rh)[..., None] \
                + jnp.einsum("bijnc,jlc->bnijl", q, rw)[..., None, :]
        probs = jax.nn.softmax(logits.reshape(b, self.num_heads, h, w, h * w).astype(jnp.float32), axis=-1)
        out = jnp.einsum("bnijm,bmnc->bijnc", probs.astype(v.dtype), v.reshape(b, h * w, self.num_heads, hd))
        return nn.Dense(d, name="proj")(out.reshape(b, h, w, d))


def window_partition(x, window: int):
    """(B, H, W, C) -> ((B * nH * nW, window, window, C), (Hp, Wp)): zero-pad to multiples of `window`, split."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows, window: int, padded: tuple, size: tuple):
    """Inverse of `window_partition`: (B * nH * nW, window, window, C) -> (B, H, W, C), padding removed."""
    hp, wp = padded
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, c)[:, :size[0], :size[1]]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)) (windowed when `window` > 0), then x + MLP(LN(x)).

    (B, h, w, D) -> (B, h, w, D); `grid` is the full token grid side (used by global blocks).
    """

    num_heads: int
    mlp_dim: int
    window: int
    grid: int
    qkv_bias: bool = True
    use_rel_pos: bool = True

    @nn.compact
    def __call__(self, x):
        h = LayerNorm(epsilon=LN_EPS, name="norm1")(x)
        attn = WindowAttention(self.num_heads, self.window or self.grid, self.qkv_bias, self.use_rel_pos,
                               name="attn")
        if self.window > 0:
            windows, padded = window_partition(h, self.window)
            h = window_unpartition(attn(windows), self.window, padded, x.shape[1:3])
        else:
            h = attn(h)
        x = x + h
        return x + MLPBlock(self.mlp_dim, name="mlp")(LayerNorm(epsilon=LN_EPS, name="norm2")(x))


class Neck(nn.Module):
    """conv1x1 (no bias) -> LayerNorm -> conv3x3 (no bias) -> LayerNorm: (B, h, w, D) -> (B, h, w, out_dim)."""

    out_dim: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.out_dim, (1, 1), use_bias=False, name="conv1")(x)
        x = LayerNorm(epsilon=LN_EPS, name="ln1")(x)
        x = nn.Conv(self.out_dim, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(x)
        return LayerNorm(epsilon=LN_EPS, name="ln2")(x)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder. (B, image_size, image_size, C) normalised pixels -> (B, g, g, out_dim),
    g = image_size / patch_size (64 for the 1024 input of ViT-B/16)."""

    image_size: int = 1024
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    out_dim: int = 256
    qkv_bias: bool = True
    use_rel_pos: bool = True

    @nn.compact
    def __call__(self, x):
        g = self.image_size // self.patch_size
        p = self.patch_size
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(x)
        x = x + self.param("pos_embed", nn.initializers.zeros, (1, g, g, self.dim))
        for i in range(self.depth):
            window = 0 if i in tuple(self.global_attn_indexes) else self.window_size
            x = Block(self.num_heads, int(self.dim * self.mlp_ratio), window, g, self.qkv_bias, self.use_rel_pos,
                      name=f"blocks_{i}")(x)
        return Neck(self.out_dim, name="neck")(x)
