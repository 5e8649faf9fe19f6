"""The denoiser of the keras.io example "Denoising Diffusion Implicit Models" (A. Beres, 2022),
the brain-tumour toolkit's generator.

A residual U-Net without attention: the noise variance is embedded once (32 sinusoids of log-spaced frequencies
1 .. 1000 cycles), broadcast over the image (the example's nearest upsampling of a 1x1 map) and concatenated to
a 1x1 convolution of the input; then `len(widths) - 1` down blocks (`block_depth` residual blocks + 2x2 average
pooling, every block output kept as a skip), `block_depth` residual blocks at `widths[-1]`, up blocks (bilinear
2x upsampling, then per residual block: concatenate a skip and apply the block) and a zero-initialised 1x1
output convolution, so the network predicts exactly zero noise at initialisation.

The example feeds the network the noise variance sin^2(angle(t)) of its continuous schedule
angle(t) = acos(max_signal_rate) + t (acos(min_signal_rate) - acos(max_signal_rate)), t in [0, 1]. Here the
samplers hand the model an integer timestep t in [0, T) of `schedules.get("cosine_angle", T)`, which
discretises that schedule at diffusion time (t + 1) / T; `noise_variance` converts it, so
noise_variance(t) == 1 - alphas_cumprod[t] of that schedule.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.diffusion import schedules
from jaxdiff.models import register
from jaxdiff.models.layers import Conv


def noise_embedding(variance, dim: int = 32, min_frequency: float = 1.0, max_frequency: float = 1000.0):
    """Keras DDIM sinusoidal embedding of noise variances.

    Args:
      variance: (B,) noise variances (any real values; the schedule keeps them in [0, 1]).
      dim: embedding width (even).
      min_frequency / max_frequency: frequencies f = exp(linspace(log min, log max, dim / 2)), in cycles.
    Returns:
      (B, dim) float32 `[sin(2 pi f v), cos(2 pi f v)]`.
    """
    freqs = jnp.exp(jnp.linspace(math.log(min_frequency), math.log(max_frequency), dim // 2))
    args = 2.0 * math.pi * freqs[None, :] * jnp.asarray(variance, jnp.float32)[:, None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def noise_variance(t, num_timesteps: int, min_signal_rate: float = 0.02, max_signal_rate: float = 0.95):
    """Noise variance sin^2(angle((t + 1) / T)) of integer timesteps `t` (B,) in [0, T) of the discretised
    cosine-angle schedule (`schedules.cosine_angle_betas`); equals 1 - alphas_cumprod[t]. Returns (B,) float32."""
    time = (jnp.asarray(t, jnp.float32) + 1.0) / num_timesteps
    _, noise_rate = schedules.cosine_angle_rates(time, min_signal_rate, max_signal_rate)
    return noise_rate ** 2


class KerasResidualBlock(nn.Module):
    """BatchNorm (no scale, no centre) -> conv3x3 + swish -> conv3x3, plus the input (through a 1x1 conv when
    the width changes). (B, H, W, C) -> (B, H, W, width). BatchNorm defaults are Keras's (momentum 0.99,
    epsilon 1e-3); its running statistics live in the "batch_stats" collection."""

    width: int
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        residual = x if x.shape[-1] == self.width else nn.Conv(self.width, (1, 1), name="skip")(x)
        h = nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False,
                         momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="norm")(x)
        h = nn.swish(Conv(self.width, (3, 3), padding="SAME", name="conv1")(h))
        h = Conv(self.width, (3, 3), padding="SAME", name="conv2")(h)
        return h + residual


def upsample_bilinear(x):
    """(B, H, W, C) -> (B, 2H, 2W, C) bilinear, half-pixel centres (Keras UpSampling2D(interpolation="bilinear"))."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")


@register("keras_ddim")
class KerasDDIM(nn.Module):
    """Keras DDIM residual U-Net, 2D, channels-last.

    Attributes:
      out_channels: predicted noise channels (the example: 3, RGB).
      widths: per-level widths; the last is the bottleneck (example: 32, 64, 96, 128).
      block_depth: residual blocks per level (example: 2).
      embedding_dims, embedding_min_frequency, embedding_max_frequency: see `noise_embedding`.
      num_timesteps, min_signal_rate, max_signal_rate: the cosine-angle schedule the integer t refers to
        (must equal `diffusion.num_timesteps` and the schedule's rates).
      bn_momentum, bn_epsilon: BatchNorm running-average momentum and epsilon.
    Call: x (B, H, W, C) with H, W divisible by 2^(len(widths) - 1), t (B,) int timesteps, cond unused (None)
      -> predicted noise (B, H, W, out_channels).
    """

    out_channels: int = 1
    widths: Sequence[int] = (32, 64, 96, 128)
    block_depth: int = 2
    embedding_dims: int = 32
    embedding_min_frequency: float = 1.0
    embedding_max_frequency: float = 1000.0
    num_timesteps: int = 1000
    min_signal_rate: float = 0.02
    max_signal_rate: float = 0.95
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    def block(self, width: int, name: str) -> KerasResidualBlock:
        return KerasResidualBlock(width, self.bn_momentum, self.bn_epsilon, name=name)

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        variance = noise_variance(t, self.num_timesteps, self.min_signal_rate, self.max_signal_rate)
        e = noise_embedding(variance, self.embedding_dims, self.embedding_min_frequency, self.embedding_max_frequency)
        e = jnp.broadcast_to(e[:, None, None, :].astype(x.dtype), (*x.shape[:-1], e.shape[-1]))
        h = jnp.concatenate([nn.Conv(self.widths[0], (1, 1), name="conv_in")(x), e], axis=-1)
        skips = []
        for level, width in enumerate(self.widths[:-1]):
            for i in range(self.block_depth):
                h = self.block(width, f"down{level}_{i}")(h, train=train)
                skips.append(h)
            h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        for i in range(self.block_depth):
            h = self.block(self.widths[-1], f"mid_{i}")(h, train=train)
        for level in reversed(range(len(self.widths) - 1)):
            h = upsample_bilinear(h)
            for i in range(self.block_depth):
                h = self.block(self.widths[level], f"up{level}_{i}")(
                    jnp.concatenate([h, skips.pop()], axis=-1), train=train)
        return nn.Conv(self.out_channels, (1, 1), kernel_init=nn.initializers.zeros, name="conv_out")(h)
