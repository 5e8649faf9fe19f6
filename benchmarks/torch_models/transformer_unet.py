"""PyTorch reference of the TransUNet-style segmenter: SE-residual UNet, transformer bottleneck, error VAE.

Mirrors `jaxdiff.models.transformer_unet` (NCHW), written as the original code is: `nn.TransformerEncoder` of pre-norm
GELU layers with `nn.MultiheadAttention`, BatchNorm2d, Dropout2d, ConvTranspose2d. The weights map 1:1
(`benchmarks.port.port_transformer_unet`, `port_error_vae`). At the default widths: 49,455,873 parameters.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_models.unet import timestep_embedding

_LEAK = 0.2


class SEBlock(nn.Module):
    """Squeeze-excitation: x * sigmoid(excite(relu(squeeze(mean_hw(x))))), no biases. (B,C,H,W) -> same."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.squeeze = nn.Linear(channels, max(channels // reduction, 1), bias=False)
        self.excite = nn.Linear(max(channels // reduction, 1), channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3))))))
        return x * s[:, :, None, None]


class ConvBlock(nn.Module):
    """leaky_relu(SE(bn2(conv2(drop2d(leaky_relu(bn1(conv1(x))))))) + residual(x), slope 0.2.
    (B, C_in, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, channel_dropout: float = 0.1, se_reduction: int = 16):
        super().__init__()
        self.residual = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.drop2d = nn.Dropout2d(channel_dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SEBlock(out_channels, se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop2d(F.leaky_relu(self.bn1(self.conv1(x)), _LEAK))
        h = self.se(self.bn2(self.conv2(h)))
        return F.leaky_relu(h + self.residual(x), _LEAK)


class UpBlock(nn.Module):
    """ConvTranspose2d k2 s2 `upconv`, concat [skip, up], ConvBlock `block`.
    x (B, C_in, h, w), skip (B, out_channels, 2h, 2w) -> (B, out_channels, 2h, 2w)."""

    def __init__(self, in_channels: int, out_channels: int, channel_dropout: float = 0.1, se_reduction: int = 16):
        super().__init__()
        self.upconv = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ConvBlock(2 * out_channels, out_channels, channel_dropout, se_reduction)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.upconv(x)], dim=1))


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """(h*w, dim) 2-D sin-cos encoding, row-major: [embedding(row, dim/2), embedding(col, dim/2)]."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.cat([timestep_embedding(rows.reshape(-1), dim // 2),
                      timestep_embedding(cols.reshape(-1), dim // 2)], dim=-1)


def batch_indexed_pe(batch: int, dim: int, device=None) -> torch.Tensor:
    """The original code's bug: `pe[:x.size(0)]` of the interleaved sin/cos table added to batch-first tokens.
    Returns (batch, 1, dim): row b is position b's encoding, pe[b, 0, 2i] = sin(b w_i), pe[b, 0, 2i+1] = cos."""
    emb = timestep_embedding(torch.arange(batch, device=device), dim)
    return torch.stack([emb[:, :dim // 2], emb[:, dim // 2:]], dim=-1).reshape(batch, 1, dim)


class TransformerBottleneck(nn.Module):
    """(B, D, h, w) -> h*w tokens + positional encoding -> `encoder` (pre-norm GELU layers, no final norm)
    -> (B, D, h, w). faithful_pe: the original code's batch-indexed encoding instead of the 2-D sin-cos one."""

    def __init__(self, dim: int, num_layers: int = 2, num_heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1,
                 faithful_pe: bool = False):
        super().__init__()
        self.faithful_pe = faithful_pe
        layer = nn.TransformerEncoderLayer(dim, num_heads, ff_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        pe = batch_indexed_pe(b, d, x.device) if self.faithful_pe else sincos_2d(h, w, d, x.device)[None]
        tokens = self.encoder(x.flatten(2).transpose(1, 2) + pe.to(x.dtype))
        return tokens.transpose(1, 2).reshape(b, d, h, w)


class TransformerUNet(nn.Module):
    """The TransUNet-style segmenter, twin of `jaxdiff.models.transformer_unet.TransformerUNet` (same arguments and
    defaults). `encoders[i]` is jaxdiff's enc{i+1}, `decoders[i]` its up{i+1} (deepest first).
    Call: x (B, in_channels, H, W), H and W divisible by 2 ** (len(widths) - 1) -> (B, out_channels, H, W) logits.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512, 1024), num_layers: int = 2,
                 num_heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1, channel_dropout: float = 0.1,
                 se_reduction: int = 16, faithful_pe: bool = False, out_channels: int = 1):
        super().__init__()
        block = dict(channel_dropout=channel_dropout, se_reduction=se_reduction)
        self.encoders = nn.ModuleList([ConvBlock(c_in, c_out, **block)
                                       for c_in, c_out in zip([in_channels, *widths[:-1]], widths)])
        self.bottleneck = TransformerBottleneck(widths[-1], num_layers, num_heads, ff_dim, dropout, faithful_pe)
        rev = list(reversed(widths))
        self.decoders = nn.ModuleList([UpBlock(c_in, c_out, **block) for c_in, c_out in zip(rev, rev[1:])])
        self.final = nn.Conv2d(widths[0], out_channels, 1)

    @classmethod
    def from_jax_config(cls, model_config) -> "TransformerUNet":
        """Build from a jaxdiff `model` block (name "transformer_unet")."""
        return cls(**{k: v for k, v in dict(model_config).items() if k != "name"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i:
                skips.append(x)
                x = F.max_pool2d(x, 2)
            x = encoder(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, skip)
        return self.final(x)


class ErrorVAE(nn.Module):
    """The segmenter's error-map VAE, twin of `jaxdiff.models.transformer_unet.ErrorVAE` (same arguments).

    Encoder convs 3x3 stride 2 with TensorFlow/Flax "SAME" padding (zero row/column at the bottom/right only),
    ReLU; 1x1 `mu` / `logvar`; z = mu + exp(logvar / 2) eps in training, mu in eval; decoder ConvTranspose2d
    k2 s2 + ReLU; 3x3 `out`. Call: x (B, in_channels, H, W) -> (reconstruction, mu, logvar).
    """

    def __init__(self, in_channels: int = 1, features: Sequence[int] = (16, 32), latent_channels: int = 8,
                 out_channels: int = 1):
        super().__init__()
        self.encoder = nn.ModuleList([nn.Conv2d(c_in, c_out, 3, stride=2)
                                      for c_in, c_out in zip([in_channels, *features[:-1]], features)])
        self.mu = nn.Conv2d(features[-1], latent_channels, 1)
        self.logvar = nn.Conv2d(features[-1], latent_channels, 1)
        rev = list(reversed(features))
        self.decoder = nn.ModuleList([nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
                                      for c_in, c_out in zip([latent_channels, *rev[:-1]], rev)])
        self.out = nn.Conv2d(features[0], out_channels, 3, padding=1)

    @classmethod
    def from_jax_config(cls, model_config) -> "ErrorVAE":
        """Build from a jaxdiff `error_head` block (name "vae_error_head")."""
        return cls(**{k: v for k, v in dict(model_config).items() if k != "name"})

    def forward(self, x: torch.Tensor):
        h = x
        for conv in self.encoder:
            h = F.relu(conv(F.pad(h, (0, 1, 0, 1))))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        for deconv in self.decoder:
            z = F.relu(deconv(z))
        return self.out(z), mu, logvar
