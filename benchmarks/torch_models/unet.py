"""PyTorch reference of jaxdiff's diffusion UNet (guided-diffusion layout), 2D (NCHW) or 3D (NCDHW).

Mirrors `jaxdiff.models.unet.UNet` and the blocks of `jaxdiff.models.layers` it uses, so the weights map 1:1
(`benchmarks.port.port_unet`). With `dims=3`, base 64, mults (1, 2, 4, 8), 2 res blocks, attention at levels
2 and 3, dropout 0.1, time_dim 256 and time_act "gelu" it is the 3D brain DDPM's UNet3D with the original's
decoder channel arithmetic fixed (skip widths are tracked) and real multi-head 3D attention.

Layout: conv_in -> per level (`down[l]`) ResBlocks `res[i]` (+ `attn[i]` at attention levels) and a stride-2
`downsample` except at the last level -> `mid_res[0]`, `mid_attn`, `mid_res[1]` -> per level (`up[l]`, run
from the deepest) num_res_blocks + 1 ResBlocks on [h, skip] (+ attention) and an `upsample` except at level 0
-> GroupNorm -> SiLU -> zero-initialised conv_out. Zero-initialised layers are zeroed here as in jaxdiff.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) float32 `[sin(t f), cos(t f)]`, f_i = max_period^(-i / (dim / 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def conv_nd(dims: int, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    """Conv{1,2,3}d with bias and padding (kernel - 1) // 2 (jaxdiff's `layers.conv`)."""
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    return cls(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with min(groups, channels) groups and eps 1e-5."""
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-5)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place (jaxdiff's zero_init); returns the layer."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned by scale-shift FiLM, for 1D/2D/3D inputs (jaxdiff's `layers.ResBlock`).

    norm_first=True (guided-diffusion): h = conv_0(SiLU(norm_0(x))); h = conv_1(dropout(SiLU(FiLM(norm_1(h))))).
    norm_first=False (lucidrains / MedSegDiff): h = SiLU(FiLM(norm_0(conv_0(x)))); h = dropout(SiLU(norm_1(conv_1(h)))).
    FiLM: x * (1 + scale) + shift with (scale, shift) = film(SiLU(emb)). Output skip(x) + h, skip a 1x1 conv
    when the width changes. emb_dim=None: no conditioning. conv_1 is zeroed when zero_init.
    Call: x (B, C_in, *spatial), emb (B, emb_dim) or None -> (B, out_channels, *spatial).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None = None, dropout: float = 0.0,
                 groups: int = 32, norm_first: bool = True, zero_init: bool = True, dims: int = 2):
        super().__init__()
        self.norm_first = norm_first
        self.conv_0 = conv_nd(dims, in_channels, out_channels)
        self.norm_0 = group_norm(in_channels if norm_first else out_channels, groups)
        self.film = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None
        self.conv_1 = conv_nd(dims, out_channels, out_channels)
        if zero_init:
            zero_(self.conv_1)
        self.norm_1 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.skip = conv_nd(dims, in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def _film(self, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        if self.film is None:
            return h
        scale, shift = self.film(F.silu(emb)).view(emb.shape[0], -1, *([1] * (h.ndim - 2))).chunk(2, dim=1)
        return h * (1 + scale) + shift

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            h = self.conv_0(F.silu(self.norm_0(x)))
            h = self.conv_1(self.dropout(F.silu(self._film(self.norm_1(h), emb))))
        else:
            h = F.silu(self._film(self.norm_0(self.conv_0(x)), emb))
            h = self.dropout(F.silu(self.norm_1(self.conv_1(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Residual multi-head self-attention over all positions: x + proj(attn(qkv(GroupNorm(x)))).

    Heads: channels // head_channels when head_channels > 0, else num_heads. proj is zero-initialised.
    Call: x (B, C, *spatial) -> same shape.
    """

    def __init__(self, channels: int, num_heads: int = 4, head_channels: int = 0, groups: int = 32):
        super().__init__()
        self.heads = channels // head_channels if head_channels else num_heads
        if self.heads < 1 or channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).view(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return x + self.proj(out).transpose(1, 2).reshape(x.shape)


class Downsample(nn.Module):
    """3x3(x3) stride-2 conv, padding 1. Call: (B, C, S1, ...) -> (B, C, S1 / 2, ...)."""

    def __init__(self, channels: int, dims: int = 2):
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 on every spatial axis, then a 3x3(x3) conv to out_channels (default: channels).
    Call: (B, C, S1, ...) -> (B, out_channels, 2 S1, ...)."""

    def __init__(self, channels: int, out_channels: int | None = None, dims: int = 2):
        super().__init__()
        self.conv = conv_nd(dims, channels, out_channels or channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """Diffusion denoiser `(x_t, t, cond) -> prediction`, the PyTorch twin of `jaxdiff.models.unet.UNet`.

    Arguments are jaxdiff's `UNet` fields (same meaning and defaults) plus what PyTorch needs up front:
      in_channels: channels of x_t; image_channels: channels of cond["image"] (0: none); dims: 1, 2 or 3.
    out_channels=None means in_channels. remat: gradient checkpointing of ResBlocks and attention in training.
    Call: x (B, in_channels, *spatial), t (B,) int64, cond None or dict with optional "label" (B,) int64,
      "image" (B, image_channels, *spatial), "low_res" (B, low_res_channels, *spatial) -> (B, C_out, *spatial).
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = 1, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (2, 3), num_heads: int = 4, head_channels: int = 0,
                 dropout: float = 0.0, time_dim: int | None = None, time_act: str = "silu", num_classes: int = 0,
                 low_res_channels: int = 0, learn_sigma: bool = False, groups: int = 32, remat: bool = False,
                 dims: int = 2, image_channels: int = 0):
        super().__init__()
        self.base_channels, self.num_classes, self.remat = base_channels, num_classes, remat
        self.low_res_channels = low_res_channels
        time_dim = time_dim or 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(base_channels, time_dim), ACTIVATIONS[time_act](),
                                        nn.Linear(time_dim, time_dim))
        self.label_embed = nn.Embedding(num_classes + 1, time_dim) if num_classes > 0 else None
        ch = base_channels * channel_mults[0]
        self.conv_in = conv_nd(dims, in_channels + image_channels + low_res_channels, ch)
        block = dict(emb_dim=time_dim, dropout=dropout, groups=groups, dims=dims)
        attention = dict(num_heads=num_heads, head_channels=head_channels, groups=groups)
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            stage = nn.ModuleDict(dict(res=nn.ModuleList(), attn=nn.ModuleList()))
            for _ in range(num_res_blocks):
                stage["res"].append(ResBlock(ch, base_channels * mult, **block))
                ch = base_channels * mult
                if level in attention_levels:
                    stage["attn"].append(Attention(ch, **attention))
                skip_channels.append(ch)
            if level != len(channel_mults) - 1:
                stage["downsample"] = Downsample(ch, dims)
                skip_channels.append(ch)
            self.down.append(stage)
        self.mid_res = nn.ModuleList([ResBlock(ch, ch, **block), ResBlock(ch, ch, **block)])
        self.mid_attn = Attention(ch, **attention)
        up = {}
        for level, mult in reversed(list(enumerate(channel_mults))):
            up[level] = stage = nn.ModuleDict(dict(res=nn.ModuleList(), attn=nn.ModuleList()))
            for _ in range(num_res_blocks + 1):
                stage["res"].append(ResBlock(ch + skip_channels.pop(), base_channels * mult, **block))
                ch = base_channels * mult
                if level in attention_levels:
                    stage["attn"].append(Attention(ch, **attention))
            if level != 0:
                stage["upsample"] = Upsample(ch, dims=dims)
        self.up = nn.ModuleList([up[level] for level in range(len(channel_mults))])
        self.norm_out = group_norm(ch, groups)
        self.conv_out = zero_(conv_nd(dims, ch, (out_channels or in_channels) * (2 if learn_sigma else 1)))

    @classmethod
    def from_jax_config(cls, model_config, in_channels: int | None = None, image_channels: int = 0,
                        dims: int | None = None) -> "UNet":
        """Build from a jaxdiff `model` block (name "unet"). in_channels defaults to out_channels (or 1);
        dims to the block's `dims` (or 2)."""
        cfg = {k: v for k, v in dict(model_config).items() if k != "name"}
        cfg["dims"] = dims or cfg.get("dims") or 2
        in_channels = in_channels or cfg.get("out_channels") or 1
        return cls(in_channels=in_channels, image_channels=image_channels, **cfg)

    def _run(self, layer: nn.Module, *args) -> torch.Tensor:
        """layer(*args), recomputed in the backward pass when remat is on and the model is training."""
        if self.remat and self.training:
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _block(self, stage: nn.ModuleDict, i: int, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self._run(stage["res"][i], h, emb)
        return self._run(stage["attn"][i], h) if len(stage["attn"]) else h

    def _embedding(self, t: torch.Tensor, cond: dict) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.base_channels))
        if self.label_embed is not None:
            label = cond.get("label")
            if label is None:
                label = torch.full_like(t, self.num_classes)
            emb = emb + self.label_embed(label)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        cond = cond or {}
        emb = self._embedding(t, cond)
        keys = ["image"] * ("image" in cond) + ["low_res"] * bool(self.low_res_channels)
        extra = [cond[k].to(x.dtype) for k in keys]
        h = self.conv_in(torch.cat([x, *extra], dim=1))
        skips = [h]
        for stage in self.down:
            for i in range(len(stage["res"])):
                h = self._block(stage, i, h, emb)
                skips.append(h)
            if "downsample" in stage:
                h = stage["downsample"](h)
                skips.append(h)
        h = self._run(self.mid_res[1], self._run(self.mid_attn, self._run(self.mid_res[0], h, emb)), emb)
        for stage in reversed(self.up):
            for i in range(len(stage["res"])):
                h = self._block(stage, i, torch.cat([h, skips.pop()], dim=1), emb)
            if "upsample" in stage:
                h = stage["upsample"](h)
        return self.conv_out(F.silu(self.norm_out(h)))
