"""The cascade's AttentionUNet denoiser: the base 64x64 generator and the super-resolution UNet in one module.

Layout (channels-last, 2D):
  input  [x_t, (bilinear upsample of cond["low_res"] to x_t's size), tiled sinusoid(t, emb_dim),
          (tiled sinusoid(cond["aug_level"], emb_dim))]
  encoder per width c in `channels`: ConvBlock (conv3x3 + ReLU twice, no norm) -> (SAGAN self-attention) ->
          skip -> 2x2 max-pool
  bottleneck ConvBlock -> `bottleneck_channels`, then (Swin stage: depth, heads, window)
  decoder per level, deepest first: ConvTranspose k2 s2 -> c, (attention gate on the skip) -> concat ->
          ConvBlock -> c
  output 1x1 conv -> out_channels
Base generator (seed): channels (64, 128, 256), bottleneck 512 at 8x8, sagan, gates, Swin dim 512 / 8 heads /
window 4 / depth 1. SR UNets: the same without sagan and gates, `low_res=True` (and optionally `aug_level=True`
for noise-conditioning augmentation), Swin at 16x16 (SR1) or 32x32 (SR2).
Decisions where the original code is silent: the skip is taken after the SAGAN block; the attention gate (Oktay et al.)
has 1x1 convs with bias and C/2 intermediate channels, no norm; the time embedding has no learned layer.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.errors import InputError
from jaxdiff.models import register
from jaxdiff.models.layers import Conv, PatchConvTranspose, max_pool2, timestep_embedding
from jaxdiff.models.swin import SwinStage


def conv(features: int, kernel: int, name: str | None = None) -> nn.Conv:
    """2D conv with bias and PyTorch "same" padding (kernel - 1) // 2."""
    p = (kernel - 1) // 2
    return Conv(features, (kernel, kernel), padding=((p, p), (p, p)), name=name)


class ConvBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU, no normalisation. Call: (B, H, W, C_in) -> (B, H, W, features)."""
    features: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(conv(self.features, 3, "conv_0")(x))
        return nn.relu(conv(self.features, 3, "conv_1")(x))


class SelfAttention2D(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): q, k 1x1 convs to max(C/8, 1) channels, v to C, softmax over
    all H*W positions (no 1/sqrt(d) scale), y = gamma * attn(x) + x with gamma initialised to 0 (identity).
    Call: (B, H, W, C) -> (B, H, W, C)."""

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        q = conv(max(c // 8, 1), 1, "query")(x).reshape(b, h * w, -1)
        k = conv(max(c // 8, 1), 1, "key")(x).reshape(b, h * w, -1)
        v = conv(c, 1, "value")(x).reshape(b, h * w, c)
        attn = nn.softmax(q @ k.swapaxes(1, 2), axis=-1)
        gamma = self.param("gamma", nn.initializers.zeros, (1,))
        return gamma.astype(x.dtype) * (attn @ v).reshape(b, h, w, c) + x


class AttentionGate(nn.Module):
    """Additive attention gate: skip * sigmoid(psi(ReLU(W_g g + W_x skip))), 1x1 convs, `inter` channels.
    Call: g (B, H, W, C_g) decoder features, skip (B, H, W, C) -> (B, H, W, C)."""
    inter: int

    @nn.compact
    def __call__(self, g, skip):
        a = nn.relu(conv(self.inter, 1, "w_g")(g) + conv(self.inter, 1, "w_x")(skip))
        return skip * nn.sigmoid(conv(1, 1, "psi")(a))


def tiled_embedding(t, dim: int, like):
    """Sinusoid (B,) -> (B, H, W, dim) tiled over the spatial grid of `like` (B, H, W, C), in its dtype."""
    e = timestep_embedding(t, dim).astype(like.dtype)
    return jnp.broadcast_to(e[:, None, None, :], (*like.shape[:3], dim))


def upsample_bilinear(low, size: tuple):
    """(B, h, w, C) -> (B, H, W, C) bilinear, half-pixel centres (PyTorch align_corners=False)."""
    return jax.image.resize(low, (low.shape[0], *size, low.shape[-1]), "bilinear", antialias=False)


@register("attention_unet")
class AttentionUNet(nn.Module):
    """The cascade's AttentionUNet denoiser (see module docstring).

    Attributes:
      out_channels: predicted channels (the image channels).
      channels: encoder widths, one 2x2 max-pool each; input H, W divisible by 2^len(channels).
      bottleneck_channels: width of the bottleneck (and of the Swin stage).
      emb_dim: sinusoid width of the tiled time (and augmentation-level) embedding.
      sagan, gates: SAGAN self-attention after each encoder block; attention gates on the skips.
      swin, swin_depth, swin_heads, swin_window, swin_mlp_ratio: the bottleneck Swin stage.
      faithful_swin: the original's unshifted block on an NCHW-as-NHWC view (see `jaxdiff.models.swin`).
      low_res: condition on cond["low_res"] (B, h, w, C_low), bilinearly upsampled to the input size.
      aug_level: also embed cond["aug_level"] (B,) (the noise-augmentation timestep of the low-res input).
    Call: x (B, H, W, C), t (B,) int or float timesteps, cond dict or None -> (B, H, W, out_channels).
    """
    out_channels: int = 1
    channels: Sequence[int] = (64, 128, 256)
    bottleneck_channels: int = 512
    emb_dim: int = 128
    sagan: bool = True
    gates: bool = True
    swin: bool = True
    swin_depth: int = 1
    swin_heads: int = 8
    swin_window: int = 4
    swin_mlp_ratio: float = 4.0
    faithful_swin: bool = False
    low_res: bool = False
    aug_level: bool = False

    def _inputs(self, x, t, cond):
        factor = 2 ** len(self.channels)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise InputError(f"config key data.image_size: input {x.shape[1:3]} is not 2D and divisible by {factor}")
        parts = [x]
        for key, wanted in (("low_res", self.low_res), ("aug_level", self.aug_level)):
            if wanted and (cond is None or key not in cond):
                raise InputError(f"config key model.{key}: the model needs cond[{key!r}]")
        if self.low_res:
            parts.append(upsample_bilinear(cond["low_res"].astype(x.dtype), x.shape[1:3]))
        parts.append(tiled_embedding(t, self.emb_dim, x))
        if self.aug_level:
            parts.append(tiled_embedding(cond["aug_level"], self.emb_dim, x))
        return jnp.concatenate(parts, axis=-1)

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        h = self._inputs(x, t, cond)
        skips = []
        for i, c in enumerate(self.channels):
            h = ConvBlock(c, name=f"enc_{i}")(h)
            if self.sagan:
                h = SelfAttention2D(name=f"sagan_{i}")(h)
            skips.append(h)
            h = max_pool2(h)
        h = ConvBlock(self.bottleneck_channels, name="mid")(h)
        if self.swin:
            h = SwinStage(self.swin_depth, self.swin_heads, self.swin_window, self.swin_mlp_ratio,
                          self.faithful_swin, name="swin")(h)
        for i in reversed(range(len(self.channels))):
            c, skip = self.channels[i], skips[i]
            h = PatchConvTranspose(c, name=f"up_{i}")(h)
            if self.gates:
                skip = AttentionGate(max(c // 2, 1), name=f"gate_{i}")(h, skip)
            h = ConvBlock(c, name=f"dec_{i}")(jnp.concatenate([h, skip], axis=-1))
        return conv(self.out_channels, 1, "out")(h)
