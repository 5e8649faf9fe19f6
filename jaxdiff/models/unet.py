"""Diffusion UNet (guided-diffusion layout), 2D or 3D from the same code, with optional class/region
conditioning, a low-resolution input for super-resolution, and an image input for image-conditioned models.

Layout: conv_in -> per level `num_res_blocks` ResBlocks (+ attention at `attention_levels`), Downsample except
at the last level -> middle ResBlock, Attention, ResBlock -> per level (reversed) `num_res_blocks + 1` ResBlocks
on [h, skip] (+ attention), Upsample except at level 0 -> GN -> SiLU -> zero-initialised conv_out.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.errors import InputError
from jaxdiff.models import register
from jaxdiff.models.layers import (Attention, Downsample, ResBlock, TimeEmbedding, Upsample, activation, conv,
                                   group_norm)


REMAT_BLOCKS = ("res", "attn")


def remat_blocks(remat) -> frozenset:
    """The block types a `UNet.remat` value recomputes: bool, "res,attn"-style string or tuple of names."""
    if isinstance(remat, bool):
        return frozenset(REMAT_BLOCKS if remat else ())
    names = remat.split(",") if isinstance(remat, str) else list(remat)
    kinds = frozenset(str(n).strip() for n in names if str(n).strip() and str(n).strip() != "none")
    if not kinds <= set(REMAT_BLOCKS):
        raise InputError(f"config key model.remat: {remat!r} names blocks outside {REMAT_BLOCKS}")
    return kinds


@register("unet")
class UNet(nn.Module):
    """Denoiser `(x_t, t, cond) -> prediction` for 2D (B, H, W, C) or 3D (B, D, H, W, C) inputs.

    Attributes:
      out_channels: output channels (None: the channels of x); doubled when learn_sigma.
      base_channels, channel_mults: level l has base_channels * channel_mults[l] channels; spatial sizes must
        be divisible by 2 ** (len(channel_mults) - 1).
      num_res_blocks: ResBlocks per encoder level (the decoder has one more per level).
      attention_levels: level indices (0 = full resolution) with self-attention after each ResBlock.
      num_heads / head_channels: attention heads (head_channels > 0 sets heads = C // head_channels).
      dropout: ResBlock dropout rate (rng collection "dropout", active only when train=True).
      time_dim: timestep-embedding width (None: 4 * base_channels); the sinusoid has base_channels entries.
      time_act: activation inside the time MLP (silu, or gelu for the BrainDiffusion variant).
      num_classes: > 0 adds Embed(num_classes + 1, time_dim)(label) to the time embedding (class or brain
        region, reaching every ResBlock through its scale-shift FiLM); label num_classes is the null label for
        classifier-free guidance and is used when cond has no "label".
      low_res_channels: > 0 requires cond["low_res"] (B, *spatial, low_res_channels), already resized to x's
        spatial shape, concatenated to x (super-resolution).
      learn_sigma: output 2 * out_channels (prediction and variance interpolation).
      groups: GroupNorm groups (min with the channel count).
      remat: gradient checkpointing (same parameters and results, less memory): False, True (= ("res", "attn")),
        or the block types to recompute in the backward pass, a tuple of names from REMAT_BLOCKS or a string
        "res,attn" ("res": ResBlocks, "attn": attention blocks).
      attention_chunk: > 0 computes attention over query chunks of that many positions (see
        `layers.Attention.query_chunk`; bounds the memory of 3D attention where no flash kernel is used).
      dims: spatial rank (None: taken from x.ndim); a mismatching input raises InputError.
    Call: x (B, *spatial, C), t (B,) int32, cond None or dict with optional "label" (B,) int32, "low_res",
      "image" (B, *spatial, C_img) concatenated to x; train enables dropout. Returns (B, *spatial, C_out).
    """
    out_channels: int | None = 1
    base_channels: int = 64
    channel_mults: Sequence[int] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attention_levels: Sequence[int] = (2, 3)
    num_heads: int = 4
    head_channels: int = 0
    dropout: float = 0.0
    time_dim: int | None = None
    time_act: str = "silu"
    num_classes: int = 0
    low_res_channels: int = 0
    learn_sigma: bool = False
    groups: int = 32
    remat: bool | str | Sequence[str] = False
    attention_chunk: int = 0
    dims: int | None = None

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        self._check(x)
        cond = dict(cond or {})
        out_channels = (self.out_channels or x.shape[-1]) * (2 if self.learn_sigma else 1)
        emb = self._embedding(t, cond, x.dtype)
        kinds = remat_blocks(self.remat)
        res_block = nn.remat(ResBlock, static_argnums=(3,)) if "res" in kinds else ResBlock
        attention = nn.remat(Attention) if "attn" in kinds else Attention

        def res(h, channels, name):
            return res_block(channels, dropout=self.dropout, groups=self.groups, name=f"{name}_res")(h, emb, train)

        def attn(h, name):
            return attention(self.num_heads, self.head_channels, self.groups, query_chunk=self.attention_chunk,
                             name=f"{name}_attn")(h)

        def block(h, channels, level, name):
            h = res(h, channels, name)
            return attn(h, name) if level in self.attention_levels else h

        h = conv(self.base_channels * self.channel_mults[0], x.ndim, name="conv_in")(self._inputs(x, cond))
        skips = [h]
        last = len(self.channel_mults) - 1
        for level, mult in enumerate(self.channel_mults):
            for i in range(self.num_res_blocks):
                h = block(h, self.base_channels * mult, level, f"down_{level}_{i}")
                skips.append(h)
            if level != last:
                h = Downsample(name=f"down_{level}_downsample")(h)
                skips.append(h)
        h = res(attn(res(h, h.shape[-1], "mid_0"), "mid"), h.shape[-1], "mid_1")
        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for i in range(self.num_res_blocks + 1):
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), self.base_channels * mult, level,
                          f"up_{level}_{i}")
            if level != 0:
                h = Upsample(name=f"up_{level}_upsample")(h)
        h = group_norm(h, self.groups, name="norm_out", act=nn.silu)
        return conv(out_channels, x.ndim, zero_init=True, name="conv_out")(h)

    def _check(self, x):
        """Validate rank, spatial divisibility and attention levels (InputError naming the model key)."""
        if x.ndim < 3 or (self.dims is not None and x.ndim != self.dims + 2):
            raise InputError(f"config key model.dims: input of shape {x.shape} is not (B, *spatial, C) with "
                             f"{self.dims or 'at least 1'} spatial axes")
        factor = 2 ** (len(self.channel_mults) - 1)
        if any(s % factor for s in x.shape[1:-1]):
            raise InputError(f"config key model.channel_mults: spatial shape {x.shape[1:-1]} is not divisible "
                             f"by {factor} ({len(self.channel_mults)} levels)")
        if any(not 0 <= level < len(self.channel_mults) for level in self.attention_levels):
            raise InputError(f"config key model.attention_levels: {tuple(self.attention_levels)} outside "
                             f"levels 0..{len(self.channel_mults) - 1}")

    def _embedding(self, t, cond, dtype):
        """(B, time_dim) time embedding (+ class embedding) in the compute dtype."""
        time_dim = self.time_dim or 4 * self.base_channels
        act = activation(self.time_act, "model.time_act")
        emb = TimeEmbedding(self.base_channels, time_dim, act, name="time_embed")(t).astype(dtype)
        if self.num_classes > 0:
            label = cond.get("label")
            if label is None:
                label = jnp.full((t.shape[0],), self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, time_dim, name="label_embed")(label).astype(dtype)
        return emb

    def _inputs(self, x, cond):
        """x concatenated with cond["image"] and (super-resolution) cond["low_res"] along channels."""
        parts = [x]
        if "image" in cond:
            if cond["image"].shape[:-1] != x.shape[:-1]:
                raise InputError(f"cond['image'] of shape {cond['image'].shape} does not match x of shape {x.shape}")
            parts.append(cond["image"].astype(x.dtype))
        if self.low_res_channels:
            low_res = cond.get("low_res")
            if low_res is None or low_res.shape != (*x.shape[:-1], self.low_res_channels):
                raise InputError(f"config key model.low_res_channels: cond['low_res'] must have shape "
                                 f"{(*x.shape[:-1], self.low_res_channels)}, got "
                                 f"{None if low_res is None else low_res.shape}")
            parts.append(low_res.astype(x.dtype))
        return jnp.concatenate(parts, axis=-1)
