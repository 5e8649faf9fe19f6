"""PyTorch reference of jaxdiff's MedSegDiff (Wu et al. 2023), as lucidrains' med-seg-diff-pytorch `Unet`.

Mirrors `jaxdiff.models.medsegdiff.MedSegDiff` block for block (see its docstring for the architecture and the
faithful_* flags), NCHW, so the weights map 1:1 (`benchmarks.port.port_medsegdiff`). The LGG notebook's configuration
`MedSegDiff(image_size=32, num_layers=2, first_conv_channels=16, time_embedding_dim=128, faithful_ffparser=True)`
has 405,041 parameters.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_models.unet import ResBlock, Upsample, timestep_embedding


def seed_time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The original code's (buggy) embedding t * [sin f, cos f], f_i = 10000^(-i / (dim/2 - 1)); (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float32, device=t.device))
    return t.float()[:, None] * torch.cat([torch.sin(freqs), torch.cos(freqs)])[None, :]


def resnet_block(in_channels: int, out_channels: int, emb_dim: int | None, groups: int = 8,
                 dropout: float = 0.0) -> ResBlock:
    """lucidrains' ResnetBlock: conv3x3 -> GN -> scale/shift -> SiLU -> conv3x3 -> GN -> SiLU, 1x1 residual."""
    return ResBlock(in_channels, out_channels, emb_dim, dropout, groups, norm_first=False, zero_init=False)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, H, W), eps 1e-5 (lucidrains' LayerNorm, with optional bias)."""

    def __init__(self, channels: int, bias: bool = True):
        super().__init__(channels, eps=1e-5, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class FFParser(nn.Module):
    """Learnable Fourier filter (jaxdiff's `ffparser.FFParser`). (B, C, H, W) -> (B, C, H, W), FFT in float32.

    faithful=True (seed): real `ff_parser_attn_map` (C, H, W), ones, on fft2 -> ifft2 -> real part.
    faithful=False (paper): complex `complex_weight` (C, H, W//2+1, 2) (real, imag), identity init, on
    rfft2 -> irfft2 with norm="ortho".
    """

    def __init__(self, channels: int, size: int, faithful: bool = False):
        super().__init__()
        self.faithful = faithful
        if faithful:
            self.ff_parser_attn_map = nn.Parameter(torch.ones(channels, size, size))
        else:
            weight = torch.zeros(channels, size, size // 2 + 1, 2)
            weight[..., 0] = 1.0
            self.complex_weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        if self.faithful:
            out = torch.fft.ifft2(torch.fft.fft2(x32) * self.ff_parser_attn_map.float()).real
        else:
            spectrum = torch.fft.rfft2(x32, norm="ortho") * torch.view_as_complex(self.complex_weight.float())
            out = torch.fft.irfft2(spectrum, s=x.shape[-2:], norm="ortho")
        return out.to(x.dtype)


class Attention(nn.Module):
    """Residual multi-head self-attention over the H*W positions with pre-LayerNorm (gain only).

    linear=True: lucidrains' LinearAttention (softmax of q over features, of k over positions, context k^T v,
    output LayerNorm `out_norm`); otherwise full softmax attention. Call: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, heads: int = 4, dim_head: int = 32, linear: bool = False):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = nn.LayerNorm(channels, eps=1e-5, bias=False)
        self.to_qkv = nn.Linear(channels, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, channels)
        self.out_norm = nn.LayerNorm(channels, eps=1e-5, bias=False) if linear else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = (a.reshape(b, h * w, self.heads, self.dim_head) for a in
                   self.to_qkv(self.norm(tokens)).chunk(3, dim=-1))
        if self.out_norm is not None:
            q = q.softmax(dim=-1) * self.dim_head ** -0.5
            context = torch.einsum("bnhd,bnhe->bhde", k.softmax(dim=1), v)
            out = torch.einsum("bhde,bnhd->bnhe", context, q)
        else:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            out = out.transpose(1, 2)
        out = self.to_out(out.reshape(b, h * w, -1))
        if self.out_norm is not None:
            out = self.out_norm(out)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class FeedForward(nn.Module):
    """Residual LayerNorm (gain only) -> Linear to mult*C -> GELU -> Linear. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-5, bias=False)
        self.fc1 = nn.Linear(channels, mult * channels)
        self.fc2 = nn.Linear(mult * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        out = self.fc2(F.gelu(self.fc1(self.norm(tokens))))
        return x + out.transpose(1, 2).reshape(x.shape)


class DynamicFusion(nn.Module):
    """Dynamic conditional encoding: block(LN(FFParser(mask)) * LN(image) * (LN(image) if faithful_fusion else
    image)). Call: mask, image (B, C, H, W) -> new image features (B, C, H, W)."""

    def __init__(self, channels: int, size: int, groups: int = 8, faithful_fusion: bool = False,
                 faithful_ffparser: bool = False):
        super().__init__()
        self.faithful_fusion = faithful_fusion
        self.ff_parser = FFParser(channels, size, faithful_ffparser)
        self.norm_input = ChannelLayerNorm(channels)
        self.norm_condition = ChannelLayerNorm(channels)
        self.block = resnet_block(channels, channels, None, groups)

    def forward(self, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        normed_mask = self.norm_input(self.ff_parser(mask))
        normed_image = self.norm_condition(image)
        return self.block(normed_mask * normed_image * (normed_image if self.faithful_fusion else image))


class Resample(nn.Module):
    """Mode "down": pixel-unshuffle 2x2 + 1x1 `conv`; "up": `upsample` (nearest x2 + 3x3 conv); "same": 3x3 `conv`.
    Call: (B, C, H, W) -> (B, out_channels, H', W')."""

    def __init__(self, channels: int, out_channels: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "up":
            self.upsample = Upsample(channels, out_channels)
        else:
            self.conv = nn.Conv2d(4 * channels if mode == "down" else channels, out_channels,
                                  1 if mode == "down" else 3, padding=0 if mode == "down" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            return self.upsample(x)
        return self.conv(F.pixel_unshuffle(x, 2) if self.mode == "down" else x)


class EncoderLevel(nn.Module):
    """One stream at one level: `blocks` (num_res_blocks ResnetBlocks) then residual `attn`.
    Call: x (B, C, H, W), temb -> (x, skips: num_res_blocks maps, the last taken after the attention)."""

    def __init__(self, channels: int, emb_dim: int, num_res_blocks: int, full_attention: bool, heads: int,
                 dim_head: int, groups: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList([resnet_block(channels, channels, emb_dim, groups, dropout)
                                     for _ in range(num_res_blocks)])
        self.attn = Attention(channels, heads, dim_head, linear=not full_attention)

    def forward(self, x: torch.Tensor, temb: torch.Tensor):
        skips = []
        for block in self.blocks:
            x = block(x, temb)
            skips.append(x)
        x = self.attn(x)
        return x, skips[:-1] + [x]


class DecoderLevel(nn.Module):
    """Per skip (last first): concat, ResnetBlock to `channels`; residual `attn`; `resample` to out_channels.
    Call: x (B, channels, H, W), skips (B, skip_channels, H, W) each, temb -> (B, out_channels, H', W')."""

    def __init__(self, channels: int, skip_channels: int, out_channels: int, resample: str, emb_dim: int,
                 num_res_blocks: int, full_attention: bool, heads: int, dim_head: int, groups: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList([resnet_block(channels + skip_channels, channels, emb_dim, groups, dropout)
                                     for _ in range(num_res_blocks)])
        self.attn = Attention(channels, heads, dim_head, linear=not full_attention)
        self.resample = Resample(channels, out_channels, resample)

    def forward(self, x: torch.Tensor, skips: list, temb: torch.Tensor) -> torch.Tensor:
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(torch.cat([x, skip], dim=1), temb)
        return self.resample(self.attn(x))


class MedSegDiff(nn.Module):
    """MedSegDiff eps-predictor, the PyTorch twin of `jaxdiff.models.medsegdiff.MedSegDiff` (same arguments,
    meanings and defaults). Call: x (B, mask_channels, H, W) noisy mask, t (B,) int64, cond {"image":
    (B, image_channels, H, W)} -> (B, mask_channels, H, W)."""

    def __init__(self, image_size: int = 32, image_channels: int = 3, mask_channels: int = 1,
                 first_conv_channels: int = 16, num_layers: int = 2, channel_mults: Optional[Sequence[int]] = None,
                 time_embedding_dim: int = 128, num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (16,),
                 attention_heads: int = 4, attention_head_dim: int = 32, transformer_depth: int = 1,
                 resnet_groups: int = 8, dropout: float = 0.0, faithful_time_embedding: bool = False,
                 faithful_fusion: bool = False, faithful_ffparser: bool = False):
        super().__init__()
        mults = channel_mults if channel_mults is not None else [2 ** i for i in range(num_layers)]
        if len(mults) != num_layers:
            raise ValueError(f"channel_mults has {len(mults)} entries but num_layers={num_layers}")
        widths = [first_conv_channels, *(first_conv_channels * m for m in mults)]
        self.first_conv_channels, self.faithful_time_embedding = first_conv_channels, faithful_time_embedding
        t_dim = time_embedding_dim
        self.time_mlp = nn.Sequential(nn.Linear(first_conv_channels, t_dim), nn.GELU(), nn.Linear(t_dim, t_dim))
        self.mask_stem = nn.Conv2d(mask_channels, widths[0], 7, padding=3)
        self.image_stem = nn.Conv2d(image_channels, widths[0], 7, padding=3)
        common = dict(emb_dim=t_dim, num_res_blocks=num_res_blocks, heads=attention_heads,
                      dim_head=attention_head_dim, groups=resnet_groups, dropout=dropout)
        full = [image_size // 2 ** i in attention_resolutions for i in range(num_layers)]
        last = num_layers - 1
        self.mask_down = nn.ModuleList([EncoderLevel(widths[i], full_attention=full[i], **common)
                                        for i in range(num_layers)])
        self.image_down = nn.ModuleList([EncoderLevel(widths[i], full_attention=full[i], **common)
                                         for i in range(num_layers)])
        self.fusion = nn.ModuleList([DynamicFusion(widths[i], image_size // 2 ** i, resnet_groups, faithful_fusion,
                                                   faithful_ffparser) for i in range(num_layers)])
        self.mask_resample, self.image_resample = (
            nn.ModuleList([Resample(widths[i], widths[i + 1], "same" if i == last else "down")
                           for i in range(num_layers)]) for _ in range(2))
        mid = widths[-1]
        self.mask_mid, self.image_mid, self.mid_out = (
            resnet_block(mid, mid, t_dim, resnet_groups, dropout) for _ in range(3))
        self.mid_attention = nn.ModuleList([Attention(mid, attention_heads, attention_head_dim)
                                            for _ in range(transformer_depth)])
        self.mid_feedforward = nn.ModuleList([FeedForward(mid) for _ in range(transformer_depth)])
        self.up = nn.ModuleList([DecoderLevel(widths[i + 1], widths[i], widths[i], "up" if i > 0 else "same",
                                              full_attention=full[i], **common) for i in range(num_layers)])
        self.final_block = resnet_block(2 * widths[0], first_conv_channels, t_dim, resnet_groups, dropout)
        self.final_conv = nn.Conv2d(first_conv_channels, mask_channels, 1)

    @classmethod
    def from_jax_config(cls, model_config) -> "MedSegDiff":
        """Build from a jaxdiff `model` block (name "medsegdiff"), e.g. configs/medsegdiff_lgg.py's."""
        return cls(**{k: v for k, v in dict(model_config).items() if k != "name"})

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        embed = seed_time_embedding if self.faithful_time_embedding else timestep_embedding
        temb = self.time_mlp(embed(t, self.first_conv_channels))
        x = stem = self.mask_stem(x)
        c = self.image_stem(cond["image"].to(x.dtype))
        skips = []
        for mask_level, image_level, fusion, mask_resample, image_resample in zip(
                self.mask_down, self.image_down, self.fusion, self.mask_resample, self.image_resample):
            x, level_skips = mask_level(x, temb)
            c, _ = image_level(c, temb)
            c = fusion(x, c)
            skips.append(level_skips)
            x, c = mask_resample(x), image_resample(c)
        x = self.mask_mid(x, temb) + self.image_mid(c, temb)
        for attention, feedforward in zip(self.mid_attention, self.mid_feedforward):
            x = feedforward(attention(x))
        x = self.mid_out(x, temb)
        for level in reversed(range(len(self.up))):
            x = self.up[level](x, skips[level], temb)
        return self.final_conv(self.final_block(torch.cat([x, stem], dim=1), temb))
