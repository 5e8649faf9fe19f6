"""MedSegDiff denoiser (arXiv 2211.00611) in the structure of lucidrains' med-seg-diff-pytorch `Unet`.

The noisy mask x_t and the image run through two parallel encoders (same structure, separate weights).
At every level the mask features, filtered by the FF-Parser, modulate the image features (dynamic
conditional encoding); the two streams are summed at the bottleneck, and one decoder with skips from
the mask stream predicts the noise eps.

Per encoder level (features a -> b, resolution r = image_size / 2**level), for each stream:
  `num_res_blocks` ResnetBlocks (skip after each; the last skip is taken after the attention)
  -> residual attention (full softmax attention if r is in `attention_resolutions`, else linear)
  -> image stream only: DynamicFusion(mask, image) = ResnetBlock(fuse(LN(FFParser(mask)), LN(image), image))
  -> space-to-depth 2x2 + 1x1 conv to b channels (last level: 3x3 conv, no resize).
Bottleneck: ResnetBlock on each stream, summed -> transformer (attention + feed-forward, residual)
-> ResnetBlock. Decoder mirrors the encoder with skip concatenation, nearest x2 + 3x3 conv. Output:
concatenate the mask stem features -> ResnetBlock -> 1x1 conv to `mask_channels`.

The original notebook (MedSegDiff on LGG, built on this code) is
`dict(name="medsegdiff", image_size=32, num_layers=2, first_conv_channels=16, time_embedding_dim=128,
image_channels=3, mask_channels=1, faithful_ffparser=True)`: levels [16, 16, 32], 405,041 parameters
(406,577 with the paper's complex FF-Parser). The paper scale is image_size=256, first_conv_channels=128,
num_layers=6, channel_mults=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attention_resolutions=(16,),
time_embedding_dim=512.

Faithful flags reproduce the original notebook where it differs from the paper (defaults are the paper's):
- faithful_time_embedding: the notebook embeds t as t * [sin f, cos f] with lucidrains' frequencies
  f_i = 10000^(-i / (half - 1)); the default is [sin(t f), cos(t f)] (`layers.timestep_embedding`).
- faithful_fusion: the notebook fuses LN(m_x) * LN(m_I) * LN(m_I); the paper (eq. 3) (LN(m_I) * LN(m_x)) * m_I.
- faithful_ffparser: the notebook's real (C, H, W) fft2 weight instead of the complex rfft2 weight.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff import ops
from jaxdiff.errors import InputError
from jaxdiff.models import register
from jaxdiff.models.ffparser import FFParser
from jaxdiff.models.layers import Conv, Dense, DenseParams, LayerNorm, ResBlock, Upsample, timestep_embedding

# lucidrains' LayerNorm eps in float32 (Flax's default is 1e-6).
_EPS = 1e-5


def _layer_norm(bias: bool, name: Optional[str] = None):
    """Channel LayerNorm with a learned gain (and bias if `bias`), two-pass variance like torch.var."""
    return LayerNorm(epsilon=_EPS, use_bias=bias, name=name)


def seed_time_embedding(t, dim: int):
    """The notebook's (buggy) sinusoidal embedding: t * [sin f, cos f], f_i = 10000^(-i / (dim/2 - 1)).

    Args: t (B,) timesteps; dim even embedding width (>= 4). Returns (B, dim) float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    return jnp.asarray(t, jnp.float32)[:, None] * jnp.concatenate([jnp.sin(freqs), jnp.cos(freqs)])[None, :]


def space_to_depth(x):
    """(B, H, W, C) -> (B, H/2, W/2, 4C), channel order (c, p1, p2) as einops 'b c (h p1) (w p2) -> b (c p1 p2) h w'."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def resnet_block(features: int, groups: int = 8, dropout: float = 0.0, name: Optional[str] = None):
    """lucidrains' ResnetBlock: conv3x3 -> GroupNorm -> (scale+1, shift from SiLU -> Dense(temb)) -> SiLU
    -> conv3x3 -> GroupNorm -> SiLU [-> dropout], plus a 1x1-conv residual when the width changes
    (`layers.ResBlock` in its norm-after-conv form). Call: x (B, H, W, C_in), temb (B, T) or None (no time
    parameters then), train -> (B, H, W, features)."""
    return ResBlock(features, dropout=dropout, groups=groups, norm_first=False, zero_init=False, name=name)


class Attention(nn.Module):
    """Residual multi-head self-attention over the H*W positions, pre-LayerNorm (gain only).

    `linear=True` is lucidrains' LinearAttention (softmax of q over features, of k over positions,
    context k^T v; output LayerNorm), O(H*W); otherwise full softmax attention.
    Call: x (B, H, W, C) -> (B, H, W, C).
    """
    heads: int = 4
    dim_head: int = 32
    linear: bool = False

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x_norm = _layer_norm(False)(x).reshape(b * h * w, c)
        hd = self.heads * self.dim_head
        kernel, _ = DenseParams(3 * hd, use_bias=False, name="to_qkv")(c)
        x_norm, kernel = nn.dtypes.promote_dtype(x_norm, kernel)
        # `to_qkv` (torch's Linear, one (C, 3 heads d) kernel) applied as products with its column blocks: splitting
        # the (B N, 3 heads d) product instead made XLA:CPU copy each third out of it.
        q, k = (ops.matmul(x_norm, kernel[:, i * hd:(i + 1) * hd]).reshape(b, -1, self.heads, self.dim_head)
                for i in range(2))
        w_v = kernel[:, 2 * hd:]
        if self.linear:
            out = self._linear(q, k, x_norm.reshape(b, -1, c), w_v)
            return x + _layer_norm(False)(out.reshape(b, h, w, c))
        v = ops.matmul(x_norm, w_v).reshape(b, -1, self.heads, self.dim_head)
        return x + Dense(c, name="to_out")(ops.dot_product_attention(q, k, v).reshape(b, h, w, hd))

    def _linear(self, q, k, x_norm, w_v):
        """lucidrains' LinearAttention and `to_out`: q, k (B, N, heads, d), the normalised input x_norm (B, N, C) and
        the value kernel w_v (C, heads d) -> (B, N, C). Per head h, with v_h the head's columns of x_norm w_v:

          q_h = softmax over its d features of q_h, times d^-1/2;  k_h = softmax over the N positions of k_h
          context_h = k_h^T v_h (d x d);  out = concat_h(q_h context_h) W_out + b_out

        (`ops.linear_attention_context` / `ops.linear_attention_output`; on the CPU they never form v or the
        per-head outputs.)
        """
        d = q.shape[-1]
        q, scale = ops.with_scalar(q, d ** -0.5)
        q = jax.nn.softmax(q, axis=-1) * scale
        k = jax.nn.softmax(k, axis=1)
        context = ops.linear_attention_context(k, x_norm, w_v)  # (B, heads, d, d)
        kernel, bias = DenseParams(x_norm.shape[-1], name="to_out")(q.shape[2] * d)
        return ops.linear_attention_output(q, context, kernel) + bias


class FeedForward(nn.Module):
    """Residual LayerNorm (gain only) -> 1x1 conv to `mult` C -> GELU -> 1x1 conv. (B,H,W,C) -> (B,H,W,C)."""
    mult: int = 4

    @nn.compact
    def __call__(self, x):
        h = Dense(self.mult * x.shape[-1])(_layer_norm(False)(x))
        return x + Dense(x.shape[-1])(nn.gelu(h, approximate=False))


class DynamicFusion(nn.Module):
    """Dynamic conditional encoding (lucidrains' `Conditioning`): the mask features, filtered by the
    FF-Parser, form an affinity map with the image features, then a ResnetBlock without time.

    Call: mask (B, H, W, C) features m_x, image (B, H, W, C) features m_I -> new image features (B, H, W, C).
    """
    groups: int = 8
    faithful_fusion: bool = False
    faithful_ffparser: bool = False

    @nn.compact
    def __call__(self, mask, image):
        normed_mask = _layer_norm(True, name="norm_input")(FFParser(self.faithful_ffparser)(mask))
        normed_image = _layer_norm(True, name="norm_condition")(image)
        fused = normed_mask * normed_image * (normed_image if self.faithful_fusion else image)
        return resnet_block(image.shape[-1], self.groups, name="block")(fused)


class Resample(nn.Module):
    """Change width to `features` and resolution by `mode`: "down" space-to-depth 2x2 + 1x1 conv,
    "up" nearest x2 + 3x3 conv, "same" a 3x3 conv. (B, H, W, C) -> (B, H', W', features)."""
    features: int
    mode: str

    @nn.compact
    def __call__(self, x):
        if self.mode == "down":
            return nn.Conv(self.features, (1, 1))(space_to_depth(x))
        if self.mode == "up":
            return Upsample(self.features)(x)
        return Conv(self.features, (3, 3))(x)


class EncoderLevel(nn.Module):
    """One stream at one encoder level: `num_res_blocks` ResnetBlocks then residual attention.

    Call: x (B, H, W, C), temb (B, T) -> (x (B, H, W, C), skips: list of `num_res_blocks` (B, H, W, C),
    the last one taken after the attention).
    """
    num_res_blocks: int
    full_attention: bool
    heads: int
    dim_head: int
    groups: int
    dropout: float

    @nn.compact
    def __call__(self, x, temb, *, train: bool = False):
        skips = []
        for i in range(self.num_res_blocks):
            x = resnet_block(x.shape[-1], self.groups, self.dropout)(x, temb, train=train)
            if i < self.num_res_blocks - 1:
                skips.append(x)
        x = Attention(self.heads, self.dim_head, linear=not self.full_attention)(x)
        return x, skips + [x]


class DecoderLevel(nn.Module):
    """One decoder level: per skip, concatenate it and apply a ResnetBlock to `features`; residual
    attention; then resample to `out_features` ("up" or "same").

    Call: x (B, H, W, C), skips (popped from the end), temb (B, T) -> (B, H', W', out_features).
    """
    features: int
    out_features: int
    resample: str
    full_attention: bool
    heads: int
    dim_head: int
    groups: int
    dropout: float

    @nn.compact
    def __call__(self, x, skips, temb, *, train: bool = False):
        for skip in reversed(skips):
            x = jnp.concatenate([x, skip], axis=-1)
            x = resnet_block(self.features, self.groups, self.dropout)(x, temb, train=train)
        x = Attention(self.heads, self.dim_head, linear=not self.full_attention)(x)
        return Resample(self.out_features, self.resample)(x)


@register("medsegdiff")
class MedSegDiff(nn.Module):
    """MedSegDiff eps-predictor for a noisy mask conditioned on an image (see the module docstring).

    Attributes:
      image_size: square input side in pixels; checked against the inputs.
      image_channels, mask_channels: channels of the conditioning image and of the mask / output.
      first_conv_channels: width of the 7x7 stems and base width `dim` of the levels; also the width of
        the sinusoidal time embedding.
      num_layers: number of encoder levels; `channel_mults` defaults to (1, 2, 4, ...)[:num_layers].
      channel_mults: level output widths as multiples of `first_conv_channels` (len == num_layers);
        level widths are [first_conv_channels, *mults * first_conv_channels].
      time_embedding_dim: width T of the time MLP (sinusoid -> Dense T -> GELU -> Dense T).
      num_res_blocks: ResnetBlocks (and skips) per level and stream.
      attention_resolutions: resolutions with full softmax attention; other levels use linear attention.
      attention_heads, attention_head_dim: attention shape everywhere (4 x 32 in the notebook).
      transformer_depth: attention + feed-forward layers at the bottleneck.
      resnet_groups: GroupNorm groups. dropout: rate inside each time-conditioned ResnetBlock.
      faithful_time_embedding, faithful_fusion, faithful_ffparser: reproduce the notebook (module docstring).
    """
    image_size: int = 32
    image_channels: int = 3
    mask_channels: int = 1
    first_conv_channels: int = 16
    num_layers: int = 2
    channel_mults: Optional[Sequence[int]] = None
    time_embedding_dim: int = 128
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    attention_heads: int = 4
    attention_head_dim: int = 32
    transformer_depth: int = 1
    resnet_groups: int = 8
    dropout: float = 0.0
    faithful_time_embedding: bool = False
    faithful_fusion: bool = False
    faithful_ffparser: bool = False

    def level_widths(self) -> list:
        """[first_conv_channels, *channel widths per level]: level i maps widths[i] -> widths[i + 1]."""
        mults = self.channel_mults if self.channel_mults is not None else [2 ** i for i in range(self.num_layers)]
        if len(mults) != self.num_layers:
            raise InputError(f"config key model.channel_mults: {len(mults)} entries but num_layers={self.num_layers}")
        return [self.first_conv_channels, *(self.first_conv_channels * m for m in mults)]

    def _check_inputs(self, x, image):
        if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, self.mask_channels):
            raise InputError(f"config key model.image_size / model.mask_channels: mask of shape {x.shape}, expected "
                             f"(B, {self.image_size}, {self.image_size}, {self.mask_channels})")
        if image.shape != (*x.shape[:3], self.image_channels):
            raise InputError(f"config key model.image_channels: image of shape {image.shape}, expected "
                             f"{(*x.shape[:3], self.image_channels)}")
        if self.image_size % 2 ** (self.num_layers - 1):
            raise InputError(f"config key model.image_size: {self.image_size} is not divisible by "
                             f"2**(num_layers-1) = {2 ** (self.num_layers - 1)}")

    def _time_mlp(self, t, dtype):
        embed = seed_time_embedding if self.faithful_time_embedding else timestep_embedding
        h = nn.Dense(self.time_embedding_dim, name="time_mlp_0")(embed(t, self.first_conv_channels).astype(dtype))
        return nn.Dense(self.time_embedding_dim, name="time_mlp_1")(nn.gelu(h, approximate=False))

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        """x (B, H, W, mask_channels) noisy mask, t (B,) int timesteps, cond {"image": (B, H, W,
        image_channels)} -> eps prediction (B, H, W, mask_channels)."""
        if cond is None or "image" not in cond:
            raise ValueError("MedSegDiff needs cond={'image': (B, H, W, C) array}")
        image = cond["image"]
        self._check_inputs(x, image)
        widths = self.level_widths()
        level_kw = dict(heads=self.attention_heads, dim_head=self.attention_head_dim,
                        groups=self.resnet_groups, dropout=self.dropout)
        temb = self._time_mlp(t, x.dtype)

        x = nn.Conv(widths[0], (7, 7), name="mask_stem")(x)
        stem = x
        c = nn.Conv(widths[0], (7, 7), name="image_stem")(image)
        skips = []
        for i in range(self.num_layers):
            full = self.image_size // 2 ** i in self.attention_resolutions
            resample = "same" if i == self.num_layers - 1 else "down"
            x, level_skips = EncoderLevel(self.num_res_blocks, full, **level_kw, name=f"mask_down_{i}")(
                x, temb, train=train)
            c, _ = EncoderLevel(self.num_res_blocks, full, **level_kw, name=f"image_down_{i}")(c, temb, train=train)
            c = DynamicFusion(self.resnet_groups, self.faithful_fusion, self.faithful_ffparser,
                              name=f"fusion_{i}")(x, c)
            skips.append(level_skips)
            x = Resample(widths[i + 1], resample, name=f"mask_resample_{i}")(x)
            c = Resample(widths[i + 1], resample, name=f"image_resample_{i}")(c)

        mid = functools.partial(resnet_block, widths[-1], self.resnet_groups, self.dropout)
        x = mid(name="mask_mid")(x, temb, train=train) + mid(name="image_mid")(c, temb, train=train)
        for j in range(self.transformer_depth):
            x = Attention(self.attention_heads, self.attention_head_dim, name=f"mid_attention_{j}")(x)
            x = FeedForward(name=f"mid_feedforward_{j}")(x)
        x = mid(name="mid_out")(x, temb, train=train)

        for i in reversed(range(self.num_layers)):
            full = self.image_size // 2 ** i in self.attention_resolutions
            x = DecoderLevel(widths[i + 1], widths[i], "up" if i > 0 else "same", full, **level_kw,
                             name=f"up_{i}")(x, skips[i], temb, train=train)

        x = resnet_block(self.first_conv_channels, self.resnet_groups, self.dropout, name="final_block")(
            jnp.concatenate([x, stem], axis=-1), temb, train=train)
        return nn.Conv(self.mask_channels, (1, 1), name="final_conv")(x)
