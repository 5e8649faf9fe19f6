"""The BraTS UNet-transformer: UNet with squeeze-excitation conv blocks and a transformer bottleneck, plus its
error-map VAE.

`TransformerUNet` is the binary tumour segmenter of the original BraTS 2020 code (49,455,873 parameters at the
default widths):
five residual SE conv blocks with 2x2 max-pooling (240 -> 15), the 15x15 map as 225 tokens through two
pre-norm transformer encoder layers, and a transposed-conv decoder with skip connections to one logit per
pixel. PyTorch semantics are kept where they change numbers: BatchNorm momentum 0.1 / eps 1e-5, LayerNorm
eps 1e-5, exact (erf) GELU, Dropout2d dropping whole channels, attention-weight dropout.

`ErrorVAE` reconstructs the error map |logits - mask| (the original's "VAE error map" head).
All tensors are channels-last (B, H, W, C).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff import ops
from jaxdiff.errors import InputError
from jaxdiff.models import register
from jaxdiff.models.layers import Conv, LayerNorm, PatchConvTranspose, SEBlock, max_pool2, timestep_embedding

_LEAK = 0.2


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """BatchNorm with PyTorch defaults (momentum 0.1 -> Flax 0.9, eps 1e-5); running stats when not training."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class ConvBlock(nn.Module):
    """Residual SE conv block: leaky_relu(SE(BN(conv(drop2d(leaky_relu(BN(conv(x))))))) + conv1x1(x)).

    Input (B, H, W, C_in) -> (B, H, W, features). Convolutions are 3x3 "SAME" with bias; the residual is a
    1x1 conv with bias; Dropout2d zeroes whole channels of a sample (rng "dropout") when training.
    """

    features: int
    channel_dropout: float = 0.1
    se_reduction: int = 16

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        # Each leaky ReLU's slope is tied to a conv output (materialised anyway) so that XLA:CPU does not share one
        # full-size broadcast of the constant between all blocks (see `ops.with_scalar`).
        residual, slope_out = ops.with_scalar(nn.Conv(self.features, (1, 1), name="residual")(x), _LEAK)
        h, slope_in = ops.with_scalar(Conv(self.features, (3, 3), padding="SAME", name="conv1")(x), _LEAK)
        h = _leaky_relu(_batch_norm(train, "bn1")(h), slope_in)
        h = nn.Dropout(self.channel_dropout, broadcast_dims=(1, 2), deterministic=not train, name="drop2d")(h)
        h = Conv(self.features, (3, 3), padding="SAME", name="conv2")(h)
        h = SEBlock(self.se_reduction, name="se")(_batch_norm(train, "bn2")(h))
        return _leaky_relu(h + residual, slope_out)


def _leaky_relu(x, slope):
    """leaky_relu(x) = max(x, slope x) for 0 < slope < 1 (no zero constant); `slope` a 0-d array."""
    return jnp.maximum(x, x * slope)


class TransformerEncoderLayer(nn.Module):
    """PyTorch `nn.TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True)`.

    x + drop(SA(LN(x))); then x + drop(W2 drop(gelu(W1 LN(x)))). Input/output (B, N, D). With D = 1024,
    8 heads and ff_dim 2048 it has exactly 8,399,872 parameters.
    """

    num_heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        d = x.shape[-1]
        drop = nn.Dropout(self.dropout, deterministic=not train, name="dropout")  # a fresh mask per call
        h = LayerNorm(epsilon=1e-5, name="norm1")(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout,
                                            deterministic=not train, name="self_attn")(h, h)
        x = x + drop(h)
        h = LayerNorm(epsilon=1e-5, name="norm2")(x)
        h = nn.gelu(nn.Dense(self.ff_dim, name="linear1")(h), approximate=False)
        h = nn.Dense(d, name="linear2")(drop(h))
        return x + drop(h)


def sincos_2d(h: int, w: int, dim: int):
    """2-D sinusoidal positional encoding of an h x w token grid, row-major token order.

    Returns (h*w, dim) float32: the first dim/2 channels are `timestep_embedding(row, dim/2)` ([sin, cos]),
    the last dim/2 the same of the column (the MAE / ViT 2-D sin-cos). `dim` must be a multiple of 4.
    """
    rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    return jnp.concatenate([timestep_embedding(rows.reshape(-1), dim // 2),
                            timestep_embedding(cols.reshape(-1), dim // 2)], axis=-1)


def batch_indexed_pe(batch: int, dim: int):
    """The original's positional encoding bug: row b of the 1-D interleaved sin/cos table for sample b.

    The PyTorch code adds `pe[:x.size(0)]` (shape (B, 1, D)) to batch-first tokens, so every token of sample
    b gets the same vector and tokens carry no position. Returns (B, 1, dim) float32 with
    pe[b, 0, 2i] = sin(b w_i), pe[b, 0, 2i+1] = cos(b w_i), w_i = 10000^(-2i/dim).
    """
    emb = timestep_embedding(jnp.arange(batch), dim)
    half = dim // 2
    return jnp.stack([emb[:, :half], emb[:, half:]], axis=-1).reshape(batch, 1, dim)


class UpBlock(nn.Module):
    """Transposed conv (k2, s2, bias) to `features`, concat [skip, upsampled], then a ConvBlock.

    x (B, h, w, C) and skip (B, 2h, 2w, features) -> (B, 2h, 2w, features).
    """

    features: int
    channel_dropout: float = 0.1
    se_reduction: int = 16

    @nn.compact
    def __call__(self, x, skip, *, train: bool = False):
        up = PatchConvTranspose(self.features, name="upconv")(x)
        h = jnp.concatenate([skip, up], axis=-1)
        return ConvBlock(self.features, self.channel_dropout, self.se_reduction, name="block")(h, train=train)


class TransformerBottleneck(nn.Module):
    """Feature map -> tokens + positional encoding -> pre-norm transformer layers -> feature map.

    Input/output (B, h, w, D), tokens in row-major order; no final LayerNorm. The encoding has no
    parameters: the 2-D sin-cos encoding of the h x w grid (D a multiple of 4), or with `faithful_pe` the
    original's batch-indexed 1-D table (`batch_indexed_pe`), which gives tokens no position.
    """

    num_layers: int = 2
    num_heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1
    faithful_pe: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        b, h, w, d = x.shape
        pe = batch_indexed_pe(b, d) if self.faithful_pe else sincos_2d(h, w, d)[None]
        tokens = x.reshape(b, h * w, d) + pe.astype(x.dtype)
        for i in range(self.num_layers):
            tokens = TransformerEncoderLayer(self.num_heads, self.ff_dim, self.dropout,
                                             name=f"layer{i + 1}")(tokens, train=train)
        return tokens.reshape(b, h, w, d)


@register("transformer_unet")
class TransformerUNet(nn.Module):
    """The BraTS UNet-transformer segmenter: SE-residual UNet with a transformer bottleneck, one logit per pixel.

    Submodules enc1..enc{L}, bottleneck (layer1..layer{num_layers}), up1..up{L-1} (up1 is the deepest), final.
    Attributes:
      in_channels: input channels (informational; inferred from the input).
      widths: encoder block widths; the last is the transformer's d_model. Input H, W must be divisible
        by 2 ** (len(widths) - 1) (240 -> 15x15 = 225 tokens at the defaults).
      num_layers, num_heads, ff_dim, dropout: transformer encoder (pre-norm, GELU, no final norm).
      channel_dropout: Dropout2d rate inside each ConvBlock.
      se_reduction: squeeze-excitation reduction ratio.
      faithful_pe: reproduce the original's batch-indexed encoding (no token positions) instead of the 2-D
        sin-cos encoding of the token grid.
      out_channels: output logits per pixel.
    """

    in_channels: int = 1
    widths: Sequence[int] = (64, 128, 256, 512, 1024)
    num_layers: int = 2
    num_heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1
    channel_dropout: float = 0.1
    se_reduction: int = 16
    faithful_pe: bool = False
    out_channels: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x: (B, H, W, C) image -> (B, H, W, out_channels) logits."""
        factor = 2 ** (len(self.widths) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise InputError(f"transformer_unet input: shape {x.shape} must be (B, H, W, C) with H and W "
                             f"divisible by {factor}")
        skips = []
        for i, f in enumerate(self.widths):
            if i:
                skips.append(x)
                x = max_pool2(x)
            x = ConvBlock(f, self.channel_dropout, self.se_reduction, name=f"enc{i + 1}")(x, train=train)
        x = TransformerBottleneck(self.num_layers, self.num_heads, self.ff_dim, self.dropout, self.faithful_pe,
                                  name="bottleneck")(x, train=train)
        for i, (f, skip) in enumerate(zip(reversed(self.widths[:-1]), reversed(skips))):
            x = UpBlock(f, self.channel_dropout, self.se_reduction, name=f"up{i + 1}")(x, skip, train=train)
        return nn.Conv(self.out_channels, (1, 1), name="final")(x)


@register("vae_error_head")
class ErrorVAE(nn.Module):
    """Small convolutional VAE reconstructing the error map |logits - mask| of the segmenter.

    A stand-in: the original's VAE code was not available, only its use ( loss = BCE + 0.5 * MSE of the
    reconstruction, no KL term). Encoder: 3x3 stride-2 convs with ReLU through `features`; 1x1 convs give
    mu and logvar with `latent_channels`; z = mu + exp(logvar / 2) * eps with eps from rng "sample" when
    training, z = mu otherwise; decoder mirrors with 2x2 stride-2 transposed convs and ReLU, then a linear
    3x3 conv to `out_channels`.
    Attributes:
      in_channels: input channels (informational).
      features: encoder widths; H and W must be divisible by 2 ** len(features).
      latent_channels: channels of the latent map.
      out_channels: reconstruction channels.
    """

    in_channels: int = 1
    features: Sequence[int] = (16, 32)
    latent_channels: int = 8
    out_channels: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x: (B, H, W, C) error map -> (reconstruction (B, H, W, out_channels), mu, logvar), the latter two
        (B, H / 2^n, W / 2^n, latent_channels) with n = len(features)."""
        factor = 2 ** len(self.features)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise InputError(f"vae_error_head input: shape {x.shape} must be (B, H, W, C) with H and W "
                             f"divisible by {factor}")
        h = x
        for i, f in enumerate(self.features):
            h = nn.relu(nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME", name=f"enc{i + 1}")(h))
        mu = nn.Conv(self.latent_channels, (1, 1), name="mu")(h)
        logvar = nn.Conv(self.latent_channels, (1, 1), name="logvar")(h)
        z = mu
        if train:
            eps = jax.random.normal(self.make_rng("sample"), mu.shape, mu.dtype)
            z = mu + jnp.exp(0.5 * logvar) * eps
        for i, f in enumerate(reversed(self.features)):
            z = nn.relu(PatchConvTranspose(f, name=f"dec{i + 1}")(z))
        recon = Conv(self.out_channels, (3, 3), padding="SAME", name="out")(z)
        return recon, mu, logvar
