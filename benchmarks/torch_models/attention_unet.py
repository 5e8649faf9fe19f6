"""PyTorch twin (NCHW) of `jaxdiff.models.attention_unet.AttentionUNet`, an attention UNet denoiser, Swin bottleneck.

Written as the original PyTorch code is: SAGAN attention with `bmm` on (B, C, N) views, a Swin block on (B, H, W, C)
maps. `faithful_swin=True` is the original's bug: the NCHW bottleneck map is `.view`-ed as (B, H, W, C) (no
permute) and viewed back, with shift 0. `port_attention_unet` maps the weights 1:1 onto the Flax parameters.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import port
from benchmarks.torch_models.unet import timestep_embedding

RULES: port.Rules = [
    (r"^(enc|sagan|up|gate|dec)\.(\d+)\b", r"\1_\2"),
    (r"\.blocks\.(\d+)\b", r".block_\1"),
]


class ConvBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU (no norm)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_0, self.conv_1 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv_1(F.relu(self.conv_0(x))))


class SelfAttention2D(nn.Module):
    """SAGAN self-attention, gamma initialised to 0."""

    def __init__(self, c: int):
        super().__init__()
        self.query, self.key = nn.Conv2d(c, max(c // 8, 1), 1), nn.Conv2d(c, max(c // 8, 1), 1)
        self.value = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query(x).view(b, -1, h * w).permute(0, 2, 1)
        attn = torch.softmax(torch.bmm(q, self.key(x).view(b, -1, h * w)), dim=-1)
        out = torch.bmm(self.value(x).view(b, c, h * w), attn.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


class AttentionGate(nn.Module):
    """skip * sigmoid(psi(ReLU(W_g g + W_x skip)))."""

    def __init__(self, c: int, inter: int):
        super().__init__()
        self.w_g, self.w_x, self.psi = nn.Conv2d(c, inter, 1), nn.Conv2d(c, inter, 1), nn.Conv2d(inter, 1, 1)

    def forward(self, g, skip):
        return skip * torch.sigmoid(self.psi(F.relu(self.w_g(g) + self.w_x(skip))))


def window_partition(x, ws: int):
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows, ws: int, h: int, w: int):
    c = windows.shape[-1]
    return windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Window multi-head attention with a relative position bias table ((2w-1)^2, heads)."""

    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + ws - 1
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(t, t, -1)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(n // nw, nw, self.heads, t, t) + mask[None, :, None]).view(n, self.heads, t, t)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(n, t, c))


class SwinBlock(nn.Module):
    """Pre-LN Swin block on (B, H, W, C) with optional cyclic shift."""

    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm_0, self.norm_1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, ws)
        self.mlp_0, self.mlp_1 = nn.Linear(dim, int(dim * mlp_ratio)), nn.Linear(int(dim * mlp_ratio), dim)

    def _mask(self, h, w, device):
        regions = torch.zeros(1, h, w, 1, device=device)
        cuts = (slice(0, -self.ws), slice(-self.ws, -self.shift), slice(-self.shift, None))
        for i, rs in enumerate(cuts):
            for j, cs in enumerate(cuts):
                regions[:, rs, cs, :] = 3 * i + j
        win = window_partition(regions, self.ws)[..., 0]
        return (win[:, :, None] != win[:, None, :]).float() * -100.0

    def forward(self, x):
        _, h, w, _ = x.shape
        y = self.norm_0(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.ws), self._mask(h, w, x.device) if self.shift else None)
        y = window_reverse(y, self.ws, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp_1(F.gelu(self.mlp_0(self.norm_1(x))))


class SwinStage(nn.Module):
    """Swin blocks on an NCHW map: odd blocks (or a single block) shifted; `faithful`: the original code's view bug."""

    def __init__(self, dim: int, depth: int, heads: int, ws: int, mlp_ratio: float, faithful: bool, size: int):
        super().__init__()
        self.faithful = faithful
        ws, shift = (ws, ws // 2) if size > ws else (size, 0)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, ws, 0 if faithful or (i % 2 == 0 and depth > 1) else shift, mlp_ratio)
            for i in range(depth))

    def forward(self, x):
        b, c, h, w = x.shape
        y = x.view(b, h, w, c) if self.faithful else x.permute(0, 2, 3, 1)
        for block in self.blocks:
            y = block(y)
        return y.reshape(b, c, h, w) if self.faithful else y.permute(0, 3, 1, 2)


class AttentionUNet(nn.Module):
    """Twin of jaxdiff's AttentionUNet (same arguments plus in_channels, image_size for the Swin window clamp).
    Call: x (B, C, H, W), t (B,), cond dict with "low_res" (B, C, h, w) / "aug_level" (B,) -> (B, out, H, W)."""

    def __init__(self, in_channels: int = 1, image_size: int = 64, out_channels: int = 1,
                 channels: Sequence[int] = (64, 128, 256), bottleneck_channels: int = 512, emb_dim: int = 128,
                 sagan: bool = True, gates: bool = True, swin: bool = True, swin_depth: int = 1, swin_heads: int = 8,
                 swin_window: int = 4, swin_mlp_ratio: float = 4.0, faithful_swin: bool = False,
                 low_res: bool = False, aug_level: bool = False):
        super().__init__()
        self.emb_dim, self.low_res, self.aug_level = emb_dim, low_res, aug_level
        cin = in_channels * (2 if low_res else 1) + emb_dim * (2 if aug_level else 1)
        widths = [cin, *channels]
        self.enc = nn.ModuleList(ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.sagan = nn.ModuleList(SelfAttention2D(c) for c in channels) if sagan else None
        self.mid = ConvBlock(channels[-1], bottleneck_channels)
        self.swin = SwinStage(bottleneck_channels, swin_depth, swin_heads, swin_window, swin_mlp_ratio, faithful_swin,
                              image_size // 2 ** len(channels)) if swin else None
        below = [*channels[1:], bottleneck_channels]  # input width of up[i]: the level below's output
        self.up = nn.ModuleList(nn.ConvTranspose2d(u, c, 2, stride=2) for u, c in zip(below, channels))
        self.gate = nn.ModuleList(AttentionGate(c, max(c // 2, 1)) for c in channels) if gates else None
        self.dec = nn.ModuleList(ConvBlock(2 * c, c) for c in channels)
        self.out = nn.Conv2d(channels[0], out_channels, 1)

    @classmethod
    def from_jax_config(cls, model_config, in_channels: int = 1, image_size: int = 64) -> "AttentionUNet":
        """Build from a jaxdiff `model` block (name "attention_unet")."""
        return cls(in_channels=in_channels, image_size=image_size,
                   **{k: v for k, v in dict(model_config).items() if k != "name"})

    def _tile(self, t, like):
        e = timestep_embedding(t, self.emb_dim).to(like.dtype)
        return e[:, :, None, None].expand(-1, -1, *like.shape[2:])

    def forward(self, x, t, cond=None):
        parts = [x]
        if self.low_res:
            parts.append(F.interpolate(cond["low_res"], size=x.shape[2:], mode="bilinear", align_corners=False))
        parts.append(self._tile(t, x))
        if self.aug_level:
            parts.append(self._tile(cond["aug_level"], x))
        h, skips = torch.cat(parts, dim=1), []
        for i, enc in enumerate(self.enc):
            h = enc(h)
            h = self.sagan[i](h) if self.sagan is not None else h
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.mid(h)
        h = self.swin(h) if self.swin is not None else h
        for i in reversed(range(len(self.enc))):
            h = self.up[i](h)
            skip = self.gate[i](h, skips[i]) if self.gate is not None else skips[i]
            h = self.dec[i](torch.cat([h, skip], dim=1))
        return self.out(h)


def port_attention_unet(module: AttentionUNet) -> dict:
    """Flax params of jaxdiff's AttentionUNet from the twin: known layers by `benchmarks.port`'s conversions,
    the bare parameters (SAGAN `gamma`, Swin `relative_position_bias_table`) copied under the renamed path."""
    variables: dict = {}
    consumed: set = set()
    for name, m in module.named_modules():
        converted = port._convert(m)
        if converted is None:
            continue
        consumed.update(id(p) for p in m.parameters())
        for collection, leaves in converted.items():
            port._insert(variables.setdefault(collection, {}), port._rename(name, RULES), leaves, name)
    for name, p in module.named_parameters():
        if id(p) not in consumed:
            owner, leaf = name.rsplit(".", 1)
            port._insert(variables.setdefault("params", {}), port._rename(owner, RULES), {leaf: port._np(p)}, name)
    return port._to_jax(variables)["params"]
