"""Pieces shared by the image classifiers: PyTorch-exact convolution padding, BatchNorm, adaptive average
pooling, stochastic depth. All channels-last, (B, H, W, C)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def conv(features: int, kernel: int, stride: int = 1, groups: int = 1, use_bias: bool = False,
         name: str | None = None) -> nn.Conv:
    """A 2D convolution padded like PyTorch's `Conv2d(padding=(kernel - 1) // 2)` (symmetric, so strided
    outputs line up with torchvision's, unlike "SAME")."""
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=use_bias, name=name)


def batch_norm(train: bool, eps: float = 1e-5, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here); statistics in "batch_stats"."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=eps, name=name)


def adaptive_avg_pool(x, size: int):
    """PyTorch's `AdaptiveAvgPool2d(size)`: (B, H, W, C) -> (B, size, size, C). Output cell i averages input
    rows floor(i H / size) .. ceil((i + 1) H / size) - 1 (bins overlap when H is not a multiple of size)."""
    def bins(n):
        return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

    if x.shape[1] % size == 0 and x.shape[2] % size == 0:
        b, h, w, c = x.shape
        return x.reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4))
    rows = [x[:, r0:r1].mean(axis=1) for r0, r1 in bins(x.shape[1])]          # size x (B, W, C)
    return jnp.stack([jnp.stack([r[:, c0:c1].mean(axis=1) for c0, c1 in bins(x.shape[2])], axis=1)
                      for r in rows], axis=1)


def drop_path(module: nn.Module, x, rate: float, train: bool):
    """Stochastic depth: in training, zero each example's residual branch `x` (B, ...) with probability `rate`
    and scale the kept ones by 1 / (1 - rate) (key from the "dropout" rng); identity in evaluation."""
    if not train or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def global_avg_pool(x):
    """(B, H, W, C) -> (B, C)."""
    return jnp.mean(x, axis=(1, 2))
